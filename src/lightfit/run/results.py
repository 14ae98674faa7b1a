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


def write_tables(run_dir: Path, tables: dict[str, Tensor]) -> None:
    """Each table metric as CSV: `test/confusion` -> test_confusion.csv (rows: true, columns: predicted)."""
    for key, table in tables.items():
        path = run_dir / (key.replace("/", "_") + ".csv")
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(table.reshape(len(table), -1).tolist())
        os.replace(tmp, path)
