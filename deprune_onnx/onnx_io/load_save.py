"""Loading and saving ONNX models safely.

Why a module of its own: every command reads a user's model and writes a new file, and the rules are the same
everywhere. The input is only ever read; a bad file becomes one ``DepruneError`` line naming it; outputs are
written to a temporary file in the destination folder and renamed into place, so a crash or a concurrent writer
never leaves a partial file at the destination. Models whose weights exceed protobuf's 2 GB limit are written
with their tensors in one external data file beside the output (``<output>.data``).
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import onnx
from google.protobuf.message import DecodeError

from deprune_onnx.errors import DepruneError
from deprune_onnx.logging_utils import LOGGER
from deprune_onnx.onnx_io.graph import check_graph
from deprune_onnx.onnx_io.proto_stream import tensor_nbytes, write_model

MIN_OPSET = 11
# protobuf cannot serialise a message of 2 GiB or more; stay clearly below it.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise DepruneError(f"{path}: no such file")
    if path.is_dir():
        raise DepruneError(f"{path}: is a directory, not an ONNX file")
    if not path.is_file():  # a FIFO or device would block or stream forever
        raise DepruneError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise DepruneError(f"{path}: not readable (permission denied)")
    if path.stat().st_size == 0:
        raise DepruneError(f"{path}: empty file, not an ONNX model")


def default_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default ('' or 'ai.onnx') domain, or None when the model imports none."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX model (inline or external data) without ever modifying the file.

    Raises DepruneError with one line for: missing file, directory, unreadable, empty, not a protobuf model,
    no graph, opset below 11, missing external data file.
    """
    path = Path(path)
    _check_readable_file(path)
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise DepruneError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # protobuf's C++ backend raises its own types for truncated input
        raise DepruneError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise DepruneError(f"{path}: not an ONNX model (no graph or no nodes)")
    opset = default_opset(model)
    if opset is None:
        raise DepruneError(f"{path}: the model imports no default ONNX opset")
    if opset < MIN_OPSET:
        raise DepruneError(f"{path}: opset {opset} is not supported (need {MIN_OPSET} or newer; "
                           "upgrade with onnx.version_converter)")
    _load_external_data(model, path)
    check_graph(model, str(path))
    if model.ir_version < 4:
        _upgrade_constant_inputs(model, path)
    return model


def drop_initializer_inputs(model: onnx.ModelProto) -> list[str]:
    """Remove from the graph inputs every name that is also an initializer, in place; returns those names.

    From IR version 4 on, such an input is an overridable default (ONNX Runtime does not treat it as a
    constant), so its weight cannot be pruned; without the input it is a plain constant. This is what ONNX
    Runtime's tools/python/remove_initializer_from_input.py does. Callers that fed these inputs lose them.
    """
    initializers = {tensor.name for tensor in model.graph.initializer}
    dropped = [value.name for value in model.graph.input if value.name in initializers]
    kept = [value for value in model.graph.input if value.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return dropped


def _upgrade_constant_inputs(model: onnx.ModelProto, path: Path) -> None:
    """IR version < 4 lists every initializer as a graph input and treats it as a constant (the standard, and
    ONNX Runtime). Write that meaning in today's form: the inputs go, and the IR version becomes the oldest one
    the model's opsets allow (new initializers the tool adds would otherwise break IR 3's rule)."""
    dropped = drop_initializer_inputs(model)
    version = max(4, onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))
    LOGGER.warning("%s: IR version %d: its %d initializer input(s) are constants by the standard; the output is "
                   "IR version %d with them as plain initializers", path, model.ir_version, len(dropped), version)
    model.ir_version = version


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    base_dir = path.parent
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        data_path = (base_dir / location).resolve()
        if not location or not data_path.is_file():
            raise DepruneError(f"{path}: external data file '{location}' of tensor '{tensor.name}' not found")
    try:
        onnx.load_external_data_for_model(model, str(base_dir))
    except Exception as exc:
        raise DepruneError(f"{path}: cannot read external data ({type(exc).__name__}: {exc})") from None


def sidecar_path(output: str | os.PathLike[str], suffix: str) -> Path:
    """``out.onnx`` -> ``out<suffix>`` (e.g. ``out.report.json``) in the same folder."""
    output = Path(output)
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return output.with_name(stem + suffix)


