/*
 * How TensorRT finds the DRSparseDepthwiseConv creator. Compiled into two libraries, never both registrations in
 * one library:
 *
 *  - libdeprune_trt_dynamic.so (default): exports `getCreators` and `setLoggerFinder`, the entry points of
 *    `trtexec --dynamicPlugins=...` and IPluginRegistry::loadLibrary (Python: registry.load_library). TensorRT owns
 *    the registration; the library registers nothing by itself.
 *  - libdeprune_trt.so (DEPRUNE_TRT_SELF_REGISTER): registers the creator with the process's plugin registry when
 *    the library is loaded, for `polygraphy run --plugins`, `trtexec --staticPlugins` and plain dlopen/ctypes.
 *    It skips registration when a creator of the same name/version/namespace is already registered (e.g. the
 *    dynamic library was loaded first), so one process never holds two.
 *
 * The self-registering library is not linked against libnvinfer (build machines need only the headers): it finds
 * getPluginRegistry/getLogger in the already-loaded libnvinfer (global symbols, then the loaded library by soname,
 * which also covers Python's RTLD_LOCAL import of tensorrt), loading it by soname only as a last resort.
 */
#include "drSparseDwConvPlugin.h"

#include <NvInferRuntime.h>

namespace
{

deprune::drdw::DrSparseDwConvPluginCreator& creator()
{
    static deprune::drdw::DrSparseDwConvPluginCreator instance;
    return instance;
}

} // namespace

#if defined(DEPRUNE_TRT_SELF_REGISTER)

#include <dlfcn.h>

namespace
{

void* findNvinferSymbol(char const* symbol)
{
    void* found = dlsym(RTLD_DEFAULT, symbol);
    char const* const sonames[] = {"libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so"};
    for (int flags : {RTLD_LAZY | RTLD_NOLOAD, RTLD_LAZY | RTLD_GLOBAL})
    {
        for (char const* soname : sonames)
        {
            if (found != nullptr)
            {
                return found;
            }
            if (void* handle = dlopen(soname, flags))
            {
                found = dlsym(handle, symbol); // the handle stays open: the registry lives in that library
            }
        }
    }
    return found;
}

class LibnvinferLoggerFinder : public nvinfer1::ILoggerFinder
{
public:
    explicit LibnvinferLoggerFinder(nvinfer1::ILogger* (*getLogger)() noexcept)
        : mGetLogger(getLogger)
    {
    }
    nvinfer1::ILogger* findLogger() override
    {
        return mGetLogger != nullptr ? mGetLogger() : nullptr;
    }

private:
    nvinfer1::ILogger* (*mGetLogger)() noexcept;
};

__attribute__((constructor)) void registerDrSparseDwConvCreator()
{
    using RegistryFn = nvinfer1::IPluginRegistry* (*) () noexcept;
    using LoggerFn = nvinfer1::ILogger* (*) () noexcept;
    auto const getRegistry = reinterpret_cast<RegistryFn>(findNvinferSymbol("getPluginRegistry"));
    static LibnvinferLoggerFinder finder(reinterpret_cast<LoggerFn>(findNvinferSymbol("getLogger")));
    deprune::drdw::setPluginLoggerFinder(&finder);
    nvinfer1::IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
    if (registry == nullptr)
    {
        deprune::drdw::logMessage(nvinfer1::ILogger::Severity::kERROR,
            "libdeprune_trt: libnvinfer (TensorRT 10/11) not found; DRSparseDepthwiseConv was not registered");
        return;
    }
    auto& c = creator();
    if (registry->getCreator(c.getPluginName(), c.getPluginVersion(), c.getPluginNamespace()) != nullptr)
    {
        return; // already registered (by the dynamic library or an earlier load): never register twice
    }
    if (!registry->registerCreator(c, c.getPluginNamespace()))
    {
        deprune::drdw::logMessage(
            nvinfer1::ILogger::Severity::kERROR, "libdeprune_trt: registering DRSparseDepthwiseConv failed");
    }
}

} // namespace

#else

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    deprune::drdw::setPluginLoggerFinder(finder);
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator()};
    nbCreators = 1;
    return creators;
}

#endif
