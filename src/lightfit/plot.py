"""Loss and accuracy per epoch, train and val, from a run's metrics.csv, as a PNG.

    python -m lightfit.plot outputs/2026-11-25/19-13-30     # writes <run>/curves.png
    python -m lightfit.plot                                 # the latest run under outputs/
    make plot RUN=outputs/2026-11-25/19-13-30

Needs the `plot` extra (`pip install -e ".[plot]"`, or `make plot` installs it): matplotlib
is imported only here, so training never pays for it.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from lightfit.errors import LightfitError, reported

PROG = "lightfit-plot"
METRICS = "metrics.csv"
STAGES = ("train", "val")


def latest_run(root: Path = Path("outputs")) -> Path:
    runs = sorted(root.glob(f"**/{METRICS}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise LightfitError(f"no run with a {METRICS} under {root}/: give the run directory, RUN=...")
    return runs[-1].parent


def read_epochs(csv_path: Path) -> dict[str, dict[int, float]]:
    """{"train/loss": {epoch: value}, "val/acc": {...}, ...} for the epochs that trained.

    CSVLogger writes the validation row and the training row of an epoch separately (same
    epoch number), and after fitting a row for the best checkpoint's validation and one for
    the test, under an epoch that did not train; those two are left out.
    """
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and value and key.split("/")[0] in STAGES:
                    series[key][int(row["epoch"])] = float(value)
    trained = set().union(*(v for k, v in series.items() if k.startswith("train/")))
    if not trained:
        raise LightfitError(f"{csv_path} has no training metrics per epoch (train/...)")
    return {k: {e: v for e, v in sorted(values.items()) if e in trained} for k, values in series.items()}


def plot_run(run: Path, out: Path | None = None) -> Path:
    """Draw one panel per metric (loss, acc, ...) with a train and a val curve; returns the PNG."""
    csv_path = run if run.suffix == ".csv" else run / METRICS
    if not csv_path.is_file():
        raise LightfitError(f"no {METRICS} in {run} (was it trained with logger=csv?)")
    series = read_epochs(csv_path)
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    names = sorted({k.split("/", 1)[1] for k in series}, key=lambda n: (n != "loss", n != "acc", n))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for stage in STAGES:
            values = series.get(f"{stage}/{name}", {})
            epochs = [e + 1 for e in values]  # 1-based, as the console prints them
            ax.plot(epochs, list(values.values()), marker=".", label=stage)
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(_title(csv_path.parent))
    fig.tight_layout()
    out = out or csv_path.parent / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def pyplot() -> Any:
    """matplotlib.pyplot, drawing into files; one line, not a traceback, without the plot extra."""
    try:
        import matplotlib
    except ImportError:
        raise LightfitError('matplotlib is not installed: pip install -e ".[plot]" (or make plot)') from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _title(run: Path) -> str:
    results = run / "results.json"
    if results.is_file():
        test = json.loads(results.read_text())
        if "test/acc" in test:
            return f"{run.parent.name}/{run.name}: test acc {test['test/acc']:.4f}"
    return f"{run.parent.name}/{run.name}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="run directory or metrics.csv (default: latest)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: <run>/curves.png)")
    args = parser.parse_args(argv)
    with reported(PROG):
        print(plot_run(args.run or latest_run(), args.out))


if __name__ == "__main__":
    main()
