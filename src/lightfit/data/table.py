"""Tables in: a CSV or Parquet file, read with pyarrow, encoded into float32 NumPy arrays.

Numeric columns become float32 features as they are (the network's `Standardize` scales
them). A date or timestamp column becomes one number, the days since 1970-01-01 (UTC;
fractional for a time of day). A text column becomes one 0/1 column per category of the
training split (one-hot).
Class labels, strings or integers, become 0..C-1 in sorted order. Everything learned from
the training split (the feature columns, the categories, the class names, the means that
fill missing values) is a `TableEncoding`: every checkpoint carries it as plain lists, so
`lightfit predict` turns raw rows into the same features. No Lightning and no torch here.

The file is read by table_read.py (pyarrow, the optional extra `table`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.data.table_columns import days_since_1970, many_categories, whole_number_id
from lightfit.data.table_read import drop_override, is_date, is_numeric, is_text, table_kind
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
    means: dict[str, float]  # numeric or date column -> training mean (data.missing=mean)
    target: list[str]
    classes: list[Any] | None  # classification: the labels of 0..C-1 (strings or integers)
    unknown: str = "error"
    missing: str = "error"
    multi_target: bool = False  # data.target was a list: targets of shape (N, k)
    dates: list[str] = field(default_factory=list)  # date/timestamp columns: days since 1970-01-01

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
    train_rows: Callable[[], np.ndarray],
    *,
    classification: bool,
    max_categories: int,
    drop: Sequence[str] = (),
    **options: Any,
) -> TableEncoding:
    """Categories, means and class names from the training rows (`train_rows()`) of `table`.

    A table of numbers without missing values needs no training rows: they are not made.
    A column that looks like an id (`customer_id`, `Name`) gets a warning that says how to
    drop it (`drop`: the columns the run already drops); the run goes on.
    """
    import pyarrow.compute as pc

    # Only what the encoding needs of the training rows: text columns, and numbers for their means.
    fill = options.get("missing") == "mean"
    needed = [n for n in features if is_text(table[n].type) or fill]
    train = table.select(needed).take(train_rows()) if needed else None
    categories, means, dates, suspects = {}, {}, [], {}
    for name in features:
        kind = table[name].type
        if is_text(kind):
            values = pc.unique(train[name].drop_null()).to_pylist()
            if len(values) > max_categories:
                raise LightfitError(
                    f"{source}: text column '{name}' has {len(values)} categories, more than "
                    f"data.max_categories={max_categories}; drop it ({drop_override([*drop, name])}) "
                    "or encode it yourself"
                )
            categories[name] = sorted(values)
            suspects[name] = many_categories(len(values), len(train) - train[name].null_count)
            continue
        if is_date(kind):
            dates.append(name)
        elif check_numbers(kind, name, source, drop) != "bool":
            suspects[name] = whole_number_id(table[name])
        if fill and name in dates:
            days = days_since_1970(train[name], source, name)
            known = days[~np.isnan(days)]
            means[name] = float(known.mean()) if known.size else 0.0
        elif fill:
            mean = pc.mean(pc.cast(train[name], "float64"), skip_nulls=True).as_py()
            means[name] = 0.0 if mean is None or mean != mean else float(mean)  # an all-missing column: 0
    suspects = {name: why for name, why in suspects.items() if why}
    for name, why in suspects.items():
        log.warning(
            f"{source}: column '{name}' {why}; the model can only memorise it, new rows bring new "
            f"values: {drop_override([*drop, *suspects])} leaves it out"
        )
    classes = class_names(table[target[0]], target[0], source) if classification else None
    return TableEncoding(features, categories, means, target, classes, **options, dates=dates)


def check_numbers(kind: Any, name: str, source: Any, drop: Sequence[str]) -> str:
    """A column that is neither text nor a date must hold numbers (or true/false): its type
    name, or one line saying what to do."""
    if str(kind) in ("binary", "large_binary") and table_kind(Path(source)) == "csv":  # not UTF-8
        raise LightfitError(
            f"{source}: column '{name}' holds text that is not UTF-8 (as Excel's plain 'CSV' "
            "writes accents); save the file as CSV UTF-8, or convert it: "
            f"iconv -f cp1252 -t utf-8 {source} > utf8.csv"
        )
    if not (is_numeric(kind) or str(kind) == "bool"):
        raise LightfitError(
            f"{source}: column '{name}' holds {kind}, neither numbers, dates nor text; "
            f"drop it ({drop_override([*drop, name])}) or convert it"
        )
    return str(kind)


MAX_DECIMAL_CLASSES = 20  # class labels written as decimals (0.0, 1.0): a few, or it is a measurement


def class_names(column: Any, name: str, source: Any) -> list[Any]:
    """The sorted labels of a classification target; one line when the column looks like a
    real-valued target: numbers that are not whole, many whole numbers written as decimals
    (151.0, 75.0, ...: a CSV's measurement), or nearly one class per row."""
    import pyarrow.compute as pc

    labels = column.drop_null()
    values = pc.unique(labels).to_pylist()
    advice = "for a real-valued target use task=regression"
    if str(labels.type).startswith(("float", "double", "halffloat")):
        if any(v != int(v) for v in values):
            example = next(v for v in values if v != int(v))
            raise LightfitError(
                f"{source}: target '{name}' holds numbers that are not whole (e.g. {example:g}); {advice}"
            )
        if len(values) > MAX_DECIMAL_CLASSES:
            raise LightfitError(
                f"{source}: target '{name}' holds {len(values)} different numbers written as decimals "
                f"({', '.join(str(v) for v in sorted(values)[:3])}, ...), {len(values)} classes if they "
                f"were labels; {advice}, or write class labels as integers or text"
            )
        values = [int(v) for v in values]
    if len(values) > 2 and len(values) * 2 > len(labels):
        raise LightfitError(
            f"{source}: target '{name}' has {len(values)} different values in {len(labels)} rows, fewer than "
            f"two rows a class; {advice} (or data.target names an id column)"
        )
    if len(values) > MAX_DECIMAL_CLASSES and len(values) * FEW_ROWS_A_CLASS > len(labels):
        # Whole numbers (a score, a count: diabetes progression 25..346) train a classifier
        # with a class per value, and accuracy near 0; task=classification is the default.
        log.warning(
            f"{source}: target '{name}' has {len(values)} classes in {len(labels)} rows, fewer than "
            f"{FEW_ROWS_A_CLASS} rows a class; {advice}"
        )
    return sorted(set(values))


FEW_ROWS_A_CLASS = 5  # with more than MAX_DECIMAL_CLASSES classes: a warning


def encode_features(
    batches: list[Any], enc: TableEncoding, source: Any, fill: bool = False, training: bool = False
) -> np.ndarray:
    """(N, enc.width) float32 from a table's record batches: numbers as they are, text one-hot.

    `batches` (`table.select(enc.features).to_batches()`, with no other reference to the
    table left) is emptied as it goes: each batch's memory is freed once its rows are in the
    array, so a table and its features are not both held whole. `fill`: missing numbers
    become the training means, missing text all zeros; else the caller has made sure there
    are none. `training`: the table the categories were learned from; a category that only
    its val/test rows have is all zeros (with a warning), as new data with
    data.unknown=ignore would be, rather than a run that fails by the luck of the split.
    """
    import pyarrow as pa

    out = np.empty((sum(len(b) for b in batches), enc.width), dtype=np.float32)
    unseen: dict[str, list[Any]] = {}  # column -> [rows, an example] (training only)
    start = 0
    for i in range(len(batches)):
        batch, batches[i] = batches[i], None
        _encode_batch(batch, out[start : start + len(batch)], enc, source, fill, start, unseen, training)
        start += len(batch)
        del batch
        if i % 16 == 15:
            pa.default_memory_pool().release_unused()  # give the freed batches back now, not later
    for name, (count, example) in unseen.items():
        log.warning(
            f"{source}: column '{name}' has categories no training row has, in {count} val/test rows "
            f"(e.g. '{example}'); encoded as zeros"
        )
    return out


def _encode_batch(batch, block, enc, source, fill, start, unseen, training) -> None:  # noqa: ANN001
    """Rows start.. of the features into `block`, a view of the output array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    at = 0
    for name in enc.features:
        column = batch.column(name)
        if name in enc.dates:
            days = days_since_1970(column, source, name)
            if fill:
                days = np.where(np.isnan(days), enc.means[name], days)
            block[:, at] = days  # float32: to within about 3 minutes in this century
            at += 1
            continue
        if name in enc.categories:
            if not is_text(column.type):
                raise LightfitError(
                    f"{source}: column '{name}' holds {column.type}; in training it held text"
                )
            known = pa.array(enc.categories[name], type=pa.string())
            codes = pc.index_in(pc.cast(column, pa.string()), value_set=known).to_numpy(zero_copy_only=False)
            found = ~np.isnan(codes) if codes.dtype.kind == "f" else np.ones(len(codes), bool)
            new = ~found & ~pc.is_null(column).to_numpy(zero_copy_only=False)
            if new.any() and training and enc.unknown != "ignore":
                seen = unseen.setdefault(name, [0, column[int(np.argmax(new))].as_py()])
                seen[0] += int(new.sum())
            elif new.any() and enc.unknown != "ignore":
                row = int(np.argmax(new))
                raise LightfitError(
                    f"{source}: column '{name}' has the category '{column[row].as_py()}' "
                    f"(row {start + row}), never seen in training; unknown=ignore encodes it as zeros"
                )
            width = len(enc.categories[name])
            block[:, at : at + width] = 0.0
            rows = np.flatnonzero(found)
            block[rows, at + codes[rows].astype(np.int64)] = 1.0
            at += width
            continue
        if not (is_numeric(column.type) or str(column.type) == "bool"):
            held = "text" if is_text(column.type) else "dates" if is_date(column.type) else column.type
            raise LightfitError(f"{source}: column '{name}' holds {held}; in training it held numbers")
        # float32 first: integers and true/false as numbers, NaN where missing (a null int or
        # bool would otherwise come out as Python objects)
        values = pc.cast(column, pa.float32()).to_numpy(zero_copy_only=False)
        if fill:
            values = np.where(np.isnan(values), np.float32(enc.means[name]), values)
        block[:, at] = values
        at += 1


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
        row = int(np.argmax(unseen))
        raise LightfitError(
            f"{source}: target '{enc.target[0]}' has the label '{values[row]}' (row {row}; "
            f"{int(unseen.sum())} rows), not one of the {len(classes)} classes of training"
        )
    return ids.astype(np.int64)
