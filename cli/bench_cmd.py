"""`deprune-onnx bench`: time every DRSparseDepthwiseConv layer of a pruned model on the GPU, ours vs cuDNN."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--batch", "batches", default="1,32", show_default=True,
              help="Batch sizes to time, comma-separated.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed CUDA-graph replays before timing each layer.")
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed CUDA-graph replays per layer (each a burst of back-to-back launches); the median "
                   "per launch is reported.")
@click.option("--kernel", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="Kernel version to time: 2 (what the plugin runs; faster than 1 in every group measured on an "
                   "H200, bench/results/gpu_h200_2026-11-30.md) or 1 (the first version, for comparison).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table.")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CMake build folder holding libdeprune_drdw_kernels.so (default: where build-plugin puts it: "
                   "build/native in a source checkout, else ~/.cache/deprune-onnx/native).")
def command(model: Path, batches: str, warmup: int, iters: int, kernel: str, as_json: bool,
            build_dir: Path | None) -> None:
    """Check and time each DRSparseDepthwiseConv layer of MODEL: our CUDA kernel vs PyTorch's cuDNN conv.

    Every layer runs in the model's precision at each batch size: the output is checked against a float64
    reference on the dense masked weights (op spec tolerance, poisoned output), then both kernels are timed from
    CUDA-graph replays of back-to-back launches over rotating inputs (median per launch after warm-up; no CPU
    launch overhead, no L2 reuse). The table shows each layer's distance from its memory floor (bytes it
    must move / measured copy bandwidth) and totals per batch. Needs a CUDA GPU, PyTorch and the kernel library
    (`deprune-onnx build-plugin`); exits 2 with one line when one is missing, 1 when a layer is wrong.

    \b
    Example:
      deprune-onnx build-plugin
      deprune-onnx prune model.onnx pruned.onnx --method bh --dw-ratio 0.5
      deprune-onnx bench pruned.onnx --batch 1,32 --iters 50
    """
    from deprune_onnx.errors import CheckFailed, DepruneError
    from deprune_onnx.progress import count_progress
    from deprune_onnx.trt import layer_bench as lb

    if not model.is_file():
        raise DepruneError(f"{model}: no such file")
    batch_sizes = lb.parse_batches(batches)
    layers = lb.load_bench_layers(model)
    torch, library = lb.require_gpu_stack(build_dir)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False  # a float32 baseline computes in float32, like our kernel
    bandwidth = lb.copy_bandwidth_gbs(torch)
    results = []
    with count_progress(len(layers) * len(batch_sizes), "bench", unit="layer") as advance:
        for batch in batch_sizes:
            for index, layer in enumerate(layers):
                result, _ = lb.measure_layer(torch, library, layer, batch, layer.model_dtype, warmup=warmup,
                                             iters=iters, bandwidth_gbs=bandwidth, seed=index, version=int(kernel))
                results.append(result)
                advance(1)
    totals = lb.summarize(results)
    if as_json:
        click.echo(json.dumps({
            "model": str(model), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "kernel_library": str(library.path), "warmup": warmup,
            "iters": iters, "copy_bandwidth_gbs": bandwidth, "layers": [r.to_dict() for r in results],
            "totals": totals}, indent=2))
    else:
        click.echo(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth:.0f} GB/s, {iters} timed runs per "
                   "layer (median)")
        for line in lb.format_table(results, totals):
            click.echo(line)
    failures = sum(not r.ok for r in results)
    if failures:
        raise CheckFailed(f"{failures} layer run(s) outside the op spec's tolerance or with unwritten output")
