"""Building a TensorRT engine from a model that holds DRSparseDepthwiseConv nodes.

Why this is more than `trtexec`: the build must prove that every custom node really runs as our plugin. The
TensorRT ONNX parser of TensorRT 10.0-10.x (before the `plugin_namespace` check of later parsers) silently prefers
a model-local ONNX function of the same name, and a missing plugin would otherwise only surface as a parse error
deep in a log, so we count the plugin layers against the model's nodes and refuse the engine when they differ
(docs/tensorrt.md, "Verified against", has the parser facts this relies on). `tensorrt` is imported only inside these functions: the rest of deprune-onnx
never needs it. Every failure is one DepruneError line.
"""
from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.load_save import write_bytes_atomic
from deprune_onnx.op.spec import OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION, custom_nodes

Shape = tuple[int, ...]


@dataclass
class EngineBuild:
    """Outcome of build_engine: where the engine went and what TensorRT made of the network."""

    engine_path: Path
    plugin_layers: int
    layers: list[str] = field(default_factory=list)
    tensorrt_version: str = ""


def parse_shapes(spec: str | None, option: str) -> dict[str, Shape]:
    """Parse trtexec-style shapes 'input:1x3x224x224,other:1x10' into {name: (1, 3, 224, 224), ...}."""
    if not spec:
        return {}
    shapes: dict[str, Shape] = {}
    for item in spec.split(","):
        name, sep, dims = item.strip().rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d < 0 for d in shape):
            raise DepruneError(f"{option}: '{item}' is not NAME:DxDxD (e.g. input:1x3x224x224)")
        shapes[name] = shape
    return shapes


def import_tensorrt() -> Any:
    """`import tensorrt`, or one line saying how to get it."""
    try:
        import tensorrt  # noqa: PLC0415 - lazy on purpose
    except ImportError as exc:
        raise DepruneError(f"TensorRT Python package not available ({exc}); install TensorRT 10 or 11 "
                           "(pip install tensorrt) on a machine with an NVIDIA GPU") from None
    return tensorrt


def check_cuda_device() -> None:
    """Fail with one line when there is no NVIDIA driver or no visible GPU (before TensorRT prints pages of errors)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise DepruneError("no NVIDIA driver found (libcuda.so.1 cannot be loaded); build-engine needs a CUDA GPU") \
            from None
    status = driver.cuInit(0)
    count = ctypes.c_int(0)
    if status != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        raise DepruneError(f"no usable CUDA GPU (cuInit status {status}, {count.value} device(s)); "
                           "check CUDA_VISIBLE_DEVICES and the driver")


def load_plugin_library(trt: Any, path: Path) -> None:
    """Make the DRSparseDepthwiseConv creator known to TensorRT's registry.

    The self-registering libdeprune_trt.so registers when loaded; libdeprune_trt_dynamic.so exports getCreators
    and is handed to the registry (what trtexec --dynamicPlugins does). Either way the creator must be there after.
    """
    if not path.is_file():
        raise DepruneError(f"{path}: plugin library not found")
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:
        raise DepruneError(f"{path}: cannot load plugin library ({exc})") from None
    registry = trt.get_plugin_registry()
    if hasattr(library, "getCreators") and registry.load_library(str(path)) is None:
        raise DepruneError(f"{path}: TensorRT refused the plugin library (already registered by another library?)")
    get_creator = getattr(registry, "get_creator", None) or registry.get_plugin_creator
    if get_creator(OP_TYPE, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        found = [f"'{getattr(c, 'plugin_namespace', '?')}'::{getattr(c, 'name', '?')} "
                 f"v{getattr(c, 'plugin_version', '?')}" for c in (getattr(registry, "all_creators", None) or [])
                 if getattr(c, "name", None) == OP_TYPE]
        raise DepruneError(f"{path}: loaded, but no {PLUGIN_NAMESPACE}::{OP_TYPE} v{PLUGIN_VERSION} creator was "
                           f"registered (registered under that name: {', '.join(found) or 'none'}; wrong library "
                           "or TensorRT version?)")


def count_custom_nodes(model_path: Path) -> int:
    """Number of DRSparseDepthwiseConv nodes in the main graph (weights are not loaded)."""
    import onnx  # noqa: PLC0415

    try:
        model = onnx.load_model(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own types for truncated input
        raise DepruneError(f"{model_path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    return len(custom_nodes(model))


def _plugin_layer_names(trt: Any, network: Any) -> list[str]:
    """Names of the network's IPluginV3 layers whose plugin is ours (name and namespace, read from its core)."""
    names = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type != trt.LayerType.PLUGIN_V3:
            continue
        layer.__class__ = trt.IPluginV3Layer  # get_layer returns an ILayer; Polygraphy downcasts the same way
        core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        if core is not None and (core.plugin_name, core.plugin_namespace) == (OP_TYPE, PLUGIN_NAMESPACE):
            names.append(layer.name)
    return names


