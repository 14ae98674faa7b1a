"""Runs side by side: ranked by the monitored metric, with what differed, their curves in one PNG.

    lightfit compare multirun/2026-11-25/19-26-52            # every job of a sweep
    lightfit compare outputs/2026-11-25/19-13-30 outputs/2026-11-26/08-02-11
    lightfit compare multirun/... --output table.csv --png curves.png
    make compare RUNS="multirun/2026-11-25/19-26-52"

Each argument is a run directory (it has a results.json or a .hydra/overrides.yaml) or a
folder with runs below it (a sweep, outputs/). The table has one row per finished run, best
first, and a column for each override whose value differs between the runs (a run that did
not override it shows the option or value it ran with). The PNG overlays every run's curve
of the monitored metric per epoch, from metrics.csv, the best run in black. A cross-validation
(`cv.folds=K`) is one run: its folds' means, shown with their spread (`0.9530 ± 0.0120`). Only runs of one
task are compared: a classification accuracy and a regression error do not rank together.
The PNG needs the `plot` extra (matplotlib), imported only for it.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from lightfit.cli.plot import METRICS, pyplot, read_epochs
from lightfit.errors import LightfitError, reported
from lightfit.run.progress import track
from lightfit.run.sweep import (
    OVERRIDES,
    RESULTS,
    format_table,
    is_fold_dir,
    natural_key,
    read_overrides,
    read_results,
    write_csv,
)

DEFAULT_TASK = "classification"  # runs from before the task config group
DEFAULT_MONITOR = "val/loss"
LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "mape")
STAGES = ("train", "val", "test")
PNG = "compare.png"


@dataclass(eq=False)  # compared and hashed by identity: a dict key
class Run:
    """A finished run: its results.json, overrides and, where Hydra wrote them, its composed config."""

    path: Path
    results: dict[str, Any]
    overrides: dict[str, str]
    config: DictConfig  # .hydra/config.yaml, as composed (interpolations such as ${seed} unresolved)
    choices: dict[str, Any]  # the option each config group ran with, from .hydra/hydra.yaml

    def __str__(self) -> str:  # what progress lines show
        return self.path.as_posix()

    @property
    def task(self) -> str:
        return self.results.get("task") or self.value("task.name") or DEFAULT_TASK

    @property
    def monitor(self) -> str:
        return self.results.get("monitor") or self.value("monitor") or DEFAULT_MONITOR

    def setting(self, key: str) -> str:
        """What this run had for an override key: its own override, else its group option or value."""
        if key in self.overrides:
            return self.overrides[key]
        for prefix in ("+", "++", "~"):  # +key=value adds a key, ~key deletes it
            if prefix + key in self.overrides:
                return self.overrides[prefix + key]
        value = self.choices.get(key, self.value(key))
        return "-" if value is None or isinstance(value, DictConfig) else str(value)

    def value(self, key: str) -> Any:
        """`key` of the composed config, interpolations resolved (None where that needs Hydra)."""
        return OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)


def _yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def find_runs(folder: Path) -> list[Path]:
    """`folder` itself if it is a run directory, else every run directory below it."""
    if not folder.is_dir():
        raise LightfitError(f"{folder}: no such directory")
    if (folder / RESULTS).is_file() or (folder / OVERRIDES).is_file():
        return [folder]
    found = {p.parent for p in folder.glob(f"**/{RESULTS}")}
    found |= {p.parent.parent for p in folder.glob(f"**/{OVERRIDES}")}
    found = {p for p in found if not is_fold_dir(p)}  # a cross-validation is one run: its folds' mean
    if not found:
        raise LightfitError(f"no runs under {folder}: a run directory has a {RESULTS} or {OVERRIDES}")
    return sorted(found, key=natural_key)


def read_run(path: Path) -> Run | None:
    """The run in `path`, or None if it did not finish (no results.json)."""
    try:
        results = read_results(path)
        if results is None:
            return None
        hydra = _yaml(path / ".hydra" / "hydra.yaml")
        return Run(
            path=path,
            results=results,
            overrides=read_overrides(path),
            config=OmegaConf.create(_yaml(path / ".hydra" / "config.yaml")),
            choices=hydra.get("hydra", {}).get("runtime", {}).get("choices") or {},
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: a broken results.json
        raise LightfitError(f"{path}: cannot read this run: {str(exc).splitlines()[0]}") from None


def one_task(runs: list[Run], task: str | None) -> list[Run]:
    tasks = Counter(run.task for run in runs)
    if task is not None:
        if task not in tasks:
            raise LightfitError(f"no run of task {task} here (tasks: {', '.join(sorted(tasks))})")
        return [run for run in runs if run.task == task]
    if len(tasks) > 1:
        counts = ", ".join(f"{name}: {n} runs" for name, n in sorted(tasks.items()))
        raise LightfitError(
            f"these runs are of {len(tasks)} tasks ({counts}); runs are compared within one task: "
            f"add --task {min(tasks)}"
        )
    return runs


def chosen_monitor(runs: list[Run], monitor: str | None) -> str:
    if monitor is None:
        monitors = Counter(run.monitor for run in runs)
        if len(monitors) > 1:
            counts = ", ".join(f"{name}: {n} runs" for name, n in sorted(monitors.items()))
            raise LightfitError(f"these runs monitor different metrics ({counts}); pick one with --monitor")
        monitor = next(iter(monitors))
    if not any(monitor in run.results for run in runs):
        known = sorted({k for run in runs for k in run.results if "/" in k})
        raise LightfitError(f"no run has {monitor} in its {RESULTS} (it has: {', '.join(known)})")
    return monitor


def mode_of(monitor: str, runs: list[Run]) -> str:
    """ "max" or "min": as the runs say for their own monitor, else from the metric's name."""
    for run in runs:
        mode = run.results.get("mode") or run.value("task.mode")
        if run.monitor == monitor and mode in ("min", "max"):
            return mode
    return "min" if monitor.endswith(LOWER_IS_BETTER) else "max"


