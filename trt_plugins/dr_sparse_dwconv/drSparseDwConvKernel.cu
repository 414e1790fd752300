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
#include "drSparseDwConvIndex.h"
#include "drSparseDwConvKernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>

namespace deprune
{
namespace drdw
{
namespace
{

constexpr int kTapTile = 32;          // K-tile of the stream (one warp)
constexpr int kMaxChannelsPerWarp = 4; // 32-channel slice / 8 warps
constexpr int kMaxPixelsPerLane = 4;  // 128-pixel tile / 32 lanes

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

template <typename T>
__global__ void __launch_bounds__(256, 4) drSparseDwConvKernel(DrDwConvProblem const p, DrDwLaunchPlan const plan, DrDwConvWeights const w,
    T const* __restrict__ x, T* __restrict__ y)
{
    extern __shared__ __align__(16) unsigned char smem[];
    int* const tapCode = reinterpret_cast<int*>(smem);          // [32] localChannel<<16 | ky<<8 | kx, -1 = none
    float* const tapWeight = reinterpret_cast<float*>(tapCode + kTapTile); // [32]
    int* const chanLo = reinterpret_cast<int*>(tapWeight + kTapTile);     // [32] per-channel range in the tile
    int* const chanHi = chanLo + 32;                                     // [32]
    int* const chanHasTaps = chanHi + 32;                                // [32]
    int* const inNeeded = chanHasTaps + 32;                              // [32]
    int* const range = inNeeded + 32;                                    // [2] slice's packed entry range
    T* const tile = reinterpret_cast<T*>(smem + (32 * 4 + 32 * 4 + 4 * 32 * 4 + 16));

    int const tid = threadIdx.x;
    int const cOut = p.channels * p.depthMultiplier;
    int const g = blockIdx.y / plan.slicesPerSubgemm;
    int const slice = blockIdx.y - g * plan.slicesPerSubgemm;
    int const groupEnd = min((g + 1) * p.subgemmChannels, cOut);
    int const oc0 = g * p.subgemmChannels + slice * plan.channelsPerBlock;
    if (oc0 >= groupEnd)
    {
        return; // a slice past the end of a partial sub-GEMM (uniform for the block)
    }
    int const cb = min(plan.channelsPerBlock, groupEnd - oc0);
    int const n = blockIdx.z;
    int const tileY = blockIdx.x / plan.tilesW;
    int const oy0 = tileY * plan.tileH;
    int const ox0 = (blockIdx.x - tileY * plan.tilesW) * plan.tileW;
    int const ic0 = inputChannelOf(oc0, p.depthMultiplier);
    int const numIn = inputChannelOf(oc0 + cb - 1, p.depthMultiplier) - ic0 + 1;

    // 1. Which channels of the slice keep a tap, and where the slice's entries are.
    if (tid < 32)
    {
        chanHasTaps[tid] = 0;
        inNeeded[tid] = 0;
    }
    if (tid == 0)
    {
        range[0] = INT_MAX;
        range[1] = 0;
    }
    __syncthreads();
    int const groupBegin = w.subgemmOffsets[g];
    int const groupStop = w.subgemmOffsets[g + 1];
    for (int t = groupBegin + tid; t < groupStop; t += blockDim.x)
    {
        int const local = decodeTap(__ldg(w.tapIndices + t), p.kernelH, p.kernelW).outChannel - oc0;
        if (local >= 0 && local < cb)
        {
            chanHasTaps[local] = 1;
            atomicMin(range, t);
            atomicMax(range + 1, t + 1);
        }
    }
    __syncthreads();
    if (tid < cb && chanHasTaps[tid])
    {
        inNeeded[inputChannelOf(oc0 + tid, p.depthMultiplier) - ic0] = 1;
    }
    __syncthreads();

    // 2. Stage the input tiles of the needed input channels (zeros in the padding).
    int const iy0 = tileInputOrigin(oy0, p.strideH, p.padTop);
    int const ix0 = tileInputOrigin(ox0, p.strideW, p.padLeft);
    int const plane = plan.inTileH * plan.inTileW;
    for (int li = 0; li < numIn; ++li)
    {
        if (!inNeeded[li])
        {
            continue; // uniform: the channel is never read
        }
        T const* src = x + (static_cast<size_t>(n) * p.channels + ic0 + li) * p.inH * p.inW;
        for (int e = tid; e < plane; e += blockDim.x)
        {
            int const ry = e / plan.inTileW;
            int const iy = iy0 + ry;
            int const ix = ix0 + (e - ry * plan.inTileW);
            tile[li * plane + e] = (inBounds(iy, p.inH) && inBounds(ix, p.inW))
                ? src[static_cast<size_t>(iy) * p.inW + ix]
                : fromFloat<T>(0.0F);
        }
    }

    // Pixels of this lane (tile-local); pixels past the tile or the image read pixel (0,0) and are not stored.
    int const lane = tid & 31;
    int const warp = tid >> 5;
    int const numWarps = blockDim.x >> 5;
    int const tilePixels = plan.tileH * plan.tileW;
    int pixOffset[kMaxPixelsPerLane];
    bool pixValid[kMaxPixelsPerLane];
#pragma unroll
    for (int j = 0; j < kMaxPixelsPerLane; ++j)
    {
        int const pix = lane + 32 * j;
        int const py = pix / plan.tileW;
        int const px = pix - py * plan.tileW;
        pixValid[j] = pix < tilePixels && oy0 + py < p.outH && ox0 + px < p.outW;
        pixOffset[j] = pixValid[j] ? tileLocalInputCoord(py, 0, p.strideH, p.dilationH) * plan.inTileW
                + tileLocalInputCoord(px, 0, p.strideW, p.dilationW)
                                   : 0;
    }
    float acc[kMaxChannelsPerWarp][kMaxPixelsPerLane];
#pragma unroll
    for (int c = 0; c < kMaxChannelsPerWarp; ++c)
    {
#pragma unroll
        for (int j = 0; j < kMaxPixelsPerLane; ++j)
        {
            acc[c][j] = 0.0F;
        }
    }

    // 3. Stream the slice's packed taps in K-tiles of 32.
    int const rangeBegin = range[0];
    int const rangeEnd = range[1];
    for (int k0 = rangeBegin; k0 < rangeEnd; k0 += kTapTile)
    {
        __syncthreads(); // previous tile consumed (first pass: staging finished)
        if (tid < kTapTile)
        {
            int const t = k0 + tid;
            int code = -1;
            float weight = 0.0F;
            if (t < rangeEnd)
            {
                Tap const tap = decodeTap(__ldg(w.tapIndices + t), p.kernelH, p.kernelW);
                code = ((tap.outChannel - oc0) << 16) | (tap.ky << 8) | tap.kx;
                weight = __ldg(w.tapValues + t);
            }
            tapCode[tid] = code;
            tapWeight[tid] = weight;
            chanLo[tid] = 0;
            chanHi[tid] = 0;
            __syncwarp();
            int const local = code >> 16; // -1 stays -1
            if (local >= 0)
            {
                int const prev = tid > 0 ? (tapCode[tid - 1] >> 16) : -1;
                int const next = tid + 1 < kTapTile ? (tapCode[tid + 1] >> 16) : -1;
                if (prev != local)
                {
                    chanLo[local] = tid;
                }
                if (next != local)
                {
                    chanHi[local] = tid + 1;
                }
            }
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < kMaxChannelsPerWarp; ++c)
        {
            int const local = warp + c * numWarps;
            if (local < cb) // uniform per warp
            {
                T const* src = tile + (inputChannelOf(oc0 + local, p.depthMultiplier) - ic0) * plane;
                int const hi = chanHi[local];
                for (int k = chanLo[local]; k < hi; ++k)
                {
                    int const code = tapCode[k];
                    float const weight = tapWeight[k];
                    int const shift = tileLocalInputCoord(0, (code >> 8) & 0xFF, p.strideH, p.dilationH) * plan.inTileW
                        + tileLocalInputCoord(0, code & 0xFF, p.strideW, p.dilationW);
#pragma unroll
                    for (int j = 0; j < kMaxPixelsPerLane; ++j)
                    {
                        acc[c][j] = fmaf(weight, toFloat(src[pixOffset[j] + shift]), acc[c][j]);
                    }
                }
            }
        }
    }

    // 4. Epilogue: bias + activation, each output written once.
#pragma unroll
    for (int c = 0; c < kMaxChannelsPerWarp; ++c)
    {
        int const local = warp + c * numWarps;
        if (local < cb)
        {
            int const oc = oc0 + local;
            float const b = __ldg(w.bias + oc);
            T* dst = y + (static_cast<size_t>(n) * cOut + oc) * p.outH * p.outW;
#pragma unroll
            for (int j = 0; j < kMaxPixelsPerLane; ++j)
            {
                if (pixValid[j])
                {
                    int const pix = lane + 32 * j;
                    int const py = pix / plan.tileW;
                    int const px = pix - py * plan.tileW;
                    dst[static_cast<size_t>(oy0 + py) * p.outW + ox0 + px]
                        = fromFloat<T>(applyActivation(acc[c][j] + b, p.activation, p.actAlpha, p.actBeta));
                }
            }
        }
    }
}

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
    drSparseDwConvKernel<T><<<grid, plan.threads, static_cast<size_t>(plan.sharedBytes), stream>>>(
        p, plan, w, static_cast<T const*>(x), static_cast<T*>(y));
    return static_cast<int32_t>(cudaGetLastError());
}

} // namespace
} // namespace drdw
} // namespace deprune

extern "C" DRDW_API int32_t drdwEnqueue(DrDwConvProblem const* problem, DrDwConvWeights const* weights,
    int32_t dtype, void const* x, void* y, void* stream)
{
    using namespace deprune::drdw;
    if (problem == nullptr || weights == nullptr || x == nullptr || y == nullptr || weights->subgemmOffsets == nullptr
        || weights->bias == nullptr)
    {
        return DRDW_ERR_NULL_POINTER;
    }
    auto const s = static_cast<cudaStream_t>(stream);
    switch (dtype)
    {
    case DRDW_FLOAT32: return launch<float>(*problem, *weights, x, y, s);
    case DRDW_FLOAT16: return launch<__half>(*problem, *weights, x, y, s);
    default: return DRDW_ERR_BAD_DTYPE;
    }
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
