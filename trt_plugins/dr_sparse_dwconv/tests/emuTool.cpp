/*
 * drdw_emu_tool: the kernels' real device code run on the CPU (tests/cudaOnCpu.h), driven from the Python tests
 * and from bench/gpu/emulated_traffic.py.
 *
 *   drdw_emu_tool FIELDS X N H W DTYPE SMS VARIANT Y
 *   drdw_emu_tool half IN OUT      float32 values -> the software __half's bits (uint16), to test the rounding
 *
 * FIELDS is a plugin field file (fieldFile.h); X holds N*C*H*W float32 (DTYPE float32) or IEEE half bits (float16);
 * SMS is the SM count the launch plan assumes (0 = unknown); VARIANT is the kernel version (1 or 2). The tool does what
 * the plugin does at creation and enqueue: parseAndValidate, subgemmOffsets (and, for version 2, decodeChannelTaps),
 * tap values and bias widened to float32, planLaunch / planLaunchV2 with the same arguments as drdwEnqueueVersion's
 * launch glue (version 2 falls back to version 1 when no plan fits), then the launch, block by block. Y (written
 * raw, same element type as X) starts as NaN, so an output element nothing wrote stays NaN. stdout: one JSON
 * object with the plan and the global memory traffic per buffer (cudaOnCpu.h says how requests are grouped).
 * Exit code 2 and one stderr line on bad input, 3 when the emulation detects an error (out-of-bounds access,
 * deadlock).
 */
#include "cudaOnCpu.h"

#include "../drSparseDwConvCore.h"
#include "../drSparseDwConvDeviceV1.cuh"
#include "../drSparseDwConvDeviceV2.cuh"
#include "fieldFile.h"

#include <fstream>
#include <limits>

using namespace deprune::drdw;

namespace
{

int fail(std::string const& message)
{
    std::fprintf(stderr, "drdw_emu_tool: %s\n", message.c_str());
    return 2;
}

template <typename T>
std::vector<T> readRaw(std::string const& path, size_t count, std::string& error)
{
    std::vector<T> data(count);
    std::ifstream in(path, std::ios::binary);
    if (!in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(T))))
    {
        error = path + ": expected " + std::to_string(count * sizeof(T)) + " bytes";
    }
    return data;
}

void printTraffic(cudaemu::Recorder const& recorder)
{
    std::printf("\"traffic\": {");
    for (size_t i = 0; i < recorder.buffers.size(); ++i)
    {
        std::printf("%s\"%s\": {", i ? ", " : "", recorder.buffers[i].name.c_str());
        for (int store = 0; store < 2; ++store)
        {
            cudaemu::Traffic const& t = store ? recorder.stores[i] : recorder.loads[i];
            std::printf("%s\"%s\": {\"requests\": %llu, \"bytes\": %llu, \"sectors\": %llu, \"block_sectors\": %llu, "
                        "\"unique_sectors\": %zu, \"max_request_bytes\": %llu}",
                store ? ", " : "", store ? "stores" : "loads", static_cast<unsigned long long>(t.requests),
                static_cast<unsigned long long>(t.bytes), static_cast<unsigned long long>(t.sectors),
                static_cast<unsigned long long>(t.blockSectors), t.uniqueSectors.size(),
                static_cast<unsigned long long>(t.maxRequestBytesPerWarp));
        }
        std::printf("}");
    }
    std::printf("}");
}