def check_output_path(output: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> Path:
    """Refuse an output that would overwrite an input or that cannot be written, before any work is done."""
    output = Path(output)
    for source in inputs:
        source = Path(source)
        if source.exists() and output.exists() and os.path.samefile(source, output):
            raise DepruneError(f"{output}: output path is the input file; choose another output")
        if os.path.abspath(source) == os.path.abspath(output):
            raise DepruneError(f"{output}: output path is the input file; choose another output")
    directory = output.parent if str(output.parent) else Path(".")
    if not directory.is_dir():
        raise DepruneError(f"{output}: output directory '{directory}' does not exist")
    if output.is_dir():
        raise DepruneError(f"{output}: is a directory, expected an output file path")
    try:  # a real probe: os.access says yes to root on read-only mounts and pseudo file systems
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise DepruneError(f"{output}: output directory '{directory}' is not writable ({exc.strerror})") from None
    data_file = external_data_path(output)
    for source in inputs:
        if data_file.exists() and Path(source).is_file() and data_file.resolve() in _external_files(Path(source)):
            raise DepruneError(f"{output}: its external data file '{data_file.name}' is the input's external data; "
                               "choose another output name")
    return output


def external_data_path(output: str | os.PathLike[str]) -> Path:
    """Where ``save_model`` puts the weights of a model too big for one protobuf: ``<output>.data``."""
    output = Path(output)
    return output.with_name(output.name + ".data")


def _external_files(model_path: Path) -> set[Path]:
    """Resolved external data files an ONNX file refers to (empty when it cannot be parsed)."""
    try:
        model = onnx.load_model(str(model_path), load_external_data=False)
    except Exception:  # not a model: it refers to nothing, load_model reports the real problem
        return set()
    files = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                files.add((model_path.parent / entry.value).resolve())
    return files


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(tensor) for tensor in model.graph.initializer)


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Serialise the final renames of concurrent writers into one folder (flock on the folder itself, so no
    lock file is left behind): a model and its external data file are always replaced as a pair."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def save_model(model: onnx.ModelProto, output: str | os.PathLike[str]) -> Path:
    """Write ``model`` atomically; tensors go to ``<output>.data`` when the model is too big for one protobuf.

    The model proto is not modified and never serialised as a whole in memory (see proto_stream). Files are
    staged in a hidden temporary folder beside the output and renamed into place under a folder lock, so
    readers and concurrent writers never see a partial file and nothing is left behind on failure. Returns
    the output path; an OS error (disk full, permissions) becomes one DepruneError line.
    """
    output = Path(output)
    directory = output.parent if str(output.parent) else Path(".")
    external = _tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD_BYTES
    data_file = external_data_path(output)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=directory) as staging:
            staged_model = Path(staging) / output.name
            staged_data = Path(staging) / data_file.name
            with open(staged_model, "wb") as handle:
                if external:
                    with open(staged_data, "wb") as data_handle:
                        write_model(model, handle, data_handle, data_file.name)
                else:
                    write_model(model, handle)
            with _directory_lock(directory):
                if external:
                    os.replace(staged_data, data_file)
                os.replace(staged_model, output)
    except OSError as exc:
        raise DepruneError(f"{output}: cannot write ({exc.strerror or exc})") from None
    return output


def _umask() -> int:
    """The process umask, read without changing it where /proc says it (os.umask can only read by setting,
    which would briefly widen the mode of files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_bytes_atomic(output: str | os.PathLike[str], data: bytes) -> Path:
    """Write a file by temp file in the same folder + rename, so readers never see half of it and a failure
    leaves nothing behind; an OS error becomes one DepruneError line naming the file.

    The file gets the mode a plain ``open(output, "w")`` would give (0666 minus the umask, like the .onnx of
    save_model), not the 0600 of the temporary file it is staged in.
    """
    output = Path(output)
    directory = output.parent if str(output.parent) else Path(".")
    try:
        handle = tempfile.NamedTemporaryFile("wb", dir=directory, prefix=f".{output.name}.", delete=False)
    except OSError as exc:
        raise DepruneError(f"{output}: cannot write ({exc.strerror or exc})") from None
    try:
        with handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
        os.replace(handle.name, output)
    except BaseException as exc:
        Path(handle.name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DepruneError(f"{output}: cannot write ({exc.strerror or exc})") from None
        raise
    return output


def write_text_atomic(output: str | os.PathLike[str], text: str) -> Path:
    """Write a UTF-8 text file atomically (see write_bytes_atomic)."""
    return write_bytes_atomic(output, text.encode("utf-8"))


def write_json_atomic(output: str | os.PathLike[str], data: Any) -> Path:
    """JSON with sorted keys and a fixed layout, so equal data gives byte-identical files."""
    return write_text_atomic(output, json.dumps(data, indent=2, sort_keys=True) + "\n")
