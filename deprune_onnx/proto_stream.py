"""Write a ModelProto to a file one initializer at a time, inline or with the weights in an external file.

Why: ``model.SerializeToString()`` builds the whole file in memory (a second copy of every weight) and
``onnx.save_model(..., save_as_external_data=True)`` mutates the model, so callers copy it first; both double
the peak memory of saving a big model. Protobuf's wire format lets a message be written as the concatenation
of its fields, and a repeated field as one record per element, so the model is written as: every top-level
field but the graph, then the graph's header (tag + length, computed from ``ByteSize()``), the graph without
its initializers, then each initializer record. At most one tensor's bytes are copied at a time. The result
parses to a model equal to the input; it is byte-stable (same model -> same bytes).
"""
from __future__ import annotations

from typing import Any, BinaryIO

import onnx
from onnx import numpy_helper

from deprune_onnx.progress import byte_progress, progress

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
    """Serialize ``model`` to ``handle``; with ``data_handle``, initializers of >= 1 KiB go there instead.

    ``data_location`` is the data file's name relative to the model file, recorded in each moved tensor. The
    model itself is not modified.
    """
    head = onnx.ModelProto()
    _copy_fields_except(model, head, "graph")
    skeleton = onnx.GraphProto()
    _copy_fields_except(model.graph, skeleton, "initializer")
    records: list[onnx.TensorProto | int] = []  # a stub to write, or the index of an inline initializer
    graph_length = skeleton.ByteSize()
    initializers = model.graph.initializer
    for position, tensor in enumerate(progress(initializers, "write data", unit="tensor") if data_handle
                                      else initializers):
        external = data_handle is not None and tensor.data_location != onnx.TensorProto.EXTERNAL and \
            _payload_size(tensor) >= EXTERNAL_MIN_BYTES
        if external:
            offset = -data_handle.tell() % EXTERNAL_ALIGNMENT + data_handle.tell()
            data_handle.seek(offset)
            payload = _tensor_payload(tensor)
            data_handle.write(payload)
            stub = _external_stub(tensor, data_location, offset, len(payload))
            records.append(stub)
            size = stub.ByteSize()
        else:
            records.append(position)
            size = tensor.ByteSize()
        graph_length += len(_record_header(_GRAPH_INITIALIZER_FIELD, size)) + size
    handle.write(head.SerializeToString(deterministic=True))
    handle.write(_record_header(_MODEL_GRAPH_FIELD, graph_length))
    handle.write(skeleton.SerializeToString(deterministic=True))
    with byte_progress(graph_length, "write") as advance:
        for record in records:
            message = model.graph.initializer[record] if isinstance(record, int) else record
            payload = message.SerializeToString(deterministic=True)
            handle.write(_record_header(_GRAPH_INITIALIZER_FIELD, len(payload)))
            handle.write(payload)
            advance(len(payload))


def _payload_size(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's data without copying it (raw_data or typed fields)."""
    if tensor.HasField("raw_data"):
        return tensor.ByteSize()  # dominated by raw_data; exact size is not needed for the threshold
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize \
        if tensor.data_type != onnx.TensorProto.STRING else 0
