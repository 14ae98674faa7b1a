"""Data: NumPy arrays and files in, batches of tensors out.

arrays.py reads and checks files and arrays (NumPy only), splits.py and batches.py make
index splits and whole-batch loaders, datamodule.py the LightningDataModule, bundled.py
the shipped data sets; table_read.py, table.py and table_module.py: CSV and Parquet (`data=table`),
images.py, image_cache.py and image_module.py: a folder of images (`data=images`),
saved_split.py writes each run's split and reads it back (`load_split`). Imports errors
only. The names below load on first use, so that
`lightfit predict` reads its input through arrays.py without importing Lightning.
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
    "bundled_path": "bundled",
    "diabetes": "bundled",
    "digits": "bundled",
    "digits_path": "bundled",
    "TableDataModule": "table_module",
    "ImageDataModule": "image_module",
    "load_split": "saved_split",
    "save_splits": "saved_split",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
