"""TensorRT side of deprune-onnx: building the native plugin (native) and engines (engine).

`tensorrt` is never imported at module level here; only engine.build_engine imports it, lazily.
"""
