"""Images in: a folder with one subfolder per class, decoded once into a uint8 `.npy` cache.

The layout is torchvision's `ImageFolder`: `photos/cat/1.jpg`, `photos/dog/2.png`; the
class names are the subfolders' names, sorted, and label 0..C-1 in that order. Every image
is decoded with Pillow (the optional extra `images`), turned upright by its EXIF tag,
converted to `channels` (1: grayscale, 3: RGB) and stretched to `size` (height, width; no
crop), then written into `pixels.npy`, an (N, C, H, W) uint8 array that training
memory-maps: after the first run, reading a batch costs what an `.npy` does, not a decode.

The cache is rebuilt when the listing changes (a file added, removed or rewritten: each
file's path, byte size and modification time are in `manifest.json`), and written
atomically under a file lock, so an interrupted decode leaves no half cache and DDP ranks
(or parallel sweep jobs) build it once. No Lightning and no torch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.data.arrays import read_npy
from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
# What Pillow reads out of the box; the issue asks for PNG and JPEG, the rest costs nothing.
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MODES = {1: "L", 3: "RGB"}  # data.channels -> Pillow's mode
CACHE_VERSION = 1  # part of the manifest: a new layout of the cache rebuilds old ones
PIXELS, LABELS, MANIFEST = "pixels.npy", "labels.npy", "manifest.json"
# 2,000 JPEGs on 2 cores: 1.0 s on one thread, 0.6 s on two (docs/data.md)
DECODE_THREADS = min(8, os.cpu_count() or 1)
DECODE_CHUNK = 256  # files handed to the threads at once


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
    if classes is None and len(folders) == 1:
        raise LightfitError(
            f"{root} has one class folder ({folders[0]}); a classifier needs at least two, "
            "one subfolder per class"
        )
    names = list(classes) if classes is not None else folders
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise LightfitError(
            f"{root}: class folder '{unknown[0]}' is not one of the checkpoint's classes ({', '.join(names)})"
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
            img = ImageOps.exif_transpose(img).convert(MODES[channels])  # upright, then L or RGB
            if size is not None and img.size != (size[1], size[0]):  # Pillow's size is (W, H)
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # antialiased
            pixels = np.asarray(img)  # (H, W) or (H, W, 3)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(f" '{path}'", "")  # Pillow names the file too: once is enough
        raise LightfitError(f"{path} is not an image Pillow can read ({reason})") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as it will be decoded (upright), read from its header."""
    pixels = decode(path, None, 1)
    return pixels.shape[1], pixels.shape[2]


def cache_folder(root: Path, size: list[int] | None, channels: int, cache: str | None) -> Path:
    """`<cache>/<folder name>-<hash of its path, size, channels>`; cache: $XDG_CACHE_HOME/lightfit/images."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightfit" / "images"
    base = Path(cache).expanduser() if cache else base
    key = json.dumps([str(root.resolve()), size, channels])
    return base / f"{root.resolve().name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold `folder/.lock`: one process builds the cache, the others wait, then reuse it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / ".lock").open("w")
    except OSError as exc:
        raise LightfitError(
            f"cannot write the image cache {folder} ({exc.strerror}); set data.cache=<a folder>"
        ) from None
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; one process at a time, please
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        lock.close()  # closing releases the lock


def cached_pixels(listing: Listing, size: list[int] | None, channels: int, cache: str | None) -> np.ndarray:
    """The (N, C, H, W) uint8 pixels of `listing`, memory-mapped from its cache; decoded first
    if the cache is missing or the files changed."""
    folder = cache_folder(listing.root, size, channels, cache)
    manifest = {
        "version": CACHE_VERSION,
        "root": str(listing.root.resolve()),
        "size": size,
        "channels": channels,
        "classes": listing.classes,
        "files": listing.stats(),
    }
    with _locked(folder):
        pixels = _reuse(folder, manifest)
        if pixels is not None:
            if os.environ.get("RANK", "0") == "0":  # DDP: rank 0 says it; the rank that built it said so
                log.info(f"{len(listing.files):,} images from the cache {folder}")
            return pixels
        log.info(f"decoding {len(listing.files):,} images into {folder} ...")
        _build(folder, listing, size, channels, manifest)
        return read_npy(folder / PIXELS, mmap=True)


def _reuse(folder: Path, manifest: dict[str, Any]) -> np.ndarray | None:
    """The cached pixels if the cache was built from exactly these files, else None."""
    try:
        saved = json.loads((folder / MANIFEST).read_text())
        shape = saved.pop("shape")
        if saved != manifest:
            return None
        pixels = read_npy(folder / PIXELS, mmap=True)
    except (OSError, ValueError, KeyError, LightfitError):  # missing, half written or damaged: rebuild
        return None
    return pixels if list(pixels.shape) == shape and pixels.dtype == np.uint8 else None


def _build(folder: Path, listing: Listing, size: list[int] | None, channels: int, manifest: dict) -> None:
    """Decode every file into `folder`: pixels.npy, labels.npy, then manifest.json, each renamed
    into place whole; the old manifest goes first, so a stop half way leaves no cache that looks valid."""
    (folder / MANIFEST).unlink(missing_ok=True)
    first = listing.root / listing.files[0]
    fixed = tuple(size) if size is not None else image_size(first)
    shape = (len(listing.files), channels, *fixed)
    partial = [folder / f"{name}.{os.getpid()}.partial" for name in (PIXELS, LABELS, MANIFEST)]
    try:
        pixels = np.lib.format.open_memmap(partial[0], mode="w+", dtype=np.uint8, shape=shape)
        _decode_into(pixels, listing, size is not None, first)
        pixels.flush()
        del pixels  # closes the map before the rename
        with partial[1].open("wb") as f:
            np.save(f, listing.labels)
        os.replace(partial[1], folder / LABELS)
        os.replace(partial[0], folder / PIXELS)
        partial[2].write_text(json.dumps({**manifest, "shape": list(shape)}))
        os.replace(partial[2], folder / MANIFEST)
    except OSError as exc:
        _remove(partial)
        raise LightfitError(
            f"cannot write the image cache {folder} ({exc}); set data.cache=<a folder>"
        ) from None
    except BaseException:  # a bad image, Ctrl-C: no half cache left behind
        _remove(partial)
        raise


def _decode_into(pixels: np.ndarray, listing: Listing, resize: bool, first: Path) -> None:
    """Decode the files into `pixels` (N, C, H, W), in order, on DECODE_THREADS threads (Pillow
    decodes, converts and resizes without holding the GIL), DECODE_CHUNK files at a time so that
    no more than a chunk of images waits in memory. The first bad file, in order, stops it."""
    channels, fixed = pixels.shape[1], tuple(pixels.shape[2:])

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


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