def ranked(runs: list[Run], monitor: str, mode: str) -> list[Run]:
    """Best first; runs without the metric last, in their order."""
    scored = [run for run in runs if isinstance(run.results.get(monitor), (int, float))]
    scored.sort(key=lambda run: run.results[monitor], reverse=mode == "max")
    return scored + [run for run in runs if run not in scored]


def differing_keys(runs: list[Run]) -> list[str]:
    """The override keys (in the order first seen) whose values are not the same in every run."""
    keys = dict.fromkeys(key.lstrip("+~") for run in runs for key in run.overrides)
    return [key for key in keys if len({run.setting(key) for run in runs}) > 1]


def labels(runs: list[Run]) -> dict[Run, str]:
    """Each run's path from the folder the runs share: `3` for a sweep's job, `d/t` for outputs/d/t."""
    paths = [run.path.resolve() for run in runs]
    if len(paths) == 1:
        return {runs[0]: runs[0].path.name}
    common = Path(os.path.commonpath(paths))
    return {run: path.relative_to(common).as_posix() for run, path in zip(runs, paths, strict=True)}


def table(runs: list[Run], monitor: str, names: dict[Run, str], differing: list[str]) -> list[dict[str, Any]]:
    found = {k for run in runs for k, v in run.results.items() if "/" in k and isinstance(v, (int, float))}
    stage = {s: i for i, s in enumerate(STAGES)}
    others = sorted(found - {monitor}, key=lambda k: (stage.get(k.split("/")[0], len(STAGES)), k))
    rows = []
    for rank, run in enumerate(runs, 1):
        row: dict[str, Any] = {"rank": rank, "run": names[run]}
        row.update({key: run.setting(key) for key in differing})
        row.update({name: run.results.get(name, "") for name in (monitor, *others)})
        if cv := run.results.get("cv"):  # a cross-validation: the means, their spread over the folds
            row.update({f"{name} std": std for name, std in cv["std"].items() if name in row})
            row["folds"] = cv["folds"]
        row["epochs"] = run.results.get("epochs", "")
        rows.append(row)
    return rows


