"""k-fold cross-validation (`cv.folds=K`): K normal runs in fold_1 ... fold_K, then their mean and spread.

    <run dir>/
      fold_1/ ... fold_K/   each a normal run: checkpoints/, metrics.csv, splits.npz, results.json
      cv.json               every val/ and test/ metric per fold, their mean and standard deviation
      cv.csv                the same as a table: rows fold_1 ... fold_K, mean, std
      results.json          the means (what a sweep and `lightfit compare` read), and cv.std

Fold k is the run `cv.fold=k` with `hydra.run.dir=<run dir>/fold_k`, made in this process
(`fold_job`), so that everything that reads the run directory from Hydra (the loggers, the
DDP ranks' command, a stop's resume hint) sees the fold's. `ckpt_path=auto` in the same run
directory continues a cross-validation: a fold with a results.json is done, the first that
is not resumes from its own newest checkpoint, the later ones start fresh.

The standard deviation is the sample one (ddof=1, as pandas gives): with few folds the
population one would understate the spread.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, open_dict, read_write

from lightfit.run.results import RESULTS, write_json_atomic
from lightfit.run.resume import AUTO

log = logging.getLogger("lightfit")
CV_JSON, CV_CSV = "cv.json", "cv.csv"
STAGES = ("val/", "test/")  # the metrics summarised: those of the best weights on val and test
# What a fold's results.json says about the run rather than a score: the parent's says the same.
ABOUT = ("loop", "task", "monitor", "mode", "classes")


def fold_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"fold_{k}"


@contextlib.contextmanager
def fold_job(path: Path, k: int) -> Iterator[None]:
    """Inside, Hydra's job is fold `k`'s: its output dir is `path` and its overrides end with `cv.fold=k`,
    as if Hydra had run `<command> cv.fold=k hydra.run.dir=<path>`."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.instance()
    saved = hydra.cfg
    job = copy.deepcopy(saved)
    with read_write(job.hydra), open_dict(job.hydra):
        job.hydra.runtime.output_dir = str(path)
        job.hydra.overrides.task = [*job.hydra.overrides.task, f"cv.fold={k}"]
    hydra.set_config(job)
    try:
        yield
    finally:
        hydra.set_config(saved)


def cross_validate(cfg: DictConfig, run_dir: Path, train_one: Callable[[DictConfig], Any]) -> dict[str, Any]:
    """Train every fold not done yet with `train_one` (a whole run for a composed config), then
    write the summary; returns the parent's results.json (the means)."""
    folds = int(cfg.cv.folds)
    for k in range(1, folds + 1):
        where = fold_dir(run_dir, k)
        if cfg.ckpt_path == AUTO and (where / RESULTS).is_file():
            log.info(f"cv: fold {k} of {folds} finished already ({where / RESULTS}), skipped")
            continue
        log.info(f"cv: fold {k} of {folds} in {where}")
        where.mkdir(parents=True, exist_ok=True)
        fold_cfg = copy.deepcopy(cfg)
        with open_dict(fold_cfg):
            fold_cfg.cv.fold = k
        with fold_job(where, k):
            train_one(fold_cfg)
    return summarize(run_dir, folds, int(cfg.seed))


def summarize(run_dir: Path, folds: int, seed: int) -> dict[str, Any]:
    """cv.json, cv.csv and results.json from the folds' results.json; returns the latter."""
    per_fold = {
        f"fold_{k}": json.loads((fold_dir(run_dir, k) / RESULTS).read_text()) for k in range(1, folds + 1)
    }
    scores = {
        name: {key: value for key, value in results.items() if _is_score(key, value)}
        for name, results in per_fold.items()
    }
    metrics = sorted(set.intersection(*(set(s) for s in scores.values())))
    values = {m: np.array([scores[name][m] for name in scores]) for m in metrics}
    mean = {m: float(v.mean()) for m, v in values.items()}
    std = {m: float(v.std(ddof=1)) for m, v in values.items()}
    write_json_atomic(
        run_dir / CV_JSON,
        {"folds": folds, "seed": seed, "per_fold": scores, "mean": mean, "std": std, "ddof": 1},
    )
    _write_csv(run_dir / CV_CSV, metrics, {**scores, "mean": mean, "std": std})
    first = per_fold["fold_1"]
    results = {key: first[key] for key in ABOUT if key in first} | mean
    results["epochs"] = max(int(r.get("epochs") or 0) for r in per_fold.values())
    results["cv"] = {"folds": folds, "std": std}
    write_json_atomic(run_dir / RESULTS, results)
    _report(folds, mean, std, first.get("monitor"))
    log.info(f"cv: {run_dir / CV_CSV}")
    return results


def _is_score(key: str, value: Any) -> bool:
    return key.startswith(STAGES) and isinstance(value, (int, float)) and not isinstance(value, bool)


def _write_csv(path: Path, metrics: list[str], rows: dict[str, dict[str, float]]) -> None:
    """Rows fold_1 ... fold_K, mean, std; a column per metric. Written beside and renamed."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fold", *metrics])
        writer.writerows([name, *(f"{row[m]:.6g}" for m in metrics)] for name, row in rows.items())
    os.replace(tmp, path)


def _report(folds: int, mean: dict[str, float], std: dict[str, float], monitor: str | None) -> None:
    shown = [m for m in mean if m == monitor or m.startswith("test/")]
    line = ", ".join(f"{m} {mean[m]:.4f} ± {std[m]:.4f}" for m in shown)
    log.info(f"cv: {folds} folds: {line}")
