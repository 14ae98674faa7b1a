"""What `lightfit evaluate ckpt_path=... input=...` tests: every sample of a labelled file.

The features are read by predict's readers, so exactly as in training: a table encoded with
the checkpoint's `TableEncoding`, images decoded to its size and channels a batch at a time
(never cached). The labels are a table's target column(s), mapped to the trained classes by
name, the class subfolders' names, or a `.npz`'s `y`. An input without labels is refused in
one line: predictions are `lightfit predict`'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lightfit.errors import LightfitError

# What may go with input=: how the input is batched, not which data are tested.
LOADER_KEYS = ("batch_size",)


def no_labels(path: Path, why: str) -> LightfitError:
    from lightfit.run.signals import program_name  # `affair_risk predict` in a project

    return LightfitError(f"{path} has no labels ({why}); to get predictions use {program_name()} predict")


def read_labelled(path: Path, stored: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """(features, labels) of every sample in `path`. Features: float32 (a table, an .npz) or
    uint8 pixels decoded when a batch asks for them (images); labels: class ids 0..C-1
    (int64) or float32 targets. Checked against the checkpoint's sample and target shapes."""
    from lightfit.data.images import is_image_name
    from lightfit.data.table_read import table_kind

    if not path.exists():
        raise LightfitError(f"input not found: {path}")
    if path.is_dir() or is_image_name(path):
        x, y = _read_images(path, stored)
    elif table_kind(path) is not None:
        x, y = _read_table(path, stored)
    else:
        x, y = _read_npz(path, stored)
    expected = tuple(stored["input_shape"])
    if tuple(x.shape[1:]) != expected:
        raise LightfitError(
            f"{path} has samples of shape {tuple(x.shape[1:])} (array {tuple(x.shape)}); "
            f"the checkpoint's network takes samples of shape {expected}"
        )
    targets = stored.get("target_shape")
    if targets is not None and tuple(y.shape[1:]) != tuple(targets):
        raise LightfitError(
            f"{path} has targets of shape {tuple(y.shape[1:])} per sample; "
            f"the checkpoint predicts {tuple(targets)}"
        )
    return x, y


def _what(stored: dict[str, Any]) -> str:
    """What to give instead, for the data the checkpoint was trained on."""
    if "table" in stored:
        return "give a table with its columns"
    if "images" in stored:
        return "give a folder with one subfolder per class"
    return "give a .npz with x and y"


def _read_images(path: Path, stored: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """A folder with one subfolder per class; the classes are the checkpoint's (fewer is fine)."""
    from lightfit.cli.predict_images import DecodedImages
    from lightfit.data.images import pillow, scan_classes

    if "images" not in stored:
        raise LightfitError(
            f"{path} is images, but the checkpoint was not trained with data=images; {_what(stored)}"
        )
    images = stored["images"]
    pillow()  # one line if Pillow is missing, before anything is scanned
    if path.is_file():
        raise no_labels(path, "one image; give a folder with one subfolder per class")
    if not any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        raise no_labels(path, "no class subfolders, only images")
    listing = scan_classes(path, images["classes"])  # a folder not among them: one line naming it
    return DecodedImages(listing, images["size"], images["channels"]), listing.labels


def _read_table(path: Path, stored: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The training feature columns, encoded as in training, and the target column(s)."""
    from lightfit.cli.predict_table import encode_table, stored_encoding
    from lightfit.data.table import encode_target
    from lightfit.data.table_read import did_you_mean, missing_error, missing_mask, read_table

    if "table" not in stored:
        raise LightfitError(
            f"{path} is a table, but the checkpoint was not trained with data=table; {_what(stored)}"
        )
    enc = stored_encoding(path, stored)
    table = read_table(path, as_is=tuple(enc.target))  # the target as it is, as training read it
    for name in enc.target:
        if name not in table.column_names:
            raise no_labels(path, f"no target column '{name}'{did_you_mean(name, table.column_names)}")
    if missing_mask(table, enc.target).any():
        advice = "a row needs its target to be tested; leave those rows out of the file"
        raise missing_error(path, table, enc.target, advice)
    y = encode_target(table, enc, path)  # class names -> the trained ids; one line for a new one
    tables = [table]
    del table  # encode_table then holds the only reference, and frees the columns as it encodes
    x, _ = encode_table(tables.pop(), path, enc, [])
    return x, y


def _read_npz(path: Path, stored: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """`x` and `y`, or `x_test` and `y_test`, checked as training checks them."""
    from lightfit.data.arrays import (
        NPY_MAGIC,
        ZIP_MAGIC,
        check_features,
        check_labels,
        check_targets,
        features_as_float32,
        read_npz,
    )
    from lightfit.run.checkpoint import num_outputs, task_config

    with path.open("rb") as f:
        magic = f.read(6)
    if magic == NPY_MAGIC:
        raise no_labels(path, "a .npy holds features only; save x and y in one file with np.savez")
    if not magic.startswith(ZIP_MAGIC):
        raise LightfitError(
            f"{path} is not a CSV/Parquet table, an image folder or a NumPy .npz with x and y"
        )
    arrays = read_npz(path)
    keys = ", ".join(sorted(arrays)) or "none"
    pair = next((p for p in (("x", "y"), ("x_test", "y_test")) if set(p) <= set(arrays)), None)
    if pair is None and ("x" in arrays or "x_test" in arrays):
        raise no_labels(path, f"keys {keys}: no y")
    if pair is None:
        raise LightfitError(f"{path} has keys [{keys}]; expected 'x' and 'y' (or 'x_test' and 'y_test')")
    x, y = arrays[pair[0]], arrays[pair[1]]
    check_features(f"{path}: {pair[0]}", x)
    if task_config(stored)["name"] == "regression":
        y = check_targets(f"{path}: {pair[1]}", y, len(x))
    else:
        y = check_labels(f"{path}: {pair[1]}", y, len(x), num_outputs(stored))
    return features_as_float32(x), y


def input_loader(cfg: Any, stored: dict[str, Any]) -> Any:
    """A loader over every sample of `cfg.input`, in order, batched as the run's test split was
    (`+data.batch_size=` to change it)."""
    import torch

    from lightfit.data.batches import ArrayDataset, batch_loader
    from lightfit.data.splits import shared_tensor

    extra = sorted(set(cfg.data or {}) - set(LOADER_KEYS))
    if extra:
        key = "path" if "path" in extra else extra[0]
        raise LightfitError(
            f"input={cfg.input} and data=... or +data.{key}=... both say what to test; choose one "
            "(+data.batch_size= may go with input=)"
        )
    x, y = read_labelled(Path(cfg.input).expanduser(), stored)
    batch_size = int((cfg.data or {}).get("batch_size") or stored["config"]["data"].get("batch_size", 64))
    if batch_size < 1:
        raise LightfitError(f"data.batch_size={batch_size} must be a positive integer")
    x = shared_tensor(x) if isinstance(x, np.ndarray) else x  # images: decoded a batch at a time
    dataset = ArrayDataset(x, torch.from_numpy(np.ascontiguousarray(y)), torch.arange(len(y)))
    return batch_loader(dataset, batch_size, shuffle=False)
