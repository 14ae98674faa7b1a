"""Reading a numeric CSV into lightfit's table data module vs pyarrow's own read into NumPy.

Issue 22's targets: `data=table` reads a 1,000,000-row, 20-feature CSV in at most 1.5x the
time pyarrow takes to read it into a NumPy array, at a peak memory of at most 2.5x the final
feature array. Each read runs in a fresh process (`python -m bench.table_read WHO CSV`), so
neither inherits the other's memory pool or page-cache warm-up order; the peak is the
process's high-water mark (VmHWM, reset after the imports) less its memory before reading.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FEATURES = 20


def write_csv(path: Path, rows: int) -> Path:
    """`rows` x (20 features + a target y) of random floats, written by pyarrow."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv

    rng = np.random.default_rng(0)
    columns = {f"x{i}": rng.normal(size=rows) for i in range(FEATURES)}
    columns["y"] = rng.normal(size=rows)
    pyarrow.csv.write_csv(pa.table(columns), path)
    return path


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(who: str, path: str) -> dict[str, Any]:
    """One read in this process: seconds, peak extra memory (bytes), the feature array's bytes."""
    import numpy as np
    import pyarrow.compute  # noqa: F401 - imported here, not inside the timing
    import pyarrow.csv

    from lightfit.data import TableDataModule

    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark: imports are not the read
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    if who == "pyarrow":  # the library's own read, then its columns into one array
        table = pyarrow.csv.read_csv(path)
        x = np.column_stack([table[f"x{i}"].to_numpy() for i in range(FEATURES)])
    else:  # read, check, encode, split and the training statistics: setup() of data=table
        module = TableDataModule(path=path, target="y", task="regression", batch_size=256)
        module.setup("fit")
        x = module.splits["train"].x.numpy()
    seconds = time.perf_counter() - start
    peak = (_rss_kb("VmHWM") - before) * 1024
    return {"seconds": seconds, "peak_bytes": peak, "array_bytes": int(x.nbytes), "dtype": str(x.dtype)}


def case_table_read(rows: int, tmp: Path, repeats: int = 3) -> dict[str, Any]:
    """Median seconds and peak memory of both reads, taking turns, and the two ratios."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return {"skipped": "pyarrow is not installed (pip install 'lightfit[table]')"}
    path = write_csv(tmp / "table.csv", rows)
    runs: dict[str, list[dict[str, Any]]] = {"pyarrow": [], "lightfit": []}
    for turn in range(repeats):  # the order alternates: a slow spell of a shared machine hits both
        for who in ("pyarrow", "lightfit") if turn % 2 == 0 else ("lightfit", "pyarrow"):
            proc = subprocess.run(
                [sys.executable, "-m", "bench.table_read", who, str(path)],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).resolve().parent.parent,  # the repository root: bench is not installed
            )
            runs[who].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result: dict[str, Any] = {"rows": rows, "features": FEATURES, "file_bytes": path.stat().st_size}
    for who, measured in runs.items():
        result[who] = {
            "seconds": statistics.median(r["seconds"] for r in measured),
            "peak_bytes": statistics.median(r["peak_bytes"] for r in measured),
            "array_bytes": measured[0]["array_bytes"],
            "dtype": measured[0]["dtype"],
        }
    ours = result["lightfit"]
    result["time_ratio"] = ours["seconds"] / result["pyarrow"]["seconds"]  # target: <= 1.5
    result["peak_over_array"] = ours["peak_bytes"] / ours["array_bytes"]  # target: <= 2.5
    return result


def table_read_rows(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The two targets of issue 22, for the report's Targets table."""
    if "time_ratio" not in result:
        return []
    rows, time, peak = f"{result['rows']:,}-row CSV", result["time_ratio"], result["peak_over_array"]
    return [
        (f"data=table reads a {rows} in <= 1.5x pyarrow's time", f"{time:.2f}x", time <= 1.5),
        (f"data=table reads a {rows} at <= 2.5x the feature array's memory", f"{peak:.2f}x", peak <= 2.5),
    ]


def table_read_markdown(result: dict[str, Any]) -> list[str]:
    if not result or "skipped" in result:
        return [f"Table read: skipped ({result.get('skipped', 'not run')})."] if result else []
    mb = 2**20
    a, b = result["pyarrow"], result["lightfit"]
    return [
        "",
        f"## Reading a {result['rows']:,}-row, {result['features']}-feature CSV "
        f"({result['file_bytes'] / mb:.0f} MB)",
        "",
        "| read | s | peak extra memory (MB) | feature array (MB) |",
        "|---|---|---|---|",
        f"| pyarrow read_csv + columns into NumPy ({a['dtype']}) | {a['seconds']:.2f} | "
        f"{a['peak_bytes'] / mb:.0f} | {a['array_bytes'] / mb:.0f} |",
        f"| data=table setup ({b['dtype']}, split and statistics included) | {b['seconds']:.2f} | "
        f"{b['peak_bytes'] / mb:.0f} | {b['array_bytes'] / mb:.0f} |",
        "",
        f"Time {result['time_ratio']:.2f}x pyarrow's (target <= 1.5x); peak memory "
        f"{result['peak_over_array']:.2f}x the feature array (target <= 2.5x).",
    ]


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(worker(sys.argv[1], sys.argv[2])))
    else:  # python -m bench.table_read ROWS: the case alone
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
            result = case_table_read(rows, Path(tmp))
        print("\n".join(table_read_markdown(result)))
