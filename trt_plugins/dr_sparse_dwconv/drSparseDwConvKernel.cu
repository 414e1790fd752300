/*
 * CUDA kernel of DRSparseDepthwiseConv: Y = act(sparse DW conv(X) + bias), NCHW, float32 or float16.
 *
 * Design (the physics): a DW conv is memory-bound on every current GPU, so the goal is the memory floor: every
 * needed input element read from DRAM about once, every output written exactly once, nothing else. Per layer the
 * bytes are N*C_in*H*W*e (only channels with a kept tap) + N*C_out*Ho*Wo*e, the FLOPs 2*N*Ho*Wo*sum_g K_g; e.g.
 * MobileNetV2's 112x112x32 stride-1 layer at batch 32 fp16 moves 51 MB for 0.23 GFLOP, 17 us at 3 TB/s against
 * under 4 us of FMA time on an H100, so compute only matters as latency to hide. bench/gpu/ prints this
 * roofline for every layer next to the measured time (README.md of this folder has the table).
 *
 * One thread block per (sub-GEMM channel slice, output tile, image), the DR sub-GEMM view:
 *   1. scan the sub-GEMM's packed tap indices once: which of the slice's channels keep a tap, and the slice's
 *      contiguous range of packed entries (entries are sorted by channel);
 *   2. stage the input tile (+halo, zero padding) of the input channels that some kept tap reads into shared
 *      memory with coalesced row loads; a channel with no kept tap is never read;
 *   3. stream the kept taps in K-tiles of 32 entries (one warp loads and decodes a tile, whole tiles thanks to the
 *      packer's padding, so BWT balance and HSR tile alignment translate directly into the number of tile steps);
 *      each warp owns whole channels, so all lanes of a warp walk the same taps (no divergence) and each lane
 *      accumulates up to 4 pixels x 4 channels in registers (float32 for both data types);
 *   4. epilogue: bias + fused activation, one coalesced store per output element. Channels with no kept tap write
 *      act(bias) and nothing else.
 * Shared memory layout must match kSharedHeaderBytes in drSparseDwConvCore.cpp.
 */
#include "drSparseDwConvCore.h"
#include "drSparseDwConvDeviceV1.cuh"
#include "drSparseDwConvDeviceV2.cuh"
#include "drSparseDwConvKernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>

namespace deprune
{
namespace drdw
{
namespace
{

// SM count per device, queried once (cudaDeviceGetAttribute is cheap, but enqueue is on the hot path).
std::atomic<int> gSmCount[64];

int smCountOfCurrentDevice()
{
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64)
    {
        return 0;
    }
    int count = gSmCount[device].load(std::memory_order_relaxed);
    if (count == 0 && cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess)
    {
        gSmCount[device].store(count, std::memory_order_relaxed);
    }
    return count;
}

template <typename T>
int32_t launch(DrDwConvProblem const& p, DrDwConvWeights const& w, void const* x, void* y, cudaStream_t stream)
{
    DrDwLaunchPlan plan{};
    if (!planLaunch(p, static_cast<int32_t>(sizeof(T)), smCountOfCurrentDevice(), plan).empty())
    {
        return DRDW_ERR_NO_PLAN;
    }
    dim3 const grid(static_cast<unsigned>(plan.gridX), static_cast<unsigned>(plan.gridY),
        static_cast<unsigned>(plan.gridZ));
    drSparseDwConvKernelV1<T><<<grid, plan.threads, static_cast<size_t>(plan.sharedBytes), stream>>>(
        p, plan, w, static_cast<T const*>(x), static_cast<T*>(y));
    return static_cast<int32_t>(cudaGetLastError());
}

//! Kernel version 2 (drSparseDwConvDeviceV2.cuh); version 1 when no version-2 plan fits.
template <typename T>
int32_t launchV2(DrDwConvProblem const& p, DrDwConvWeights const& w, void const* x, void* y, cudaStream_t stream)
{
    if (w.channelTapOffsets == nullptr || w.channelTapCodes == nullptr || w.channelTapValues == nullptr)
    {
        return DRDW_ERR_NULL_POINTER;
    }
    DrDwLaunchPlanV2 plan{};
    if (!planLaunchV2(p, static_cast<int32_t>(sizeof(T)), smCountOfCurrentDevice(), plan).empty())
    {
        return launch<T>(p, w, x, y, stream);
    }
    dim3 const grid(static_cast<unsigned>(plan.gridX), static_cast<unsigned>(plan.gridY),
        static_cast<unsigned>(plan.gridZ));
    auto const shared = static_cast<size_t>(plan.sharedBytes);
    auto const* in = static_cast<T const*>(x);
    auto* out = static_cast<T*>(y);
    switch (plan.rx)
    {
    case 4: v2::drSparseDwConvKernelV2<T, 4><<<grid, plan.threads, shared, stream>>>(p, plan, w, in, out); break;
    case 2: v2::drSparseDwConvKernelV2<T, 2><<<grid, plan.threads, shared, stream>>>(p, plan, w, in, out); break;
    default: v2::drSparseDwConvKernelV2<T, 1><<<grid, plan.threads, shared, stream>>>(p, plan, w, in, out); break;
    }
    return static_cast<int32_t>(cudaGetLastError());
}

} // namespace
} // namespace drdw
} // namespace deprune

extern "C" DRDW_API int32_t drdwEnqueueVersion(DrDwConvProblem const* problem, DrDwConvWeights const* weights,
    int32_t dtype, void const* x, void* y, void* stream, int32_t kernelVersion)
{
    using namespace deprune::drdw;
    if (problem == nullptr || weights == nullptr || x == nullptr || y == nullptr || weights->subgemmOffsets == nullptr
        || weights->bias == nullptr)
    {
        return DRDW_ERR_NULL_POINTER;
    }
    auto const s = static_cast<cudaStream_t>(stream);
    bool const v2 = kernelVersion == DRDW_KERNEL_V2;
    if (!v2 && kernelVersion != DRDW_KERNEL_V1)
    {
        return DRDW_ERR_BAD_PROBLEM;
    }
    switch (dtype)
    {
    case DRDW_FLOAT32:
        return v2 ? launchV2<float>(*problem, *weights, x, y, s) : launch<float>(*problem, *weights, x, y, s);
    case DRDW_FLOAT16:
        return v2 ? launchV2<__half>(*problem, *weights, x, y, s) : launch<__half>(*problem, *weights, x, y, s);
    default: return DRDW_ERR_BAD_DTYPE;
    }
}

extern "C" DRDW_API int32_t drdwEnqueue(DrDwConvProblem const* problem, DrDwConvWeights const* weights,
    int32_t dtype, void const* x, void* y, void* stream)
{
    return drdwEnqueueVersion(problem, weights, dtype, x, y, stream, DRDW_KERNEL_DEFAULT);
}

extern "C" DRDW_API char const* drdwStatusString(int32_t status)
{
    switch (status)
    {
    case DRDW_OK: return "ok";
    case DRDW_ERR_NULL_POINTER: return "null pointer argument";
    case DRDW_ERR_BAD_PROBLEM: return "invalid problem (shape or attribute out of range)";
    case DRDW_ERR_BAD_DTYPE: return "unsupported data type (float32 or float16 only)";
    case DRDW_ERR_NO_PLAN: return "no launch plan: staged tile exceeds shared memory or grid limits";
    default: return status > 0 ? cudaGetErrorString(static_cast<cudaError_t>(status)) : "unknown status";
    }
}
