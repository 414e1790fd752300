/*
 * drdw_host_tool: the host core, driven from the Python tests.
 *
 *   drdw_host_tool shape FIELDS N H W            parse+validate, print "output N C Ho Wo", workspace and plan
 *   drdw_host_tool reserialize FIELDS OUT        parse, serializeFields, write them back as a field file
 *   drdw_host_tool spec                          print the plugin's identity, field names and defaults as JSON
 *
 * The kernels themselves run on the CPU through drdw_emu_tool (emuTool.cpp, their real device code). Exit code 2
 * and one stderr line on any error.
 */
#include "../drSparseDwConvCore.h"
#include "../drSparseDwConvIndex.h"
#include "fieldFile.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

using namespace deprune::drdw;

namespace
{

int fail(std::string const& message)
{
    std::fprintf(stderr, "drdw_host_tool: %s\n", message.c_str());
    return 2;
}

int32_t toInt(char const* text)
{
    return static_cast<int32_t>(std::strtol(text, nullptr, 10));
}

int runReserialize(Params const& params, std::string const& outPath)
{
    std::vector<int32_t> scratch;
    std::string activation;
    std::vector<FieldView> const views = serializeFields(params, scratch, activation);
    std::ofstream out(outPath, std::ios::binary);
    out.write("DRDWFLD1", 8);
    uint32_t const count = static_cast<uint32_t>(views.size());
    out.write(reinterpret_cast<char const*>(&count), sizeof(count));
    for (FieldView const& v : views)
    {
        uint32_t const nameBytes = static_cast<uint32_t>(v.name.size());
        int32_t const type = static_cast<int32_t>(v.type);
        uint64_t const elementBytes = v.type == FieldType::kCHAR ? 1 : 4; // serializeFields emits INT32/FLOAT32/CHAR
        uint64_t const dataBytes = elementBytes * static_cast<uint64_t>(v.length);
        out.write(reinterpret_cast<char const*>(&nameBytes), sizeof(nameBytes));
        out.write(v.name.data(), nameBytes);
        out.write(reinterpret_cast<char const*>(&type), sizeof(type));
        out.write(reinterpret_cast<char const*>(&v.length), sizeof(v.length));
        out.write(reinterpret_cast<char const*>(&dataBytes), sizeof(dataBytes));
        out.write(static_cast<char const*>(v.data), static_cast<std::streamsize>(dataBytes));
    }
    return out ? 0 : fail(outPath + ": write failed");
}

// What the C++ side believes the spec says: the plugin identity, the creator's field names and the defaults of a
// default-constructed Params (the values parseFields applies to absent optional fields). tests/test_plugin_host.py
// compares this JSON with DRSparseDepthwiseConv_PluginConfig.yaml.
int printSpec()
{
    Params const d{};
    auto ints = [](std::initializer_list<int32_t> values) {
        std::string out = "[";
        for (int32_t v : values)
        {
            out += (out.size() > 1 ? ", " : "") + std::to_string(v);
        }
        return out + "]";
    };
    std::printf("{\"name\": \"%s\", \"version\": \"%s\", \"namespace\": \"%s\", \"max_kernel\": %d,\n", kPluginName,
        kPluginVersion, kPluginNamespace, kMaxKernel);
    std::string names;
    for (std::string const& name : fieldNames())
    {
        names += (names.empty() ? "\"" : ", \"") + name + "\"";
    }
    std::printf(" \"fields\": [%s],\n", names.c_str());
    std::string activations;
    for (int32_t a = 0; *activationName(a) != '\0'; ++a)
    {
        activations += (activations.empty() ? "\"" : ", \"") + std::string(activationName(a)) + "\"";
    }
    std::printf(" \"activations\": [%s],\n", activations.c_str());
    std::string floats;
    for (float v : d.activationParams)
    {
        char text[32];
        std::snprintf(text, sizeof(text), "%.9g", static_cast<double>(v));
        floats += (floats.empty() ? "" : ", ") + std::string(text);
    }
    std::printf(" \"defaults\": {\"depth_multiplier\": %d, \"strides\": %s, \"pads\": %s, \"dilations\": %s, "
                "\"subgemm_channels\": %d, \"k_tile\": %d, \"activation\": \"%s\", \"activation_params\": [%s]}}\n",
        d.depthMultiplier, ints({d.strideH, d.strideW}).c_str(),
        ints({d.padTop, d.padLeft, d.padBottom, d.padRight}).c_str(), ints({d.dilationH, d.dilationW}).c_str(),
        d.subgemmChannels, d.kTile, activationName(d.activation), floats.c_str());
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 2 && std::string(argv[1]) == "spec")
    {
        return printSpec();
    }
    if (argc < 3)
    {
        return fail("usage: drdw_host_tool shape|reserialize FIELDS ... | spec");
    }
    std::string const command = argv[1];
    FieldFile file;
    std::string err = readFieldFile(argv[2], file);
    Params params;
    if (err.empty())
    {
        err = parseAndValidate(file.fields, params);
    }
    if (!err.empty())
    {
        return fail(err);
    }
    if (command == "shape" && argc == 6)
    {
        OutputShape shape{};
        int32_t const n = toInt(argv[3]);
        int32_t const h = toInt(argv[4]);
        int32_t const w = toInt(argv[5]);
        err = outputShape(params, h, w, shape);
        if (!err.empty())
        {
            return fail(err);
        }
        std::printf("output %d %d %d %d\n", n, shape.channels, shape.height, shape.width);
        std::printf("workspace %zu\n", workspaceBytes(params, n, h, w));
        std::printf("subgemms %d taps %d\n", params.subgemmCount(), subgemmOffsets(params).back());
        return 0;
    }
    if (command == "reserialize" && argc == 4)
    {
        return runReserialize(params, argv[3]);
    }
    return fail("bad arguments for '" + command + "'");
}
