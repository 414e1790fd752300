/*
 * Index arithmetic of DRSparseDepthwiseConv, shared by the CUDA kernel and the host code.
 *
 * Why a header of its own: the kernel's correctness lives in a handful of integer formulas (tap decode, output
 * extent, tile origin, tile-local input coordinates, bounds, activation). They are written once here as
 * `__host__ __device__` inline functions so nvcc compiles them into the kernel and g++ compiles the very same text
 * into the host reference that the tests compare against numpy (tests/test_plugin_index.py). Nothing here may use
 * CUDA-only intrinsics or the C++ standard library beyond <cmath>/<cstdint>.
 */
#ifndef DEPRUNE_DR_SPARSE_DWCONV_INDEX_H
#define DEPRUNE_DR_SPARSE_DWCONV_INDEX_H

#include <cstdint>

#if defined(__CUDACC__)
#define DRDW_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define DRDW_HD inline
#endif

namespace deprune
{
namespace drdw
{

//! Fused activations, in the order of the op spec's `activation` values (the integer is part of the C ABI).
enum Activation : int32_t
{
    kActNone = 0,
    kActRelu = 1,
    kActClip = 2,      //!< params [min, max]
    kActHardSwish = 3, //!< params [alpha, beta]: x * max(0, min(1, alpha * x + beta))
    kActSilu = 4,      //!< x * sigmoid(x)
};

//! One kept tap of the packed layout, decoded from its flat dense index o*kh*kw + ky*kw + kx.
struct Tap
{
    int32_t outChannel;
    int32_t ky;
    int32_t kx;
};

DRDW_HD Tap decodeTap(int32_t flatIndex, int32_t kernelH, int32_t kernelW)
{
    int32_t const perChannel = kernelH * kernelW;
    int32_t const within = flatIndex % perChannel;
    return Tap{flatIndex / perChannel, within / kernelW, within % kernelW};
}

//! Standard conv output extent: floor((in + padBegin + padEnd - dilation*(k-1) - 1) / stride) + 1 (<= 0: empty).
DRDW_HD int32_t outputExtent(
    int32_t in, int32_t kernel, int32_t stride, int32_t dilation, int32_t padBegin, int32_t padEnd)
{
    int32_t const span = in + padBegin + padEnd - dilation * (kernel - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
}

//! Input coordinate read by output coordinate `out` through kernel offset `k` (may fall in the padding).
DRDW_HD int32_t inputCoord(int32_t out, int32_t k, int32_t stride, int32_t dilation, int32_t padBegin)
{
    return out * stride - padBegin + k * dilation;
}

DRDW_HD bool inBounds(int32_t coord, int32_t extent)
{
    return coord >= 0 && coord < extent;
}

//! Input rows (or columns) an output tile of `tile` rows needs: (tile-1)*stride + dilation*(k-1) + 1.
DRDW_HD int32_t tileInputExtent(int32_t tile, int32_t kernel, int32_t stride, int32_t dilation)
{
    return (tile - 1) * stride + dilation * (kernel - 1) + 1;
}

//! First input coordinate (possibly negative, i.e. in the padding) of the tile whose first output is `tileOut0`.
DRDW_HD int32_t tileInputOrigin(int32_t tileOut0, int32_t stride, int32_t padBegin)
{
    return tileOut0 * stride - padBegin;
}

//! Coordinate inside the staged input tile read by tile-local output `localOut` through kernel offset `k`.
//! Equals inputCoord(tileOut0 + localOut, k, ...) - tileInputOrigin(tileOut0, ...), without the padding term.
DRDW_HD int32_t tileLocalInputCoord(int32_t localOut, int32_t k, int32_t stride, int32_t dilation)
{
    return localOut * stride + k * dilation;
}

//! Input channel that output channel `outChannel` reads (ONNX grouped-conv order, m = depth multiplier).
DRDW_HD int32_t inputChannelOf(int32_t outChannel, int32_t depthMultiplier)
{
    return outChannel / depthMultiplier;
}

DRDW_HD float applyActivation(float v, int32_t activation, float alpha, float beta)
{
    switch (activation)
    {
    case kActRelu: return v > 0.0f ? v : 0.0f;
    case kActClip: return v < alpha ? alpha : (v > beta ? beta : v);
    case kActHardSwish:
    {
        float gate = alpha * v + beta;
        gate = gate < 0.0f ? 0.0f : (gate > 1.0f ? 1.0f : gate);
        return v * gate;
    }
    case kActSilu: return v / (1.0f + expf(-v));
    default: return v;
    }
}

} // namespace drdw
} // namespace deprune

#endif // DEPRUNE_DR_SPARSE_DWCONV_INDEX_H
