"""Reading a table: a CSV or Parquet file through pyarrow, and the checks on its columns.

pyarrow is the optional extra `table`. CSV numeric columns are parsed straight into float32
(types inferred from the first block, as pyarrow does anyway), so the table in memory is
no larger than the feature array made from it. No Lightning and no torch here.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.errors import LightfitError

CSV_SUFFIXES = (".csv", ".tsv", ".txt")  # also compressed: data.csv.gz, .bz2 (pyarrow decompresses)
PARQUET_SUFFIXES = (".parquet", ".pq")


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
    path = Path(path).expanduser()
    kind = table_kind(path)
    if not path.is_file():
        raise LightfitError(f"data file not found: {path}")
    if kind is None:
        raise LightfitError(f"{path} is not a table: expected .csv, .tsv or .parquet (or .csv.gz)")
    if kind == "csv":
        check_text(path)
    try:
        table = _read_csv(path, as_is) if kind == "csv" else _read_parquet(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        reason = printable(str(exc)) or type(exc).__name__
        if "Empty CSV file" in reason:
            raise LightfitError(
                f"{path} is empty; expected a header line naming the columns, then rows"
            ) from None
        raise LightfitError(f"{path} cannot be read as {kind}: {reason}") from None
    pa.default_memory_pool().release_unused()  # the parser's buffers, back now rather than later
    names = table.column_names
    if names and all(is_number(n) for n in names):
        raise LightfitError(
            f"{path} has no header: its first line ({', '.join(names[:4])}, ...) holds numbers; "
            "add a first line naming the columns"
        )
    if table.num_rows == 0:
        raise LightfitError(f"{path} has a header ({len(names)} columns) but no rows")
    return numbers_as_float32(table, as_is)  # Parquet keeps its types: as float32, as for CSV


def numbers_as_float32(table: Any, as_is: tuple[str, ...] = ()) -> Any:
    """The table with its numeric columns not in `as_is` as float32 (a Parquet file's, a
    DataFrame's int64 and float64), as the CSV reader parses them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = table.column_names
    for name in names:
        column = table[name]
        if name not in as_is and is_numeric(column.type) and column.type != pa.float32():
            table = table.set_column(names.index(name), name, pc.cast(column, pa.float32()))
    return table


# What a file that is not text is, by its first bytes, and what to do with it.
BINARY_KINDS = (
    (b"\x7fELF", "an executable program"),
    (b"MZ", "a Windows program"),
    (b"PAR1", "a Parquet file: give it a .parquet name"),
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx?): save the sheet as CSV UTF-8"),
    (b"\xd0\xcf\x11\xe0", "an old Excel .xls file: save the sheet as CSV UTF-8"),
    (b"\x93NUMPY", "a NumPy .npy file: use data=npz"),
    (b"\x1f\x8b", "gzip-compressed: give it a .csv.gz name"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
)
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4", ".br")  # pyarrow decompresses them by name


def check_text(path: Path) -> None:
    """One line for a .csv that is not text (a program, a spreadsheet, UTF-16): pyarrow's parse
    error would quote its bytes, control characters and all."""
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        return
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LightfitError(
            f"{path} is UTF-16 text (as Excel's 'Unicode Text' writes it); save it as CSV UTF-8"
        )
    if b"\x00" not in head:
        return
    what = next((kind for magic, kind in BINARY_KINDS if head.startswith(magic)), "binary data")
    raise LightfitError(
        f"{path} is not a CSV table but {what}; expected text: a header line naming the columns, then rows"
    )


def printable(text: str, limit: int = 200) -> str:
    """The first line of `text` without control characters, cut to `limit` characters."""
    line = next((line for line in text.strip().splitlines() if line.strip()), "")
    line = "".join(c if c.isprintable() else "?" for c in line.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _read_csv(path: Path, as_is: tuple[str, ...]) -> Any:
    import pyarrow as pa
    from pyarrow import csv

    parse = csv.ParseOptions(delimiter="\t" if ".tsv" in path.suffixes else ",")
    with csv.open_csv(path, parse_options=parse) as reader:  # the types of the first block only
        schema = reader.schema
    # Every column's type given, as pyarrow infers it from the first block anyway (numeric
    # features as float32): left to infer even one float column, read_csv peaked at 255 MB
    # for a 300,000 x 21 file, against 105 MB with all types given (pyarrow 26).
    types = {
        f.name: pa.float32() if f.name not in as_is and is_numeric(f.type) else f.type
        for f in schema
        if f.type != pa.null()  # empty in the first block: inferred over the whole file
    }
    convert = csv.ConvertOptions(column_types=types, strings_can_be_null=True)
    # The streaming reader, not read_csv: on a 1,000,000 x 21 numeric CSV it peaked at 136 MB
    # (its batches, 80 MB, and a block or two in flight) against read_csv's 192 MB, whose
    # parallel parse holds more blocks at once and leaves 34 MB of slack in the table; about as
    # fast (1.04 s against 1.16 s on 2 cores, pyarrow 25).
    with csv.open_csv(path, parse_options=parse, convert_options=convert) as reader:
        return reader.read_all()


def _read_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path)


def is_number(text: str) -> bool:
    """Whether `text` reads as a number (a header cell that is data, a CSV's corner cell)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_numeric(arrow_type: Any) -> bool:
    import pyarrow.types as t

    return t.is_integer(arrow_type) or t.is_floating(arrow_type) or t.is_null(arrow_type)


def is_date(arrow_type: Any) -> bool:
    """A date or a timestamp (with or without a time zone): a feature of days since 1970-01-01."""
    import pyarrow.types as t

    return t.is_date(arrow_type) or t.is_timestamp(arrow_type)


def is_text(arrow_type: Any) -> bool:
    import pyarrow.types as t

    return t.is_string(arrow_type) or t.is_large_string(arrow_type) or t.is_dictionary(arrow_type)


def check_columns(source: Any, names: list[str], available: list[str], what: str) -> None:
    """One line for a column that `source` (a file, a DataFrame, a request) lacks: the columns it
    has, and the nearest name."""
    for name in names:
        if name not in available:
            raise LightfitError(
                f"{source}: {what} column '{name}' is missing "
                f"(columns: {', '.join(available)}){did_you_mean(name, available)}"
            )


def drop_override(names: list[str]) -> str:
    """The override that leaves `names` out, ready to paste: `data.drop=[id,Name]`, quoted
    for Hydra and the shell when a name has a space or other signs (`'data.drop=["Car Name"]'`)."""

    def item(name: str) -> str:
        return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else '"' + name.replace('"', '\\"') + '"'

    override = f"data.drop=[{','.join(item(name) for name in names)}]"
    return override if '"' not in override else f"'{override}'"


def did_you_mean(name: str, available: list[str]) -> str:
    """ "; did you mean 'Age'?" for the nearest of `available`, or "" when none is near."""
    near = difflib.get_close_matches(name, available, n=1)
    return f"; did you mean '{near[0]}'?" if near else ""


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
