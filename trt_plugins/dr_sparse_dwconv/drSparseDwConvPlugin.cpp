/*
 * TensorRT IPluginV3 plugin for DRSparseDepthwiseConv (see drSparseDwConvPlugin.h).
 */
#include "drSparseDwConvPlugin.h"
#include "drSparseDwConvKernel.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <utility>

namespace deprune
{
namespace drdw
{

using namespace nvinfer1;

static_assert(static_cast<int32_t>(FieldType::kFLOAT16) == static_cast<int32_t>(PluginFieldType::kFLOAT16)
        && static_cast<int32_t>(FieldType::kFLOAT32) == static_cast<int32_t>(PluginFieldType::kFLOAT32)
        && static_cast<int32_t>(FieldType::kFLOAT64) == static_cast<int32_t>(PluginFieldType::kFLOAT64)
        && static_cast<int32_t>(FieldType::kINT8) == static_cast<int32_t>(PluginFieldType::kINT8)
        && static_cast<int32_t>(FieldType::kINT16) == static_cast<int32_t>(PluginFieldType::kINT16)
        && static_cast<int32_t>(FieldType::kINT32) == static_cast<int32_t>(PluginFieldType::kINT32)
        && static_cast<int32_t>(FieldType::kCHAR) == static_cast<int32_t>(PluginFieldType::kCHAR)
        && static_cast<int32_t>(FieldType::kBF16) == static_cast<int32_t>(PluginFieldType::kBF16)
        && static_cast<int32_t>(FieldType::kINT64) == static_cast<int32_t>(PluginFieldType::kINT64),
    "FieldType must mirror nvinfer1::PluginFieldType");

namespace
{

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

ILogger* findLogger() noexcept
{
    ILoggerFinder* finder = gLoggerFinder.load();
    return finder != nullptr ? finder->findLogger() : nullptr;
}

char const* dataTypeName(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    default: return "unsupported";
    }
}

} // namespace

void setPluginLoggerFinder(ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    ILogger* logger = findLogger();
    if (logger != nullptr)
    {
        logger->log(severity, message.c_str());
    }
    else if (severity <= ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "[deprune_trt] %s\n", message.c_str());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// DrSparseDwConvPlugin

DrSparseDwConvPlugin::DrSparseDwConvPlugin(std::string layerName, Params params)
    : mLayerName(std::move(layerName))
    , mParams(std::move(params))
    , mOffsets(subgemmOffsets(mParams))
    , mChannelTaps(decodeChannelTaps(mParams))
{
    std::ostringstream text;
    text << "DRSparseDepthwiseConv C=" << mParams.channels << " m=" << mParams.depthMultiplier << " k="
         << mParams.kernelH << "x" << mParams.kernelW << " s=" << mParams.strideH << "x" << mParams.strideW
         << " d=" << mParams.dilationH << "x" << mParams.dilationW << " pads=[" << mParams.padTop << ","
         << mParams.padLeft << "," << mParams.padBottom << "," << mParams.padRight << "] act="
         << activationName(mParams.activation) << " taps=" << mOffsets.back() << " G=" << mParams.subgemmCount();
    mDescription = text.str();
}

DrSparseDwConvPlugin::DrSparseDwConvPlugin(DrSparseDwConvPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mLayerName(other.mLayerName)
    , mParams(other.mParams)
    , mOffsets(other.mOffsets)
    , mChannelTaps(other.mChannelTaps)
    , mDescription(other.mDescription)
{
    // The device buffer is not shared: every clone uploads its own copy (a few KiB), so lifetimes stay independent.
}

DrSparseDwConvPlugin::~DrSparseDwConvPlugin()
{
    releaseWeights();
}

std::string DrSparseDwConvPlugin::where() const
{
    return "DRSparseDepthwiseConv node '" + mLayerName + "': ";
}

IPluginCapability* DrSparseDwConvPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* DrSparseDwConvPlugin::clone() noexcept
{
    try
    {
        return new DrSparseDwConvPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, where() + "clone failed: " + e.what());
        return nullptr;
    }
}

char const* DrSparseDwConvPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DrSparseDwConvPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DrSparseDwConvPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

bool DrSparseDwConvPlugin::checkInput(Dims const& dims) const noexcept
{
    if (dims.nbDims != 4)
    {
        logMessage(ILogger::Severity::kERROR,
            where() + "input must be NCHW (rank 4), got rank " + std::to_string(dims.nbDims));
        return false;
    }
    if (dims.d[1] >= 0 && dims.d[1] != mParams.channels)
    {
        logMessage(ILogger::Severity::kERROR,
            where() + "input has " + std::to_string(dims.d[1]) + " channels, the node expects "
                + std::to_string(mParams.channels));
        return false;
    }
    return true;
}

int32_t DrSparseDwConvPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != 1 || nbOutputs != 1)
    {
        logMessage(ILogger::Severity::kERROR, where() + "expects exactly one input and one output");
        return 1;
    }
    return checkInput(in[0].desc.dims) ? 0 : 1;
}

