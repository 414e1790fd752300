"""Benchmark: whole-process wall time and peak RSS of pruning vs. a plain load+save vs. Polygraphy.

For each model, side by side, each command as its own process (peak RSS from wait4's rusage of that child):
  (a) python -c onnx.load + onnx.save       (the floor: reading and writing the same bytes)
  (b) deprune-onnx prune --method bh ...    (with PW pruning / plugin rewrite flags when this build has them)
  (c) polygraphy surgeon prune              (2:4 structured pruning of every weight, NVIDIA's tool)
Targets (issue 5): (b) <= 3x (a) in time; (b) >= 10x faster than (c); peak RSS of (b) <= 2x model + 200 MB.
Writes a Markdown table with the machine description to bench/results/prune_speed.md. Not a test.

    python bench/prune_speed.py                       # MobileNetV2 + a generated 1.6 GB model
    python bench/prune_speed.py --large-gb 2.2        # a > 2 GB model (external data in and out)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MOBILENET = REPO.parent / "shared" / "models" / "mobilenet_v2_torchvision.onnx"
PROTOBUF_LIMIT = 1_800_000_000

LOAD_SAVE = """
import os, sys, onnx
model = onnx.load(sys.argv[1])
big = sum(os.path.getsize(p) for p in (sys.argv[1], sys.argv[1] + '.data') if os.path.exists(p)) >= {limit}
onnx.save(model, sys.argv[2], save_as_external_data=big, location=sys.argv[2].rsplit('/', 1)[-1] + '.data')
""".format(limit=PROTOBUF_LIMIT)


@dataclass
class Run:
    label: str
    command: list[str]
    wall_s: float
    peak_rss_mb: float
    exit_code: int
    note: str = ""


def measure(label: str, command: list[str], timeout_s: float) -> Run:
    """Run ``command``; wall time and the peak RSS of that very child process (os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return Run(label, command, time.perf_counter() - start, usage.ru_maxrss / 1024, -9,
                       f"killed after {timeout_s:.0f} s")
        time.sleep(0.02)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    note = stderr.splitlines()[-1][:160] if proc.returncode and stderr else ""
    return Run(label, command, wall, usage.ru_maxrss / 1024, proc.returncode, note)


def model_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def deprune_flags() -> list[str]:
    """PW pruning and the plugin rewrite when this build offers them (read from --help and a trial run)."""
    help_text = subprocess.run([sys.executable, "-m", "deprune_onnx.cli.main", "prune", "--help"],
                               capture_output=True, text=True).stdout
    flags = ["--method", "bh", "--dw-ratio", "0.5"]
    if "--pw-ratio" in help_text:
        flags += ["--pw-ratio", "0.5"]
    scratch = HERE / ".work" / "flag_probe"
    scratch.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run([sys.executable, "-m", "deprune_onnx.cli.main", "prune", str(MOBILENET),
                            str(scratch / "probe.onnx"), "--format", "plugin", "-q", *flags],
                           capture_output=True, text=True)
    shutil.rmtree(scratch)
    flags += ["--format", "plugin" if probe.returncode == 0 else "dense"]
    return flags + ["-q"]


def polygraphy_command(source: Path, output: Path) -> list[str]:
    polygraphy = shutil.which("polygraphy") or "polygraphy"
    command = [polygraphy, "surgeon", "prune", str(source), "-o", str(output), "--silent"]
    if model_bytes(source) >= PROTOBUF_LIMIT or source.with_name(source.name + ".data").exists():
        command += ["--external-data-dir", str(source.parent), "--save-external-data", output.name + ".data"]
    return command


def bench_model(source: Path, flags: list[str], scratch: Path, timeout_s: float) -> tuple[int, list[Run]]:
    runs = []
    for label, make in (
        ("(a) onnx.load + onnx.save", lambda out: [sys.executable, "-c", LOAD_SAVE, str(source), str(out)]),
        ("(b) deprune-onnx prune", lambda out: [sys.executable, "-m", "deprune_onnx.cli.main", "prune",
                                                str(source), str(out), *flags]),
        ("(c) polygraphy surgeon prune", lambda out: polygraphy_command(source, out)),
    ):
        out_dir = scratch / label[1]
        out_dir.mkdir(parents=True, exist_ok=True)
        runs.append(measure(label, make(out_dir / "out.onnx"), timeout_s))
        shutil.rmtree(out_dir)
        print(f"  {label:<32} {runs[-1].wall_s:8.2f} s  {runs[-1].peak_rss_mb:8.0f} MB  exit {runs[-1].exit_code}",
              flush=True)
    return model_bytes(source), runs


def machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = next((int(line.split()[1]) / 1024 / 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0.0)
    import numpy
    import onnx
    import onnxruntime
    import polygraphy
    import google.protobuf
    return [f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- CPU: {cpu}, {os.cpu_count()} logical cores; RAM {ram:.1f} GiB; {platform.platform()}",
            f"- python {platform.python_version()}, onnx {onnx.__version__}, protobuf {google.protobuf.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, polygraphy {polygraphy.__version__}, numpy {numpy.__version__}",
            f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`"]


def render(results: list[tuple[str, int, list[Run]]], flags: list[str]) -> str:
    lines = ["# prune speed: deprune-onnx vs. load+save vs. Polygraphy", "", *machine(),
             f"- deprune-onnx flags: `{' '.join(flags)}`", "",
             "| model | size | command | wall (s) | peak RSS (MB) | time / (a) | exit |",
             "|---|---:|---|---:|---:|---:|---:|"]
    verdicts = []
    for name, size, runs in results:
        base = runs[0].wall_s
        for run in runs:
            more = "> " if run.exit_code == -9 else ""  # killed at the timeout
            lines.append(f"| {name} | {size / 1e6:,.0f} MB | {run.label} | {more}{run.wall_s:.2f} "
                         f"| {run.peak_rss_mb:,.0f} | {more}{run.wall_s / base:.2f}x "
                         f"| {run.exit_code}{' ' + run.note if run.note else ''} |")
        a, b, c = runs
        rss_limit = 2 * size / 2**20 + 200
        bound = "> " if c.exit_code == -9 else ""  # killed at the timeout: its time is a lower bound
        verdicts.append(f"- {name}: (b)/(a) = {b.wall_s / a.wall_s:.2f}x (target <= 3x: "
                        f"{'met' if b.wall_s <= 3 * a.wall_s else 'MISSED'}); (c)/(b) = {bound}"
                        f"{c.wall_s / b.wall_s:.1f}x (target >= 10x: "
                        f"{'met' if c.wall_s >= 10 * b.wall_s else 'MISSED'}"
                        f"{', (c) killed at the timeout' if bound else ''}); peak RSS (b) {b.peak_rss_mb:,.0f} MB vs "
                        f"limit {rss_limit:,.0f} MB ({'met' if b.peak_rss_mb <= rss_limit else 'MISSED'})")
    lines += ["", "Targets:", *verdicts, "",
              "Every number is one run of a whole process (interpreter start-up included), on a warm page cache."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-gb", type=float, default=1.6, help="size of the generated model (0: skip it)")
    parser.add_argument("--work", type=Path, default=HERE / ".work", help="scratch folder (deleted afterwards)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a command is killed")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "prune_speed.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    flags = deprune_flags()
    models = [("MobileNetV2 (shared)", MOBILENET)]
    if args.large_gb > 0:
        large = args.work / f"large_{args.large_gb:g}gb.onnx"
        if not large.exists():
            subprocess.run([sys.executable, str(HERE / "make_large_model.py"), "--gb", str(args.large_gb),
                            "--out", str(large)], check=True)
        models.append((f"generated DSConv {args.large_gb:g} GB (external data)", large))
    results = []
    try:
        for name, path in models:
            print(name, flush=True)
            size, runs = bench_model(path, flags, args.work / "runs", args.timeout)
            results.append((name, size, runs))
    finally:
        if args.large_gb > 0:
            for path in args.work.glob("large_*"):
                path.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, flags))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
