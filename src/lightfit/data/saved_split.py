"""The split on disk: every run writes `splits.npz`, and `load_split` gives its arrays back.

A baseline (scikit-learn, XGBoost) is only comparable when it trains and is tested on the
same rows. `splits.npz` holds the row numbers of the train, val and test splits (rows of the
file: for a table, 0 is the first row after the header, whatever `data.missing=drop` left
out), and the data config that made them (JSON text, nothing pickled); a cross-validation's
fold also its number (`fold`: k, K). `load_split(run_dir)`
rebuilds the run's data module from that config and returns the same float32 features and
labels the network saw, as NumPy arrays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.errors import LightfitError

SPLITS = "splits.npz"
STAGES = ("train", "val", "test")


def save_splits(datamodule: Any, run_dir: str | Path, data: dict[str, Any]) -> Path:
    """Write `<run_dir>/splits.npz` (train, val, test: int64 row numbers; `data`: the resolved
    data config, task included), atomically."""
    path = Path(run_dir) / SPLITS
    partial = path.with_name("splits.partial.npz")
    rows = datamodule.split_rows_in_file()
    arrays = {name: np.asarray(rows[name], dtype=np.int64) for name in STAGES}
    for key in ("path", "labels"):  # load_split may run from another folder
        if data.get(key):
            data = data | {key: str(Path(data[key]).expanduser().resolve())}
    if getattr(datamodule, "fold", None) is not None:  # cross-validation: fold k of K (use_fold)
        arrays["fold"] = np.asarray(datamodule.fold, dtype=np.int64)
    np.savez(partial, **arrays, data=np.array(json.dumps(data)))
    os.replace(partial, path)
    return path


def load_split(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train": (x, y), "val": (x, y), "test": (x, y)}` of a finished or running run.

    x: float32 features as the network saw them (text columns one-hot, missing values filled
    as configured; not standardised, the network does that; for `data=images` the uint8
    pixels, (N, C, H, W)), y: class ids 0..C-1 or float32 targets. The class names are in
    the run's results.json (`classes`). For example::

        from sklearn.linear_model import LogisticRegression
        from lightfit.data import load_split

        split = load_split("outputs/2026-12-05/08-00-00")
        model = LogisticRegression(max_iter=1000).fit(*split["train"])
        print(model.score(*split["test"]))
    """
    from hydra.utils import instantiate

    saved = Path(run_dir).expanduser() / SPLITS
    if not saved.is_file():
        raise LightfitError(f"{run_dir} is not a lightfit run directory (no {SPLITS})")
    with np.load(saved, allow_pickle=False) as stored:
        rows = {name: stored[name] for name in STAGES}
        data = json.loads(str(stored["data"]))
        fold = tuple(int(v) for v in stored["fold"]) if "fold" in stored else None
    _check_target(data.get("_target_"), saved)
    datamodule = instantiate(data)
    if fold is not None:
        datamodule.use_fold(*fold)
    datamodule.setup("fit")
    for name, now in datamodule.split_rows_in_file().items():
        if not np.array_equal(now, rows[name]):
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


def _check_target(target: Any, saved: Path) -> None:
    """Call only a data module (or a function of this package) from a file: `instantiate`
    calls whatever `_target_` names."""
    import lightning as L
    from hydra.utils import get_object

    try:
        obj = get_object(str(target))
    except Exception:  # noqa: BLE001 - not importable: refused below with the name
        obj = None
    package = __name__.split(".")[0] + "."  # "lightfit.", or a renamed copy's
    ours = callable(obj) and getattr(obj, "__module__", "").startswith(package)
    if not ours and not (isinstance(obj, type) and issubclass(obj, L.LightningDataModule)):
        raise LightfitError(f"{saved}: _target_ {target!r} is not a data module; refusing to call it")
