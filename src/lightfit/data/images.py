"""Images in: the files of a folder with one subfolder per class, and how one is decoded.

The layout is torchvision's `ImageFolder`: `photos/cat/1.jpg`, `photos/dog/2.png`; the
class names are the subfolders' names, sorted, and label 0..C-1 in that order. Every image
is decoded with Pillow (the optional extra `images`), turned upright by its EXIF tag,
converted to `channels` (1: grayscale, 3: RGB) and stretched to `size` (height, width; no
crop). Training reads them from a cache decoded once (image_cache.py); predict decodes
them a batch at a time. No Lightning and no torch here.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
# What Pillow reads out of the box; the issue asks for PNG and JPEG, the rest costs nothing.
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MODES = {1: "L", 3: "RGB"}  # data.channels -> Pillow's mode
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grayscale: keeps its top 8 bits
# 2,000 JPEGs on 2 cores: 1.0 s on one thread, 0.6 s on two (docs/data.md)
DECODE_THREADS = min(8, os.cpu_count() or 1)
DECODE_CHUNK = 256  # files handed to the threads at once
# Subfolders that hold splits, not classes (photos/train/cat/...): training's first, test's last.
SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")


def pillow() -> Any:
    """The PIL.Image module, or one line saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise LightfitError("needs Pillow: pip install 'lightfit[images]'") from None
    return Image


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


@dataclass
class Listing:
    """The images under a folder: paths relative to `root` (sorted), and for a class folder
    their labels (indexes into `classes`)."""

    root: Path
    files: list[str]
    classes: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    skipped: list[str] = field(default_factory=list)  # files that are not images by their name

    def stats(self) -> list[list[Any]]:
        """[path, bytes, modification time in ns] of each file: what a cache is checked against."""
        out = []
        for rel in self.files:
            st = (self.root / rel).stat()
            out.append([rel, st.st_size, st.st_mtime_ns])
        return out


def _walk(folder: Path, root: Path) -> tuple[list[str], list[str]]:
    """(images, other files) under `folder`, paths relative to `root`, sorted; hidden ones left out."""
    images, others = [], []
    for where, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            rel = (Path(where) / name).relative_to(root).as_posix()
            (images if is_image_name(Path(name)) else others).append(rel)
    return images, others


def scan_classes(root: Path, classes: list[str] | None = None) -> Listing:
    """The class subfolders of `root` and their images. `classes`: a checkpoint's class names
    (evaluate), which the folder's classes must be among; labels then index those."""
    if not root.is_dir():
        raise LightfitError(
            f"{root} is not a folder; data=images reads a folder with one subfolder per class"
        )
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise LightfitError(
            f"{root} has no class subfolders; put each class's images in a folder named after it "
            f"({root}/cat/1.png, {root}/dog/2.png, ...)"
        )
    if classes is None and len(folders) > 1 and {f.lower() for f in folders} <= set(SPLIT_NAMES):
        order = {f: SPLIT_NAMES.index(f.lower()) for f in folders}
        train, test = min(folders, key=order.get), max(folders, key=order.get)
        raise LightfitError(
            f"{root} has the subfolders {', '.join(folders)}: splits, not classes; set "
            f"data.path={root / train} (and data.test_path={root / test} for a given test set)"
        )
    if classes is None and len(folders) == 1:
        raise LightfitError(
            f"{root} has one class folder ({folders[0]}); a classifier needs at least two, "
            "one subfolder per class"
        )
    names = list(classes) if classes is not None else folders
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise LightfitError(
            f"{root}: class folder '{unknown[0]}' is not one of the trained classes ({', '.join(names)})"
        )
    files, labels, skipped = [], [], [p.name for p in root.iterdir() if p.is_file() and p.name[0] != "."]
    for name in folders:
        images, others = _walk(root / name, root)
        if not images:
            raise LightfitError(
                f"{root}: class folder '{name}' has no images ({', '.join(SUFFIXES)}); "
                "remove it or add its images"
            )
        files += images
        labels += [names.index(name)] * len(images)
        skipped += others
    if skipped and os.environ.get("RANK", "0") == "0":
        log.warning(f"{root}: left out {len(skipped)} files that are not in a class folder or not images "
                    f"(e.g. {sorted(skipped)[0]})")  # fmt: skip
    return Listing(root, files, names, np.asarray(labels, dtype=np.int64), skipped)


def scan_inputs(path: Path) -> Listing:
    """Images to predict: one image file, or every image under a folder (flat or in subfolders)."""
    if path.is_file():
        if not is_image_name(path):
            raise LightfitError(f"{path} is not an image ({', '.join(SUFFIXES)}) or a folder of images")
        return Listing(path.parent, [path.name])
    if not path.is_dir():
        raise LightfitError(f"input not found: {path}")
    files, _ = _walk(path, path)
    if not files:
        raise LightfitError(f"{path} holds no images ({', '.join(SUFFIXES)})")
    return Listing(path, files)


def decode(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """One image as (channels, H, W) uint8, stretched to `size` (H, W) unless None."""
    Image = pillow()
    from PIL import ImageOps

    try:
        with Image.open(path) as img:
            if size is not None:  # JPEG: decode at the smallest scale still >= size (much faster)
                img.draft(MODES[channels], (max(size), max(size)))
            img = ImageOps.exif_transpose(img)  # upright
            if img.mode in WIDE_MODES:  # 16-bit: Pillow's convert would clip it (all >= 255 white)
                img = Image.fromarray((np.asarray(img).clip(0, 65535) >> 8).astype(np.uint8), "L")
            img = img.convert(MODES[channels])  # L or RGB
            if size is not None and img.size != (size[1], size[0]):  # Pillow's size is (W, H)
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # antialiased
            pixels = np.asarray(img)  # (H, W) or (H, W, 3)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(f" '{path}'", "")  # Pillow names the file too: once is enough
        raise LightfitError(f"{path} is not an image Pillow can read ({reason})") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as it will be decoded (upright: an EXIF rotation swaps them)."""
    pixels = decode(path, None, 1)
    return pixels.shape[1], pixels.shape[2]


def decode_into(pixels: np.ndarray, listing: Listing, resize: bool) -> None:
    """Decode the files into `pixels` (N, C, H, W), in order, on DECODE_THREADS threads (Pillow
    decodes, converts and resizes without holding the GIL), DECODE_CHUNK files at a time so that
    no more than a chunk of images waits in memory. `resize`: stretch them to the size of
    `pixels`, else each must have it already. The first bad file, in order, stops it."""
    channels, fixed = pixels.shape[1], tuple(pixels.shape[2:])
    first = listing.root / listing.files[0]

    def one(path: Path) -> np.ndarray:
        return decode(path, fixed if resize else None, channels)

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for start in range(0, len(listing.files), DECODE_CHUNK):
            paths = [listing.root / rel for rel in listing.files[start : start + DECODE_CHUNK]]
            for i, (path, image) in enumerate(zip(paths, pool.map(one, paths), strict=True), start):
                if image.shape[1:] != fixed:
                    h, w = fixed
                    raise LightfitError(
                        f"{path} is {image.shape[1]}x{image.shape[2]} (height x width) but {first} is "
                        f"{h}x{w}; set data.size=[{h},{w}] to resize them all to one size"
                    )
                pixels[i] = image
