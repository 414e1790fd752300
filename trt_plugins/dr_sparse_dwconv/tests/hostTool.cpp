/*
 * drdw_host_tool: the host core and the kernel's index arithmetic, driven from the Python tests.
 *
 *   drdw_host_tool shape FIELDS N H W            parse+validate, print "output N C Ho Wo", workspace and plan
 *   drdw_host_tool conv FIELDS X N H W Y SMS     run the kernel's algorithm on the host (float32), write Y
 *   drdw_host_tool reserialize FIELDS OUT        parse, serializeFields, write them back as a field file
 *   drdw_host_tool spec                          print the plugin's identity, field names and defaults as JSON
 *
 * `conv` is a block-by-block emulation of drSparseDwConvKernel.cu built from the same launch plan and the same
 * __host__ __device__ functions (drSparseDwConvIndex.h): the tap scan, the staged tile with its halo, the K-tile
 * stream with its per-channel ranges and the epilogue. Staged tiles of channels the kernel must not read are
 * filled with NaN and Y starts as NaN, so a read of a skipped channel or a missing write shows up in the numpy
 * comparison. Exit code 2 and one stderr line on any error.
 */
#include "../drSparseDwConvCore.h"
#include "../drSparseDwConvIndex.h"
#include "fieldFile.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

using namespace deprune::drdw;