int32_t DrSparseDwConvPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != 1)
    {
        return 1;
    }
    if (inputTypes[0] != DataType::kFLOAT && inputTypes[0] != DataType::kHALF)
    {
        logMessage(ILogger::Severity::kERROR,
            where() + "input type " + dataTypeName(inputTypes[0]) + " is not supported (float32 or float16)");
        return 1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t DrSparseDwConvPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != 1 || nbOutputs != 1)
    {
        return 1;
    }
    if (inputs[0].nbDims != 4)
    {
        logMessage(ILogger::Severity::kERROR,
            where() + "input must be NCHW (rank 4), got rank " + std::to_string(inputs[0].nbDims));
        return 1;
    }
    // out = floor((in + padBegin + padEnd - dilation*(k-1) - 1) / stride) + 1, as expressions so H/W may be dynamic.
    auto extent = [&](IDimensionExpr const& in, int32_t k, int32_t stride, int32_t dilation, int32_t padSum) {
        IDimensionExpr const* span = exprBuilder.operation(
            DimensionOperation::kSUM, in, *exprBuilder.constant(padSum - dilation * (k - 1) - 1));
        IDimensionExpr const* q
            = exprBuilder.operation(DimensionOperation::kFLOOR_DIV, *span, *exprBuilder.constant(stride));
        return exprBuilder.operation(DimensionOperation::kSUM, *q, *exprBuilder.constant(1));
    };
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = exprBuilder.constant(mParams.outChannels());
    outputs[0].d[2] = extent(
        *inputs[0].d[2], mParams.kernelH, mParams.strideH, mParams.dilationH, mParams.padTop + mParams.padBottom);
    outputs[0].d[3] = extent(
        *inputs[0].d[3], mParams.kernelW, mParams.strideW, mParams.dilationW, mParams.padLeft + mParams.padRight);
    return 0;
}

bool DrSparseDwConvPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    }
    return desc.type == inOut[0].desc.type;
}

int32_t DrSparseDwConvPlugin::getNbOutputs() const noexcept
{
    return 1;
}

size_t DrSparseDwConvPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs != 1 || inputs[0].max.nbDims != 4)
    {
        return 0;
    }
    Dims const& m = inputs[0].max;
    return workspaceBytes(
        mParams, static_cast<int32_t>(m.d[0]), static_cast<int32_t>(m.d[2]), static_cast<int32_t>(m.d[3]));
}

char const* DrSparseDwConvPlugin::getTimingCacheID() noexcept
{
    // Timing depends on the packed weights (which channels keep taps), not only on the attributes: no caching.
    return nullptr;
}

char const* DrSparseDwConvPlugin::getMetadataString() noexcept
{
    return mDescription.c_str();
}

