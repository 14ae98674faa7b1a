"""What a table's column holds, beyond numbers and text: dates, and columns that look like ids.

A date or timestamp becomes one number, the days since 1970-01-01 UTC (a time of day as a
fraction), the same in training (table.py's `fit_encoding`) and for new rows (predict,
evaluate input=). A column that looks like an id or a name is named in a warning before
training, with the `data.drop` to paste; the run goes on.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from lightfit.data.table_read import is_text
from lightfit.errors import LightfitError

ID_MIN_ROWS = 20  # fewer rows: every value different is no sign of an id


def whole_number_id(column: Any) -> str | None:
    """Why a numeric column looks like an id, or None: every value a different whole number, in
    a range no wider than twice the rows (1..891). A measurement has all values different too,
    but not whole, or spread wider (incomes in dollars): those are not named."""
    import pyarrow.compute as pc

    values = column.drop_null()
    if len(values) < ID_MIN_ROWS:
        return None
    low, high = (v.as_py() for v in pc.min_max(values).values())
    if low is None or high != high or low != low or high - low + 1 > 2 * len(values):
        return None
    if not pc.all(pc.equal(pc.floor(values), values)).as_py():
        return None
    if pc.count_distinct(values).as_py() != len(values):
        return None
    return f"holds a different whole number in every row ({low:g} to {high:g}), like an id"


def many_categories(count: int, rows: int) -> str | None:
    """Why a text column looks like an id or a name, or None: more categories than half its
    training rows, so that a category has fewer than two rows to be learned from."""
    if rows < ID_MIN_ROWS or count * 2 <= rows:
        return None
    if count == rows:
        return "holds a different text in every training row, like an id"
    return f"has {count} categories in {rows} training rows, fewer than two rows each"


DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def days_since_1970(column: Any, source: Any, name: str) -> np.ndarray:
    """A date or timestamp column as float64 days since 1970-01-01 00:00 UTC, NaN where missing.

    A timestamp with a time zone counts from UTC; one without is read as UTC. Text (new rows
    whose dates pyarrow did not recognise, e.g. a file where one has a time of day) is parsed
    as ISO 8601: 2024-01-31, 2024-01-31 12:00:00, 2024-01-31T12:00:00+02:00.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as t

    if column.null_count == len(column):  # a blank column: read as numbers or nulls, not dates
        return np.full(len(column), np.nan)
    if is_text(column.type):
        column = parse_dates(pc.cast(column, pa.string()), source, name)
    kind = column.type
    if t.is_date32(kind):
        days, per_day = pc.cast(column, pa.int32()), 1
    elif t.is_date64(kind):
        days, per_day = pc.cast(column, pa.int64()), DAY["ms"]
    elif t.is_timestamp(kind):
        days, per_day = pc.cast(column, pa.int64()), DAY[kind.unit]
    else:
        raise LightfitError(f"{source}: column '{name}' holds {kind}; in training it held dates")
    return pc.cast(days, pa.float64()).to_numpy(zero_copy_only=False) / per_day


def parse_dates(column: Any, source: Any, name: str) -> Any:
    """ISO 8601 text as timestamps (us): a time zone (Z, +02:00) counted from UTC, none read as UTC."""
    import pyarrow as pa
    import pyarrow.compute as pc

    zoned = pc.fill_null(pc.match_substring_regex(column, ZONE), False)
    try:
        utc = pc.cast(pc.if_else(zoned, column, None), pa.timestamp("us", tz="UTC"))
        naive = pc.cast(pc.if_else(zoned, None, column), pa.timestamp("us"))
    except pa.ArrowInvalid as exc:
        value = re.search(r"string: '([^']*)'", str(exc))
        example = f" such as '{value.group(1)}'" if value else ""
        raise LightfitError(
            f"{source}: column '{name}' holds text that is not a date{example}; in training it held "
            "dates: write them as 2024-01-31, 2024-01-31 12:00:00 or 2024-01-31T12:00:00+02:00"
        ) from None
    return pc.coalesce(pc.cast(utc, pa.int64()), pc.cast(naive, pa.int64())).cast(pa.timestamp("us"))


ZONE = r"\d[T ]\d\d:\d\d.*(?:Z|[+-]\d\d:?\d\d)$"  # a time of day with a time zone
