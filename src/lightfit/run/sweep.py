"""The table of a sweep: one row per job, with its overrides and its results.json metrics.

`SweepSummary` is a Hydra callback, registered in conf/train.yaml. In a multirun
(`-m ...`, or `hparams_search=...`) it writes `<sweep dir>/summary.csv` again after every
job, so a sweep that stops half way still leaves one, and prints the table when the
sweep ends. A job directory without results.json did not finish: its status is `failed`.
The table is read from the job directories, not from memory, so it also works for
launchers that run jobs in other processes.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SUMMARY = "summary.csv"
RESULTS = "results.json"  # as lightfit.cli.train writes it (not imported: that would import it per job)
OVERRIDES = ".hydra/overrides.yaml"  # Hydra writes it into every run directory
LEFT_OUT = ("best_checkpoint",)  # a long path; the job directory says where it is


def natural_key(path: Path) -> list[Any]:
    """Sort key: job 10 after job 9."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.as_posix())]


def read_overrides(job_dir: Path) -> dict[str, str]:
    """A job's command-line overrides, `{"optimizer.lr": "0.01", "model": "cnn"}`; {} if it has none."""
    overrides_file = job_dir / OVERRIDES
    if not overrides_file.is_file():
        return {}
    pairs = (str(o).partition("=") for o in OmegaConf.to_container(OmegaConf.load(overrides_file)))
    return {key: value for key, _, value in pairs}


def read_results(job_dir: Path) -> dict[str, Any] | None:
    """A job's results.json, or None if it did not finish."""
    results_file = job_dir / RESULTS
    return json.loads(results_file.read_text()) if results_file.is_file() else None


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory under `sweep_dir` (those with a .hydra/overrides.yaml)."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob(f"**/{OVERRIDES}"), key=natural_key):
        job_dir = overrides_file.parent.parent
        results = read_results(job_dir)
        row: dict[str, Any] = {"job": job_dir.relative_to(sweep_dir).as_posix()}
        row["status"] = "ok" if results is not None else "failed"
        row.update(read_overrides(job_dir))
        if results is not None:
            row.update({k: v for k, v in sorted(results.items()) if k not in LEFT_OUT and k != "cv"})
            if cv := results.get("cv"):  # a cross-validation: the means above, the folds and spread here
                row["cv.folds"] = cv["folds"]
                row.update({f"{k} std": v for k, v in sorted(cv["std"].items())})
        rows.append(row)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """job, status, then every override and metric in the order first seen."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Written beside and renamed: a reader never sees half a table (jobs may finish at once)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def is_fold_dir(path: Path) -> bool:
    """A cross-validation's fold_<k> inside a run directory (whose own results.json sums the folds)."""
    name, parent = path.name, path.parent
    is_run = (parent / RESULTS).is_file() or (parent / ".hydra").is_dir() or (parent / "cv.json").is_file()
    return name.startswith("fold_") and name.removeprefix("fold_").isdigit() and is_run


def _cell(row: dict[str, Any], name: str) -> str:
    value, std = row.get(name, ""), row.get(f"{name} std")
    if isinstance(value, float) and isinstance(std, float):  # a cross-validation's mean and spread
        return f"{value:.4f} ± {std:.4f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text columns, floats to 4 decimals; a metric with a `<metric> std`
    column (a cross-validation) as `0.9530 ± 0.0120`, in one column."""
    names = columns(rows)
    names = [n for n in names if not (n.endswith(" std") and n.removesuffix(" std") in names)]
    cells = [names] + [[_cell(row, n) for n in names] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(names))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = job_rows(sweep_dir)
    if rows:
        write_csv(sweep_dir / SUMMARY, rows)
    return rows


class SweepSummary(Callback):
    """Hydra callback: summary.csv after each job of a multirun, and the table at its end."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        if rows:
            # print, not logging: the logging set up for the last job would also write the
            # table into that job's log file.
            print(format_table(rows), flush=True)
            print(f"summary: {sweep_dir / SUMMARY}", flush=True)
