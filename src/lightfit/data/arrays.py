"""Read NumPy files safely and check arrays before training sees them.

Everything here works on NumPy arrays; tensors appear only in the data module. Files
are opened with `allow_pickle=False`: a `.npy`/`.npz` from elsewhere can carry a pickle
that runs code when loaded, so object arrays are refused, never unpickled.
"""

from __future__ import annotations

import logging
import mmap
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")
CHUNK_BYTES = 4 * 2**20  # how much of an array a scan holds at once (column_stats: 4x that, in float64)


def read_npy(path: Path, mmap: bool) -> np.ndarray:
    """One `.npy` array, memory-mapped if `mmap`; never unpickled, one line for a bad file."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "object" in str(exc).lower():
            raise LightfitError(f"{path} holds Python objects; refusing to unpickle it") from None
        raise LightfitError(f"{path} is not a readable .npy file ({exc})") from None
    except (EOFError, OSError) as exc:
        raise LightfitError(f"{path} is truncated or corrupt ({exc})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a `.npz`, by key; never unpickled, one line for a bad file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            arrays = {}
            for key in keys:
                try:
                    arrays[key] = archive[key]
                except ValueError:
                    raise LightfitError(
                        f"{path}: key '{key}' holds Python objects; refusing to unpickle it"
                    ) from None
            return arrays
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise LightfitError(f"{path} is truncated or corrupt ({exc})") from None


def read_arrays(path: str | Path, labels: str | Path | None = None) -> dict[str, np.ndarray]:
    """Arrays from a `.npz` (keys x/y or x_train/y_train/x_test/y_test) or a `.npy` pair.

    `.npy` files are memory-mapped: rows are read when a batch needs them.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LightfitError(f"data file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(6)
    if magic.startswith(ZIP_MAGIC):
        arrays = read_npz(path)
    elif magic == NPY_MAGIC:
        if labels is None:
            raise LightfitError(f"{path} is a .npy of features; also set the labels file (data.labels=...)")
        labels = Path(labels).expanduser()
        if not labels.is_file():
            raise LightfitError(f"labels file not found: {labels}")
        arrays = {"x": read_npy(path, mmap=True), "y": read_npy(labels, mmap=False)}
    else:
        raise LightfitError(f"{path} is not a NumPy .npy or .npz file")
    _check_keys(path, arrays)
    return arrays


def _check_keys(path: Path, arrays: dict[str, np.ndarray]) -> None:
    keys = set(arrays)
    if {"x", "y"} <= keys or set(KERAS_KEYS) <= keys:
        return
    found = ", ".join(sorted(keys)) or "none"
    raise LightfitError(
        f"{path} has keys [{found}]; expected 'x' and 'y', or 'x_train', 'y_train', 'x_test', 'y_test'"
    )


def _in_file(x: np.ndarray) -> tuple[str, int, int] | None:
    """(file, byte offset of row 0, bytes per row) of a memory-mapped array; None for other arrays."""
    if not (isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap) and x.flags.c_contiguous):
        return None
    mapped_at = x.offset - x.offset % mmap.ALLOCATIONGRANULARITY  # where the map starts in the file
    # Row 0 of this array, which may be a view that starts further into the map.
    offset = mapped_at + x.ctypes.data - np.frombuffer(x.base, np.uint8).ctypes.data
    return x.filename, offset, x.itemsize * (x.size // max(1, len(x)))


def chunks(x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of `x` in pieces of about CHUNK_BYTES, for scans over the whole array.

    A memory-mapped file is read with plain file reads, not through the map: pages touched
    through a map stay in the process's resident memory while the map is open, so one scan
    of a 4 GB file that way leaves the process (and each DDP process) 4 GB large.
    """
    row_bytes = max(1, x.itemsize * (x.size // max(1, len(x))))
    step = max(1, CHUNK_BYTES // row_bytes)
    in_file = _in_file(x)
    for start in range(0, len(x), step):
        rows = min(step, len(x) - start)
        if in_file:
            filename, offset, _ = in_file
            count, offset = rows * row_bytes // x.itemsize, offset + start * row_bytes
            yield start, np.fromfile(filename, x.dtype, count, offset=offset).reshape(rows, *x.shape[1:])
        else:
            yield start, np.asarray(x[start : start + rows])


def read_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`x[rows]`, a new array; from a memory-mapped file with plain reads, one per run of adjacent rows.

    Gathering rows through the map faults the file's pages into the process, and there they
    count as its resident memory (RssFile) while the map is open. How much is up to the
    kernel and its settings (how much one fault maps): after 50 random batches of 128 rows
    of a 4 GB file, 0.43 GB in one measurement and 3.96 GB in another. `os.preadv` copies
    just the rows and maps nothing, whatever the kernel does. It costs a system call per
    row (about 3 us for 3 KB here), so on a 2-core machine the loader alone moves about a
    third of the samples per second it did through the map; both read the page cache. A
    sequential batch (validation, test) is one read.
    """
    in_file = _in_file(x)
    if in_file is None or not hasattr(os, "preadv") or len(rows) == 0:  # in memory, or no preadv (Windows)
        return np.asarray(x[rows])
    filename, offset, row_bytes = in_file
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), *x.shape[1:]), x.dtype)
    buffer = memoryview(out).cast("B")
    runs = np.flatnonzero(np.diff(rows) != 1) + 1  # where a run of consecutive rows starts
    starts, ends = [0, *runs.tolist()], [*runs.tolist(), len(rows)]
    with open(filename, "rb", buffering=0) as f:
        for start, end, row in zip(starts, ends, rows[starts].tolist(), strict=True):
            part, position = buffer[start * row_bytes : end * row_bytes], offset + row * row_bytes
            while part:  # a regular file reads short only at its end
                done = os.preadv(f.fileno(), [part], position)
                if done == 0:
                    raise LightfitError(f"{filename} is shorter than its header says (changed while in use?)")
                part, position = part[done:], position + done
    return out


