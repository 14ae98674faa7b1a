"""Every metric per epoch, train and val, from a run's metrics.csv, as a PNG; and the test
confusion matrix, when the run wrote one (`task.metrics=[acc,confusion]`).

    lightfit plot outputs/2026-11-25/19-13-30     # writes <run>/curves.png (+ confusion.png)
    lightfit plot                                 # the latest run under outputs/
    make plot RUN=outputs/2026-11-25/19-13-30

Needs the `plot` extra (`pip install 'lightfit[plot]'`, or `make plot` installs it): matplotlib
is imported only here, so training never pays for it.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from lightfit.data.table_read import is_number
from lightfit.errors import LightfitError, reported

METRICS = "metrics.csv"
CONFUSION = "test_confusion.csv"  # written by the training run (rows: true class, columns: predicted)
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
        message = "matplotlib is not installed: pip install 'lightfit[plot]' (or make plot)"
        raise LightfitError(message) from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(table: Path, out: Path | None = None) -> Path:
    """The test confusion matrix as a heat map with its counts; returns the PNG."""
    plt = pyplot()
    with table.open(newline="") as f:
        rows = list(csv.reader(f))
    names = rows[0][1:] if rows and not is_number(rows[0][0]) else None  # a table's class names
    counts = [[int(float(v)) for v in (row[1:] if names else row)] for row in rows[1 if names else 0 :]]
    n = len(counts)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.8 + 0.45 * n))
    ax.imshow(counts, cmap="Blues")
    most = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            ax.text(j, i, count, ha="center", va="center", fontsize=8,
                    color="white" if count > most / 2 else "black")  # fmt: skip
    ax.set(xlabel="predicted", ylabel="true", xticks=range(n), yticks=range(n), title="test confusion matrix")
    if names:
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_yticklabels(names)
    fig.tight_layout()
    out = out or table.with_name("confusion.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _title(run: Path) -> str:
    """The run's name and its headline test number: accuracy, r2, else the first metric."""
    name = f"{run.parent.name}/{run.name}"
    results = run / "results.json"
    if not results.is_file():
        return name
    test = {k: v for k, v in json.loads(results.read_text()).items() if k.startswith("test/")}
    for key in ("test/acc", "test/r2", *sorted(test)):
        if key in test:
            return f"{name}: test {key.split('/', 1)[1]} {test[key]:.4f}"
    return name


def main(argv: list[str] | None = None, *, prog: str = "lightfit", config_module: str = "") -> None:
    """`<prog> plot [RUN]` (reads run folders, no config: `config_module` is not used)."""
    label = f"{prog}-plot"
    parser = argparse.ArgumentParser(prog=label, description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="run directory or metrics.csv (default: latest)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: <run>/curves.png)")
    args = parser.parse_args(argv)
    with reported(label):
        run = args.run or latest_run()
        print(plot_run(run, args.out))
        table = (run.parent if run.suffix == ".csv" else run) / CONFUSION
        if table.is_file():
            print(plot_confusion(table))


if __name__ == "__main__":
    main()
