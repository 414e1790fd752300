"""End-to-end check on a model above protobuf's 2 GB limit: load (external data), prune, save, verify.

Generates a >= 2.2 GB DSConv model (bench/make_large_model.py), runs ``deprune-onnx prune`` on it as a user
would, then checks that the output's weights went to ``<output>.data``, that it loads and runs in ONNX
Runtime, that every DW weight is the input's weight times the plan's mask and that every other initializer is
unchanged. Writes bench/results/large_model_e2e.md and deletes the generated files.

    python bench/large_model_e2e.py --gb 2.2
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from deprune_onnx.plan import decode_mask

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.2)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "e2e")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "large_model_e2e.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    source, output = args.work / "big.onnx", args.work / "pruned.onnx"
    try:
        subprocess.run([sys.executable, str(HERE / "make_large_model.py"), "--gb", str(args.gb), "--out",
                        str(source)], check=True)
        command = [sys.executable, "-m", "deprune_onnx.cli.main", "prune", str(source), str(output),
                   "--method", "bh", "--dw-ratio", "0.5", "-q"]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        data = output.with_name(output.name + ".data")
        assert data.is_file() and output.stat().st_size < 10_000_000, "weights must be in the .data file"
        original, pruned = onnx.load(str(source)), onnx.load(str(output))
        plan = json.loads(output.with_name("pruned.plan.json").read_text())
        dw_weights = {}
        nodes = {node.name: node for node in original.graph.node}
        for layer in plan["dw_layers"]:
            dw_weights[nodes[layer["name"]].input[1]] = decode_mask(layer["mask"], tuple(layer["shape"]))
        after = {t.name: t for t in pruned.graph.initializer}
        for tensor in original.graph.initializer:
            want = numpy_helper.to_array(tensor)
            if tensor.name in dw_weights:
                want = np.where(dw_weights[tensor.name], want, 0).astype(want.dtype)
            np.testing.assert_array_equal(numpy_helper.to_array(after[tensor.name]), want)
        del original, pruned
        session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        feeds = {"input": np.random.default_rng(0).standard_normal((1, 1024, 7, 7)).astype(np.float32)}
        result = session.run(None, feeds)[0]
        assert np.all(np.isfinite(result))
        size = (source.stat().st_size + source.with_name(source.name + ".data").stat().st_size) / 1e9
        report = "\n".join([
            "# > 2 GB model, end to end", "",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- model: generated DSConv, {size:.2f} GB of weights in external data, {len(dw_weights)} DW layers",
            f"- `deprune-onnx prune --method bh --dw-ratio 0.5`: {seconds:.1f} s; output {output.stat().st_size:,} "
            f"bytes + `{data.name}` {data.stat().st_size / 1e9:.2f} GB",
            "- checked: every DW weight = input weight x plan mask, every other initializer unchanged, the output "
            "runs in ONNX Runtime (CPU) with finite results", ""])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(report)
    finally:
        shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