def check_features(name: str, x: np.ndarray) -> None:
    """Numbers, at least one sample, nothing NaN or infinite (scanned in chunks for memmaps)."""
    if x.dtype.kind not in "biuf":
        raise LightfitError(f"{name} has dtype {x.dtype}; expected numbers (float or int)")
    if x.ndim < 2:
        raise LightfitError(f"{name} has shape {x.shape}; expected (samples, features...)")
    if len(x) == 0:
        raise LightfitError(f"{name} is empty (shape {x.shape})")
    if x.dtype.kind != "f":
        return
    bad, first = 0, None
    for start, chunk in chunks(x):
        rows = ~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if rows.any():
            bad += int(rows.sum())
            first = start + int(np.argmax(rows)) if first is None else first
    if bad:
        raise LightfitError(f"{name} has {bad} samples with NaN or infinite values (first at row {first})")


def check_labels(name: str, y: np.ndarray, n: int, num_classes: int | None) -> np.ndarray:
    """Integer class ids in [0, num_classes), one per sample; returns them as int64."""
    if y.dtype.kind not in "biuf":
        raise LightfitError(f"{name} has dtype {y.dtype}; expected integer class labels")
    if y.ndim != 1:
        raise LightfitError(f"{name} has shape {y.shape}; expected one class label per sample (N,)")
    if len(y) != n:
        raise LightfitError(f"{name} has {len(y)} labels but x has {n} samples; they must match")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            raise LightfitError(
                f"{name} has {int((~whole).sum())} labels that are not integers "
                f"(e.g. {float(y[~whole][0]):g}); for real-valued targets use task=regression"
            )
    negative = int((y < 0).sum())
    if negative:
        raise LightfitError(
            f"{name} has {negative} negative labels (min {y.min()}); labels must be 0..num_classes-1"
        )
    if num_classes is not None:
        over = int((y >= num_classes).sum())
        if over:
            raise LightfitError(f"{name} has {over} labels >= num_classes={num_classes} (max {int(y.max())})")
    # int64 is what cross_entropy wants; for int64 input this is the same array, no copy.
    return y.astype(np.int64, copy=False)


def check_targets(name: str, y: np.ndarray, n: int) -> np.ndarray:
    """Regression targets: numbers, (N,) or (N, k), all finite; returns them as float32."""
    if y.dtype.kind not in "biuf":
        raise LightfitError(f"{name} has dtype {y.dtype}; expected numbers (regression targets)")
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
        raise LightfitError(f"{name} has shape {y.shape}; expected one target (N,) or k targets (N, k)")
    if len(y) != n:
        raise LightfitError(f"{name} has {len(y)} targets but x has {n} samples; they must match")
    bad = ~np.isfinite(y).reshape(len(y), -1).all(axis=1)
    if bad.any():
        raise LightfitError(
            f"{name} has {int(bad.sum())} targets that are NaN or infinite "
            f"(first at row {int(np.argmax(bad))})"
        )
    return y.astype(np.float32, copy=False)


def warn_integer_targets(name: str, y: np.ndarray) -> None:
    """Integer regression targets are allowed (counts, ratings), but may be class labels given
    to the wrong task: say so once (on rank 0 only, under DDP)."""
    if y.dtype.kind != "f" and os.environ.get("RANK", "0") == "0":
        log.warning(
            f"{name} holds integers ({y.dtype}); training a regression on them "
            "(use task=classification if they are class labels)"
        )


def features_as_float32(x: np.ndarray) -> np.ndarray:
    """float32 features: the same array when it already is (memmaps stay lazy), else one copy."""
    if x.dtype == np.float32 or isinstance(x, np.memmap):
        return x
    return x.astype(np.float32)
