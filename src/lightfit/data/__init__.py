"""Data: NumPy arrays and files in, batches of tensors out.

The names below load on first use, so that `lightfit.data.arrays` (NumPy only) can be
imported without Lightning: `python -m lightfit.predict` reads its input through it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "read_arrays": "arrays",
    "ArrayDataset": "batches",
    "EpochShuffleSampler": "batches",
    "IndexBatchSampler": "batches",
    "batch_loader": "batches",
    "ArrayDataModule": "datamodule",
    "bundled_path": "datamodule",
    "diabetes": "datamodule",
    "digits": "datamodule",
    "digits_path": "datamodule",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
