"""Hydra multiruns from the command line: the summary table, and an Optuna search."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from conftest import cli, require

from lightfit.run.sweep import job_rows

TINY = ["debug=fast", "logger=none"]  # one batch per stage: the sweep is what is tested


def read_summary(sweep_dir):
    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_writes_and_prints_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "optimizer.lr=0.01,0.001", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_summary(sweep)
    assert [(r["job"], r["status"], r["optimizer.lr"]) for r in rows] == [
        ("0", "ok", "0.01"),
        ("1", "ok", "0.001"),
    ]
    for row in rows:
        results = json.loads((sweep / row["job"] / "results.json").read_text())
        assert float(row["test/acc"]) == results["test/acc"] and float(row["val/loss"]) == results["val/loss"]
    assert (
        "job  status  optimizer.lr  debug" in proc.stdout
        and f"summary: {sweep / 'summary.csv'}" in proc.stdout
    )

    # A job that did not finish has no results.json: it stays in the table, as failed.
    (sweep / "1" / "results.json").unlink()
    failed = job_rows(sweep)[1]
    assert (failed["status"], failed["optimizer.lr"]) == ("failed", "0.001") and "test/acc" not in failed


@pytest.mark.slow
def test_optuna_search_with_two_trials(tmp_path):
    require("optuna")
    sweep = tmp_path / "optuna"
    proc = cli(
        "hparams_search=digits_optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_summary(sweep)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert len({r["optimizer.lr"] for r in rows}) == 2  # the sampler chose two learning rates
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # The task's monitor (val/loss) and its mode (min): the sweeper minimized it.
    assert best["best_value"] == min(float(r["val/loss"]) for r in rows)
