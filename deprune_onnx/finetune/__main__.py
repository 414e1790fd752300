"""``python -m deprune_onnx.finetune ...`` = ``deprune-onnx finetune ...``: the entry point for torchrun,
``torchrun --nproc_per_node N -m deprune_onnx.finetune PRUNED.onnx OUT.onnx --teacher ... --device cuda``."""
import sys

from deprune_onnx.cli.main import main

if __name__ == "__main__":
    main(["finetune", *sys.argv[1:]], prog_name="deprune-onnx")
