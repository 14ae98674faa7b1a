"""What a run leaves behind besides checkpoints: results.json and tables such as a confusion matrix.

Both are written to a temporary file and renamed, so a reader (a sweep summary, a person
tailing the run directory) never sees half a file.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

RESULTS = "results.json"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file and rename: readers never see a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_tables(run_dir: Path, tables: dict[str, Tensor], classes: list[Any] | None = None) -> None:
    """Each table metric as CSV: `test/confusion` -> test_confusion.csv (rows: true, columns: predicted).

    With `classes` (the names of a table's labels) a square table gets a header line and a
    first column naming them.
    """
    for key, table in tables.items():
        path = run_dir / (key.replace("/", "_") + ".csv")
        tmp = path.with_suffix(".csv.tmp")
        rows = table.reshape(len(table), -1).tolist()
        with tmp.open("w", newline="") as f:
            if classes is not None and len(rows) == len(classes) == len(rows[0]):
                csv.writer(f).writerow(["true/predicted", *classes])
                rows = [[name, *row] for name, row in zip(classes, rows, strict=True)]
            csv.writer(f).writerows(rows)
        os.replace(tmp, path)
