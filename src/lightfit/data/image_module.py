"""`data=images`: a folder of images, one subfolder per class, through the same ArrayDataModule.

The images are decoded once into a uint8 `.npy` cache (data/image_cache.py) and memory-mapped
from there: the splits, loaders, DDP shards and resume are ArrayDataModule's. A batch is
read from the file as uint8 and converted to float32 in the loader (data/batches.py), so
the whole data set is never held as float32; the network's `Standardize` layer scales the
pixels with the training split's per-pixel mean and std, as for any features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lightfit.data.datamodule import ArrayDataModule
from lightfit.data.image_cache import cached_pixels
from lightfit.data.images import Listing, pillow, scan_classes
from lightfit.errors import LightfitError


class ImageDataModule(ArrayDataModule):
    """Train/val/test splits of the images under `path` (`path/<class>/<image>`).

    `test_path`: a folder of test images with the same class folders (a class may be missing);
    then the test split is all of it, and val comes from `path`. `size`: [height, width] every
    image is stretched to; None: they must all be one size.
    `channels`: 1 (grayscale) or 3 (RGB). `cache`: the folder for the decoded cache (None:
    $XDG_CACHE_HOME/lightfit/images, else ~/.cache/lightfit/images). `classes`: a checkpoint's
    class names (evaluate), so that a folder with fewer classes keeps the trained labels. The
    other arguments are ArrayDataModule's.
    """

    def __init__(
        self,
        path: str,
        *,
        test_path: str | None = None,
        size: list[int] | None = None,
        channels: int = 3,
        cache: str | None = None,
        classes: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_classes: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool | str = "auto",
        on_device: bool | str = "auto",
        shuffle: bool = True,
        task: str = "classification",
    ) -> None:
        # ArrayDataModule's arguments, written out: the config schema is read from this signature.
        super().__init__(
            path=path,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            batch_size=batch_size,
            num_classes=num_classes,
            seed=seed,
            num_workers=num_workers,
            pin_memory=pin_memory,
            on_device=on_device,
            shuffle=shuffle,
            task=task,
        )
        if task != "classification":
            raise LightfitError(
                f"data=images learns the class folders' names; task={task} needs task=classification"
            )
        if channels not in (1, 3):
            raise LightfitError(f"data.channels={channels} must be 1 (grayscale) or 3 (RGB)")
        if size is not None and (len(size) != 2 or any(int(s) < 1 for s in size)):
            raise LightfitError(f"data.size={list(size)} must be [height, width] in pixels, or null")
        self.size = None if size is None else [int(s) for s in size]
        self.channels, self.cache, self.stored_classes = channels, cache, classes
        self.test_path = test_path
        self.listing: Listing | None = None

    @property
    def class_names(self) -> list[str] | None:
        return None if self.listing is None else self.listing.classes

    @property
    def image_format(self) -> dict[str, Any] | None:
        """What a checkpoint keeps to read new images as these were: class names, size, channels."""
        if self.listing is None:
            return None
        return {
            "classes": self.listing.classes,
            "size": list(self.input_shape[1:]),
            "channels": self.channels,
        }

    def _load(self) -> dict[str, np.ndarray]:
        pillow()  # one line if Pillow is missing, before anything is scanned
        listing = scan_classes(Path(self.path).expanduser(), self.stored_classes)
        pixels = cached_pixels(listing, self.size, self.channels, self.cache)  # (N, C, H, W) uint8, mapped
        self.listing = listing
        if self.num_classes is None:
            self.num_classes = len(listing.classes)
        if self.test_path is None:
            return {"x": pixels, "y": listing.labels}
        # The Keras layout: the test split is given; labelled by the training folder's class names.
        test = scan_classes(Path(self.test_path).expanduser(), listing.classes)
        test_pixels = cached_pixels(test, self.size, self.channels, self.cache)
        return {"x": pixels, "y": listing.labels, "x_test": test_pixels, "y_test": test.labels}