def plot_curves(runs: list[Run], monitor: str, names: dict[Run, str], out: Path) -> Path | None:
    """Every run's `monitor` per epoch on one axis, the best (first) run in black; None if no run has it.

    `names` label the curves (`3: optimizer.lr=0.01`).
    """
    curves = {}
    for run in track(runs, "reading curves"):
        csv_path = run.path / METRICS
        try:
            values = read_epochs(csv_path).get(monitor) if csv_path.is_file() else None
        except LightfitError:  # no training rows: nothing to draw
            values = None
        if values:
            curves[run] = values
    if not curves:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    best = runs[0]
    for run, values in sorted(curves.items(), key=lambda item: item[0] is best):  # the best on top
        style = {"color": "black", "linewidth": 2.5, "zorder": 3} if run is best else {"alpha": 0.6}
        label = f"{names[run]} (best)" if run is best else names[run]
        ax.plot([e + 1 for e in values], list(values.values()), marker=".", label=label, **style)
    ax.set(title=f"{monitor} per epoch, {len(curves)} runs", xlabel="epoch", ylabel=monitor)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    handles, legend_labels = ax.get_legend_handles_labels()
    if len(curves) > 12:  # a legend of every run would cover the plot: the best alone
        handles, legend_labels = handles[-1:], legend_labels[-1:]
    ax.legend(handles, legend_labels, fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def compare(
    folders: list[Path],
    task: str | None = None,
    monitor: str | None = None,
    output: Path | None = None,
    png: Path | None = None,
) -> list[dict[str, Any]]:
    """Print the table (and write it to `output`), draw the curves into `png`; returns the rows."""
    paths = list(dict.fromkeys(p for folder in folders for p in find_runs(folder)))  # in order, once
    for out in (output, png):
        if out is not None and not out.parent.is_dir():
            raise LightfitError(f"cannot write {out}: there is no folder {out.parent}")
    runs = [run for path in track(paths, "reading runs") if (run := read_run(path)) is not None]
    if len(runs) < len(paths):
        print(f"note: {len(paths) - len(runs)} of {len(paths)} runs left out: no {RESULTS} (unfinished)")
    if not runs:
        raise LightfitError(f"none of the {len(paths)} runs finished: no {RESULTS} in any")
    runs = one_task(runs, task)
    monitor = chosen_monitor(runs, monitor)
    mode = mode_of(monitor, runs)
    runs = ranked(runs, monitor, mode)
    names, differing = labels(runs), differing_keys(runs)
    rows = table(runs, monitor, names, differing)
    order = "highest" if mode == "max" else "lowest"
    print(f"{len(runs)} runs of task {runs[0].task}, ranked by {monitor} ({order} first)")
    print(format_table(rows))
    if output is not None:
        write_csv(output, rows)
        print(f"table: {output}")
    if png is not None:
        settings = {run: ", ".join(f"{key}={run.setting(key)}" for key in differing) for run in runs}
        legend = {run: f"{names[run]}: {settings[run]}" if differing else names[run] for run in runs}
        drawn = plot_curves(runs, monitor, legend, png)
        print(f"curves: {drawn}" if drawn else f"curves: no run has {monitor} per epoch in a {METRICS}")
    return rows


def main(argv: list[str] | None = None, *, prog: str = "lightfit", config_module: str = "") -> None:
    """`<prog> compare DIR...` (reads run folders, no config: `config_module` is not used)."""
    label = f"{prog} compare"
    parser = argparse.ArgumentParser(prog=label, description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, or folders with runs below")
    parser.add_argument("--output", type=Path, help="also write the table to this CSV file")
    parser.add_argument(
        "--png", type=Path, help=f"the curves' PNG (default: {PNG} in the one folder given, else here)"
    )
    parser.add_argument("--no-png", action="store_true", help="the table only")
    parser.add_argument("--task", help="compare the runs of this task only (classification, regression)")
    parser.add_argument("--monitor", help="rank by this metric of results.json (default: the runs' own)")
    args = parser.parse_args(argv)
    png = None if args.no_png else args.png or (args.runs[0] / PNG if len(args.runs) == 1 else Path(PNG))
    with reported(label):
        compare(args.runs, task=args.task, monitor=args.monitor, output=args.output, png=png)


if __name__ == "__main__":
    main()