template <typename T>
int run(Params const& params, DrDwConvProblem const& problem, std::vector<T> const& x, int32_t sms, int32_t variant,
    std::string const& yPath, T nan)
{
    std::vector<int32_t> const offsets = subgemmOffsets(params);
    ChannelTaps const channelTaps = decodeChannelTaps(params);
    DrDwLaunchPlan plan{};
    DrDwLaunchPlanV2 planV2{};
    if (variant == 2 && !planLaunchV2(problem, static_cast<int32_t>(sizeof(T)), sms, planV2).empty())
    {
        variant = 1; // the launch glue's fallback
    }
    if (variant == 1)
    {
        std::string const error = planLaunch(problem, static_cast<int32_t>(sizeof(T)), sms, plan);
        if (!error.empty())
        {
            return fail("no launch plan: " + error);
        }
    }
    size_t const outCount = static_cast<size_t>(problem.batch) * static_cast<size_t>(params.outChannels())
        * static_cast<size_t>(problem.outH) * static_cast<size_t>(problem.outW);
    std::vector<T> y(outCount, nan);
    DrDwConvWeights const weights{offsets.data(), params.tapIndices.data(), params.tapValues.data(),
        params.bias.data(), channelTaps.offsets.data(), channelTaps.codes.data(), channelTaps.values.data()};

    cudaemu::Recorder recorder;
    recorder.registerBuffer(x.data(), x.size() * sizeof(T), "x");
    recorder.registerBuffer(y.data(), y.size() * sizeof(T), "y");
    recorder.registerBuffer(offsets.data(), offsets.size() * sizeof(int32_t), "subgemm_offsets");
    recorder.registerBuffer(params.tapIndices.data(), params.tapIndices.size() * sizeof(int32_t), "tap_indices");
    recorder.registerBuffer(params.tapValues.data(), params.tapValues.size() * sizeof(float), "tap_values");
    recorder.registerBuffer(params.bias.data(), params.bias.size() * sizeof(float), "bias");
    recorder.registerBuffer(channelTaps.offsets.data(), channelTaps.offsets.size() * sizeof(int32_t),
        "channel_tap_offsets");
    recorder.registerBuffer(channelTaps.codes.data(), channelTaps.codes.size() * sizeof(int32_t), "channel_tap_codes");
    recorder.registerBuffer(channelTaps.values.data(), channelTaps.values.size() * sizeof(float), "channel_tap_values");
    cudaemu::emulator().recorder = &recorder;

    if (variant == 1)
    {
        dim3 const grid(static_cast<unsigned>(plan.gridX), static_cast<unsigned>(plan.gridY),
            static_cast<unsigned>(plan.gridZ));
        cudaemu::launch(grid, dim3(static_cast<unsigned>(plan.threads)), static_cast<size_t>(plan.sharedBytes),
            drSparseDwConvKernelV1<T>, problem, plan, weights, x.data(), y.data());
    }
    else
    {
        dim3 const grid(static_cast<unsigned>(planV2.gridX), static_cast<unsigned>(planV2.gridY),
            static_cast<unsigned>(planV2.gridZ));
        dim3 const block(static_cast<unsigned>(planV2.threads));
        auto const shared = static_cast<size_t>(planV2.sharedBytes);
        switch (planV2.rx)
        {
        case 4: cudaemu::launch(grid, block, shared, v2::drSparseDwConvKernelV2<T, 4>, problem, planV2, weights,
            x.data(), y.data()); break;
        case 2: cudaemu::launch(grid, block, shared, v2::drSparseDwConvKernelV2<T, 2>, problem, planV2, weights,
            x.data(), y.data()); break;
        default: cudaemu::launch(grid, block, shared, v2::drSparseDwConvKernelV2<T, 1>, problem, planV2, weights,
            x.data(), y.data()); break;
        }
    }
    cudaemu::emulator().recorder = nullptr;

    std::ofstream out(yPath, std::ios::binary);
    if (!out.write(reinterpret_cast<char const*>(y.data()), static_cast<std::streamsize>(y.size() * sizeof(T))))
    {
        return fail(yPath + ": cannot write");
    }
    if (variant == 1)
    {
        std::printf("{\"variant\": 1, \"plan\": {\"tile\": [%d, %d], \"in_tile\": [%d, %d], "
                    "\"channels_per_block\": %d, \"threads\": %d, \"grid\": [%d, %d, %d], \"shared_bytes\": %lld}, ",
            plan.tileH, plan.tileW, plan.inTileH, plan.inTileW, plan.channelsPerBlock, plan.threads, plan.gridX,
            plan.gridY, plan.gridZ, static_cast<long long>(plan.sharedBytes));
    }
    else
    {
        std::printf("{\"variant\": 2, \"plan\": {\"tile\": [%d, %d], \"in_tile\": [%d, %d], \"rx\": %d, "
                    "\"lanes_x\": %d, \"passes\": %d, \"channels_per_warp\": %d, \"threads\": %d, "
                    "\"grid\": [%d, %d, %d], \"shared_bytes\": %lld}, ",
            planV2.tileH, planV2.tileW, planV2.inTileH, planV2.inTileW, planV2.rx, planV2.lanesX, planV2.passes,
            planV2.channelsPerWarp, planV2.threads, planV2.gridX, planV2.gridY, planV2.gridZ,
            static_cast<long long>(planV2.sharedBytes));
    }
    printTraffic(recorder);
    std::printf("}\n");
    return 0;
}

} // namespace

