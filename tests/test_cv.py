"""k-fold cross-validation (`cv.folds=K`): the folds, real runs in fold_1..fold_K, the summary,
resuming at the unfinished fold, the three loops, DDP, sweeps, compare, and bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, compose_config, require

from lightfit.cli import compare
from lightfit.cli.train import train
from lightfit.data import digits, load_split
from lightfit.data.folds import check_folds, fold_rows
from lightfit.errors import LightfitError

TINY = ["trainer.max_epochs=1", "logger=none"]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def split(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "splits.npz") as stored:
        return {name: stored[name] for name in ("train", "val", "test", "fold")}


def cross_validate(run_dir: Path, *overrides: str) -> float:
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(compose_config(*overrides, run_dir=run_dir))


# -- the folds -----------------------------------------------------------------------------


def test_folds_are_stratified_disjoint_and_seeded():
    rows = np.arange(100, 200)
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    parts = fold_rows(rows, 5, seed=3, labels=labels)
    assert np.array_equal(np.sort(np.concatenate(parts)), rows)  # every row in exactly one fold
    for part in parts:
        assert np.bincount(labels[part - 100], minlength=3).tolist() == [10, 6, 4]
    assert all(np.array_equal(a, b) for a, b in zip(parts, fold_rows(rows, 5, 3, labels), strict=True))
    assert not np.array_equal(parts[0], fold_rows(rows, 5, 4, labels)[0])  # another seed, other folds
    # Regression: one permutation dealt round-robin; sizes differ by at most one.
    assert [len(p) for p in fold_rows(rows, 3, seed=0)] == [34, 33, 33]
    # Classes that do not divide evenly still give folds within one row of each other.
    uneven = fold_rows(np.arange(23), 4, seed=0, labels=np.repeat([0, 1, 2], [7, 9, 7]))
    assert sorted(len(p) for p in uneven) == [5, 6, 6, 6]


def test_too_many_folds_name_the_class_or_the_rows():
    with pytest.raises(LightfitError, match=r"cv.folds=5: class 2 has only 4 samples outside the test split"):
        check_folds(5, np.repeat([0, 1, 2], [9, 8, 4]), 21)
    with pytest.raises(LightfitError, match=r"class cat has only 1 samples .* \(at most 1 folds\)"):
        check_folds(2, np.array([0, 0, 1]), 3, names=["dog", "cat"])
    with pytest.raises(LightfitError, match=r"cv.folds=4: only 3 samples outside the test split; at most 3"):
        check_folds(4, None, 3)
    check_folds(4, np.repeat([0, 1], 4), 8)  # exactly one of the smallest class per fold is enough


# -- a real cross-validation ------------------------------------------------------------------


def test_two_folds_train_and_summarise(tmp_path):
    run_dir = tmp_path / "cv"
    optimized = cross_validate(run_dir, "cv.folds=2", "trainer.max_epochs=1")
    folds = [read(run_dir / f"fold_{k}" / "results.json") for k in (1, 2)]
    parent = read(run_dir / "results.json")
    for metric in ("val/loss", "val/acc", "test/loss", "test/acc"):
        values = [fold[metric] for fold in folds]
        assert parent[metric] == pytest.approx(np.mean(values))
        assert parent["cv"]["std"][metric] == pytest.approx(np.std(values, ddof=1))
    assert optimized == parent["val/loss"]  # what a sweeper ranks by: the cross-validated mean
    assert parent["cv"]["folds"] == 2 and parent["monitor"] == "val/loss"
    assert folds[0]["val/acc"] != folds[1]["val/acc"]  # two runs on different rows
    for k in (1, 2):  # each fold is a normal run directory
        fold = run_dir / f"fold_{k}"
        assert (fold / "checkpoints" / "best.ckpt").is_file() and (fold / "splits.npz").is_file()
    with (run_dir / "cv.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["fold"] for r in rows] == ["fold_1", "fold_2", "mean", "std"]
    assert float(rows[2]["test/acc"]) == pytest.approx(parent["test/acc"], rel=1e-5)
    assert read(run_dir / "cv.json")["per_fold"]["fold_2"]["test/acc"] == folds[1]["test/acc"]

    # The test rows are a plain run's; the folds cut its train and val rows in two.
    plain = digits(seed=0)
    plain.setup()
    one, two = split(run_dir / "fold_1"), split(run_dir / "fold_2")
    assert np.array_equal(one["test"], plain.splits["test"].rows.numpy())
    assert np.array_equal(one["test"], two["test"])
    assert np.array_equal(one["val"], two["train"]) and np.array_equal(two["val"], one["train"])
    rest = np.sort(np.r_[plain.splits["train"].rows.numpy(), plain.splits["val"].rows.numpy()])
    assert np.array_equal(np.sort(np.r_[one["val"], two["val"]]), rest)
    assert two["fold"].tolist() == [2, 2]
    assert len(load_split(run_dir / "fold_2")["val"][1]) == len(two["val"])  # the fold's split again

    # compare: the cross-validation is one run (not its folds), its means with their spread.
    (row,) = compare.compare([tmp_path], png=None)
    assert row["val/loss"] == parent["val/loss"] and row["folds"] == 2
    assert row["test/acc std"] == parent["cv"]["std"]["test/acc"]


def test_bad_fold_counts_are_one_line_and_write_nothing(tmp_path):
    run_dir = tmp_path / "cv"
    with pytest.raises(LightfitError, match=r"^cv.folds=1: need at least 2 folds"):
        cross_validate(run_dir, "cv.folds=1", *TINY)
    # digits: 1797 samples, 20% test; the rarest class has 143 of the rest
    with pytest.raises(LightfitError, match=r"^cv.folds=200: class \d has only 1\d\d samples outside"):
        cross_validate(run_dir, "cv.folds=200", *TINY)
    with pytest.raises(LightfitError, match=r"^cv.folds=400: only 354 samples outside the test split"):
        cross_validate(run_dir, "data=diabetes", "cv.folds=400", *TINY)
    with pytest.raises(LightfitError, match=r"ckpt_path=last names one run's checkpoint"):
        cross_validate(run_dir, "cv.folds=2", "ckpt_path=last", *TINY)
    assert list(run_dir.iterdir()) == []


# -- slow: resume, loops, DDP, sweeps ------------------------------------------------------


@pytest.mark.slow
def test_auto_skips_finished_folds_and_resumes_the_unfinished_one(tmp_path):
    run_dir = tmp_path / "cv"
    cross_validate(run_dir, "cv.folds=3", *TINY)
    first = (run_dir / "fold_1" / "results.json").stat().st_mtime_ns
    (run_dir / "fold_2" / "results.json").unlink()  # fold 2 stopped after its first epoch ...
    for path in [run_dir / "fold_3", run_dir / "results.json", run_dir / "cv.json"]:  # ... fold 3 never ran
        subprocess.run(["rm", "-r", str(path)], check=True)
    cross_validate(run_dir, "cv.folds=3", "ckpt_path=auto", "trainer.max_epochs=2", "logger=none")
    assert (run_dir / "fold_1" / "results.json").stat().st_mtime_ns == first  # skipped
    epochs = [read(run_dir / f"fold_{k}" / "results.json")["epochs"] for k in (1, 2, 3)]
    assert epochs == [1, 2, 2]  # fold 2 went on from its epoch-1 checkpoint, fold 3 trained afresh
    assert read(run_dir / "cv.json")["folds"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["manual", "explicit"])
def test_other_loops_cross_validate(tmp_path, loop):
    run_dir = tmp_path / loop
    cross_validate(run_dir, f"loop={loop}", "data=diabetes", "cv.folds=2", *TINY)
    parent = read(run_dir / "results.json")
    assert parent["loop"] == loop and parent["task"] == "regression"
    folds = [read(run_dir / f"fold_{k}" / "results.json")["test/mae"] for k in (1, 2)]
    assert parent["test/mae"] == pytest.approx(np.mean(folds))


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_a_stop_hint_resumes_the_cross_validation(tmp_path, trainer):
    # Under DDP rank 0 of fold 2 writes the hint, for the parent run directory.
    args = [f"trainer={trainer}", "cv.folds=2", "trainer.max_epochs=3", "data.batch_size=8", "logger=none"]
    run_dir = tmp_path / "cv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightfit.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch 1/3") and any("cv: fold 2 of 2" in s for s in seen):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("lightfit-train: error:")]
    assert str(run_dir / "fold_2" / "checkpoints" / "interrupted.ckpt") in error
    hint = re.search(r"continue with: (.*?) \(it takes", error).group(1)
    program, *args = shlex.split(hint)  # lightfit, or .venv/bin/lightfit when not on PATH
    assert Path(program).name == "lightfit"
    assert args == ["train", "ckpt_path=auto", f"hydra.run.dir={run_dir}"]
    resumed = cli(*args[1:], cwd=tmp_path)  # pasted: lightfit train ...
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 1 of 2 finished already" in resumed.stdout
    assert f"resuming from {run_dir / 'fold_2' / 'checkpoints' / 'interrupted.ckpt'}" in resumed.stdout
    assert read(run_dir / "fold_2" / "results.json")["epochs"] == 3
    assert read(run_dir / "results.json")["cv"]["folds"] == 2


@pytest.mark.slow
def test_ddp_cross_validation_two_ranks(tmp_path):
    run_dir = tmp_path / "ddp"
    proc = cli("trainer=ddp_cpu", "cv.folds=2", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for k in (1, 2):
        fold = read(run_dir / f"fold_{k}" / "results.json")
        assert fold["epochs"] == 1 and (run_dir / f"fold_{k}" / "checkpoints" / "best.ckpt").is_file()
    assert not (run_dir / "fold_1" / "fold_1").exists()  # the ranks train their fold, not a nested cv
    assert read(run_dir / "cv.json")["folds"] == 2


@pytest.mark.slow
def test_a_sweep_ranks_by_the_cross_validated_mean(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "optimizer.lr=0.01,0.001", "cv.folds=2", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["cv.folds"] for r in rows] == ["2", "2"]
    for row in rows:
        assert float(row["val/loss"]) == read(sweep / row["job"] / "results.json")["val/loss"]
        assert float(row["val/loss std"]) > 0
    shown = cli(str(sweep), "--no-png", module="lightfit compare", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "2 runs of task classification" in shown.stdout and " ± " in shown.stdout


@pytest.mark.slow
def test_too_many_folds_from_the_command_line(tmp_path):
    run_dir = tmp_path / "cv"
    proc = cli("cv.folds=200", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightfit-train: error: cv.folds=200: class "), proc.stderr
    assert not list(run_dir.glob("fold_*")) and not (run_dir / "results.json").exists()


def write_table(path: Path, n: int = 60) -> Path:
    """n customers: a number, a text column, string labels (one in six `yes`)."""
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["age", "city", "churn"])
        for i in range(n):
            writer.writerow(
                [int(rng.integers(18, 80)), rng.choice(["Rome", "Paris"]), "yes" if i % 6 else "no"]
            )
    return path


def test_a_table_is_cut_in_folds_by_its_class_names(tmp_path):
    require("table")
    from lightfit.data import TableDataModule

    path = write_table(tmp_path / "churn.csv")
    folds = []
    for k in (1, 2, 3):
        module = TableDataModule(str(path), "churn", batch_size=8)
        module.use_fold(k, 3)
        module.setup("fit")
        folds.append(module)
    vals = [m.splits["val"].rows.numpy() for m in folds]
    assert len(np.unique(np.concatenate(vals))) == sum(len(v) for v in vals)  # disjoint
    assert all(m.encoding.to_dict() == folds[0].encoding.to_dict() for m in folds)  # the same columns
    module = TableDataModule(str(path), "churn", batch_size=8)
    module.use_fold(1, 11)  # 10 `no` in 60 rows, not all of them outside the test split
    with pytest.raises(LightfitError, match=r"cv.folds=11: class no has only \d+ samples outside"):
        module.setup("fit")


@pytest.mark.slow
def test_optuna_optimizes_the_cross_validated_mean(tmp_path):
    require("optuna")
    import yaml

    sweep = tmp_path / "optuna"
    args = ["hparams_search=digits_optuna", "hydra.sweeper.n_trials=2", "cv.folds=2", *TINY]
    proc = cli(*args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    means = [read(sweep / str(job) / "results.json")["val/loss"] for job in (0, 1)]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    assert best == pytest.approx(min(means))  # the folds' mean, not one fold's score


@pytest.mark.slow
def test_a_table_cross_validates(tmp_path):
    require("table")
    path = write_table(tmp_path / "churn.csv")
    run_dir = tmp_path / "table"
    cross_validate(run_dir, "data=table", f"data.path={path}", "data.target=churn", "data.batch_size=8",
                   "cv.folds=2", *TINY)  # fmt: skip
    parent = read(run_dir / "results.json")
    assert parent["classes"] == ["no", "yes"] and parent["cv"]["folds"] == 2
