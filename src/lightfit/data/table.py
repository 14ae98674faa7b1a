"""Tables in: a CSV or Parquet file, read with pyarrow, encoded into float32 NumPy arrays.

Numeric columns become float32 features as they are (the network's `Standardize` scales
them). A text column becomes one 0/1 column per category of the training split (one-hot).
Class labels, strings or integers, become 0..C-1 in sorted order. Everything learned from
the training split (the feature columns, the categories, the class names, the means that
fill missing values) is a `TableEncoding`: every checkpoint carries it as plain lists, so
`lightfit predict` turns raw rows into the same features. No Lightning and no torch here.

The file is read by table_read.py (pyarrow, the optional extra `table`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lightfit.data.table_read import is_numeric, is_text
from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
UNKNOWN = ("error", "ignore")
MISSING = ("error", "drop", "mean")


@dataclass
class TableEncoding:
    """What turns a table's rows into features and labels: learned on the training split.

    Plain values only, so a checkpoint (read with `torch.load(weights_only=True)`) can carry it.
    """

    features: list[str]  # the feature columns, in order
    categories: dict[str, list[str]]  # text column -> its training categories, one 0/1 column each
    means: dict[str, float]  # numeric column -> training mean (data.missing=mean)
    target: list[str]
    classes: list[Any] | None  # classification: the labels of 0..C-1 (strings or integers)
    unknown: str = "error"
    missing: str = "error"
    multi_target: bool = False  # data.target was a list: targets of shape (N, k)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> TableEncoding:
        return cls(**stored)

    @property
    def width(self) -> int:
        """The number of feature columns after one-hot encoding."""
        return sum(len(self.categories.get(name, [0])) for name in self.features)

    def feature_names(self) -> list[str]:
        """One name per encoded column: `age`, `city=Paris`, `city=Rome`, ..."""
        names = []
        for name in self.features:
            names += [f"{name}={c}" for c in self.categories[name]] if name in self.categories else [name]
        return names


def fit_encoding(
    table: Any,
    source: Any,
    features: list[str],
    target: list[str],
    train: np.ndarray,
    *,
    classification: bool,
    max_categories: int,
    **options: Any,
) -> TableEncoding:
    """Categories, means and class names from the training rows `train` of `table`."""
    import pyarrow.compute as pc

    train_rows = table.take(train)
    categories, means = {}, {}
    for name in features:
        column = train_rows[name]
        if is_text(column.type):
            values = pc.unique(column.drop_null()).to_pylist()
            if len(values) > max_categories:
                raise LightfitError(
                    f"{source}: text column '{name}' has {len(values)} categories, more than "
                    f"data.max_categories={max_categories}; drop it (data.drop=[{name}]) "
                    "or encode it yourself"
                )
            categories[name] = sorted(values)
        elif is_numeric(column.type) or str(column.type) == "bool":
            mean = pc.mean(pc.cast(column, "float64"), skip_nulls=True).as_py()
            means[name] = 0.0 if mean is None or mean != mean else float(mean)  # an all-missing column: 0
        else:
            raise LightfitError(
                f"{source}: column '{name}' holds {column.type}, neither numbers nor text; "
                f"drop it (data.drop=[{name}]) or convert it"
            )
    classes = None
    if classification:
        labels = table[target[0]].drop_null()
        values = pc.unique(labels).to_pylist()
        if str(labels.type).startswith(("float", "double")):
            if any(v != int(v) for v in values):
                raise LightfitError(
                    f"{source}: target '{target[0]}' holds numbers that are not whole (e.g. "
                    f"{next(v for v in values if v != int(v)):g}); "
                    "for real-valued targets use task=regression"
                )
            values = [int(v) for v in values]
        classes = sorted(set(values))
    return TableEncoding(features, categories, means, target, classes, **options)


def encode_features(
    table: Any, enc: TableEncoding, source: Any, fill: bool = False, training: bool = False
) -> np.ndarray:
    """(N, enc.width) float32: numeric columns as they are, text columns one-hot.

    `fill`: missing numbers become the training means and missing text all zeros; else the
    caller has made sure there are none. `training`: the table the categories were learned
    from; a category only its val/test rows have is all zeros (with a warning), as it would
    be for new data with data.unknown=ignore, rather than a run that fails by the luck of the split.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    out = np.zeros((table.num_rows, enc.width), dtype=np.float32)
    at = 0
    for name in enc.features:
        column = table[name]
        if name in enc.categories:
            if not is_text(column.type):
                raise LightfitError(
                    f"{source}: column '{name}' holds {column.type}; in training it held text"
                )
            known = pa.array(enc.categories[name], type=pa.string())
            codes = pc.index_in(pc.cast(column, pa.string()), value_set=known).to_numpy(zero_copy_only=False)
            found = ~np.isnan(codes) if codes.dtype.kind == "f" else np.ones(len(codes), bool)
            unseen = ~found & ~pc.is_null(column).to_numpy(zero_copy_only=False)
            if unseen.any() and training and enc.unknown != "ignore":
                log.warning(
                    f"{source}: column '{name}' has categories no training row has, in "
                    f"{int(unseen.sum())} val/test rows (e.g. '{column[int(np.argmax(unseen))].as_py()}'); "
                    "encoded as zeros"
                )
            elif unseen.any() and enc.unknown != "ignore":
                value = column[int(np.argmax(unseen))].as_py()
                raise LightfitError(
                    f"{source}: column '{name}' has the category '{value}' (row {int(np.argmax(unseen))}), "
                    f"never seen in training ({int(unseen.sum())} rows); "
                    "data.unknown=ignore encodes it as zeros"
                )
            rows = np.flatnonzero(found)
            out[rows, at + codes[rows].astype(np.int64)] = 1.0
            at += len(enc.categories[name])
            continue
        if is_text(column.type):
            raise LightfitError(f"{source}: column '{name}' holds text; in training it held numbers")
        values = column.to_numpy(zero_copy_only=False)  # (N,), NaN where missing
        if fill:
            values = np.where(np.isnan(values), np.float32(enc.means[name]), values)
        out[:, at] = values
        at += 1
    return out


def encode_target(table: Any, enc: TableEncoding, source: Any) -> np.ndarray:
    """Class ids 0..C-1 (int64) for classification; float32 (N,) or (N, k) for regression."""
    if enc.classes is None:
        columns = [table[name].to_numpy(zero_copy_only=False).astype(np.float32) for name in enc.target]
        return np.stack(columns, axis=1) if enc.multi_target else columns[0]
    column = table[enc.target[0]]
    values = column.to_numpy(zero_copy_only=False)
    classes = np.asarray(enc.classes)
    values = values.astype(str if classes.dtype.kind == "U" else np.int64)
    ids = np.searchsorted(classes, values)
    unseen = (ids >= len(classes)) | (classes[np.minimum(ids, len(classes) - 1)] != values)
    if unseen.any():
        value = values[int(np.argmax(unseen))]
        raise LightfitError(
            f"{source}: target '{enc.target[0]}' has the label '{value}' ({int(unseen.sum())} rows), "
            f"not one of the {len(classes)} classes of training"
        )
    return ids.astype(np.int64)
