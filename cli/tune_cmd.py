"""`deprune-onnx tune`: time our kernel against the native DW conv on every pruned layer, for `--format auto`."""
from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

import click


@click.command("tune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Timings file to write (JSON), for `prune --format auto --timings`.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="The batch size you deploy with: the decision holds for that batch.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed CUDA-graph replays before timing each layer.")
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed CUDA-graph replays per layer (median per launch).")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CMake build folder holding libdeprune_drdw_kernels.so (default: build/native).")
def command(model: Path, output_path: Path, batch: int, warmup: int, iters: int, build_dir: Path | None) -> None:
    """Time each DRSparseDepthwiseConv layer of MODEL against the native DW conv, and write a timings file.

    MODEL is a model pruned with `--format plugin` (the default). Every layer runs in the model's precision at
    --batch: our kernel (checked against a float64 reference first) and PyTorch's cuDNN depthwise conv on the same
    masked weights, each timed from CUDA-graph replays. `prune --format auto --timings FILE`, with the same
    pruning options (or `--plan` of this model's plan), then rewrites only the layers where ours was faster.
    Needs a CUDA GPU, PyTorch and the kernel library (`deprune-onnx build-plugin`); exits 2 with one line when one
    is missing.

    \b
    Example:
      deprune-onnx prune model.onnx pruned.onnx --method bh --dw-ratio 0.5
      deprune-onnx tune pruned.onnx -o timings.json --batch 1
      deprune-onnx prune model.onnx auto.onnx --plan pruned.plan.json --format auto --timings timings.json
    """
    from deprune_onnx.errors import DepruneError
    from deprune_onnx.onnx_io.load_save import check_output_path, write_json_atomic
    from deprune_onnx.progress import count_progress
    from deprune_onnx.trt import layer_bench as lb
    from deprune_onnx.trt.layer_choice import timings_document

    if not model.is_file():
        raise DepruneError(f"{model}: no such file")
    output = check_output_path(output_path, model)
    layers = lb.load_bench_layers(model)
    torch, library = lb.require_gpu_stack(build_dir)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    bandwidth = lb.copy_bandwidth_gbs(torch)
    results = []
    with count_progress(len(layers), "tune", unit="layer") as advance:
        for index, layer in enumerate(layers):
            result, _ = lb.measure_layer(torch, library, layer, batch, layer.model_dtype, warmup=warmup,
                                         iters=iters, bandwidth_gbs=bandwidth, seed=index)
            results.append(result)
            advance(1)
    document = timings_document(
        results, {layer.name: layer.kept_taps for layer in layers}, device=torch.cuda.get_device_name(),
        batch=batch, dtype=layers[0].model_dtype, command=shlex.join(["deprune-onnx", *sys.argv[1:]]),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(output, document)
    for line in lb.format_table(results, lb.summarize(results)):
        click.echo(line)
    faster = sum(r.ok and r.ours_us < r.cudnn_us for r in results)
    click.echo(f"ours faster on {faster} of {len(results)} layer(s) at batch {batch}; wrote {output}")