int32_t DrSparseDwConvPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != 1 || nbOutputs != 1 || !checkInput(in[0].dims))
    {
        return 1;
    }
    Dims const& d = in[0].dims;
    OutputShape shape{};
    std::string err = outputShape(mParams, static_cast<int32_t>(d.d[2]), static_cast<int32_t>(d.d[3]), shape);
    DrDwLaunchPlan plan{};
    if (err.empty())
    {
        DrDwConvProblem const problem = makeProblem(
            mParams, static_cast<int32_t>(d.d[0]), static_cast<int32_t>(d.d[2]), static_cast<int32_t>(d.d[3]));
        err = planLaunch(problem, in[0].type == DataType::kHALF ? 2 : 4, 0, plan);
    }
    if (!err.empty())
    {
        logMessage(ILogger::Severity::kERROR, where() + err);
        return 1;
    }
    // The builder calls onShapeChange before it times enqueue, so a build-phase object uploads here, outside any
    // timed (or captured) enqueue; runtime objects uploaded in attachToContext and this is a no-op for them.
    return uploadWeights() ? 0 : 1;
}

bool DrSparseDwConvPlugin::uploadWeights() noexcept
{
    if (mDeviceBuffer != nullptr)
    {
        return true;
    }
    size_t const offsetsBytes = mOffsets.size() * sizeof(int32_t);
    size_t const indexBytes = mParams.tapIndices.size() * sizeof(int32_t);
    size_t const valueBytes = mParams.tapValues.size() * sizeof(float);
    size_t const biasBytes = mParams.bias.size() * sizeof(float);
    size_t const channelOffsetsBytes = mChannelTaps.offsets.size() * sizeof(int32_t);
    size_t const channelCodesBytes = mChannelTaps.codes.size() * sizeof(int32_t);
    size_t const channelValuesBytes = mChannelTaps.values.size() * sizeof(float);
    auto align = [](size_t v) { return (v + 255) / 256 * 256; };
    size_t const total = align(offsetsBytes) + align(indexBytes) + align(valueBytes) + align(biasBytes)
        + align(channelOffsetsBytes) + align(channelCodesBytes) + align(channelValuesBytes);
    void* buffer = nullptr;
    cudaError_t status = cudaMalloc(&buffer, total);
    if (status != cudaSuccess)
    {
        logMessage(ILogger::Severity::kERROR, where() + "cudaMalloc of weights failed: " + cudaGetErrorString(status));
        return false;
    }
    char* base = static_cast<char*>(buffer);
    char* cursor = base;
    auto put = [&](void const* src, size_t bytes) {
        void* dst = cursor;
        if (bytes > 0 && status == cudaSuccess)
        {
            status = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
        }
        cursor += align(bytes);
        return dst;
    };
    mDeviceWeights.subgemmOffsets = static_cast<int32_t const*>(put(mOffsets.data(), offsetsBytes));
    mDeviceWeights.tapIndices = static_cast<int32_t const*>(put(mParams.tapIndices.data(), indexBytes));
    mDeviceWeights.tapValues = static_cast<float const*>(put(mParams.tapValues.data(), valueBytes));
    mDeviceWeights.bias = static_cast<float const*>(put(mParams.bias.data(), biasBytes));
    mDeviceWeights.channelTapOffsets
        = static_cast<int32_t const*>(put(mChannelTaps.offsets.data(), channelOffsetsBytes));
    mDeviceWeights.channelTapCodes = static_cast<int32_t const*>(put(mChannelTaps.codes.data(), channelCodesBytes));
    mDeviceWeights.channelTapValues = static_cast<float const*>(put(mChannelTaps.values.data(), channelValuesBytes));
    if (status != cudaSuccess)
    {
        cudaFree(buffer);
        mDeviceWeights = DrDwConvWeights{};
        logMessage(ILogger::Severity::kERROR, where() + "upload of weights failed: " + cudaGetErrorString(status));
        return false;
    }
    mDeviceBuffer = buffer;
    return true;
}

