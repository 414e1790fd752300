/*
 * Reader of the "plugin field file" the Python tests write (tests/plugin_fieldfile.py): the same
 * (name, PluginFieldType, length, bytes) tuples the TensorRT ONNX parser hands to createPlugin, so the host core
 * is tested on exactly what the Python packer produced, through a file.
 *
 * Layout (little endian): "DRDWFLD1", u32 count, then per field: u32 name bytes, name, i32 type, i32 length,
 * u64 data bytes, data.
 */
#ifndef DEPRUNE_DR_SPARSE_DWCONV_FIELD_FILE_H
#define DEPRUNE_DR_SPARSE_DWCONV_FIELD_FILE_H

#include "../drSparseDwConvCore.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace deprune
{
namespace drdw
{

//! Owns the bytes behind the FieldViews it returns.
struct FieldFile
{
    std::vector<std::vector<char>> storage;
    std::vector<FieldView> fields;
};

inline std::string readFieldFile(std::string const& path, FieldFile& out)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
    {
        return path + ": cannot open";
    }
    char magic[8];
    uint32_t count = 0;
    if (!in.read(magic, 8) || std::memcmp(magic, "DRDWFLD1", 8) != 0
        || !in.read(reinterpret_cast<char*>(&count), sizeof(count)))
    {
        return path + ": not a DRDWFLD1 field file";
    }
    out.storage.resize(count);
    for (uint32_t i = 0; i < count; ++i)
    {
        uint32_t nameBytes = 0;
        int32_t type = 0;
        int32_t length = 0;
        uint64_t dataBytes = 0;
        std::string name;
        if (!in.read(reinterpret_cast<char*>(&nameBytes), sizeof(nameBytes)))
        {
            return path + ": truncated";
        }
        name.resize(nameBytes);
        if (!in.read(&name[0], nameBytes) || !in.read(reinterpret_cast<char*>(&type), sizeof(type))
            || !in.read(reinterpret_cast<char*>(&length), sizeof(length))
            || !in.read(reinterpret_cast<char*>(&dataBytes), sizeof(dataBytes)))
        {
            return path + ": truncated";
        }
        // Over-allocate by 8 bytes so an empty field still has a valid, aligned data pointer.
        out.storage[i].resize(dataBytes + 8);
        if (dataBytes > 0 && !in.read(out.storage[i].data(), static_cast<std::streamsize>(dataBytes)))
        {
            return path + ": truncated";
        }
        out.fields.push_back(FieldView{name, out.storage[i].data(), static_cast<FieldType>(type), length});
    }
    return "";
}

} // namespace drdw
} // namespace deprune

#endif // DEPRUNE_DR_SPARSE_DWCONV_FIELD_FILE_H
