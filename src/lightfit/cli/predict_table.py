"""Predictions on tables: raw rows of a CSV/Parquet file in, a CSV of predictions out.

A checkpoint trained with `data=table` carries its `TableEncoding` (the feature columns,
the categories of text columns, the class names, the means that fill missing values), so
a table with the training columns, in any order and with any other columns besides, is
encoded exactly as in training. `output=pred.csv` writes the columns named in `keep`, then
the prediction (class names, or values in the target's units), then for a classifier one
probability column per class.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.errors import LightfitError


def read_table_inputs(
    path: Path, stored: dict[str, Any], keep: list[str], unknown: str | None = None
) -> tuple[np.ndarray, dict[str, list]]:
    """The encoded features (N, width) float32 and the `keep` columns' values of a table.

    `unknown`: error or ignore for a category never seen in training; None: as trained.
    """
    from lightfit.data.table_read import read_table

    enc = stored_encoding(path, stored, unknown)
    # Not bound to a name here: encode_table holds the only reference and frees it as it goes.
    return encode_table(read_table(path, as_is=tuple(keep)), path, enc, keep)


def stored_encoding(path: Path, stored: dict[str, Any], unknown: str | None = None) -> Any:
    """The checkpoint's `TableEncoding`; one line if it was not trained on a table."""
    from lightfit.data.table import UNKNOWN, TableEncoding

    if "table" not in stored:
        raise LightfitError(
            f"{path} is a table, but the checkpoint was trained on arrays; give a .npy of its features"
        )
    enc = TableEncoding.from_dict(stored["table"])
    if unknown is not None:
        if unknown not in UNKNOWN:
            raise LightfitError(f"unknown={unknown} is not one of {', '.join(UNKNOWN)}")
        enc.unknown = unknown
    return enc


def encode_table(table: Any, path: Path, enc: Any, keep: list[str]) -> tuple[np.ndarray, dict[str, list]]:
    """A table read by `read_table` as the checkpoint's features, and its `keep` columns' values
    (predict), as training encoded them. Frees the table's columns as it goes."""
    from lightfit.data.table import encode_features
    from lightfit.data.table_read import check_columns, missing_error, missing_mask

    check_columns(path, enc.features, table.column_names, "training's feature")
    check_columns(path, keep, table.column_names, "keep")
    fill = enc.missing == "mean"
    if not fill and missing_mask(table, enc.features).any():
        advice = (
            f"the checkpoint was trained with data.missing={enc.missing}: leave those rows out of the "
            "file, or train with data.missing=mean, which fills them"
        )
        raise missing_error(path, table, enc.features, advice)
    kept = {name: table[name].to_pylist() for name in keep}
    batches = table.select(enc.features).to_batches()
    del table  # the batches are the last reference: encode_features frees them as it goes
    return encode_features(batches, enc, path, fill=fill), kept


def prediction_columns(stored: dict[str, Any], width: int) -> tuple[list[str], list[Any] | None]:
    """The names of the prediction column(s), and the class names (None: regression)."""
    enc = stored.get("table")
    if stored.get("target_shape") is not None:  # regression: one column per target
        targets = enc["target"] if enc else [str(i) for i in range(width)]
        names = [f"predicted_{t}" for t in targets] if width > 1 or enc else ["predicted"]
        return names, None
    images = stored.get("images") or {}  # data=images: the class folders' names
    classes = enc["classes"] if enc else images.get("classes") or list(range(width))
    return [f"predicted_{enc['target'][0]}" if enc else "predicted"], classes


def write_csv(path: Path, kept: dict[str, list], outputs: np.ndarray, stored: dict[str, Any]) -> None:
    """`kept` columns, the prediction(s), then one probability column per class; atomically.

    `outputs`: class probabilities (N, C), or values (N,) / (N, k) in the target's units.
    """
    width = outputs.shape[1] if outputs.ndim == 2 else 1
    names, classes = prediction_columns(stored, width)
    if classes is not None:
        predicted = np.asarray(classes, dtype=object)[outputs.argmax(axis=1)]
        columns = [predicted, *outputs.T]
        names = [*names, *(f"prob_{c}" for c in classes)]
    else:
        columns = list(outputs.reshape(len(outputs), -1).T)
    header = [*kept, *names]
    if len(set(header)) != len(header):
        raise LightfitError(f"keep={list(kept)}: a kept column has the name of a prediction column")
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            cells = [*kept.values(), *(_formatted(c) for c in columns)]
            writer.writerows(zip(*cells, strict=True))
        os.replace(partial, path)  # atomic: readers see the whole file or none
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _formatted(column: np.ndarray) -> list[Any]:
    """Numbers with float32's precision (0.1, not 0.10000000149011612); names as they are."""
    if column.dtype.kind == "f":
        return [f"{v:.7g}" for v in column.tolist()]
    return column.tolist()
