/*
 * Device code of the DRSparseDepthwiseConv kernel, version 2: designed for the memory floor (issue 16).
 *
 * What version 1 lacked, and what this one does instead (the plan is planLaunchV2 in drSparseDwConvCore.cpp):
 *   - v1 staged the input with one dependent 2-4 byte load in flight per warp; here each warp stages its own
 *     channel's input tile with asynchronous copies (float32: __pipeline_memcpy_async, i.e. cp.async on sm_80+,
 *     4 bytes with zero fill in the padding, the whole tile in flight at once), double-buffered: the tile of the
 *     warp's next channel is in flight while the current one is computed. float16 elements are 2 bytes, below
 *     cp.async's 4-byte granule, so there the tile is loaded with plain read-only loads, unrolled by 4;
 *   - v1 decoded taps per K-tile with two block barriers and rescanned the sub-GEMM in every block; here every
 *     output channel's kept taps were decoded once at plugin creation (decodeChannelTaps), a warp reads 32 of them
 *     with one coalesced load and broadcasts them by shuffles, and there is no block barrier at all (warps own
 *     whole channels; only __syncwarp around each stage buffer);
 *   - register blocking along x: each lane computes rx consecutive output pixels per row pass (rx * passes <= 8
 *     float accumulators), and float32 lanes with rx = 4 store them as one float4, float16 lanes with even rx as
 *     __half2 pairs, when aligned;
 *   - the lane mapping follows the map's width (lanesX lanes along x, 32 / lanesX rows per pass), so 7x7 and
 *     14x14 maps fill 77-88% of the lanes instead of half-empty 32-pixel rows, and no tile collapses for float32.
 * Accumulation is float32 for both data types. Same conventions as version 1 for the CUDA-on-CPU layer
 * (tests/cudaOnCpu.h): DRDW_DYNAMIC_SHARED, __ldg / __stwb / __pipeline_* for global memory.
 *
 * Not done yet: half2 arithmetic (the FMAs are float32), cp.async for float16 (pairs of 4 bytes with per-row
 * alignment), sharing one staged input channel between the m output channels of a depth multiplier m > 1 (each
 * warp stages its own), the bulk tensor copy engine of sm_90.
 */
#ifndef DEPRUNE_DR_SPARSE_DWCONV_DEVICE_V2_CUH
#define DEPRUNE_DR_SPARSE_DWCONV_DEVICE_V2_CUH

#include "drSparseDwConvDeviceCommon.cuh"

#if defined(__CUDACC__)
#include <cuda_pipeline_primitives.h>
#endif

