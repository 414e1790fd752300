"""Generate a large depthwise-separable ONNX model (weights in an external data file) for the speed benchmark.

The model is MobileNetV2-like but wide: ``blocks`` inverted-residual blocks of PW expand (C -> E) + Relu6,
DW 3x3 (E) + Relu6, PW project (E -> C) + residual Add, at 7x7, so almost all bytes are PW weights, as in real
wide models. Sizes are chosen to reach ``--gb`` gigabytes. Random weights (seeded), written with external data
beside the model. Never commit the output: it goes to a scratch folder (default: bench/.work, git-ignored).

    python bench/make_large_model.py --gb 1.6 --out bench/.work/large_1p6gb.onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 1024
EXPANDED = 4096
SPATIAL = 7


def _tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale), name)


def build(gigabytes: float, seed: int = 0) -> onnx.ModelProto:
    """A model of at least ``gigabytes`` GB (1e9 bytes) of float32 weights."""
    rng = np.random.default_rng(seed)
    block_bytes = 4 * (2 * CHANNELS * EXPANDED + EXPANDED * 9 + 2 * EXPANDED + CHANNELS)
    blocks = int(np.ceil(gigabytes * 1e9 / block_bytes))
    nodes, initializers = [], [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                                numpy_helper.from_array(np.array(6, np.float32), "six")]
    x = "input"
    for b in range(blocks):
        p = f"blocks.{b}"
        initializers += [
            _tensor(rng, f"{p}.expand.weight", (EXPANDED, CHANNELS, 1, 1), 1 / np.sqrt(CHANNELS)),
            _tensor(rng, f"{p}.expand.bias", (EXPANDED,), 0.1),
            _tensor(rng, f"{p}.dw.weight", (EXPANDED, 1, 3, 3), 1 / 3),
            _tensor(rng, f"{p}.dw.bias", (EXPANDED,), 0.1),
            _tensor(rng, f"{p}.project.weight", (CHANNELS, EXPANDED, 1, 1), 0.1 / np.sqrt(EXPANDED)),
            _tensor(rng, f"{p}.project.bias", (CHANNELS,), 0.1),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"{p}.expand.weight", f"{p}.expand.bias"], [f"{p}.e"],
                             name=f"{p}.expand", kernel_shape=[1, 1]),
            helper.make_node("Clip", [f"{p}.e", "zero", "six"], [f"{p}.ea"], name=f"{p}.expand_act"),
            helper.make_node("Conv", [f"{p}.ea", f"{p}.dw.weight", f"{p}.dw.bias"], [f"{p}.d"], name=f"{p}.dw",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=EXPANDED),
            helper.make_node("Clip", [f"{p}.d", "zero", "six"], [f"{p}.da"], name=f"{p}.dw_act"),
            helper.make_node("Conv", [f"{p}.da", f"{p}.project.weight", f"{p}.project.bias"], [f"{p}.p"],
                             name=f"{p}.project", kernel_shape=[1, 1]),
            helper.make_node("Add", [f"{p}.p", x], [f"{p}.out"], name=f"{p}.residual"),
        ]
        x = f"{p}.out"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["output"], name="pool"))
    graph = helper.make_graph(
        nodes, "large_dsconv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, CHANNELS, SPATIAL, SPATIAL])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, CHANNELS, 1, 1])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.6, help="weight bytes to reach, in GB (default 1.6)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / ".work" / "large.onnx")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model = build(args.gb, args.seed)
    onnx.save_model(model, str(args.out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=args.out.name + ".data", size_threshold=1024)
    size = args.out.stat().st_size + args.out.with_name(args.out.name + ".data").stat().st_size
    print(f"wrote {args.out} (+ .data): {size / 1e9:.2f} GB, {len(model.graph.node)} nodes")


if __name__ == "__main__":
    main()
