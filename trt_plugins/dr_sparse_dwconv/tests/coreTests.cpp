/*
 * Unit tests of the host core (g++ only, no CUDA, no TensorRT). Run by ctest and by tests/test_plugin_host.py.
 * Each check prints what failed; the exit code is the number of failures.
 */
#include "../drSparseDwConvCore.h"
#include "../drSparseDwConvIndex.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

using namespace deprune::drdw;

namespace
{

int gFailures = 0;

void check(bool ok, std::string const& what)
{
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

void checkError(std::string const& err, std::string const& needle, std::string const& what)
{
    check(err.find(needle) != std::string::npos, what + " (error was '" + err + "', expected '" + needle + "')");
}

// A small packed layer built the way deprune_onnx/op/packing.py does: keep(o, tap) decides the kept taps.
struct Layer
{
    int32_t channels = 40;
    int32_t kernel[2] = {3, 3};
    int32_t strides[2] = {2, 1};
    int32_t pads[4] = {1, 0, 2, 1};
    int32_t dilations[2] = {1, 2};
    int32_t subgemm = 32;
    int32_t tile = 32;
    std::string activation = "clip";
    std::vector<float> actParams{0.0F, 6.0F};
    std::vector<int32_t> counts, indices;
    std::vector<float> values, bias;

    explicit Layer(std::function<bool(int32_t, int32_t)> const& keep)
    {
        int32_t const taps = kernel[0] * kernel[1];
        int32_t const groups = (channels + subgemm - 1) / subgemm;
        for (int32_t g = 0; g < groups; ++g)
        {
            std::vector<int32_t> kept;
            for (int32_t o = g * subgemm; o < std::min(channels, (g + 1) * subgemm); ++o)
            {
                for (int32_t t = 0; t < taps; ++t)
                {
                    if (keep(o, t))
                    {
                        kept.push_back(o * taps + t);
                    }
                }
            }
            counts.push_back(static_cast<int32_t>(kept.size()));
            size_t const padded = (kept.size() + tile - 1) / tile * tile;
            for (size_t i = 0; i < padded; ++i)
            {
                indices.push_back(i < kept.size() ? kept[i] : kept.back());
                values.push_back(i < kept.size() ? 0.5F + static_cast<float>(kept[i] % 7) : 0.0F);
            }
        }
        for (int32_t o = 0; o < channels; ++o)
        {
            bias.push_back(0.1F * static_cast<float>(o));
        }
    }

    std::vector<FieldView> fields() const
    {
        return {
            {"channels", &channels, FieldType::kINT32, 1},
            {"kernel_shape", kernel, FieldType::kINT32, 2},
            {"strides", strides, FieldType::kINT32, 2},
            {"pads", pads, FieldType::kINT32, 4},
            {"dilations", dilations, FieldType::kINT32, 2},
            {"subgemm_channels", &subgemm, FieldType::kINT32, 1},
            {"k_tile", &tile, FieldType::kINT32, 1},
            {"activation", activation.c_str(), FieldType::kCHAR, static_cast<int32_t>(activation.size() + 1)},
            {"activation_params", actParams.data(), FieldType::kFLOAT32, static_cast<int32_t>(actParams.size())},
            {"kept_counts", counts.data(), FieldType::kINT32, static_cast<int32_t>(counts.size())},
            {"tap_indices", indices.data(), FieldType::kINT32, static_cast<int32_t>(indices.size())},
            {"tap_values", values.data(), FieldType::kFLOAT32, static_cast<int32_t>(values.size())},
            {"bias", bias.data(), FieldType::kFLOAT32, static_cast<int32_t>(bias.size())},
        };
    }
};

bool keepSome(int32_t o, int32_t t)
{
    return o % 5 != 3 && (o * 9 + t) % 3 != 0; // channels 3, 8, ... keep nothing
}

void replace(std::vector<FieldView>& fields, FieldView const& field)
{
    for (FieldView& f : fields)
    {
        if (f.name == field.name)
        {
            f = field;
        }
    }
}

std::vector<FieldView> without(std::vector<FieldView> fields, std::string const& name)
{
    std::vector<FieldView> out;
    for (FieldView const& f : fields)
    {
        if (f.name != name)
        {
            out.push_back(f);
        }
    }
    return out;
}

void testParseValid()
{
    Layer const layer(keepSome);
    Params p;
    std::string const err = parseAndValidate(layer.fields(), p);
    check(err.empty(), "valid layer parses: " + err);
    check(p.channels == 40 && p.depthMultiplier == 1 && p.kernelH == 3 && p.strideH == 2 && p.strideW == 1,
        "scalar fields");
    check(p.padTop == 1 && p.padLeft == 0 && p.padBottom == 2 && p.padRight == 1, "pads in ONNX order");
    check(p.dilationW == 2 && p.activation == kActClip && p.activationParams.size() == 2, "dilation/activation");
    check(p.subgemmCount() == 2 && subgemmOffsets(p).back() == static_cast<int32_t>(layer.indices.size()), "offsets");
}

void testIntegerWidths()
{
    Layer const layer(keepSome);
    std::vector<FieldView> fields = layer.fields();
    int64_t const channels64 = 40;
    int64_t const kernel64[2] = {3, 3};
    std::vector<int64_t> counts64(layer.counts.begin(), layer.counts.end());
    std::string const relu = "relu"; // no terminating NUL this time
    replace(fields, {"channels", &channels64, FieldType::kINT64, 1});
    replace(fields, {"kernel_shape", kernel64, FieldType::kINT64, 2});
    replace(fields, {"kept_counts", counts64.data(), FieldType::kINT64, static_cast<int32_t>(counts64.size())});
    replace(fields, {"activation", relu.data(), FieldType::kCHAR, 4});
    replace(fields, {"activation_params", nullptr, FieldType::kFLOAT32, 0});
    Params p;
    std::string const err = parseAndValidate(fields, p);
    check(err.empty(), "INT64 ints and an unterminated string parse: " + err);
    check(p.channels == 40 && p.kernelW == 3 && p.keptCounts == layer.counts && p.activation == kActRelu,
        "INT64 values equal INT32 values");
    int64_t const huge = int64_t{1} << 40;
    replace(fields, {"channels", &huge, FieldType::kINT64, 1});
    checkError(parseFields(fields, p), "does not fit int32", "INT64 out of int32 range");
}

void testHalfValues()
{
    check(halfBitsToFloat(0x3C00) == 1.0F && halfBitsToFloat(0xC000) == -2.0F, "half 1 and -2");
    check(halfBitsToFloat(0x7BFF) == 65504.0F && halfBitsToFloat(0x0001) == std::ldexp(1.0F, -24), "half max, subnormal");
    check(halfBitsToFloat(0x8000) == 0.0F && std::signbit(halfBitsToFloat(0x8000)), "half -0");
    check(std::isinf(halfBitsToFloat(0x7C00)) && std::isnan(halfBitsToFloat(0x7E00)), "half inf/nan");
    check(bf16BitsToFloat(0x3F80) == 1.0F, "bf16 1");
    Layer const layer(keepSome);
    std::vector<FieldView> fields = layer.fields();
    std::vector<uint16_t> halfValues(layer.values.size(), 0x3800); // 0.5
    for (size_t i = 0; i < layer.values.size(); ++i)
    {
        if (layer.values[i] == 0.0F)
        {
            halfValues[i] = 0;
        }
    }
    replace(fields, {"tap_values", halfValues.data(), FieldType::kFLOAT16, static_cast<int32_t>(halfValues.size())});
    Params p;
    check(parseAndValidate(fields, p).empty() && p.tapValues.front() == 0.5F, "FLOAT16 tap values are widened");
}

void testRejections()
{
    Layer const layer(keepSome);
    Params p;
    checkError(parseAndValidate(without(layer.fields(), "tap_values"), p), "'tap_values': required", "missing field");
    std::vector<FieldView> fields = layer.fields();
    fields.push_back(fields.front());
    checkError(parseAndValidate(fields, p), "given twice", "duplicate field");
    fields = layer.fields();
    fields.push_back({"kernel_size", layer.kernel, FieldType::kINT32, 2});
    checkError(parseAndValidate(fields, p), "unknown field", "typo in a field name");

    auto expectInvalid = [&](std::function<void(Params&)> const& edit, std::string const& needle) {
        Params q;
        check(parseAndValidate(layer.fields(), q).empty(), "baseline parses");
        edit(q);
        checkError(validate(q), needle, "validate: " + needle);
    };
    expectInvalid([](Params& q) { q.kernelH = 16; }, "kernel_shape");
    expectInvalid([](Params& q) { q.strideW = 0; }, "strides and dilations");
    expectInvalid([](Params& q) { q.padLeft = -1; }, "pads");
    expectInvalid([](Params& q) { q.activationParams.clear(); }, "needs 2 activation_params");
    expectInvalid([](Params& q) { q.activationParams = {6.0F, 0.0F}; }, "min <= max");
    expectInvalid([](Params& q) { q.keptCounts.push_back(0); }, "expected G = 2");
    expectInvalid([](Params& q) { q.bias.pop_back(); }, "expected C_out = 40");
    expectInvalid([](Params& q) { q.keptCounts[1] = 8 * 9 + 1; }, "outside 0..72");
    expectInvalid([](Params& q) { q.tapValues.pop_back(); }, "expected sum_g");
    expectInvalid([](Params& q) { std::swap(q.tapIndices[0], q.tapIndices[1]); }, "strictly increasing");
    expectInvalid([](Params& q) { q.tapIndices[0] = 32 * 9; }, "outside the sub-GEMM");
    expectInvalid(
        [](Params& q) {
            size_t const last = static_cast<size_t>(subgemmOffsets(q)[1]) - 1;
            q.tapValues[last] = 1.0F;
        },
        "padding value must be 0");
    expectInvalid(
        [](Params& q) {
            size_t const last = static_cast<size_t>(subgemmOffsets(q)[1]) - 1;
            q.tapIndices[last] -= 1;
        },
        "padding must repeat");
    Layer bad(keepSome);
    bad.activation = "gelu";
    checkError(parseAndValidate(bad.fields(), p), "unknown activation 'gelu'", "unknown activation");
}

void testOutputShape()
{
    Layer const layer(keepSome);
    Params p;
    check(parseAndValidate(layer.fields(), p).empty(), "parse");
    OutputShape s{};
    // H: (11 + 1 + 2 - 1*2 - 1) / 2 + 1 = 6; W: (9 + 0 + 1 - 2*2 - 1) / 1 + 1 = 6
    check(outputShape(p, 11, 9, s).empty() && s.channels == 40 && s.height == 6 && s.width == 6, "asymmetric shape");
    checkError(outputShape(p, 11, 1, s), "output would be empty", "too small input");
    check(workspaceBytes(p, 32, 112, 112) == 0, "no workspace");
}

void testPlan()
{
    DrDwConvProblem q{};
    q.batch = 1;
    q.channels = 960;
    q.depthMultiplier = 1;
    q.inH = q.inW = 7;
    q.outH = q.outW = 7;
    q.kernelH = q.kernelW = 5;
    q.strideH = q.strideW = 1;
    q.dilationH = q.dilationW = 1;
    q.subgemmChannels = 32;
    DrDwLaunchPlan plan{};
    check(planLaunch(q, 2, 132, plan).empty(), "plan for a 7x7 layer");
    check(plan.channelsPerBlock == 8 && plan.slicesPerSubgemm == 4 && plan.gridY == 120, "batch-1 slicing");
    check(plan.tileH * plan.tileW <= 128 && plan.threads == 256, "tile within accumulator capacity");
    check(planLaunch(q, 2, 0, plan).empty() && plan.channelsPerBlock == 32, "no slicing without SM count");
    q.outH = q.outW = 112;
    q.inH = q.inW = 112;
    q.kernelH = q.kernelW = 15;
    q.strideH = q.strideW = 2;
    q.outH = q.outW = outputExtent(112, 15, 2, 1, 7, 7);
    check(planLaunch(q, 4, 0, plan).empty() && plan.sharedBytes <= 40 * 1024, "large kernel fits the budget");
    check(plan.inTileH == tileInputExtent(plan.tileH, 15, 2, 1), "staged extent");
    q.dilationH = q.dilationW = 14;
    q.outH = q.outW = 1;
    q.inH = q.inW = 197;
    checkError(planLaunch(q, 4, 0, plan), "too large", "huge dilation has no plan");
    q.batch = 70000;
    q.dilationH = q.dilationW = 1;
    checkError(planLaunch(q, 4, 0, plan), "grid limits", "batch beyond grid.z");
}

void testSerializeRoundTrip()
{
    Layer const layer(keepSome);
    Params p;
    check(parseAndValidate(layer.fields(), p).empty(), "parse");
    std::vector<int32_t> scratch;
    std::string activation;
    std::vector<FieldView> const views = serializeFields(p, scratch, activation);
    check(views.size() == fieldNames().size(), "every field serialized");
    Params back;
    std::string const err = parseAndValidate(views, back);
    check(err.empty(), "serialized fields parse: " + err);
    check(back.tapIndices == p.tapIndices && back.tapValues == p.tapValues && back.bias == p.bias
            && back.keptCounts == p.keptCounts && back.activation == p.activation
            && back.activationParams == p.activationParams && back.padBottom == p.padBottom
            && back.dilationW == p.dilationW,
        "round trip is exact");

    // An activation without parameters: the empty activation_params field is left out and defaults back to [].
    Layer plain(keepSome);
    plain.activation = "relu";
    plain.actParams.clear();
    Params q;
    check(parseAndValidate(plain.fields(), q).empty(), "parse relu");
    std::vector<FieldView> const plainViews = serializeFields(q, scratch, activation);
    check(plainViews.size() == fieldNames().size() - 1, "empty activation_params not serialized");
    for (FieldView const& view : plainViews)
    {
        check(view.length > 0 && view.data != nullptr, "no empty field serialized: " + view.name);
    }
    Params plainBack;
    check(parseAndValidate(plainViews, plainBack).empty() && plainBack.activationParams.empty()
            && plainBack.activation == q.activation,
        "relu round trip");
}

void testIndexFunctions()
{
    Tap const t = decodeTap(5 * 25 + 3 * 5 + 4, 5, 5);
    check(t.outChannel == 5 && t.ky == 3 && t.kx == 4, "decodeTap");
    Tap const wide = decodeTap(2 * 15 + 1 * 5 + 3, 3, 5); // non-square 3x5: a kh/kw swap gives ky 2, kx 2
    check(wide.outChannel == 2 && wide.ky == 1 && wide.kx == 3, "decodeTap 3x5");
    Tap const tall = decodeTap(7 * 7 + 6, 7, 1); // 7x1: every tap is in column 0
    check(tall.outChannel == 7 && tall.ky == 6 && tall.kx == 0, "decodeTap 7x1");
    check(outputExtent(112, 3, 2, 1, 0, 1) == 56 && outputExtent(2, 5, 1, 1, 0, 0) == 0, "outputExtent");
    check(inputCoord(3, 2, 2, 3, 1) == 3 * 2 - 1 + 2 * 3, "inputCoord");
    check(tileInputOrigin(8, 2, 1) + tileLocalInputCoord(1, 2, 2, 3) == inputCoord(9, 2, 2, 3, 1), "tile coords");
    check(applyActivation(-1.0F, kActRelu, 0, 0) == 0.0F && applyActivation(7.0F, kActClip, 0, 6) == 6.0F, "relu/clip");
    check(applyActivation(3.0F, kActHardSwish, 1.0F / 6, 0.5F) == 3.0F, "hard_swish saturates");
    check(std::fabs(applyActivation(1.0F, kActSilu, 0, 0) - 0.7310586F) < 1e-6F, "silu");
}

} // namespace

int main()
{
    testParseValid();
    testIntegerWidths();
    testHalfValues();
    testRejections();
    testOutputShape();
    testPlan();
    testSerializeRoundTrip();
    testIndexFunctions();
    std::printf("%s: %d failure(s)\n", gFailures == 0 ? "OK" : "FAILED", gFailures);
    return gFailures;
}
