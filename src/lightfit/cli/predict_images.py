"""Predictions on image files: `lightfit predict ckpt_path=... input=<folder or image> output=pred.csv`.

A checkpoint trained with `data=images` keeps its class names, image size and channels, so
new images are read exactly as in training: turned upright, converted to grayscale or RGB,
stretched to the size. The input is one image, or a folder of them, flat or in subfolders
(a class folder layout works as it is). They are decoded a batch at a time, never all held
at once and never cached; `output=pred.csv` writes a `file` column (the path under the
input folder), the predicted class name and one probability column per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lightfit.data.images import Listing, decode_into, is_image_name, scan_inputs
from lightfit.errors import LightfitError


class DecodedImages:
    """The images of a listing as an (N, C, H, W) uint8 array that decodes the rows a slice asks for."""

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, listing: Listing, size: list[int], channels: int) -> None:
        self.listing, self.size, self.channels = listing, tuple(size), channels
        self.shape = (len(listing.files), channels, *self.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        """A slice (predict) or an array of row numbers (evaluate's loader, see ArrayDataset)."""
        if isinstance(rows, slice):
            files = self.listing.files[rows]
        else:
            files = [self.listing.files[i] for i in np.asarray(rows).tolist()]
        out = np.empty((len(files), *self.shape[1:]), np.uint8)
        if files:
            decode_into(out, Listing(self.listing.root, files), resize=True)  # on several threads
        return out


def wants_images(path: Path, stored: dict[str, Any]) -> bool:
    """Whether `path` is to be read as images: a folder, a file named like an image, or any file
    but a `.npy` for a checkpoint trained on images."""
    return path.is_dir() or is_image_name(path) or ("images" in stored and path.suffix.lower() != ".npy")


def read_image_inputs(path: Path, stored: dict[str, Any], keep: list[str]) -> tuple[DecodedImages, dict]:
    """The images under `path` (decoded when read) and the `file` column of the output table."""
    images = image_format(path, stored)
    if keep:
        raise LightfitError(f"keep={keep} names columns of a table; for images the file column is written")
    listing = scan_inputs(path)
    return DecodedImages(listing, images["size"], images["channels"]), {"file": listing.files}


def image_format(path: Path, stored: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's class names, size and channels; one line if it was not trained on images."""
    if "images" not in stored:
        raise LightfitError(
            f"{path} is images, but the checkpoint was not trained with data=images; "
            "give the features it was trained on (a .npy or a table)"
        )
    return stored["images"]
