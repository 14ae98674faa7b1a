"""Data: NumPy arrays and files in, batches of tensors out."""

from lightfit.data.arrays import read_arrays
from lightfit.data.batches import ArrayDataset, EpochShuffleSampler, IndexBatchSampler, batch_loader
from lightfit.data.datamodule import ArrayDataModule, digits, digits_path

__all__ = [
    "ArrayDataModule",
    "ArrayDataset",
    "EpochShuffleSampler",
    "IndexBatchSampler",
    "batch_loader",
    "digits",
    "digits_path",
    "read_arrays",
]
