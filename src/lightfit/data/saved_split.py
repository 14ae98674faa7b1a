"""The split on disk: every run writes `splits.npz`, and `load_split` gives its arrays back.

A baseline (scikit-learn, XGBoost) is only comparable when it trains and is tested on the
same rows. `splits.npz` holds the row numbers of the train, val and test splits (rows of the
file: for a table, 0 is the first row after the header, whatever `data.missing=drop` left
out). `load_split(run_dir)` rebuilds the run's data module from its config and returns the
same float32 features and labels the network saw, as NumPy arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.errors import LightfitError

SPLITS = "splits.npz"
STAGES = ("train", "val", "test")


def save_splits(datamodule: Any, run_dir: str | Path) -> Path:
    """Write `<run_dir>/splits.npz` (train, val, test: int64 row numbers), atomically."""
    path = Path(run_dir) / SPLITS
    partial = path.with_name("splits.partial.npz")
    rows = datamodule.split_rows_in_file()
    np.savez(partial, **{name: np.asarray(rows[name], dtype=np.int64) for name in STAGES})
    os.replace(partial, path)
    return path


def load_split(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train": (x, y), "val": (x, y), "test": (x, y)}` of a finished or running run.

    x: float32 features as the network saw them (text columns one-hot, missing values filled
    as configured; not standardised, the network does that), y: class ids 0..C-1 or float32
    targets. The class names are in the run's results.json (`classes`). For example::

        from sklearn.linear_model import LogisticRegression
        from lightfit.data import load_split

        split = load_split("outputs/2026-12-05/08-00-00")
        model = LogisticRegression(max_iter=1000).fit(*split["train"])
        print(model.score(*split["test"]))
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    run_dir = Path(run_dir).expanduser()
    saved, config = run_dir / SPLITS, run_dir / ".hydra" / "config.yaml"
    for path in (saved, config):
        if not path.is_file():
            raise LightfitError(f"{run_dir} is not a lightfit run directory (no {path.relative_to(run_dir)})")
    cfg = OmegaConf.load(config)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = instantiate(data, task=cfg.task.name, _convert_="all")
    datamodule.setup("fit")
    rows = datamodule.split_rows_in_file()
    with np.load(saved, allow_pickle=False) as stored:
        for name in STAGES:
            if not np.array_equal(stored[name], rows[name]):
                raise LightfitError(
                    f"{data.get('path') or 'the data'} no longer gives the {name} split of {run_dir} "
                    "(the file or the data config changed since the run)"
                )
    arrays = {}
    for name in STAGES:
        split = datamodule.splits[name]
        x = split.x if isinstance(split.x, np.ndarray) else split.x.numpy()  # numpy(): shares memory
        picked = split.rows.numpy()
        arrays[name] = (np.asarray(x[picked]), split.y.numpy()[picked])
    return arrays
