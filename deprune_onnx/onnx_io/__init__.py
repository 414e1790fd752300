"""Loading and saving ONNX models (inline or external data, atomic writes, streaming writer), shape
inference, the graph index, and float16 conversion: everything that touches the ONNX file format.
"""
