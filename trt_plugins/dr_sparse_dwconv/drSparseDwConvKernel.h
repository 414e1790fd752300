/*
 * C ABI of the DRSparseDepthwiseConv CUDA kernel library (libdeprune_drdw_kernels.so).
 *
 * Plain C on purpose: the TensorRT plugin, the ctypes-based GPU check (bench/gpu/) and any other runtime call the
 * same entry points, with no TensorRT and no C++ ABI involved. Streams are passed as `void*` (a cudaStream_t) so a
 * caller needs no CUDA headers. Every pointer in DrDwConvWeights and the x/y pointers are device pointers.
 *
 * Data layout of the weights is the op spec's packed DR layout with two host-side conveniences: the per-sub-GEMM
 * start offsets are passed instead of kept_counts (subgemmOffsets[g] = sum_{j<g} ceil(K_j/k_tile)*k_tile, G+1
 * entries), and tap values and bias are always float32 (fp16 models are widened once at plugin creation; the kernel
 * accumulates in float32 for both activation types anyway).
 */
#ifndef DEPRUNE_DR_SPARSE_DWCONV_KERNEL_H
#define DEPRUNE_DR_SPARSE_DWCONV_KERNEL_H

#include <stdint.h>

#if defined(_WIN32)
#define DRDW_API __declspec(dllexport)
#else
#define DRDW_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this ABI; bump when a struct below changes. 2: per-channel tap lists, kernel versions, plan v2. */
#define DRDW_ABI_VERSION 2

/* Element type of X and Y. */
enum DrDwDataType
{
    DRDW_FLOAT32 = 0,
    DRDW_FLOAT16 = 1
};

/* Status codes of drdwEnqueue/drdwPlanLaunch: 0 ok, negative = invalid argument, positive = a cudaError_t. */
enum DrDwStatus
{
    DRDW_OK = 0,
    DRDW_ERR_NULL_POINTER = -1,
    DRDW_ERR_BAD_PROBLEM = -2,
    DRDW_ERR_BAD_DTYPE = -3,
    DRDW_ERR_NO_PLAN = -4,     /* no tile fits shared memory (huge dilation) or grid limits exceeded */
};

/* One DW conv problem: shapes, conv attributes and epilogue. outH/outW follow the standard conv formula. */
typedef struct DrDwConvProblem
{
    int32_t batch;
    int32_t channels;         /* C_in */
    int32_t depthMultiplier;  /* C_out = channels * depthMultiplier */
    int32_t inH, inW;
    int32_t outH, outW;
    int32_t kernelH, kernelW; /* 1..15 */
    int32_t strideH, strideW;
    int32_t dilationH, dilationW;
    int32_t padTop, padLeft;  /* bottom/right pads only enter outH/outW */
    int32_t subgemmChannels;  /* output channels per DR sub-GEMM */
    int32_t activation;       /* deprune::drdw::Activation */
    float actAlpha, actBeta;  /* clip: min,max; hard_swish: alpha,beta */
} DrDwConvProblem;

/* Device pointers to the packed weights. */
typedef struct DrDwConvWeights
{
    int32_t const* subgemmOffsets; /* [G+1] */
    int32_t const* tapIndices;     /* [subgemmOffsets[G]] flat dense indices o*kh*kw + ky*kw + kx */
    float const* tapValues;        /* [subgemmOffsets[G]], 0 for padding entries */
    float const* bias;             /* [C_out] */
    /* Kernel version 2: the kept taps of each output channel, decoded once at plugin creation (padding dropped,
     * increasing ky, kx). NULL for version 1 only. */
    int32_t const* channelTapOffsets; /* [C_out+1] start of each channel's taps */
    int32_t const* channelTapCodes;   /* [total] ky << 8 | kx */
    float const* channelTapValues;    /* [total] */
} DrDwConvWeights;

