/*
 * Host-side core of DRSparseDepthwiseConv (see drSparseDwConvCore.h for why it is separate from the plugin).
 */
#include "drSparseDwConvCore.h"
#include "drSparseDwConvIndex.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

namespace deprune
{
namespace drdw
{
namespace
{

char const* const kActivationNames[] = {"none", "relu", "clip", "hard_swish", "silu"};
constexpr int32_t kNumActivations = 5;

// Shared memory a block may use without the opt-in beyond 48 KiB (kept below it so two blocks fit an SM of 100 KiB).
constexpr int64_t kSharedBudgetBytes = 40 * 1024;
// Header of the kernel's shared memory: 32 tap codes + 32 tap weights + 4 x 32 per-channel ints + 2 range ints,
// rounded up to 16 bytes (must equal the layout in drSparseDwConvKernel.cu).
constexpr int64_t kSharedHeaderBytes = 32 * 4 + 32 * 4 + 4 * 32 * 4 + 16;
constexpr int32_t kMaxChannelsPerBlock = 32;
constexpr int32_t kMaxTilePixels = 128; // 4 pixels per lane: the kernel's accumulator array is [4][4]
constexpr int32_t kMaxGridYZ = 65535;

std::string fieldError(std::string const& name, std::string const& what)
{
    return "DRSparseDepthwiseConv field '" + name + "': " + what;
}

char const* typeName(FieldType type)
{
    switch (type)
    {
    case FieldType::kFLOAT16: return "FLOAT16";
    case FieldType::kFLOAT32: return "FLOAT32";
    case FieldType::kFLOAT64: return "FLOAT64";
    case FieldType::kINT8: return "INT8";
    case FieldType::kINT16: return "INT16";
    case FieldType::kINT32: return "INT32";
    case FieldType::kCHAR: return "CHAR";
    case FieldType::kDIMS: return "DIMS";
    case FieldType::kUNKNOWN: return "UNKNOWN";
    case FieldType::kBF16: return "BF16";
    case FieldType::kINT64: return "INT64";
    }
    return "?";
}

// Integers: the ONNX parser of TensorRT 10.x hands INT/INTS attributes over as INT32; other producers (and later
// parsers) use INT64. Both are accepted, and values must fit int32.
std::string readInts(FieldView const& f, std::vector<int32_t>& out)
{
    if (f.length < 0 || (f.length > 0 && f.data == nullptr))
    {
        return fieldError(f.name, "no data");
    }
    out.resize(static_cast<size_t>(f.length));
    for (int32_t i = 0; i < f.length; ++i)
    {
        int64_t v = 0;
        switch (f.type)
        {
        case FieldType::kINT8: v = static_cast<int8_t const*>(f.data)[i]; break;
        case FieldType::kINT16: v = static_cast<int16_t const*>(f.data)[i]; break;
        case FieldType::kINT32: v = static_cast<int32_t const*>(f.data)[i]; break;
        case FieldType::kINT64: v = static_cast<int64_t const*>(f.data)[i]; break;
        default: return fieldError(f.name, std::string("expected an integer type, got ") + typeName(f.type));
        }
        if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        {
            return fieldError(f.name, "value " + std::to_string(v) + " does not fit int32");
        }
        out[static_cast<size_t>(i)] = static_cast<int32_t>(v);
    }
    return "";
}

std::string readFloats(FieldView const& f, std::vector<float>& out)
{
    if (f.length < 0 || (f.length > 0 && f.data == nullptr))
    {
        return fieldError(f.name, "no data");
    }
    out.resize(static_cast<size_t>(f.length));
    for (int32_t i = 0; i < f.length; ++i)
    {
        float v = 0.0F;
        switch (f.type)
        {
        case FieldType::kFLOAT16: v = halfBitsToFloat(static_cast<uint16_t const*>(f.data)[i]); break;
        case FieldType::kBF16: v = bf16BitsToFloat(static_cast<uint16_t const*>(f.data)[i]); break;
        case FieldType::kFLOAT32: v = static_cast<float const*>(f.data)[i]; break;
        case FieldType::kFLOAT64: v = static_cast<float>(static_cast<double const*>(f.data)[i]); break;
        default: return fieldError(f.name, std::string("expected a float type, got ") + typeName(f.type));
        }
        out[static_cast<size_t>(i)] = v;
    }
    return "";
}

std::string readString(FieldView const& f, std::string& out)
{
    if (f.type != FieldType::kCHAR)
    {
        return fieldError(f.name, std::string("expected CHAR, got ") + typeName(f.type));
    }
    if (f.length < 0 || (f.length > 0 && f.data == nullptr))
    {
        return fieldError(f.name, "no data");
    }
    char const* text = static_cast<char const*>(f.data);
    size_t n = static_cast<size_t>(f.length);
    while (n > 0 && text[n - 1] == '\0') // the ONNX parser appends the C string terminator to the length
    {
        --n;
    }
    out.assign(text, n);
    return "";
}

std::string readScalar(FieldView const& f, int32_t& out)
{
    std::vector<int32_t> values;
    std::string err = readInts(f, values);
    if (!err.empty())
    {
        return err;
    }
    if (values.size() != 1)
    {
        return fieldError(f.name, "expected one integer, got " + std::to_string(values.size()));
    }
    out = values[0];
    return "";
}

std::string readFixed(FieldView const& f, size_t count, std::vector<int32_t>& out)
{
    std::string err = readInts(f, out);
    if (err.empty() && out.size() != count)
    {
        err = fieldError(f.name, "expected " + std::to_string(count) + " integers, got " + std::to_string(out.size()));
    }
    return err;
}

bool isPositive(int32_t v)
{
    return v >= 1;
}

} // namespace

std::vector<std::string> const& fieldNames()
{
    static std::vector<std::string> const names{"channels", "depth_multiplier", "kernel_shape", "strides", "pads",
        "dilations", "subgemm_channels", "k_tile", "activation", "activation_params", "kept_counts", "tap_indices",
        "tap_values", "bias"};
    return names;
}

char const* activationName(int32_t activation)
{
    return activation >= 0 && activation < kNumActivations ? kActivationNames[activation] : "";
}

std::string parseFields(std::vector<FieldView> const& fields, Params& p)
{
    std::vector<std::string> seen;
    bool haveChannels = false;
    bool haveKernel = false;
    bool haveCounts = false;
    bool haveIndices = false;
    bool haveValues = false;
    bool haveBias = false;
    for (FieldView const& f : fields)
    {
        if (std::find(seen.begin(), seen.end(), f.name) != seen.end())
        {
            return fieldError(f.name, "given twice");
        }
        seen.push_back(f.name);
        std::string err;
        std::vector<int32_t> ints;
        if (f.name == "channels")
        {
            err = readScalar(f, p.channels);
            haveChannels = true;
        }
        else if (f.name == "depth_multiplier")
        {
            err = readScalar(f, p.depthMultiplier);
        }
        else if (f.name == "subgemm_channels")
        {
            err = readScalar(f, p.subgemmChannels);
        }
        else if (f.name == "k_tile")
        {
            err = readScalar(f, p.kTile);
        }
        else if (f.name == "kernel_shape")
        {
            err = readFixed(f, 2, ints);
            if (err.empty())
            {
                p.kernelH = ints[0];
                p.kernelW = ints[1];
            }
            haveKernel = true;
        }
        else if (f.name == "strides")
        {
            err = readFixed(f, 2, ints);
            if (err.empty())
            {
                p.strideH = ints[0];
                p.strideW = ints[1];
            }
        }
        else if (f.name == "dilations")
        {
            err = readFixed(f, 2, ints);
            if (err.empty())
            {
                p.dilationH = ints[0];
                p.dilationW = ints[1];
            }
        }
        else if (f.name == "pads")
        {
            err = readFixed(f, 4, ints);
            if (err.empty())
            {
                p.padTop = ints[0];
                p.padLeft = ints[1];
                p.padBottom = ints[2];
                p.padRight = ints[3];
            }
        }
        else if (f.name == "activation")
        {
            std::string name;
            err = readString(f, name);
            if (err.empty())
            {
                p.activation = -1;
                for (int32_t a = 0; a < kNumActivations; ++a)
                {
                    if (name == kActivationNames[a])
                    {
                        p.activation = a;
                    }
                }
                if (p.activation < 0)
                {
                    err = fieldError(f.name, "unknown activation '" + name + "' (none, relu, clip, hard_swish, silu)");
                }
            }
        }
        else if (f.name == "activation_params")
        {
            err = readFloats(f, p.activationParams);
        }
        else if (f.name == "kept_counts")
        {
            err = readInts(f, p.keptCounts);
            haveCounts = true;
        }
        else if (f.name == "tap_indices")
        {
            err = readInts(f, p.tapIndices);
            haveIndices = true;
        }
        else if (f.name == "tap_values")
        {
            err = readFloats(f, p.tapValues);
            haveValues = true;
        }
        else if (f.name == "bias")
        {
            err = readFloats(f, p.bias);
            haveBias = true;
        }
        else if (f.name == "plugin_namespace" || f.name == "plugin_version")
        {
            // Routing attributes of the ONNX node: TensorRT already used them to find this creator.
        }
        else
        {
            err = fieldError(f.name, "unknown field");
        }
        if (!err.empty())
        {
            return err;
        }
    }
    char const* missing = !haveChannels ? "channels"
        : !haveKernel                   ? "kernel_shape"
        : !haveCounts                   ? "kept_counts"
        : !haveIndices                  ? "tap_indices"
        : !haveValues                   ? "tap_values"
        : !haveBias                     ? "bias"
                                        : nullptr;
    if (missing != nullptr)
    {
        return fieldError(missing, "required field is missing");
    }
    return "";
}

std::string validate(Params const& p)
{
    std::ostringstream err;
    if (!isPositive(p.channels) || !isPositive(p.depthMultiplier))
    {
        err << "channels (" << p.channels << ") and depth_multiplier (" << p.depthMultiplier << ") must be >= 1";
    }
    else if (p.kernelH < 1 || p.kernelH > kMaxKernel || p.kernelW < 1 || p.kernelW > kMaxKernel)
    {
        err << "kernel_shape [" << p.kernelH << ", " << p.kernelW << "] must be in 1.." << kMaxKernel;
    }
    else if (!isPositive(p.strideH) || !isPositive(p.strideW) || !isPositive(p.dilationH) || !isPositive(p.dilationW))
    {
        err << "strides and dilations must be >= 1";
    }
    else if (p.padTop < 0 || p.padLeft < 0 || p.padBottom < 0 || p.padRight < 0)
    {
        err << "pads must be >= 0";
    }
    else if (!isPositive(p.subgemmChannels) || !isPositive(p.kTile))
    {
        err << "subgemm_channels (" << p.subgemmChannels << ") and k_tile (" << p.kTile << ") must be >= 1";
    }
    else if (p.activation < 0 || p.activation >= kNumActivations)
    {
        err << "activation " << p.activation << " is unknown";
    }
    else
    {
        size_t const wanted = (p.activation == kActClip || p.activation == kActHardSwish) ? 2 : 0;
        if (p.activationParams.size() != wanted)
        {
            err << "activation '" << kActivationNames[p.activation] << "' needs " << wanted
                << " activation_params, got " << p.activationParams.size();
        }
        else if (p.activation == kActClip && !(p.activationParams[0] <= p.activationParams[1]))
        {
            err << "clip activation_params [min, max] need min <= max";
        }
    }
    if (!err.str().empty())
    {
        return "DRSparseDepthwiseConv: " + err.str();
    }

    int64_t const cOut = static_cast<int64_t>(p.channels) * p.depthMultiplier;
    int64_t const taps = static_cast<int64_t>(p.kernelH) * p.kernelW;
    if (cOut * taps > std::numeric_limits<int32_t>::max())
    {
        return "DRSparseDepthwiseConv: channels*depth_multiplier*kh*kw exceeds int32 tap indices";
    }
    int32_t const groups = p.subgemmCount();
    if (p.keptCounts.size() != static_cast<size_t>(groups))
    {
        return fieldError("kept_counts", "has " + std::to_string(p.keptCounts.size()) + " entries, expected G = "
                + std::to_string(groups) + " (ceil(" + std::to_string(cOut) + " / " + std::to_string(p.subgemmChannels)
                + "))");
    }
    if (p.bias.size() != static_cast<size_t>(cOut))
    {
        return fieldError(
            "bias", "has " + std::to_string(p.bias.size()) + " entries, expected C_out = " + std::to_string(cOut));
    }
    int64_t total = 0;
    for (int32_t g = 0; g < groups; ++g)
    {
        int64_t const width = std::min<int64_t>(p.subgemmChannels, cOut - static_cast<int64_t>(g) * p.subgemmChannels);
        int32_t const k = p.keptCounts[static_cast<size_t>(g)];
        if (k < 0 || k > width * taps)
        {
            return fieldError("kept_counts", "sub-GEMM " + std::to_string(g) + " keeps " + std::to_string(k)
                    + " taps, outside 0.." + std::to_string(width * taps));
        }
        total += (static_cast<int64_t>(k) + p.kTile - 1) / p.kTile * p.kTile;
    }
    if (total > std::numeric_limits<int32_t>::max())
    {
        return fieldError("tap_indices", "too long for int32 offsets");
    }
    if (p.tapIndices.size() != static_cast<size_t>(total) || p.tapValues.size() != static_cast<size_t>(total))
    {
        return fieldError("tap_indices", "tap_indices/tap_values have " + std::to_string(p.tapIndices.size()) + "/"
                + std::to_string(p.tapValues.size()) + " entries, expected sum_g ceil(K_g/k_tile)*k_tile = "
                + std::to_string(total));
    }
    std::vector<int32_t> const offsets = subgemmOffsets(p);
    for (int32_t g = 0; g < groups; ++g)
    {
        int64_t const lo = static_cast<int64_t>(g) * p.subgemmChannels * taps;
        int64_t const hi = std::min<int64_t>(static_cast<int64_t>(g + 1) * p.subgemmChannels, cOut) * taps;
        int32_t const begin = offsets[static_cast<size_t>(g)];
        int32_t const end = offsets[static_cast<size_t>(g) + 1];
        int32_t const kept = p.keptCounts[static_cast<size_t>(g)];
        for (int32_t t = begin; t < end; ++t)
        {
            int32_t const index = p.tapIndices[static_cast<size_t>(t)];
            std::string where = "sub-GEMM " + std::to_string(g) + " entry " + std::to_string(t - begin);
            if (t < begin + kept)
            {
                if (index < lo || index >= hi)
                {
                    return fieldError("tap_indices", where + ": index " + std::to_string(index)
                            + " outside the sub-GEMM's taps [" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
                }
                if (t > begin && index <= p.tapIndices[static_cast<size_t>(t) - 1])
                {
                    return fieldError("tap_indices", where + ": indices must be strictly increasing");
                }
            }
            else
            {
                if (index != p.tapIndices[static_cast<size_t>(begin + kept - 1)])
                {
                    return fieldError("tap_indices", where + ": padding must repeat the last kept index");
                }
                if (p.tapValues[static_cast<size_t>(t)] != 0.0F)
                {
                    return fieldError("tap_values", where + ": padding value must be 0");
                }
            }
        }
    }
    return "";
}

std::string parseAndValidate(std::vector<FieldView> const& fields, Params& params)
{
    std::string err = parseFields(fields, params);
    return err.empty() ? validate(params) : err;
}

std::vector<int32_t> subgemmOffsets(Params const& p)
{
    std::vector<int32_t> offsets(p.keptCounts.size() + 1, 0);
    for (size_t g = 0; g < p.keptCounts.size(); ++g)
    {
        offsets[g + 1] = offsets[g] + (p.keptCounts[g] + p.kTile - 1) / p.kTile * p.kTile;
    }
    return offsets;
}

std::string outputShape(Params const& p, int32_t inH, int32_t inW, OutputShape& out)
{
    if (inH < 1 || inW < 1)
    {
        return "DRSparseDepthwiseConv: input spatial size " + std::to_string(inH) + "x" + std::to_string(inW)
            + " is empty";
    }
    out.channels = p.outChannels();
    out.height = outputExtent(inH, p.kernelH, p.strideH, p.dilationH, p.padTop, p.padBottom);
    out.width = outputExtent(inW, p.kernelW, p.strideW, p.dilationW, p.padLeft, p.padRight);
    if (out.height < 1 || out.width < 1)
    {
        return "DRSparseDepthwiseConv: input " + std::to_string(inH) + "x" + std::to_string(inW)
            + " is smaller than the dilated kernel after padding (output would be empty)";
    }
    return "";
}

std::size_t workspaceBytes(Params const& /*params*/, int32_t /*batch*/, int32_t /*inH*/, int32_t /*inW*/)
{
    return 0;
}

DrDwConvProblem makeProblem(Params const& p, int32_t batch, int32_t inH, int32_t inW)
{
    DrDwConvProblem q{};
    q.batch = batch;
    q.channels = p.channels;
    q.depthMultiplier = p.depthMultiplier;
    q.inH = inH;
    q.inW = inW;
    q.outH = outputExtent(inH, p.kernelH, p.strideH, p.dilationH, p.padTop, p.padBottom);
    q.outW = outputExtent(inW, p.kernelW, p.strideW, p.dilationW, p.padLeft, p.padRight);
    q.kernelH = p.kernelH;
    q.kernelW = p.kernelW;
    q.strideH = p.strideH;
    q.strideW = p.strideW;
    q.dilationH = p.dilationH;
    q.dilationW = p.dilationW;
    q.padTop = p.padTop;
    q.padLeft = p.padLeft;
    q.subgemmChannels = p.subgemmChannels;
    q.activation = p.activation;
    q.actAlpha = p.activationParams.size() == 2 ? p.activationParams[0] : 0.0F;
    q.actBeta = p.activationParams.size() == 2 ? p.activationParams[1] : 0.0F;
    return q;
}

std::string planLaunch(DrDwConvProblem const& q, int32_t elementBytes, int32_t smCount, DrDwLaunchPlan& plan)
{
    if (q.batch < 1 || q.channels < 1 || q.depthMultiplier < 1 || q.outH < 1 || q.outW < 1 || q.kernelH < 1
        || q.kernelW < 1 || q.kernelH > kMaxKernel || q.kernelW > kMaxKernel || q.strideH < 1 || q.strideW < 1
        || q.dilationH < 1 || q.dilationW < 1 || q.subgemmChannels < 1 || (elementBytes != 2 && elementBytes != 4))
    {
        return "invalid problem";
    }
    int64_t const cOut = static_cast<int64_t>(q.channels) * q.depthMultiplier;
    int64_t const groups = (cOut + q.subgemmChannels - 1) / q.subgemmChannels;
    int32_t channelsPerBlock = std::min(q.subgemmChannels, kMaxChannelsPerBlock);
    int32_t tileW = std::min(q.outW, 32);
    int32_t tileH = std::min(q.outH, std::max(1, kMaxTilePixels / tileW));

    auto blocksFor = [&](int32_t cpb, int32_t th, int32_t tw) {
        int64_t const slices = (q.subgemmChannels + cpb - 1) / cpb;
        return groups * slices * ((q.outH + th - 1) / th) * ((q.outW + tw - 1) / tw) * q.batch;
    };
    // Few blocks (batch 1, late 7x7 layers): slice sub-GEMMs into 16 or 8 channels so every SM gets work.
    while (smCount > 0 && channelsPerBlock > 8 && blocksFor(channelsPerBlock, tileH, tileW) < 2LL * smCount)
    {
        channelsPerBlock /= 2;
    }
    auto inChannels = [&](int32_t cpb) { return std::min(cpb, (cpb - 1) / q.depthMultiplier + 2); };
    auto sharedFor = [&](int32_t cpb, int32_t th, int32_t tw) {
        int64_t const ih = tileInputExtent(th, q.kernelH, q.strideH, q.dilationH);
        int64_t const iw = tileInputExtent(tw, q.kernelW, q.strideW, q.dilationW);
        return kSharedHeaderBytes + static_cast<int64_t>(inChannels(cpb)) * ih * iw * elementBytes;
    };
    // Shrink the tile (rows first, then columns, then the channel slice) until the staged input fits.
    while (sharedFor(channelsPerBlock, tileH, tileW) > kSharedBudgetBytes)
    {
        if (tileH > 1)
        {
            tileH = (tileH + 1) / 2;
        }
        else if (tileW > 1)
        {
            tileW = (tileW + 1) / 2;
        }
        else if (channelsPerBlock > 1)
        {
            channelsPerBlock /= 2;
        }
        else
        {
            return "dilated kernel too large: one staged input pixel tile exceeds shared memory";
        }
    }
    plan.tileH = tileH;
    plan.tileW = tileW;
    plan.inTileH = tileInputExtent(tileH, q.kernelH, q.strideH, q.dilationH);
    plan.inTileW = tileInputExtent(tileW, q.kernelW, q.strideW, q.dilationW);
    plan.channelsPerBlock = channelsPerBlock;
    plan.inChannelsPerBlock = inChannels(channelsPerBlock);
    plan.slicesPerSubgemm = (q.subgemmChannels + channelsPerBlock - 1) / channelsPerBlock;
    plan.tilesH = (q.outH + tileH - 1) / tileH;
    plan.tilesW = (q.outW + tileW - 1) / tileW;
    plan.threads = 32 * std::min(8, channelsPerBlock);
    int64_t const gridX = static_cast<int64_t>(plan.tilesH) * plan.tilesW;
    int64_t const gridY = groups * plan.slicesPerSubgemm;
    if (gridX > std::numeric_limits<int32_t>::max() || gridY > kMaxGridYZ || q.batch > kMaxGridYZ)
    {
        return "problem exceeds CUDA grid limits (sub-GEMM slices <= 65535, batch <= 65535)";
    }
    plan.gridX = static_cast<int32_t>(gridX);
    plan.gridY = static_cast<int32_t>(gridY);
    plan.gridZ = q.batch;
    plan.sharedBytes = sharedFor(channelsPerBlock, tileH, tileW);
    return "";
}

// Kernel version 2: 4 warps, 8 float accumulators per lane, at most 48 KB of dynamic shared memory (no opt-in).
constexpr int32_t kV2Warps = 4;
constexpr int32_t kV2MaxAccumulators = 8;
constexpr int64_t kV2SharedBudgetBytes = 48 * 1024;

std::string planLaunchV2(DrDwConvProblem const& q, int32_t elementBytes, int32_t smCount, DrDwLaunchPlanV2& plan)
{
    DrDwLaunchPlan v1{};
    if (planLaunch(q, elementBytes, 0, v1) == "invalid problem")
    {
        return "invalid problem";
    }
    // Register blocking along x where rows are wide; lanes along x sized so a warp covers the map's width (small
    // maps: 7 lanes x 1 pixel for 7x7, 7 x 2 for 14x14, instead of half-empty 32-pixel rows).
    int32_t rx = q.outW >= 32 ? 4 : (q.outW >= 12 ? 2 : 1);
    int32_t const maxLanesX = rx == 4 ? 8 : (rx == 2 ? 16 : 32);
    int32_t lanesX = std::min((q.outW + rx - 1) / rx, maxLanesX);
    int32_t const rowsPerPass = 32 / lanesX;
    int32_t passes = std::min(kV2MaxAccumulators / rx, (q.outH + rowsPerPass - 1) / rowsPerPass);
    auto stageElements = [&](int32_t p, int32_t r, int32_t lx) {
        int64_t const ih = tileInputExtent((32 / lx) * p, q.kernelH, q.strideH, q.dilationH);
        int64_t const iw = tileInputExtent(lx * r, q.kernelW, q.strideW, q.dilationW);
        int64_t const align = 16 / elementBytes;
        return (ih * iw + align - 1) / align * align;
    };
    auto sharedFor = [&](int32_t p, int32_t r, int32_t lx) {
        return static_cast<int64_t>(kV2Warps) * 2 * stageElements(p, r, lx) * elementBytes;
    };
    while (sharedFor(passes, rx, lanesX) > kV2SharedBudgetBytes)
    {
        if (passes > 1)
        {
            --passes;
        }
        else if (rx > 1)
        {
            rx /= 2;
        }
        else
        {
            return "kernel version 2: a staged tile of one row exceeds 48 KB of shared memory (huge dilation)";
        }
    }
    plan.rx = rx;
    plan.lanesX = lanesX;
    plan.passes = passes;
    plan.tileW = lanesX * rx;
    plan.tileH = (32 / lanesX) * passes;
    plan.inTileH = tileInputExtent(plan.tileH, q.kernelH, q.strideH, q.dilationH);
    plan.inTileW = tileInputExtent(plan.tileW, q.kernelW, q.strideW, q.dilationW);
    plan.stageStride = static_cast<int32_t>(stageElements(passes, rx, lanesX));
    plan.tilesH = (q.outH + plan.tileH - 1) / plan.tileH;
    plan.tilesW = (q.outW + plan.tileW - 1) / plan.tileW;
    int64_t const cOut = static_cast<int64_t>(q.channels) * q.depthMultiplier;
    int64_t const spatial = static_cast<int64_t>(plan.tilesH) * plan.tilesW;
    // 4 channels per warp, fewer when the grid would leave SMs idle (batch 1, late 7x7 layers).
    plan.channelsPerWarp = 4;
    auto blocks = [&](int32_t cpw) { return spatial * ((cOut + kV2Warps * cpw - 1) / (kV2Warps * cpw)) * q.batch; };
    while (smCount > 0 && plan.channelsPerWarp > 1 && blocks(plan.channelsPerWarp) < 4LL * smCount)
    {
        plan.channelsPerWarp /= 2;
    }
    int64_t const gridY = (cOut + kV2Warps * plan.channelsPerWarp - 1) / (kV2Warps * plan.channelsPerWarp);
    if (spatial > std::numeric_limits<int32_t>::max() || gridY > kMaxGridYZ || q.batch > kMaxGridYZ)
    {
        return "problem exceeds CUDA grid limits (channel groups <= 65535, batch <= 65535)";
    }
    plan.threads = 32 * kV2Warps;
    plan.gridX = static_cast<int32_t>(spatial);
    plan.gridY = static_cast<int32_t>(gridY);
    plan.gridZ = q.batch;
    plan.sharedBytes = sharedFor(passes, rx, lanesX);
    return "";
}

ChannelTaps decodeChannelTaps(Params const& p)
{
    ChannelTaps taps;
    int32_t const cOut = p.outChannels();
    int32_t const perChannel = p.kernelH * p.kernelW;
    std::vector<int32_t> const offsets = subgemmOffsets(p);
    std::vector<std::vector<std::pair<int32_t, float>>> byChannel(static_cast<size_t>(cOut));
    for (size_t g = 0; g < p.keptCounts.size(); ++g)
    {
        for (int32_t t = offsets[g]; t < offsets[g] + p.keptCounts[g]; ++t) // kept entries only, no padding
        {
            int32_t const flat = p.tapIndices[static_cast<size_t>(t)];
            int32_t const within = flat % perChannel;
            byChannel[static_cast<size_t>(flat / perChannel)].emplace_back(
                (within / p.kernelW) << 8 | (within % p.kernelW), p.tapValues[static_cast<size_t>(t)]);
        }
    }
    taps.offsets.assign(static_cast<size_t>(cOut) + 1, 0);
    for (int32_t o = 0; o < cOut; ++o)
    {
        for (auto const& [code, value] : byChannel[static_cast<size_t>(o)])
        {
            taps.codes.push_back(code);
            taps.values.push_back(value);
        }
        taps.offsets[static_cast<size_t>(o) + 1] = static_cast<int32_t>(taps.codes.size());
    }
    return taps;
}

std::vector<FieldView> serializeFields(Params const& p, std::vector<int32_t>& scratch, std::string& activation)
{
    scratch = {p.kernelH, p.kernelW, p.strideH, p.strideW, p.padTop, p.padLeft, p.padBottom, p.padRight, p.dilationH,
        p.dilationW};
    activation = activationName(p.activation);
    int32_t const* s = scratch.data();
    auto count = [](auto const& v) { return static_cast<int32_t>(v.size()); };
    std::vector<FieldView> fields{
        {"channels", &p.channels, FieldType::kINT32, 1},
        {"depth_multiplier", &p.depthMultiplier, FieldType::kINT32, 1},
        {"kernel_shape", s, FieldType::kINT32, 2},
        {"strides", s + 2, FieldType::kINT32, 2},
        {"pads", s + 4, FieldType::kINT32, 4},
        {"dilations", s + 8, FieldType::kINT32, 2},
        {"subgemm_channels", &p.subgemmChannels, FieldType::kINT32, 1},
        {"k_tile", &p.kTile, FieldType::kINT32, 1},
        {"activation", activation.c_str(), FieldType::kCHAR, static_cast<int32_t>(activation.size() + 1)},
        {"activation_params", p.activationParams.data(), FieldType::kFLOAT32, count(p.activationParams)},
        {"kept_counts", p.keptCounts.data(), FieldType::kINT32, count(p.keptCounts)},
        {"tap_indices", p.tapIndices.data(), FieldType::kINT32, count(p.tapIndices)},
        {"tap_values", p.tapValues.data(), FieldType::kFLOAT32, count(p.tapValues)},
        {"bias", p.bias.data(), FieldType::kFLOAT32, count(p.bias)},
    };
    if (p.activationParams.empty())
    {
        // Like the ONNX writer: the default [] is left out, so no zero-length field (and null data pointer) ever
        // reaches TensorRT's engine serializer; parseFields applies the default on the way back.
        fields.erase(std::find_if(fields.begin(), fields.end(),
            [](FieldView const& f) { return f.name == "activation_params"; }));
    }
    return fields;
}

float halfBitsToFloat(uint16_t bits)
{
    uint32_t const sign = static_cast<uint32_t>(bits & 0x8000U) << 16;
    uint32_t exponent = (bits >> 10) & 0x1FU;
    uint32_t mantissa = bits & 0x3FFU;
    uint32_t out = 0;
    if (exponent == 0x1FU)
    {
        out = sign | 0x7F800000U | (mantissa << 13); // inf / nan
    }
    else if (exponent != 0)
    {
        out = sign | ((exponent + 112U) << 23) | (mantissa << 13);
    }
    else if (mantissa == 0)
    {
        out = sign; // signed zero
    }
    else
    {
        // Subnormal half: normalise the mantissa.
        exponent = 113U;
        while ((mantissa & 0x400U) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        out = sign | (exponent << 23) | ((mantissa & 0x3FFU) << 13);
    }
    float f = 0.0F;
    std::memcpy(&f, &out, sizeof(f));
    return f;
}

float bf16BitsToFloat(uint16_t bits)
{
    uint32_t const out = static_cast<uint32_t>(bits) << 16;
    float f = 0.0F;
    std::memcpy(&f, &out, sizeof(f));
    return f;
}

} // namespace drdw
} // namespace deprune

extern "C" DRDW_API int32_t drdwAbiVersion(void)
{
    return DRDW_ABI_VERSION;
}

extern "C" DRDW_API int32_t drdwPlanLaunch(
    DrDwConvProblem const* problem, int32_t elementBytes, int32_t smCount, DrDwLaunchPlan* plan)
{
    if (problem == nullptr || plan == nullptr)
    {
        return DRDW_ERR_NULL_POINTER;
    }
    std::string const err = deprune::drdw::planLaunch(*problem, elementBytes, smCount, *plan);
    if (err.empty())
    {
        return DRDW_OK;
    }
    return err == "invalid problem" ? DRDW_ERR_BAD_PROBLEM : DRDW_ERR_NO_PLAN;
}
