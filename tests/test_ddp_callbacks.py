"""Early stopping, the learning rate, one-cycle and init_from under DDP (2 CPU ranks, gloo).

Every DDP run is a real command (conftest.cli): Lightning's DDP would re-run the pytest
command line in its child processes if training ran inside pytest. Seven runs, each
checking several things at once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, cli
from test_callbacks import STOPPING
from test_ddp import processes_mentioning

LOOPS = ("automatic", "manual", "explicit")
# Each rank trains on half of every batch: 10 batches an epoch, not one process's 20. No batch
# limit, so a one-cycle length counted from the whole loader would end halfway down its curve.
ONE_CYCLE = ["scheduler=onecycle", "trainer.max_epochs=2", "callbacks=lr_monitor", "logger=csv"]


def ddp_run(run: Path, *overrides: str) -> dict:
    proc = cli("trainer=ddp_cpu", *overrides, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not processes_mentioning(str(run))
    return json.loads((run / "results.json").read_text())


def first_epoch(run: Path) -> dict[str, float]:
    """The val/ metrics of epoch 1, from metrics.csv."""
    row = next(r for r in csv.DictReader((run / "metrics.csv").open()) if r["val/loss"])
    return {k: float(v) for k, v in row.items() if k.startswith("val/")}


def one_cycle_after(steps: int, total: int) -> float:
    """OneCycleLR's rate after `steps` steps of `total` (lr 0.001: conf/optimizer/adam.yaml)."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.001)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.001, total_steps=total)
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    return optimizer.param_groups[0]["lr"]


@pytest.mark.slow
def test_early_stopping_one_cycle_and_init_from_under_ddp_in_all_loops(tmp_path):
    # 1. Early stopping and the learning rate: the decision is taken on val/loss summed across
    # ranks (StageMetrics.compute), the same float on both, so no rank stops alone (the other
    # would wait in the next all-reduce and the run would not end). Stops after epoch 3 of 10.
    stopped = {loop: ddp_run(tmp_path / f"stop_{loop}", f"loop={loop}", *STOPPING) for loop in LOOPS}
    for loop in LOOPS:
        assert stopped[loop]["stopped_epoch"] == 3 and stopped[loop]["epochs"] == 3, loop
        lines = (tmp_path / f"stop_{loop}/metrics.csv").read_text()
        rates = [float(r["train/lr"]) for r in csv.DictReader(lines.splitlines()) if r["train/lr"]]
        assert rates == [0.001, 0.0005, 0.00025], loop
        assert_same_weights(
            tmp_path / "stop_automatic/checkpoints/last.ckpt", tmp_path / f"stop_{loop}/checkpoints/last.ckpt"
        )
        assert stopped[loop]["test/loss"] == stopped["automatic"]["test/loss"], loop

    # 2. and 3. Fine-tuning from that run's best.ckpt, with a one-cycle schedule stepped per
    # optimizer step: its length is this rank's batches, so it ends at its last step exactly
    # (OneCycleLR raises "Tried to step X times" one step past its end).
    start = tmp_path / "stop_automatic/checkpoints/best.ckpt"
    tuned = {
        loop: ddp_run(tmp_path / f"tuned_{loop}", f"loop={loop}", *ONE_CYCLE, f"init_from={start}")
        for loop in LOOPS
    }
    scratch = ddp_run(tmp_path / "scratch", "loop=explicit", *ONE_CYCLE)
    for loop in LOOPS:
        run = tmp_path / f"tuned_{loop}"
        assert (run / "checkpoints/best.ckpt").is_file() and tuned[loop]["epochs"] == 2, loop
        last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
        (schedule,) = last["lr_schedulers"]
        assert schedule["last_epoch"] == schedule["total_steps"] == 2 * 10, loop  # stepped to its end
        lr = last["optimizer_states"][0]["param_groups"][0]["lr"]
        assert lr == one_cycle_after(20, total=20), loop
        assert_same_weights(tmp_path / "tuned_automatic/checkpoints/last.ckpt", run / "checkpoints/last.ckpt")
        assert first_epoch(run) == first_epoch(tmp_path / "tuned_automatic"), loop
    assert one_cycle_after(19, total=20) == pytest.approx(0.001 / 25 / 1e4)  # the last step's: the end
    # the loaded weights made the first epoch better than a fresh start's
    fresh = first_epoch(tmp_path / "scratch")
    assert first_epoch(tmp_path / "tuned_explicit")["val/loss"] < fresh["val/loss"]
    assert tuned["explicit"]["test/loss"] < scratch["test/loss"]
