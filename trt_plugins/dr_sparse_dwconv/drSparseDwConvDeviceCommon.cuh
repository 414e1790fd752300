/*
 * What the kernels' device code shares: the CUDA headers (or, under g++, the CUDA-on-CPU layer that the includer
 * has already included: tests/cudaOnCpu.h), DRDW_DYNAMIC_SHARED, and float <-> element conversions.
 */
#ifndef DEPRUNE_DR_SPARSE_DWCONV_DEVICE_COMMON_CUH
#define DEPRUNE_DR_SPARSE_DWCONV_DEVICE_COMMON_CUH

#include "drSparseDwConvIndex.h"
#include "drSparseDwConvKernel.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define DRDW_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#elif !defined(DEPRUNE_CUDA_ON_CPU_H)
#error "device code: compile with nvcc, or include tests/cudaOnCpu.h first"
#endif

#include <climits>

namespace deprune
{
namespace drdw
{

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

} // namespace drdw
} // namespace deprune

#endif // DEPRUNE_DR_SPARSE_DWCONV_DEVICE_COMMON_CUH