int halfRoundTrip(char const* inPath, char const* outPath)
{
    std::ifstream in(inPath, std::ios::binary | std::ios::ate);
    std::vector<float> values(static_cast<size_t>(in.tellg()) / sizeof(float));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i)
    {
        __half const h = __float2half_rn(values[i]);
        float const back = __half2float(h);
        __half const again = __float2half_rn(back); // half -> float -> half must be the identity (NaN aside)
        if (again.bits != h.bits && back == back)
        {
            return fail("half -> float -> half changed " + std::to_string(h.bits));
        }
        bits[i] = h.bits;
    }
    std::ofstream out(outPath, std::ios::binary);
    out.write(reinterpret_cast<char const*>(bits.data()), static_cast<std::streamsize>(bits.size() * 2));
    return out ? 0 : fail(std::string(outPath) + ": cannot write");
}

int main(int argc, char** argv)
{
    if (argc == 4 && std::string(argv[1]) == "half")
    {
        return halfRoundTrip(argv[2], argv[3]);
    }
    if (argc != 10)
    {
        return fail("usage: drdw_emu_tool FIELDS X N H W DTYPE SMS VARIANT Y");
    }
    FieldFile file;
    std::string error = readFieldFile(argv[1], file);
    Params params;
    if (error.empty())
    {
        error = parseAndValidate(file.fields, params);
    }
    if (!error.empty())
    {
        return fail(error);
    }
    int32_t const n = std::atoi(argv[3]), h = std::atoi(argv[4]), w = std::atoi(argv[5]);
    std::string const dtype = argv[6];
    int32_t const sms = std::atoi(argv[7]);
    int32_t const variant = std::atoi(argv[8]);
    if (variant != 1 && variant != 2)
    {
        return fail(std::string("unknown kernel variant ") + argv[8]);
    }
    OutputShape shape{};
    if (n < 1 || h < 1 || w < 1)
    {
        return fail("N, H and W must be >= 1");
    }
    error = outputShape(params, h, w, shape);
    if (!error.empty())
    {
        return fail(error);
    }
    DrDwConvProblem const problem = makeProblem(params, n, h, w);
    size_t const inCount = static_cast<size_t>(n) * static_cast<size_t>(params.channels) * static_cast<size_t>(h)
        * static_cast<size_t>(w);
    if (dtype == "float32")
    {
        std::vector<float> const x = readRaw<float>(argv[2], inCount, error);
        return error.empty()
            ? run<float>(params, problem, x, sms, variant, argv[9], std::numeric_limits<float>::quiet_NaN())
            : fail(error);
    }
    if (dtype == "float16")
    {
        std::vector<__half> const x = readRaw<__half>(argv[2], inCount, error);
        return error.empty() ? run<__half>(params, problem, x, sms, variant, argv[9], __half{0x7E00}) : fail(error);
    }
    return fail("DTYPE must be float32 or float16, got " + dtype);
}
