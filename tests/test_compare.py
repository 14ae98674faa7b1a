"""`lightfit compare`: a real sweep, and hand-made run folders for mixed tasks and old runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import cli

from lightfit.cli import compare

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(folder: Path, results: dict, overrides=(), curve=None, config=None, choices=None) -> Path:
    """A run directory as lightfit writes it: results.json, .hydra/*.yaml, metrics.csv (one row per epoch)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if config is not None:
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if choices is not None:
        hydra = {"hydra": {"runtime": {"choices": choices}}}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (folder / "results.json").write_text(json.dumps(results))
    if curve:
        metric, values = curve
        with (folder / "metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "step", "train/loss", metric])
            writer.writerows([e, 10 * e + 9, 1.0, v] for e, v in enumerate(values))
    return folder


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Two classification runs from before the task group (no task, monitor or mode anywhere) and
    two regression runs that name theirs."""
    runs = tmp_path / "runs"
    for name, loss in (("c1", 0.4), ("c2", 0.3)):
        make_run(runs / name, {"val/loss": loss, "val/acc": 0.9, "test/acc": 0.8}, ["model.hidden=[64]"])
    regression = {"task": "regression", "monitor": "val/mae", "mode": "min"}
    make_run(
        runs / "r1",
        {**regression, "val/mae": 0.5, "val/loss": 0.3, "test/mae": 0.6, "epochs": 3},
        ["task=regression", "optimizer.lr=0.01", "loop=manual"],
        curve=("val/mae", [0.9, 0.6, 0.5]),
    )
    make_run(
        runs / "r2",
        {**regression, "val/mae": 0.2, "val/loss": 0.1, "test/mae": 0.25, "epochs": 3},
        ["task=regression"],
        curve=("val/mae", [0.8, 0.3, 0.2]),
        config={"optimizer": {"lr": "${lr}"}, "lr": 0.001, "task": {"name": "regression"}},
        choices={"loop": "automatic", "task": "regression"},
    )
    (runs / "unfinished" / ".hydra").mkdir(parents=True)  # killed before results.json
    (runs / "unfinished" / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=1.0\n")
    return runs


def test_runs_of_two_tasks_are_not_ranked_together(mixed, capsys):
    with pytest.raises(SystemExit) as exit_:
        compare.main([str(mixed), "--no-png"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lightfit compare: error: these runs are of 2 tasks")
    assert "classification: 2 runs, regression: 2 runs" in err and "--task" in err


def test_one_task_ranked_with_what_differed(mixed, tmp_path, capsys):
    table, png = tmp_path / "table.csv", tmp_path / "curves.png"
    compare.main([str(mixed), "--task", "regression", "--output", str(table), "--png", str(png)])
    out, err = capsys.readouterr()
    assert "2 runs of task regression, ranked by val/mae (lowest first)" in out
    assert "1 of 5 runs left out: no results.json" in out
    with table.open() as f:
        rows = list(csv.DictReader(f))
    # r2 did not override optimizer.lr or loop: its config and its group choice say what it ran with.
    assert [(r["rank"], r["run"], r["optimizer.lr"], r["loop"]) for r in rows] == [
        ("1", "r2", "0.001", "automatic"),
        ("2", "r1", "0.01", "manual"),
    ]
    assert list(rows[0])[:6] == ["rank", "run", "optimizer.lr", "loop", "val/mae", "val/loss"]
    assert "task" not in rows[0]  # the same in both: not a difference
    assert float(rows[0]["val/mae"]) == 0.2 and rows[0]["test/mae"] == "0.25"
    assert png.read_bytes()[:8] == PNG_MAGIC and f"curves: {png}" in out
    # Not a terminal: one progress line per run, on stderr (the table stays alone on stdout).
    assert "reading runs 1/5: " in err and "reading runs 5/5: " in err and "reading runs" not in out


def test_runs_from_before_the_task_group_fall_back_to_val_loss(mixed, capsys):
    rows = compare.compare([mixed / "c1", mixed / "c2"], png=None)
    assert "2 runs of task classification, ranked by val/loss (lowest first)" in capsys.readouterr().out
    assert [(r["run"], r["val/loss"]) for r in rows] == [("c2", 0.3), ("c1", 0.4)]
    assert list(rows[0]) == ["rank", "run", "val/loss", "val/acc", "test/acc", "epochs"]  # nothing differed
    assert compare.compare([mixed / "c1", mixed / "c2"], monitor="val/acc", png=None)[0]["run"] == "c1"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such directory"),
        (lambda p: p, "no runs under"),
        (lambda p: make_run(p / "r", {"val/loss": 1.0}).parent, "--monitor val/acc: no run has val/acc"),
        (lambda p: make_run(p / "r", {"val/loss": 1.0}).parent, "--output x/t.csv: there is no folder x"),
    ],
)
def test_bad_input_gets_one_line(tmp_path, capsys, make, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = make(tmp_path)
    option = message.split(": ")[0].split() if message.startswith("--") else []
    args = [str(folder), "--no-png", *option]
    with pytest.raises(SystemExit) as exit_:
        compare.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[-1].startswith("lightfit compare: error: ")
    assert message.split(": ")[-1] in err[-1]


@pytest.mark.slow
def test_a_real_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    trained = cli("-m", "optimizer.lr=0.01,0.0003", "debug=limit", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    results = {job: json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")}
    # The runs' own monitor: results.json names it since the task group; before, conf/train.yaml did.
    own = results["0"].get("monitor", "val/acc")
    proc = cli(str(sweep), "--no-png", module="lightfit compare", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"2 runs of task classification, ranked by {own} (" in proc.stdout
    proc = cli(
        str(sweep), "--monitor", "val/acc", "--output", str(tmp_path / "t.csv"), module="lightfit compare"
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 runs of task classification, ranked by val/acc (highest first)" in proc.stdout
    best = max(results, key=lambda job: results[job]["val/acc"])
    with (tmp_path / "t.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["run"] == best and {r["optimizer.lr"] for r in rows} == {"0.01", "0.0003"}
    ranked = sorted((r["val/acc"] for r in results.values()), reverse=True)
    assert [float(r["val/acc"]) for r in rows] == ranked
    assert (sweep / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert "reading curves 2/2: " in proc.stderr and "Traceback" not in proc.stderr
