"""The decoded cache of an image folder: an (N, C, H, W) uint8 `.npy` that training memory-maps.

Every image is decoded once (images.py) into `pixels.npy`, beside `labels.npy` and
`manifest.json`, in a folder of its own for each image folder, size and channel count.
After the first run, reading a batch costs what an `.npy` does, not a decode. The cache is
rebuilt when the listing changes (a file added, removed or rewritten: each file's path,
byte size and modification time are in the manifest), and written atomically under a file
lock, so an interrupted decode leaves no half cache and DDP ranks (or parallel sweep jobs)
build it once. No Lightning and no torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lightfit.data.arrays import read_npy
from lightfit.data.images import Listing, decode_into, image_size
from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
CACHE_VERSION = 1  # part of the manifest: a new layout of the cache rebuilds old ones
PIXELS, LABELS, MANIFEST = "pixels.npy", "labels.npy", "manifest.json"


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
        with contextlib.suppress(OSError):  # a file system without locks (some NFS): go on unlocked
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
        decode_into(pixels, listing, resize=size is not None)
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


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