namespace deprune
{
namespace drdw
{
namespace v2
{

constexpr int kWarps = 4;
constexpr int kMaxAccumulators = 8;
constexpr unsigned kFullMask = 0xFFFFFFFFU;

//! Stage one element of the input tile: asynchronous 4-byte copy with zero fill (float32).
__device__ __forceinline__ void stageElement(float* dst, float const* src, bool inside)
{
    __pipeline_memcpy_async(dst, src, sizeof(float), inside ? 0 : sizeof(float));
}

//! Stage the warp's channel tile: every lane copies elements lane, lane + 32, ... of the inTileH x inTileW tile.
template <typename T>
__device__ __forceinline__ void stageTile(T* buffer, T const* plane, DrDwConvProblem const& p,
    DrDwLaunchPlanV2 const& plan, int iy0, int ix0, int lane)
{
    int const total = plan.inTileH * plan.inTileW;
    int ry = lane / plan.inTileW; // one division per tile; the loop below steps without dividing
    int rx = lane - ry * plan.inTileW;
    int const stepRows = 32 / plan.inTileW;
    int const stepCols = 32 - stepRows * plan.inTileW;
    if constexpr (sizeof(T) == 4)
    {
        for (int e = lane; e < total; e += 32)
        {
            int const iy = iy0 + ry;
            int const ix = ix0 + rx;
            bool const inside = inBounds(iy, p.inH) && inBounds(ix, p.inW);
            stageElement(buffer + e, inside ? plane + static_cast<size_t>(iy) * p.inW + ix : plane, inside);
            ry += stepRows;
            rx += stepCols;
            if (rx >= plan.inTileW)
            {
                rx -= plan.inTileW;
                ++ry;
            }
        }
    }
    else
    {
#pragma unroll 4
        for (int e = lane; e < total; e += 32)
        {
            int const iy = iy0 + ry;
            int const ix = ix0 + rx;
            bool const inside = inBounds(iy, p.inH) && inBounds(ix, p.inW);
            buffer[e] = inside ? __ldg(plane + static_cast<size_t>(iy) * p.inW + ix) : fromFloat<T>(0.0F);
            ry += stepRows;
            rx += stepCols;
            if (rx >= plan.inTileW)
            {
                rx -= plan.inTileW;
                ++ry;
            }
        }
    }
}

//! Store rx consecutive outputs of one lane: one vector store when aligned, else one store per pixel.
template <typename T, int RX>
__device__ __forceinline__ void storeRun(T* dst, float const* values, int valid, bool aligned)
{
    if constexpr (RX == 4 && sizeof(T) == 4)
    {
        if (aligned && valid == 4)
        {
            __stwb(reinterpret_cast<float4*>(dst), make_float4(values[0], values[1], values[2], values[3]));
            return;
        }
    }
    if constexpr (RX >= 2 && sizeof(T) == 2)
    {
        if (aligned && valid == RX)
        {
#pragma unroll
            for (int r = 0; r < RX; r += 2)
            {
                __stwb(reinterpret_cast<__half2*>(dst) + r / 2, __floats2half2_rn(values[r], values[r + 1]));
            }
            return;
        }
    }
#pragma unroll
    for (int r = 0; r < RX; ++r)
    {
        if (r < valid)
        {
            __stwb(dst + r, fromFloat<T>(values[r]));
        }
    }
}

template <typename T, int RX>
__global__ void __launch_bounds__(128, 4) drSparseDwConvKernelV2(
    DrDwConvProblem const p, DrDwLaunchPlanV2 const plan, DrDwConvWeights const w, T const* __restrict__ x,
    T* __restrict__ y)
{
    DRDW_DYNAMIC_SHARED(smem);
    int const lane = threadIdx.x & 31;
    int const warp = threadIdx.x >> 5;
    int const cOut = p.channels * p.depthMultiplier;
    int const n = blockIdx.z;
    int const tileRow = blockIdx.x / plan.tilesW;
    int const oy0 = tileRow * plan.tileH;
    int const ox0 = (blockIdx.x - tileRow * plan.tilesW) * plan.tileW;
    int const iy0 = tileInputOrigin(oy0, p.strideH, p.padTop);
    int const ix0 = tileInputOrigin(ox0, p.strideW, p.padLeft);
    T* const stage = reinterpret_cast<T*>(smem) + static_cast<size_t>(warp) * 2 * plan.stageStride;

    // This lane's pixels: column run lc .. lc + RX - 1 of rows lr + pass * rowsPerPass (tile-local).
    int const rowsPerPass = 32 / plan.lanesX;
    int const lr = lane / plan.lanesX;
    int const lc = (lane - lr * plan.lanesX) * RX;
    bool const laneUsed = lr < rowsPerPass;
    int const validX = laneUsed ? max(0, min(RX, p.outW - ox0 - lc)) : 0;

    // The warp's channels: oc = first + k * kWarps, k < channelsPerWarp (uniform per warp).
    int const first = blockIdx.y * kWarps * plan.channelsPerWarp + warp;
    int count = 0;
    while (count < plan.channelsPerWarp && first + count * kWarps < cOut)
    {
        ++count;
    }
    auto channelPlane = [&](int oc) {
        return x + (static_cast<size_t>(n) * p.channels + inputChannelOf(oc, p.depthMultiplier)) * p.inH * p.inW;
    };
    auto hasTaps = [&](int oc) { return __ldg(w.channelTapOffsets + oc + 1) > __ldg(w.channelTapOffsets + oc); };

    if (count > 0 && hasTaps(first))
    {
        stageTile(stage, channelPlane(first), p, plan, iy0, ix0, lane);
    }
    __pipeline_commit();
    for (int k = 0; k < count; ++k)
    {
        int const oc = first + k * kWarps;
        T const* const buffer = stage + (k & 1) * plan.stageStride;
        if (k + 1 < count && hasTaps(oc + kWarps)) // prefetch the next channel into the other buffer
        {
            stageTile(stage + ((k + 1) & 1) * plan.stageStride, channelPlane(oc + kWarps), p, plan, iy0, ix0, lane);
        }
        __pipeline_commit();
        __pipeline_wait_prior(1); // this channel's tile has landed (the next one may still be in flight)
        __syncwarp();

        float acc[kMaxAccumulators];
#pragma unroll
        for (int i = 0; i < kMaxAccumulators; ++i)
        {
            acc[i] = 0.0F;
        }
        int const tapBegin = __ldg(w.channelTapOffsets + oc);
        int const tapEnd = __ldg(w.channelTapOffsets + oc + 1);
        int const pixel0 = (laneUsed ? lr * p.strideH * plan.inTileW + lc * p.strideW : 0);
        for (int t0 = tapBegin; t0 < tapEnd; t0 += 32)
        {
            int code = 0;
            float weight = 0.0F;
            if (t0 + lane < tapEnd)
            {
                code = __ldg(w.channelTapCodes + t0 + lane);
                weight = __ldg(w.channelTapValues + t0 + lane);
            }
            int const taps = min(32, tapEnd - t0);
            for (int j = 0; j < taps; ++j)
            {
                int const c = __shfl_sync(kFullMask, code, j);
                float const wt = __shfl_sync(kFullMask, weight, j);
                int const shift = (c >> 8) * p.dilationH * plan.inTileW + (c & 0xFF) * p.dilationW;
#pragma unroll
                for (int pass = 0; pass < kMaxAccumulators / RX; ++pass)
                {
                    if (pass < plan.passes)
                    {
                        T const* const src = buffer + pixel0 + pass * rowsPerPass * p.strideH * plan.inTileW + shift;
#pragma unroll
                        for (int r = 0; r < RX; ++r)
                        {
                            acc[pass * RX + r] = fmaf(wt, toFloat(src[r * p.strideW]), acc[pass * RX + r]);
                        }
                    }
                }
            }
        }
        __syncwarp(); // every lane has read this buffer before a later prefetch overwrites it

        float const b = __ldg(w.bias + oc);
        T* const plane = y + (static_cast<size_t>(n) * cOut + oc) * p.outH * p.outW;
#pragma unroll
        for (int pass = 0; pass < kMaxAccumulators / RX; ++pass)
        {
            int const oy = oy0 + lr + pass * rowsPerPass;
            if (pass < plan.passes && validX > 0 && oy < p.outH && lr + pass * rowsPerPass < plan.tileH)
            {
                float values[RX];
#pragma unroll
                for (int r = 0; r < RX; ++r)
                {
                    values[r] = applyActivation(acc[pass * RX + r] + b, p.activation, p.actAlpha, p.actBeta);
                }
                size_t const offset = static_cast<size_t>(oy) * p.outW + ox0 + lc;
                bool const aligned = (offset + static_cast<size_t>(n * cOut + oc) * p.outH * p.outW) % RX == 0;
                storeRun<T, RX>(plane + offset, values, validX, aligned);
            }
        }
    }
}

} // namespace v2
} // namespace drdw
} // namespace deprune

#endif // DEPRUNE_DR_SPARSE_DWCONV_DEVICE_V2_CUH
