"""The benchmark (`python -m bench`) runs end to end on a tiny workload and writes both reports.

Only a smoke run: the numbers of a run this small mean nothing. `make bench` is the benchmark.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a whole benchmark run and two more processes: `make test-all`
ROOT = Path(__file__).resolve().parents[1]  # `python -m bench` runs from the repository root
CASES = ["floor", "fabric-loop", "loader", "automatic", "naive-lightning", "metrics", "automatic+ckpt200",
         "save-cost", "turns"]  # fmt: skip


def bench(*args: str, script: list[str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, *(script or ["-m", "bench"]), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_bench_writes_json_and_markdown_for_each_case(tmp_path):
    out = tmp_path / "bench"
    args = ["--workloads", "b", "--rows", "2000", "--epochs", "3", "--cases", ",".join(CASES)]
    proc = bench(*args, "--turns", "3", "--startup-runs", "0", "--mmap-gb", "0", "--table-rows", "0",
                 "--serve-seconds", "0", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = json.loads((out / "results.json").read_text())
    assert report["machine"]["cores"] >= 1
    (workload,) = report["workloads"]
    assert workload["name"] == "b" and workload["batch_size"] == 128
    assert list(workload["cases"]) == CASES
    for case in ("floor", "fabric-loop", "automatic", "naive-lightning"):
        result = workload["cases"][case]
        assert len(result["epochs"]) == 3, (case, result)  # 3 measured epochs after the warm-up
        assert result["epoch_seconds"] > 0 and result["samples_per_second"] > 0
    assert workload["cases"]["loader"]["speedup"] > 0
    # what the saves cost, read from each lightfit run's train.log: one save per epoch here (16 steps)
    for case in ("automatic", "automatic+ckpt200"):
        (costs,) = workload["cases"][case]["save_costs"]
        assert (
            costs["saves"] == 4
            and costs["training_thread_ms"] > 0
            and costs["write_ms"] > 0
            and costs["write_cpu_ms"] > 0
        )
    metrics = workload["cases"]["metrics"]
    assert metrics["steps_per_epoch"] == 16 and metrics["num_classes"] == 10  # 1960 rows, batch 128
    assert set(metrics["us_per_step"]) == {
        "hand-written sums (loss, accuracy)",
        "classification default [acc]",
        "classification [acc,f1,auroc]",
        "regression default [mae,rmse,r2]",
    }
    assert all(us > 0 for us in metrics["us_per_step"].values())

    table = (out / "results.md").read_text()
    assert "| floor |" in table and "| automatic |" in table and "| naive-lightning |" in table
    assert "Loader alone" in table and "| classification default [acc] |" in table and "## Targets" in table
    row = (
        r"\(b\) loop=automatic, last.ckpt every 200 steps: <= 2% of epoch time \| \+\d+\.\d%: \d+\.\d% on the"
    )
    assert re.search(row + r" training thread \(0\.1 saves x", table)  # 16 steps per epoch: 0.08 saves at 200
    assert "Checkpoint saves (from each run's train.log): automatic+ckpt200: " in table
    cost = workload["cases"]["save-cost"]  # 60 pairs of blocks, one with a save of the network
    assert cost["pairs"] == 60 and cost["file_bytes"] > 4 * 784 * 256 and cost["save_call_ms"] > 0
    assert "What a background write takes from training" in table
    # the loops and their references in their own processes, one epoch each in turn
    turns = workload["cases"]["turns"]
    assert turns["turns"] == 3
    cases = ["plain-loop", "explicit", "fabric-loop", "lightning-trainer", "lightning-validated", "automatic",
             "lightning-barebones", "manual", "automatic+callbacks", "lightning-full"]  # fmt: skip
    assert list(turns["turn_seconds"]) == cases
    assert "| automatic / lightning-validated |" in table  # Lightning's cost of validating set apart
    # issue 27's targets: against the validated reference, and with callbacks against stock Lightning's
    assert re.search(r"\| \(b\) loop=automatic <= 1\.05x lightning-validated, taking turns", table), table
    assert re.search(r"\| \(b\) automatic\+callbacks <= 0\.80x lightning-full, taking turns", table), table
    assert all(len(s) == 3 and min(s) > 0 for s in turns["turn_seconds"].values()), turns
    assert "| explicit / plain-loop |" in table and "| explicit / fabric-loop |" in table
    for loop, reference in (("explicit", "plain-loop"), ("manual", "lightning-barebones")):
        target = rf"\| \(b\) loop={loop} <= 1\.10x {reference}, taking turns epoch by epoch \| "
        assert re.search(target + r"\d+\.\d\dx \(median of 3 turns", table), table
    # Not on a terminal: one progress line per case, as training prints one line per epoch.
    shown = [line for line in proc.stdout.splitlines() if line.startswith("(b) ")]
    assert [line.split(":")[0] for line in shown] == [f"(b) {case}" for case in CASES]


def test_the_old_script_runs_the_package(tmp_path):
    proc = bench("--help", script=[str(ROOT / "scripts" / "bench.py")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: python -m bench")


def test_the_reference_sums_agree_with_lightfit_metrics():
    """The metrics case compares like with like: the hand-written sums give lightfit's loss and acc."""
    code = (
        "import torch; from bench.metrics import HandSums, fake_steps; from bench.workloads import Workload\n"
        "from lightfit.data import digits; from lightfit.tasks import Task\n"
        "dm = digits(batch_size=64); dm.setup('fit')\n"
        "w = Workload('a', '', dm, 64, [8], 0.0, 'sgd', 2)\n"
        "cpu = torch.device('cpu')\n"
        "ours, ref = Task('classification', num_outputs=10).stage_metrics('train'), HandSums(cpu)\n"
        "for step in fake_steps('classification', w, cpu):\n"
        "    ours.update(*step); ref.update(*step)\n"
        "a, b = ours.compute(), ref.compute()\n"
        "assert torch.allclose(a['train/loss'], b['loss'].float()), (a, b)\n"
        "assert torch.allclose(a['train/acc'], b['acc'].float()), (a, b)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
