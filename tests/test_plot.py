"""`python -m lightfit.cli.plot`: curves from the metrics.csv of a real run."""

from __future__ import annotations

import csv

import pytest
from conftest import require, run_train

from lightfit.cli import plot

require("plot")


# The Lightning loops log train and val in separate rows, the explicit loop in one row per epoch.
@pytest.mark.parametrize("loop", ["automatic", pytest.param("explicit", marks=pytest.mark.slow)])
def test_png_of_a_real_run(run_dir, capsys, loop):
    run_train(run_dir, f"loop={loop}", "trainer.max_epochs=3", "logger=csv")
    plot.main([str(run_dir)])
    png = run_dir / "curves.png"
    assert capsys.readouterr().out.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    series = plot.read_epochs(run_dir / "metrics.csv")
    assert set(series) == {"train/loss", "train/acc", "val/loss", "val/acc"}
    # Three trained epochs; the rows written after fitting (best checkpoint's val, test) are not epochs.
    assert all(list(values) == [0, 1, 2] for values in series.values())
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r["train/loss"]]
    assert [series["train/loss"][int(r["epoch"])] for r in rows] == [float(r["train/loss"]) for r in rows]


def test_a_run_without_metrics_gets_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        plot.main([str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightfit-plot: error: no metrics.csv in") and "\n" not in err