def _optimization_profile(trt: Any, builder: Any, network: Any, shapes: dict[str, dict[str, Shape]]) -> Any | None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [tensor for tensor in inputs if any(d < 0 for d in tensor.shape)]
    known = {tensor.name for tensor in inputs}
    for kind, per_input in shapes.items():
        for name in per_input:
            if name not in known:
                raise DepruneError(f"--{kind}-shapes: the network has no input '{name}' (inputs: {', '.join(known)})")
    if not dynamic:
        return None
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        given = [shapes[kind].get(tensor.name) for kind in ("min", "opt", "max")]
        if any(shape is None for shape in given):
            raise DepruneError(f"input '{tensor.name}' has dynamic shape {list(tensor.shape)}; give it in "
                               "--min-shapes, --opt-shapes and --max-shapes (e.g. "
                               f"{tensor.name}:1x3x224x224)")
        profile.set_shape(tensor.name, *given)
    return profile


def _engine_layers(trt: Any, logger: Any, serialized: Any) -> list[str]:
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise DepruneError("TensorRT could not deserialize the engine it just built")
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    lines = []
    for layer in info.get("Layers", []):
        if isinstance(layer, dict):
            lines.append(f"{layer.get('Name', '?')}  [{layer.get('LayerType', '?')}]")
        else:
            lines.append(str(layer))
    return lines


def build_engine(model_path: Path, engine_path: Path, plugin: Path | None = None, *, workspace_mb: int | None = None,
                 timing_cache: Path | None = None, shapes: dict[str, dict[str, Shape]] | None = None) -> EngineBuild:
    """Parse ``model_path`` with the plugin loaded, check every custom node became a plugin layer, write the engine.

    ``plugin`` defaults to the library `build-plugin` made (or $DEPRUNE_TRT_PLUGIN); it is looked up only after
    TensorRT and a GPU were found, so the first missing piece is the one reported. ``shapes`` maps 'min'/'opt'/'max' to {input name: shape} for dynamic inputs. The engine and the timing cache are
    written atomically. Raises DepruneError (one line) when TensorRT, a GPU or the plugin is missing, when parsing
    or building fails, or when a DRSparseDepthwiseConv node did not become a plugin layer.
    """
    expected = count_custom_nodes(model_path)
    trt = import_tensorrt()
    check_cuda_device()
    if plugin is None:
        from deprune_onnx.trt.native import plugin_library  # noqa: PLC0415
        plugin = plugin_library("plugin")
    load_plugin_library(trt, plugin)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise DepruneError("TensorRT could not create a builder (no usable GPU?)")
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # precision comes from the model
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise DepruneError(f"{model_path}: TensorRT could not parse the model: {errors}")

    plugin_layers = _plugin_layer_names(trt, network)
    if len(plugin_layers) != expected:
        raise DepruneError(f"{model_path}: {expected} {OP_TYPE} node(s) but {len(plugin_layers)} plugin layer(s) "
                           "after parsing; the model may define a local function that shadows the plugin")

    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = _optimization_profile(trt, builder, network, shapes or {"min": {}, "opt": {}, "max": {}})
    if profile is not None:
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DepruneError(f"{model_path}: TensorRT failed to build the engine (see the messages above)")
    write_bytes_atomic(engine_path, bytes(serialized))
    if cache is not None:
        write_bytes_atomic(timing_cache, bytes(cache.serialize()))
    return EngineBuild(engine_path, len(plugin_layers), _engine_layers(trt, logger, serialized),
                       getattr(trt, "__version__", ""))
