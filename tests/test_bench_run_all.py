"""bench/gpu/run_all.sh, checked without a GPU: it parses, and it writes at most the 8 result files the device
tool brings back from $OUT (bench/gpu/README.md)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu" / "run_all.sh"


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_at_most_eight_result_files_named_in_the_readme() -> None:
    text = SCRIPT.read_text()
    files = set(re.findall(r'(?:\$RESULTS|\$3|\$\{?RESULTS\}?)/([A-Za-z0-9_.-]+)"?', text)) - {"*check.log"}
    files |= set(re.findall(r'--log-file "\$RESULTS/([A-Za-z0-9_.-]+)"', text))
    assert {"run_all.log", "summary.txt", "dr_dwconv_full.json", "memcheck.log"} <= files
    assert len(files) <= 8, sorted(files)
    readme = (SCRIPT.parent / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in files), sorted(files)
