/*
 * TensorRT IPluginV3 plugin for the DRSparseDepthwiseConv ONNX op (domain/namespace "deprune", version "1").
 *
 * The TensorRT ONNX parser maps a node of that op type to this plugin by name/version/namespace and hands the node's
 * attributes over as plugin fields (TENSOR attributes as typed arrays); drSparseDwConvCore decodes and validates
 * them. The fields are serialized with the engine (getFieldsToSerialize), so an engine needs no side files. The
 * packed weights are uploaded to device memory once per plugin object (attachToContext for runtime objects,
 * onShapeChange for build-phase objects) and never during enqueue, so enqueue is CUDA-graph safe.
 * Every method is noexcept and reports errors through the TensorRT logger.
 */
#ifndef DEPRUNE_DR_SPARSE_DWCONV_PLUGIN_H
#define DEPRUNE_DR_SPARSE_DWCONV_PLUGIN_H

#include "drSparseDwConvCore.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace deprune
{
namespace drdw
{

//! Report a message through the TensorRT logger (or stderr when no logger is known yet).
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

//! The logger finder handed over by TensorRT through the exported setLoggerFinder (dynamic library).
void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

class DrSparseDwConvPlugin : public nvinfer1::IPluginV3,
                             public nvinfer1::IPluginV3OneCore,
                             public nvinfer1::IPluginV3OneBuild,
                             public nvinfer1::IPluginV3OneRuntime
{
public:
    DrSparseDwConvPlugin(std::string layerName, Params params);
    DrSparseDwConvPlugin(DrSparseDwConvPlugin const& other);
    DrSparseDwConvPlugin& operator=(DrSparseDwConvPlugin const&) = delete;
    ~DrSparseDwConvPlugin() override;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    bool uploadWeights() noexcept;
    void releaseWeights() noexcept;
    bool checkInput(nvinfer1::Dims const& dims) const noexcept;
    std::string where() const;

    std::string mLayerName;
    Params mParams;
    std::vector<int32_t> mOffsets;
    ChannelTaps mChannelTaps; //!< kernel version 2's per-channel tap lists, decoded once here
    std::string mDescription;

    // Device copy of offsets, tap indices, tap values, bias and the channel tap lists in one allocation.
    void* mDeviceBuffer{nullptr};
    DrDwConvWeights mDeviceWeights{};

    // Storage behind getFieldsToSerialize.
    std::vector<int32_t> mSerialScratch;
    std::string mSerialActivation;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class DrSparseDwConvPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    DrSparseDwConvPluginCreator();
    ~DrSparseDwConvPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace drdw
} // namespace deprune

#endif // DEPRUNE_DR_SPARSE_DWCONV_PLUGIN_H