void DrSparseDwConvPlugin::releaseWeights() noexcept
{
    if (mDeviceBuffer != nullptr)
    {
        cudaFree(mDeviceBuffer); // errors ignored: the context may already be gone at process exit
        mDeviceBuffer = nullptr;
        mDeviceWeights = DrDwConvWeights{};
    }
}

int32_t DrSparseDwConvPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return 1;
    }
    // Normally a no-op (uploaded in onShapeChange or attachToContext); kept as the fallback for a caller that
    // enqueues an object TensorRT never shape-configured.
    if (!uploadWeights())
    {
        return 1;
    }
    Dims const& d = inputDesc[0].dims;
    DrDwConvProblem const problem = makeProblem(
        mParams, static_cast<int32_t>(d.d[0]), static_cast<int32_t>(d.d[2]), static_cast<int32_t>(d.d[3]));
    int32_t const dtype = inputDesc[0].type == DataType::kHALF ? DRDW_FLOAT16 : DRDW_FLOAT32;
    int32_t const status = drdwEnqueue(&problem, &mDeviceWeights, dtype, inputs[0], outputs[0], stream);
    if (status != DRDW_OK)
    {
        logMessage(ILogger::Severity::kERROR, where() + "kernel launch failed: " + drdwStatusString(status));
        return 1;
    }
    return 0;
}

IPluginV3* DrSparseDwConvPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    auto* copy = static_cast<DrSparseDwConvPlugin*>(clone());
    if (copy != nullptr && !copy->uploadWeights())
    {
        delete copy;
        return nullptr;
    }
    return copy;
}

PluginFieldCollection const* DrSparseDwConvPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        std::vector<FieldView> const views = serializeFields(mParams, mSerialScratch, mSerialActivation);
        mSerialFields.clear();
        for (FieldView const& view : views)
        {
            // Names point at fieldNames()' static strings, which outlive every plugin object.
            char const* name = nullptr;
            for (std::string const& known : fieldNames())
            {
                if (known == view.name)
                {
                    name = known.c_str();
                }
            }
            mSerialFields.emplace_back(name, view.data, static_cast<PluginFieldType>(view.type), view.length);
        }
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return &mSerialCollection;
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, where() + "serialization failed: " + e.what());
        return nullptr;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// DrSparseDwConvPluginCreator

DrSparseDwConvPluginCreator::DrSparseDwConvPluginCreator()
{
    // Advertised types are the ONNX parser's natural ones; parseFields accepts the other widths too.
    for (std::string const& name : fieldNames())
    {
        PluginFieldType type = PluginFieldType::kINT32;
        if (name == "activation")
        {
            type = PluginFieldType::kCHAR;
        }
        else if (name == "activation_params" || name == "tap_values" || name == "bias")
        {
            type = PluginFieldType::kFLOAT32;
        }
        mFieldNames.emplace_back(name.c_str(), nullptr, type, 0);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* DrSparseDwConvPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DrSparseDwConvPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DrSparseDwConvPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* DrSparseDwConvPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* DrSparseDwConvPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    std::string const layer = name != nullptr ? name : "";
    try
    {
        if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            logMessage(ILogger::Severity::kERROR, "DRSparseDepthwiseConv node '" + layer + "': no plugin fields");
            return nullptr;
        }
        std::vector<FieldView> views;
        views.reserve(static_cast<size_t>(fc->nbFields));
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            views.push_back(
                FieldView{f.name != nullptr ? f.name : "", f.data, static_cast<FieldType>(f.type), f.length});
        }
        Params params;
        std::string const err = parseAndValidate(views, params);
        if (!err.empty())
        {
            logMessage(ILogger::Severity::kERROR, "node '" + layer + "': " + err);
            return nullptr;
        }
        return new DrSparseDwConvPlugin(layer, std::move(params));
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, "DRSparseDepthwiseConv node '" + layer + "': " + e.what());
        return nullptr;
    }
}

} // namespace drdw
} // namespace deprune
