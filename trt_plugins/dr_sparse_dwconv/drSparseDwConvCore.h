/*
 * Host-side core of DRSparseDepthwiseConv: plain C++17, no CUDA and no TensorRT.
 *
 * Why it exists: everything about the op that is not the kernel itself (reading the plugin fields the TensorRT ONNX
 * parser hands over, validating the packed DR layout of the op spec, output shape arithmetic, workspace size, the
 * launch plan) is decided here, so g++ alone can compile and unit-test it (trt_plugins/dr_sparse_dwconv/tests/).
 * Errors are returned as strings (empty = success): the plugin forwards them to the TensorRT logger and never
 * throws across the TensorRT API.
 *
 * Follows trt_plugins/dr_sparse_dwconv/DRSparseDepthwiseConv_PluginConfig.yaml exactly.
 */
#ifndef DEPRUNE_DR_SPARSE_DWCONV_CORE_H
#define DEPRUNE_DR_SPARSE_DWCONV_CORE_H

#include "drSparseDwConvKernel.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace deprune
{
namespace drdw
{

constexpr char const* kPluginName = "DRSparseDepthwiseConv";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "deprune";
constexpr int32_t kMaxKernel = 15;

//! Mirror of nvinfer1::PluginFieldType (same integer values; the plugin static_asserts that they agree).
enum class FieldType : int32_t
{
    kFLOAT16 = 0,
    kFLOAT32 = 1,
    kFLOAT64 = 2,
    kINT8 = 3,
    kINT16 = 4,
    kINT32 = 5,
    kCHAR = 6,
    kDIMS = 7,
    kUNKNOWN = 8,
    kBF16 = 9,
    kINT64 = 10,
};

//! A non-owning view of one plugin field (what nvinfer1::PluginField carries).
struct FieldView
{
    std::string name;
    void const* data;
    FieldType type;
    int32_t length; //!< element count (bytes for kCHAR, terminating NUL included or not)
};

//! Every attribute of the op, decoded and owned. Defaults are the spec's.
struct Params
{
    int32_t channels{0};
    int32_t depthMultiplier{1};
    int32_t kernelH{0}, kernelW{0};
    int32_t strideH{1}, strideW{1};
    int32_t padTop{0}, padLeft{0}, padBottom{0}, padRight{0};
    int32_t dilationH{1}, dilationW{1};
    int32_t subgemmChannels{32};
    int32_t kTile{32};
    int32_t activation{0}; //!< Activation enum of drSparseDwConvIndex.h
    std::vector<float> activationParams;
    std::vector<int32_t> keptCounts;
    std::vector<int32_t> tapIndices;
    std::vector<float> tapValues; //!< widened to float32 when the model stored float16
    std::vector<float> bias;

    int32_t outChannels() const { return channels * depthMultiplier; }
    int32_t subgemmCount() const { return (outChannels() + subgemmChannels - 1) / subgemmChannels; }
};

//! The attribute names the creator advertises (getFieldNames) and accepts, in spec order.
std::vector<std::string> const& fieldNames();

//! The spec's string for an Activation value ("none", "relu", ...); "" for an unknown value.
char const* activationName(int32_t activation);

//! Decode fields into `params` (defaults for absent optional ones). Integers may arrive as INT8/16/32/64, floats as
//! FLOAT16/BF16/FLOAT32/FLOAT64, strings as CHAR with or without the terminating NUL. Returns "" or an error.
std::string parseFields(std::vector<FieldView> const& fields, Params& params);

//! Check every rule of the spec on decoded params (ranges, lengths, the packed layout and its padding).
std::string validate(Params const& params);

//! parseFields followed by validate.
std::string parseAndValidate(std::vector<FieldView> const& fields, Params& params);

//! Start of each sub-GEMM's block in tapIndices/tapValues, and the total length last ([G+1] entries).
std::vector<int32_t> subgemmOffsets(Params const& params);

struct OutputShape
{
    int32_t channels;
    int32_t height;
    int32_t width;
};

//! Output C/H/W for an input of spatial size inH x inW; error when the output would be empty.
std::string outputShape(Params const& params, int32_t inH, int32_t inW, OutputShape& out);

//! Scratch memory enqueue needs: none (weights live in plugin-owned device memory, the kernel keeps its tiles in
//! shared memory). A function anyway so the plugin and the tests state it in one place.
std::size_t workspaceBytes(Params const& params, int32_t batch, int32_t inH, int32_t inW);

//! The kernel problem for a concrete input shape.
DrDwConvProblem makeProblem(Params const& params, int32_t batch, int32_t inH, int32_t inW);

//! Launch plan (C++ name of drdwPlanLaunch): returns "" or why no plan exists.
std::string planLaunch(DrDwConvProblem const& problem, int32_t elementBytes, int32_t smCount, DrDwLaunchPlan& plan);

//! Launch plan of kernel version 2 (see DrDwLaunchPlanV2); "" or why none fits (then version 1 runs).
std::string planLaunchV2(DrDwConvProblem const& problem, int32_t elementBytes, int32_t smCount, DrDwLaunchPlanV2& plan);

//! The kept taps of every output channel, decoded from the packed DR layout once (kernel version 2's weights).
struct ChannelTaps
{
    std::vector<int32_t> offsets; //!< [C_out+1]
    std::vector<int32_t> codes;   //!< ky << 8 | kx, increasing per channel
    std::vector<float> values;
};
ChannelTaps decodeChannelTaps(Params const& params);

//! Fields that reproduce `params` exactly through parseFields (float32 taps/bias, int32 integers). The views
//! point into `params`, `scratch` holds the values that are not stored as-is; both must outlive the views.
std::vector<FieldView> serializeFields(Params const& params, std::vector<int32_t>& scratch, std::string& activation);

//! IEEE half / bfloat16 bits to float (host only; g++ has no __half).
float halfBitsToFloat(uint16_t bits);
float bf16BitsToFloat(uint16_t bits);

} // namespace drdw
} // namespace deprune

#endif // DEPRUNE_DR_SPARSE_DWCONV_CORE_H
