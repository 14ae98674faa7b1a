"""The benchmark script runs end to end on a tiny workload and writes both reports.

Only a smoke run: the numbers of a run this small mean nothing. `make bench` is the benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
CASES = ["floor", "loader", "automatic", "naive-lightning"]


def test_bench_writes_json_and_markdown_for_each_case(tmp_path):
    out = tmp_path / "bench"
    args = ["--workloads", "b", "--rows", "2000", "--epochs", "3", "--cases", ",".join(CASES)]
    args += ["--startup-runs", "0", "--mmap-gb", "0", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = json.loads((out / "results.json").read_text())
    assert report["machine"]["cores"] >= 1
    (workload,) = report["workloads"]
    assert workload["name"] == "b" and workload["batch_size"] == 128
    assert list(workload["cases"]) == CASES
    for case in ("floor", "automatic", "naive-lightning"):
        result = workload["cases"][case]
        assert len(result["epochs"]) == 3, (case, result)  # 3 measured epochs after the warm-up
        assert result["epoch_seconds"] > 0 and result["samples_per_second"] > 0
    assert workload["cases"]["loader"]["speedup"] > 0

    table = (out / "results.md").read_text()
    assert "| floor |" in table and "| automatic |" in table and "| naive-lightning |" in table
    assert "Loader alone" in table and "## Targets" in table