/* How a problem is cut into thread blocks; computed on the host (drdwPlanLaunch), also compiled by g++. */
typedef struct DrDwLaunchPlan
{
    int32_t tileH, tileW;           /* output pixels per block */
    int32_t inTileH, inTileW;       /* staged input rows/cols per channel (halo included) */
    int32_t channelsPerBlock;       /* channel slice of one sub-GEMM handled by a block (<= 32) */
    int32_t inChannelsPerBlock;     /* staged input channels per block (<= channelsPerBlock) */
    int32_t slicesPerSubgemm;
    int32_t tilesH, tilesW;
    int32_t threads;                /* 32 * min(8, channelsPerBlock) */
    int32_t gridX, gridY, gridZ;    /* spatial tiles, sub-GEMM slices, batch */
    int64_t sharedBytes;
} DrDwLaunchPlan;

/* Launch plan of kernel version 2: 4 warps per block, each warp owns whole output channels of one output tile
 * and stages its own input tile (double-buffered across its channels); each lane computes rx consecutive output
 * pixels along x (register blocking) in `passes` row passes of 32/lanesX rows. */
typedef struct DrDwLaunchPlanV2
{
    int32_t tileH, tileW;           /* output pixels per (warp, channel): tileW = lanesX * rx */
    int32_t inTileH, inTileW;       /* staged input rows/cols per channel (halo included) */
    int32_t rx;                     /* output pixels per lane along x: 1, 2 or 4 */
    int32_t lanesX;                 /* lanes along x; 32 / lanesX rows per pass */
    int32_t passes;                 /* row passes: rx * passes <= 8 accumulators per lane */
    int32_t channelsPerWarp;        /* output channels each warp handles in turn */
    int32_t stageStride;            /* elements between the two stage buffers of a warp (16-byte multiple) */
    int32_t tilesH, tilesW;
    int32_t threads;                /* 128 */
    int32_t gridX, gridY, gridZ;    /* spatial tiles, channel groups of 4 * channelsPerWarp, batch */
    int64_t sharedBytes;
} DrDwLaunchPlanV2;

/* Kernel versions drdwEnqueueVersion accepts; DRDW_KERNEL_DEFAULT is what drdwEnqueue (and the plugin) runs. */
#define DRDW_KERNEL_V1 1
#define DRDW_KERNEL_V2 2
/* Version 2 since the first GPU run (H200, 2026-11-30): faster than version 1 on every one of the 3 x 4 x 2 x 2
 * architecture/ratio/batch/dtype groups of bench/gpu/dr_dwconv_check.py (bench/results/gpu_h200_2026-11-30.md). */
#define DRDW_KERNEL_DEFAULT DRDW_KERNEL_V2

/* ABI version compiled into the library (DRDW_ABI_VERSION). */
DRDW_API int32_t drdwAbiVersion(void);

/* Fill `plan` for `problem`; elementBytes is 4 (float32) or 2 (float16); smCount 0 means "unknown" (no slicing
 * for occupancy). Returns DRDW_OK or a negative status. Pure host code. */
DRDW_API int32_t drdwPlanLaunch(
    DrDwConvProblem const* problem, int32_t elementBytes, int32_t smCount, DrDwLaunchPlan* plan);

/* Run Y = act(sparse DW conv(X) + bias) on `stream` (a cudaStream_t, may be NULL). Asynchronous; no allocation,
 * no synchronisation, so it is safe inside CUDA-graph capture. Returns DRDW_OK, a negative status or a
 * cudaError_t from the launch. */
DRDW_API int32_t drdwEnqueue(DrDwConvProblem const* problem, DrDwConvWeights const* weights, int32_t dtype,
    void const* x, void* y, void* stream);

/* drdwEnqueue with an explicit kernel version (1 or 2). Version 2 needs the channel tap lists in `weights` and
 * falls back to version 1 when its plan does not fit (DRDW_ERR_NO_PLAN from version 1 then). */
DRDW_API int32_t drdwEnqueueVersion(DrDwConvProblem const* problem, DrDwConvWeights const* weights, int32_t dtype,
    void const* x, void* y, void* stream, int32_t kernelVersion);

/* Human-readable text of a status code returned above. */
DRDW_API char const* drdwStatusString(int32_t status);

#ifdef __cplusplus
}
#endif

#endif /* DEPRUNE_DR_SPARSE_DWCONV_KERNEL_H */
