/*
 * Device code of the DRSparseDepthwiseConv kernel, version 1 (design: drSparseDwConvKernel.cu; launch glue there).
 *
 * A header of its own so that the same text is compiled by nvcc (drSparseDwConvKernel.cu) and by g++ through the
 * CUDA-on-CPU layer of tests/cudaOnCpu.h (tests/emuTool.cpp), which runs it block by block against the numpy
 * oracle in CI. Hence three conventions: dynamic shared memory is declared with DRDW_DYNAMIC_SHARED, every global
 * load goes through __ldg and every global store through __stwb (the CPU layer records their addresses), and no
 * CUDA feature is used that cudaOnCpu.h does not provide.
 */
#ifndef DEPRUNE_DR_SPARSE_DWCONV_DEVICE_V1_CUH
#define DEPRUNE_DR_SPARSE_DWCONV_DEVICE_V1_CUH

#include "drSparseDwConvDeviceCommon.cuh"

namespace deprune
{
namespace drdw
{

constexpr int kTapTile = 32;          // K-tile of the stream (one warp)
constexpr int kMaxChannelsPerWarp = 4; // 32-channel slice / 8 warps
constexpr int kMaxPixelsPerLane = 4;  // 128-pixel tile / 32 lanes


template <typename T>
__global__ void __launch_bounds__(256, 4) drSparseDwConvKernelV1(
    DrDwConvProblem const p, DrDwLaunchPlan const plan, DrDwConvWeights const w,
    T const* __restrict__ x, T* __restrict__ y)
{
    DRDW_DYNAMIC_SHARED(smem);
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
                ? __ldg(src + static_cast<size_t>(iy) * p.inW + ix)
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
                    __stwb(dst + static_cast<size_t>(oy0 + py) * p.outW + ox0 + px,
                        fromFloat<T>(applyActivation(acc[c][j] + b, p.activation, p.actAlpha, p.actBeta)));
                }
            }
        }
    }
}

} // namespace drdw
} // namespace deprune

#endif // DEPRUNE_DR_SPARSE_DWCONV_DEVICE_V1_CUH
