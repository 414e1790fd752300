"""Click front end of deprune-onnx (installed as ``deprune_onnx.cli``; the console script is ``deprune-onnx``)."""
