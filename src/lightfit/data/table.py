"""Tables in: a CSV or Parquet file, read with pyarrow, encoded into float32 NumPy arrays.

Numeric columns become float32 features as they are (the network's `Standardize` scales
them). A text column becomes one 0/1 column per category of the training split (one-hot).
Class labels, strings or integers, become 0..C-1 in sorted order. Everything learned from
the training split (the feature columns, the categories, the class names, the means that
fill missing values) is a `TableEncoding`: every checkpoint carries it as plain lists, so
`lightfit predict` turns raw rows into the same features. No Lightning and no torch here.

pyarrow is the optional extra `table`. CSV numeric columns are parsed straight into float32
(types inferred from the first block, as pyarrow does anyway), so the table in memory is
no larger than the feature array made from it.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.errors import LightfitError

CSV_SUFFIXES = (".csv", ".tsv", ".txt")  # also compressed: data.csv.gz, .bz2 (pyarrow decompresses)
PARQUET_SUFFIXES = (".parquet", ".pq")
UNKNOWN = ("error", "ignore")
MISSING = ("error", "drop", "mean")


def pyarrow():
    try:
        import pyarrow as pa
    except ImportError:
        raise LightfitError(
            "data=table reads CSV and Parquet with pyarrow: pip install 'lightfit[table]'"
        ) from None
    return pa


def table_kind(path: Path) -> str | None:
    """csv, parquet, or None for a file that is not a table (by its name)."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in PARQUET_SUFFIXES:
        return "parquet"
    if any(s in CSV_SUFFIXES for s in suffixes):
        return "csv"
    return None


def read_table(path: str | Path, as_is: tuple[str, ...] = ()) -> Any:
    """The whole file as a pyarrow Table; numeric columns not in `as_is` as float32."""
    pa = pyarrow()
    import pyarrow.compute as pc

    path = Path(path).expanduser()
    kind = table_kind(path)
    if not path.is_file():
        raise LightfitError(f"data file not found: {path}")
    if kind is None:
        raise LightfitError(f"{path} is not a table: expected .csv, .tsv or .parquet (or .csv.gz)")
    try:
        table = _read_csv(path, as_is) if kind == "csv" else _read_parquet(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Empty CSV file" in reason:
            raise LightfitError(
                f"{path} is empty; expected a header line naming the columns, then rows"
            ) from None
        raise LightfitError(f"{path} cannot be read as {kind}: {reason}") from None
    names = table.column_names
    if names and all(_is_number(n) for n in names):
        raise LightfitError(
            f"{path} has no header: its first line ({', '.join(names[:4])}, ...) holds numbers; "
            "add a first line naming the columns"
        )
    if table.num_rows == 0:
        raise LightfitError(f"{path} has a header ({len(names)} columns) but no rows")
    for name in names:  # Parquet keeps its types: numeric features as float32, as for CSV
        column = table[name]
        if name not in as_is and _is_numeric(column.type) and column.type != pa.float32():
            table = table.set_column(names.index(name), name, pc.cast(column, pa.float32()))
    return table


def _read_csv(path: Path, as_is: tuple[str, ...]) -> Any:
    import pyarrow as pa
    from pyarrow import csv

    parse = csv.ParseOptions(delimiter="\t" if ".tsv" in path.suffixes else ",")
    with csv.open_csv(path, parse_options=parse) as reader:  # the types of the first block only
        schema = reader.schema
    types = {
        f.name: pa.float32()
        for f in schema
        if f.name not in as_is and _is_numeric(f.type) and f.type != pa.null()
    }
    convert = csv.ConvertOptions(column_types=types, strings_can_be_null=True)
    return csv.read_csv(path, parse_options=parse, convert_options=convert)


def _read_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_numeric(arrow_type: Any) -> bool:
    import pyarrow.types as t

    return t.is_integer(arrow_type) or t.is_floating(arrow_type) or t.is_null(arrow_type)


def _is_text(arrow_type: Any) -> bool:
    import pyarrow.types as t

    return t.is_string(arrow_type) or t.is_large_string(arrow_type) or t.is_dictionary(arrow_type)


def check_columns(source: Any, names: list[str], available: list[str], what: str) -> None:
    """One line for a column not in the file: the columns it has, and the nearest name."""
    for name in names:
        if name not in available:
            near = difflib.get_close_matches(name, available, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise LightfitError(
                f"{source}: {what} column '{name}' is not in the file (columns: {', '.join(available)}){hint}"
            )


def missing_mask(table: Any, columns: list[str]) -> np.ndarray:
    """Rows with a null or NaN in any of `columns`, as a boolean array."""
    import pyarrow.compute as pc

    mask = np.zeros(table.num_rows, dtype=bool)
    for name in columns:
        column = table[name]
        is_float = str(column.type).startswith(("float", "double", "halffloat"))
        if column.null_count or is_float:
            nulls = pc.is_null(column, nan_is_null=True) if is_float else pc.is_null(column)
            mask |= nulls.to_numpy(zero_copy_only=False)
    return mask


def missing_error(source: Any, table: Any, columns: list[str], advice: str) -> LightfitError:
    bad = [name for name in columns if missing_mask(table, [name]).any()]
    rows = int(missing_mask(table, bad).sum())
    return LightfitError(f"{source}: {rows} rows have missing values (columns: {', '.join(bad)}); {advice}")


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
        if _is_text(column.type):
            values = pc.unique(column.drop_null()).to_pylist()
            if len(values) > max_categories:
                raise LightfitError(
                    f"{source}: text column '{name}' has {len(values)} categories, more than "
                    f"data.max_categories={max_categories}; drop it (data.drop=[{name}]) "
                    "or encode it yourself"
                )
            categories[name] = sorted(values)
        elif _is_numeric(column.type) or str(column.type) == "bool":
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


def encode_features(table: Any, enc: TableEncoding, source: Any, fill: bool = False) -> np.ndarray:
    """(N, enc.width) float32: numeric columns as they are, text columns one-hot.

    `fill`: missing numbers become the training means and missing text all zeros; else the
    caller has made sure there are none.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    out = np.zeros((table.num_rows, enc.width), dtype=np.float32)
    at = 0
    for name in enc.features:
        column = table[name]
        if name in enc.categories:
            if not _is_text(column.type):
                raise LightfitError(
                    f"{source}: column '{name}' holds {column.type}; in training it held text"
                )
            known = pa.array(enc.categories[name], type=pa.string())
            codes = pc.index_in(pc.cast(column, pa.string()), value_set=known).to_numpy(zero_copy_only=False)
            found = ~np.isnan(codes) if codes.dtype.kind == "f" else np.ones(len(codes), bool)
            unseen = ~found & ~pc.is_null(column).to_numpy(zero_copy_only=False)
            if unseen.any() and enc.unknown != "ignore":
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
        if _is_text(column.type):
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