namespace
{

int fail(std::string const& message)
{
    std::fprintf(stderr, "drdw_host_tool: %s\n", message.c_str());
    return 2;
}

int32_t toInt(char const* text)
{
    return static_cast<int32_t>(std::strtol(text, nullptr, 10));
}

// One thread block of the kernel, sequentially. Mirrors drSparseDwConvKernel step by step.
void emulateBlock(DrDwConvProblem const& p, DrDwLaunchPlan const& plan, std::vector<int32_t> const& offsets,
    Params const& params, std::vector<float> const& x, std::vector<float>& y, int32_t bx, int32_t by, int32_t bz)
{
    constexpr int32_t kTapTile = 32;
    float const nan = std::numeric_limits<float>::quiet_NaN();
    int32_t const cOut = p.channels * p.depthMultiplier;
    int32_t const g = by / plan.slicesPerSubgemm;
    int32_t const slice = by - g * plan.slicesPerSubgemm;
    int32_t const groupEnd = std::min((g + 1) * p.subgemmChannels, cOut);
    int32_t const oc0 = g * p.subgemmChannels + slice * plan.channelsPerBlock;
    if (oc0 >= groupEnd)
    {
        return;
    }
    int32_t const cb = std::min(plan.channelsPerBlock, groupEnd - oc0);
    int32_t const n = bz;
    int32_t const tileY = bx / plan.tilesW;
    int32_t const oy0 = tileY * plan.tileH;
    int32_t const ox0 = (bx - tileY * plan.tilesW) * plan.tileW;
    int32_t const ic0 = inputChannelOf(oc0, p.depthMultiplier);
    int32_t const numIn = inputChannelOf(oc0 + cb - 1, p.depthMultiplier) - ic0 + 1;
    if (numIn > plan.inChannelsPerBlock)
    {
        std::fprintf(stderr, "plan stages %d input channels, block needs %d\n", plan.inChannelsPerBlock, numIn);
        std::exit(3);
    }

    // 1. scan
    std::vector<int32_t> hasTaps(32, 0);
    std::vector<int32_t> inNeeded(32, 0);
    int32_t rangeBegin = INT_MAX;
    int32_t rangeEnd = 0;
    for (int32_t t = offsets[static_cast<size_t>(g)]; t < offsets[static_cast<size_t>(g) + 1]; ++t)
    {
        int32_t const local = decodeTap(params.tapIndices[static_cast<size_t>(t)], p.kernelH, p.kernelW).outChannel - oc0;
        if (local >= 0 && local < cb)
        {
            hasTaps[static_cast<size_t>(local)] = 1;
            rangeBegin = std::min(rangeBegin, t);
            rangeEnd = std::max(rangeEnd, t + 1);
        }
    }
    for (int32_t c = 0; c < cb; ++c)
    {
        if (hasTaps[static_cast<size_t>(c)])
        {
            inNeeded[static_cast<size_t>(inputChannelOf(oc0 + c, p.depthMultiplier) - ic0)] = 1;
        }
    }

    // 2. stage
    int32_t const iy0 = tileInputOrigin(oy0, p.strideH, p.padTop);
    int32_t const ix0 = tileInputOrigin(ox0, p.strideW, p.padLeft);
    int32_t const plane = plan.inTileH * plan.inTileW;
    std::vector<float> tile(static_cast<size_t>(plan.inChannelsPerBlock) * plane, nan);
    for (int32_t li = 0; li < numIn; ++li)
    {
        if (!inNeeded[static_cast<size_t>(li)])
        {
            continue;
        }
        size_t const src = (static_cast<size_t>(n) * p.channels + ic0 + li) * p.inH * p.inW;
        for (int32_t e = 0; e < plane; ++e)
        {
            int32_t const ry = e / plan.inTileW;
            int32_t const iy = iy0 + ry;
            int32_t const ix = ix0 + (e - ry * plan.inTileW);
            tile[static_cast<size_t>(li * plane + e)] = (inBounds(iy, p.inH) && inBounds(ix, p.inW))
                ? x[src + static_cast<size_t>(iy) * p.inW + ix]
                : 0.0F;
        }
    }

    // 3. K-tile stream; acc[channel][pixel] over the whole tile (the kernel splits it across warps and lanes).
    int32_t const tilePixels = plan.tileH * plan.tileW;
    std::vector<float> acc(static_cast<size_t>(cb) * tilePixels, 0.0F);
    for (int32_t k0 = rangeBegin; k0 < rangeEnd; k0 += kTapTile)
    {
        int32_t code[kTapTile];
        float weight[kTapTile];
        int32_t lo[32] = {};
        int32_t hi[32] = {};
        for (int32_t i = 0; i < kTapTile; ++i)
        {
            int32_t const t = k0 + i;
            code[i] = -1;
            weight[i] = 0.0F;
            if (t < rangeEnd)
            {
                Tap const tap = decodeTap(params.tapIndices[static_cast<size_t>(t)], p.kernelH, p.kernelW);
                code[i] = ((tap.outChannel - oc0) << 16) | (tap.ky << 8) | tap.kx;
                weight[i] = params.tapValues[static_cast<size_t>(t)];
            }
        }
        for (int32_t i = 0; i < kTapTile; ++i)
        {
            int32_t const local = code[i] >> 16;
            if (local >= 0)
            {
                int32_t const prev = i > 0 ? (code[i - 1] >> 16) : -1;
                int32_t const next = i + 1 < kTapTile ? (code[i + 1] >> 16) : -1;
                if (prev != local)
                {
                    lo[local] = i;
                }
                if (next != local)
                {
                    hi[local] = i + 1;
                }
            }
        }
        for (int32_t local = 0; local < cb; ++local)
        {
            float const* src = tile.data() + (inputChannelOf(oc0 + local, p.depthMultiplier) - ic0) * plane;
            for (int32_t k = lo[local]; k < hi[local]; ++k)
            {
                int32_t const shift = tileLocalInputCoord(0, (code[k] >> 8) & 0xFF, p.strideH, p.dilationH) * plan.inTileW
                    + tileLocalInputCoord(0, code[k] & 0xFF, p.strideW, p.dilationW);
                for (int32_t pix = 0; pix < tilePixels; ++pix)
                {
                    int32_t const py = pix / plan.tileW;
                    int32_t const px = pix - py * plan.tileW;
                    if (oy0 + py >= p.outH || ox0 + px >= p.outW)
                    {
                        continue;
                    }
                    int32_t const offset = tileLocalInputCoord(py, 0, p.strideH, p.dilationH) * plan.inTileW
                        + tileLocalInputCoord(px, 0, p.strideW, p.dilationW);
                    acc[static_cast<size_t>(local * tilePixels + pix)]
                        = std::fma(weight[k], src[offset + shift], acc[static_cast<size_t>(local * tilePixels + pix)]);
                }
            }
        }
    }

    // 4. epilogue
    for (int32_t local = 0; local < cb; ++local)
    {
        int32_t const oc = oc0 + local;
        size_t const dst = (static_cast<size_t>(n) * cOut + oc) * p.outH * p.outW;
        for (int32_t pix = 0; pix < tilePixels; ++pix)
        {
            int32_t const py = pix / plan.tileW;
            int32_t const px = pix - py * plan.tileW;
            if (oy0 + py < p.outH && ox0 + px < p.outW)
            {
                y[dst + static_cast<size_t>(oy0 + py) * p.outW + ox0 + px] = applyActivation(
                    acc[static_cast<size_t>(local * tilePixels + pix)] + params.bias[static_cast<size_t>(oc)],
                    p.activation, p.actAlpha, p.actBeta);
            }
        }
    }
}

int runConv(Params const& params, char** argv)
{
    std::string const xPath = argv[0];
    int32_t const n = toInt(argv[1]);
    int32_t const h = toInt(argv[2]);
    int32_t const w = toInt(argv[3]);
    std::string const yPath = argv[4];
    int32_t const sms = toInt(argv[5]);
    OutputShape shape{};
    std::string err = outputShape(params, h, w, shape);
    if (!err.empty())
    {
        return fail(err);
    }
    DrDwConvProblem const problem = makeProblem(params, n, h, w);
    DrDwLaunchPlan plan{};
    err = planLaunch(problem, 4, sms, plan);
    if (!err.empty())
    {
        return fail(err);
    }
    std::vector<float> x(static_cast<size_t>(n) * params.channels * h * w);
    std::ifstream xin(xPath, std::ios::binary);
    if (!xin.read(reinterpret_cast<char*>(x.data()), static_cast<std::streamsize>(x.size() * sizeof(float))))
    {
        return fail(xPath + ": expected " + std::to_string(x.size()) + " float32 values");
    }
    std::vector<float> y(static_cast<size_t>(n) * shape.channels * shape.height * shape.width,
        std::numeric_limits<float>::quiet_NaN());
    std::vector<int32_t> const offsets = subgemmOffsets(params);
    for (int32_t bz = 0; bz < plan.gridZ; ++bz)
    {
        for (int32_t by = 0; by < plan.gridY; ++by)
        {
            for (int32_t bx = 0; bx < plan.gridX; ++bx)
            {
                emulateBlock(problem, plan, offsets, params, x, y, bx, by, bz);
            }
        }
    }
    std::ofstream yout(yPath, std::ios::binary);
    yout.write(reinterpret_cast<char const*>(y.data()), static_cast<std::streamsize>(y.size() * sizeof(float)));
    std::printf("plan tile=%dx%d channels_per_block=%d slices=%d grid=%dx%dx%d shared=%lld\n", plan.tileH, plan.tileW,
        plan.channelsPerBlock, plan.slicesPerSubgemm, plan.gridX, plan.gridY, plan.gridZ,
        static_cast<long long>(plan.sharedBytes));
    return yout ? 0 : fail(yPath + ": write failed");
}

int runReserialize(Params const& params, std::string const& outPath)
{
    std::vector<int32_t> scratch;
    std::string activation;
    std::vector<FieldView> const views = serializeFields(params, scratch, activation);
    std::ofstream out(outPath, std::ios::binary);
    out.write("DRDWFLD1", 8);
    uint32_t const count = static_cast<uint32_t>(views.size());
    out.write(reinterpret_cast<char const*>(&count), sizeof(count));
    for (FieldView const& v : views)
    {
        uint32_t const nameBytes = static_cast<uint32_t>(v.name.size());
        int32_t const type = static_cast<int32_t>(v.type);
        uint64_t const elementBytes = v.type == FieldType::kCHAR ? 1 : 4; // serializeFields emits INT32/FLOAT32/CHAR
        uint64_t const dataBytes = elementBytes * static_cast<uint64_t>(v.length);
        out.write(reinterpret_cast<char const*>(&nameBytes), sizeof(nameBytes));
        out.write(v.name.data(), nameBytes);
        out.write(reinterpret_cast<char const*>(&type), sizeof(type));
        out.write(reinterpret_cast<char const*>(&v.length), sizeof(v.length));
        out.write(reinterpret_cast<char const*>(&dataBytes), sizeof(dataBytes));
        out.write(static_cast<char const*>(v.data), static_cast<std::streamsize>(dataBytes));
    }
    return out ? 0 : fail(outPath + ": write failed");
}

// What the C++ side believes the spec says: the plugin identity, the creator's field names and the defaults of a
// default-constructed Params (the values parseFields applies to absent optional fields). tests/test_plugin_host.py
// compares this JSON with DRSparseDepthwiseConv_PluginConfig.yaml.
int printSpec()
{
    Params const d{};
    auto ints = [](std::initializer_list<int32_t> values) {
        std::string out = "[";
        for (int32_t v : values)
        {
            out += (out.size() > 1 ? ", " : "") + std::to_string(v);
        }
        return out + "]";
    };
    std::printf("{\"name\": \"%s\", \"version\": \"%s\", \"namespace\": \"%s\", \"max_kernel\": %d,\n", kPluginName,
        kPluginVersion, kPluginNamespace, kMaxKernel);
    std::string names;
    for (std::string const& name : fieldNames())
    {
        names += (names.empty() ? "\"" : ", \"") + name + "\"";
    }
    std::printf(" \"fields\": [%s],\n", names.c_str());
    std::string activations;
    for (int32_t a = 0; *activationName(a) != '\0'; ++a)
    {
        activations += (activations.empty() ? "\"" : ", \"") + std::string(activationName(a)) + "\"";
    }
    std::printf(" \"activations\": [%s],\n", activations.c_str());
    std::string floats;
    for (float v : d.activationParams)
    {
        char text[32];
        std::snprintf(text, sizeof(text), "%.9g", static_cast<double>(v));
        floats += (floats.empty() ? "" : ", ") + std::string(text);
    }
    std::printf(" \"defaults\": {\"depth_multiplier\": %d, \"strides\": %s, \"pads\": %s, \"dilations\": %s, "
                "\"subgemm_channels\": %d, \"k_tile\": %d, \"activation\": \"%s\", \"activation_params\": [%s]}}\n",
        d.depthMultiplier, ints({d.strideH, d.strideW}).c_str(),
        ints({d.padTop, d.padLeft, d.padBottom, d.padRight}).c_str(), ints({d.dilationH, d.dilationW}).c_str(),
        d.subgemmChannels, d.kTile, activationName(d.activation), floats.c_str());
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 2 && std::string(argv[1]) == "spec")
    {
        return printSpec();
    }
    if (argc < 3)
    {
        return fail("usage: drdw_host_tool shape|conv|reserialize FIELDS ... | spec");
    }
    std::string const command = argv[1];
    FieldFile file;
    std::string err = readFieldFile(argv[2], file);
    Params params;
    if (err.empty())
    {
        err = parseAndValidate(file.fields, params);
    }
    if (!err.empty())
    {
        return fail(err);
    }
    if (command == "shape" && argc == 6)
    {
        OutputShape shape{};
        int32_t const n = toInt(argv[3]);
        int32_t const h = toInt(argv[4]);
        int32_t const w = toInt(argv[5]);
        err = outputShape(params, h, w, shape);
        if (!err.empty())
        {
            return fail(err);
        }
        std::printf("output %d %d %d %d\n", n, shape.channels, shape.height, shape.width);
        std::printf("workspace %zu\n", workspaceBytes(params, n, h, w));
        std::printf("subgemms %d taps %d\n", params.subgemmCount(), subgemmOffsets(params).back());
        return 0;
    }
    if (command == "conv" && argc == 9)
    {
        return runConv(params, argv + 3);
    }
    if (command == "reserialize" && argc == 4)
    {
        return runReserialize(params, argv[3]);
    }
    return fail("bad arguments for '" + command + "'");
}
