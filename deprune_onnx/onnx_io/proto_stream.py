"""Write a ModelProto to a file one initializer at a time, inline or with the weights in an external file.

Why: ``model.SerializeToString()`` builds the whole file in memory (a second copy of every weight) and
``onnx.save_model(..., save_as_external_data=True)`` mutates the model, so callers copy it first; both double
the peak memory of saving a big model. Protobuf's wire format lets a message be written as the concatenation
of its fields, and a repeated field as one record per element, so the model is written as: every top-level
field but the graph, then the graph's tag and length, the graph without its initializers, then each
initializer record. At most one tensor's bytes are copied at a time. The result parses to a model equal to the
input; it is byte-stable (same model -> same bytes), though not byte-equal to ``SerializeToString()``: fields
come in another order and the graph's length is a padded varint.
"""
from __future__ import annotations

from typing import Any, BinaryIO

import onnx
from onnx import numpy_helper

from deprune_onnx.progress import byte_progress

_WIRE_LENGTH_DELIMITED = 2
_MODEL_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_GRAPH_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
# Offsets of externalised tensors are aligned, so runtimes can memory-map them (page size).
EXTERNAL_ALIGNMENT = 4096
EXTERNAL_MIN_BYTES = 1024


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _fixed_varint(value: int) -> bytes:
    """A varint padded to 5 bytes (continuation bits on the first four): protobuf parsers accept any varint of
    up to 10 bytes, and a fixed width lets the graph's length be patched in after the graph is written."""
    if not 0 <= value < 1 << 35:
        raise ValueError(f"length {value} does not fit a 5-byte varint")
    return bytes([((value >> (7 * i)) & 0x7F) | (0x80 if i < 4 else 0) for i in range(5)])


def _record_header(field_number: int, length: int) -> bytes:
    return _varint((field_number << 3) | _WIRE_LENGTH_DELIMITED) + _varint(length)


def _is_repeated(descriptor: Any) -> bool:
    # protobuf >= 5.29 has is_repeated; 7.x dropped label.
    if hasattr(descriptor, "is_repeated"):
        return bool(descriptor.is_repeated)
    return descriptor.label == descriptor.LABEL_REPEATED


def _copy_fields_except(source: onnx.ModelProto | onnx.GraphProto, target: onnx.ModelProto | onnx.GraphProto,
                        skip: str) -> None:
    """Shallow-per-field copy of ``source`` into ``target`` leaving out one (big) field."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if _is_repeated(descriptor):
            getattr(target, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def _external_stub(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                            doc_string=tensor.doc_string, data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


def _tensor_payload(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()


def write_model(model: onnx.ModelProto, handle: BinaryIO, data_handle: BinaryIO | None = None,
                data_location: str = "") -> None:
    """Serialize ``model`` to ``handle`` (seekable); with ``data_handle``, initializers of >= 1 KiB go there.

    ``data_location`` is the data file's name relative to the model file, recorded in each moved tensor. The
    model itself is not modified. Every tensor is encoded exactly once (protobuf's ByteSize() costs as much as
    encoding), so the graph's length is written as a fixed-width varint and filled in at the end.
    """
    head = onnx.ModelProto()
    _copy_fields_except(model, head, "graph")
    skeleton = onnx.GraphProto()
    _copy_fields_except(model.graph, skeleton, "initializer")
    handle.write(head.SerializeToString(deterministic=True))
    handle.write(_varint((_MODEL_GRAPH_FIELD << 3) | _WIRE_LENGTH_DELIMITED))
    length_position = handle.tell()
    handle.write(_fixed_varint(0))
    graph_start = handle.tell()
    handle.write(skeleton.SerializeToString(deterministic=True))
    initializers = model.graph.initializer
    with byte_progress(sum(tensor_nbytes(t) for t in initializers), "write") as advance:
        for tensor in initializers:
            external = data_handle is not None and tensor.data_location != onnx.TensorProto.EXTERNAL and \
                tensor_nbytes(tensor) >= EXTERNAL_MIN_BYTES
            if external:
                offset = -data_handle.tell() % EXTERNAL_ALIGNMENT + data_handle.tell()
                data_handle.seek(offset)
                payload = _tensor_payload(tensor)
                data_handle.write(payload)
                record = _external_stub(tensor, data_location, offset, len(payload)).SerializeToString(
                    deterministic=True)
            else:
                record = tensor.SerializeToString(deterministic=True)
            handle.write(_record_header(_GRAPH_INITIALIZER_FIELD, len(record)))
            handle.write(record)
            advance(tensor_nbytes(tensor))
    end = handle.tell()
    handle.seek(length_position)
    handle.write(_fixed_varint(end - graph_start))
    handle.seek(end)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's values from its dims and type, without touching (or copying) the data."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):  # a type numpy cannot hold: measure it the slow way
        return tensor.ByteSize()
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * itemsize
