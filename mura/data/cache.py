"""Decode-once image cache: every image of a split decoded and resized once into a memory-mapped uint8 file.

PNG decoding and resizing dominate the input pipeline (REFERENCE.md section 5: 151 img/s per core); an
epoch from the cache is a memory copy. The cache stores exactly the output of the recipes' first step
(`resize_square`), so every later step, and every metric, is the same as from the PNG files.

A cache is keyed on its source files (path, size, modification time), the image size, the resize mode and the format
version: change any and it is rebuilt; otherwise it is reused. It is built by several processes, with a
progress bar, into a temporary file that is renamed when complete.

A release is cached in shards, one per official split and body part, each over every image its CSV lists
(`open_or_build_shards`): a split of the data module (a fold's training or validation share, the test split, a
selection of body parts) reads the shards it touches, so every fold, split seed, setting and body-part selection of
one release at one size reuses one store of decoded images (keyed on the split's own paths, a 5-fold sweep decoded
and stored the training images ten times).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from mura.data.images import ImageDecodeError
from mura.data.parallel import map_in_processes
from mura.data.transforms import resize_square
from mura.data.verify import load_checked_grayscale

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: failures include the file check of mura.data.verify


def cache_key(root: Path, paths: list[str], image_size: int, resize_mode: str = "squash") -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{image_size}|{resize_mode}|{root.resolve()}".encode())
    for path in paths:
        try:
            stat = os.stat(root / path)
            digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except FileNotFoundError:
            digest.update(f"|{path}|missing".encode())
    return digest.hexdigest()[:20]


def _decode_rows(job: tuple[str, str, list[tuple[int, str]], int, int, str]) -> list[tuple[int, str]]:
    """Decode and resize rows into the memory map (runs in worker processes); returns the failures."""
    array_path, root, rows, total, image_size, resize_mode = job
    array = np.memmap(array_path, dtype=np.uint8, mode="r+", shape=(total, image_size, image_size))
    failures = []
    for position, path in rows:
        # The same file check as with the cache off, so one release gives one verdict whichever path reads it.
        try:
            pixels = torch.from_numpy(load_checked_grayscale(Path(root) / path)).unsqueeze(0)
        except ImageDecodeError as error:
            failures.append((position, error.reason))
            continue
        array[position] = resize_square(pixels, image_size, resize_mode)[0].numpy()
    array.flush()
    return failures


class ImageCache:
    """A read-only view of a built cache: `pixels(i)` is the resized uint8 image of row i, or None if unusable."""

    def __init__(self, array_path: Path, meta: dict):
        self.array_path = array_path
        self.meta = meta
        self.image_size = meta["image_size"]
        self.paths: list[str] = meta["paths"]
        self.failures: dict[int, str] = {int(k): v for k, v in meta["failures"].items()}
        self._positions = {path: position for position, path in enumerate(self.paths)}
        self._array: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:
        # Workers reopen the memory map themselves instead of pickling its pages.
        return {**self.__dict__, "_array": None}

    def position(self, path: str) -> int:
        """The row of `path`: a split's table may leave out rows of the cache (unreadable images it skips)."""
        return self._positions[path]

    def unreadable(self) -> dict[str, str]:
        """{path: reason} of the images that could not be decoded when the cache was built."""
        return {self.paths[position]: reason for position, reason in sorted(self.failures.items())}

    def pixels(self, position: int) -> np.ndarray | None:
        if position in self.failures:
            return None
        if self._array is None:
            self._array = np.memmap(self.array_path, dtype=np.uint8, mode="r", shape=(len(self.paths), self.image_size, self.image_size))
        return np.array(self._array[position])  # a writable copy, as torch wants


def open_or_build_cache(
    root: str | Path,
    paths: list[str],
    image_size: int,
    cache_dir: str | Path,
    workers: int = 4,
    progress: bool = True,
    resize_mode: str = "squash",
) -> ImageCache:
    """The cache for these files at this size and resize mode: reused when its key matches, built otherwise."""
    root, cache_dir = Path(root), Path(cache_dir)
    key = cache_key(root, paths, image_size, resize_mode)
    array_path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    if meta_path.is_file() and array_path.is_file():
        return ImageCache(array_path, json.loads(meta_path.read_text()))
    cache_dir.mkdir(parents=True, exist_ok=True)
    # The jobs of a sweep started together want the same shards at once: the first builds, the others wait for it and
    # open what it built, instead of each decoding the whole release
    with _build_lock(cache_dir / f"{key}.lock"):
        if meta_path.is_file() and array_path.is_file():
            return ImageCache(array_path, json.loads(meta_path.read_text()))
        meta = _build(root, paths, image_size, resize_mode, array_path, workers, progress)
        # Its presence marks a complete cache: written whole (a reader never parses half of it), last, and before the
        # lock goes (a job waiting on it then finds the cache complete instead of building it again)
        partial_meta = meta_path.with_name(f"{meta_path.name}.partial-{os.getpid()}")
        partial_meta.write_text(json.dumps(meta))
        os.replace(partial_meta, meta_path)
    return ImageCache(array_path, meta)


@contextlib.contextmanager
def _build_lock(path: Path):
    """An exclusive lock on `path` for the block, where the system has fcntl (POSIX); elsewhere none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(root: Path, paths: list[str], image_size: int, resize_mode: str, array_path: Path, workers: int,
           progress: bool) -> dict:
    """Decode and resize every image of `paths` into `array_path`; returns the cache's meta (failures included)."""
    partial = array_path.with_name(f"{array_path.name}.partial-{os.getpid()}")
    total = len(paths)
    np.memmap(partial, dtype=np.uint8, mode="w+", shape=(max(total, 1), image_size, image_size)).flush()
    chunk = max(1, min(256, total // max(1, workers * 4) or 1))
    rows = list(enumerate(paths))
    jobs = [(str(partial), str(root), rows[start : start + chunk], max(total, 1), image_size, resize_mode)
            for start in range(0, total, chunk)]
    failures: dict[int, str] = {}
    for result in map_in_processes(_decode_rows, jobs, [len(job[2]) for job in jobs], workers,
                                   f"caching {total} images at {image_size} px", progress):
        failures.update(result)
    os.replace(partial, array_path)
    log.info("cached %d images (%d unreadable) at %s", total, len(failures), array_path)
    return {"version": CACHE_VERSION, "root": str(root), "image_size": image_size, "resize": resize_mode, "paths": paths,
            "failures": {str(k): v for k, v in failures.items()}}


class ShardedImageCache:
    """Several caches read as one (`ImageCache`'s interface): positions run through the shards in order."""

    def __init__(self, shards: list[ImageCache]):
        self.shards = shards
        self._offsets = list(itertools.accumulate([0, *(len(shard) for shard in shards)]))
        self.paths = [path for shard in shards for path in shard.paths]
        self._positions = {path: position for position, path in enumerate(self.paths)}
        self.failures = {offset + position: reason for offset, shard in zip(self._offsets, shards, strict=False)
                         for position, reason in shard.failures.items()}

    def __len__(self) -> int:
        return len(self.paths)

    def position(self, path: str) -> int:
        return self._positions[path]

    def unreadable(self) -> dict[str, str]:
        return {path: reason for shard in self.shards for path, reason in shard.unreadable().items()}

    def pixels(self, position: int) -> np.ndarray | None:
        shard = bisect.bisect_right(self._offsets, position) - 1
        return self.shards[shard].pixels(position - self._offsets[shard])


def open_or_build_shards(
    root: str | Path,
    listed: dict[tuple[str, str], list[str]],
    groups: list[tuple[str, str]],
    image_size: int,
    cache_dir: str | Path,
    workers: int = 4,
    resize_mode: str = "squash",
    opened: dict[tuple[str, str], ImageCache] | None = None,
) -> ShardedImageCache:
    """The shards of `groups` ((official split, body part) pairs), each over every image `listed` gives for its group,
    as one cache; `opened` keeps the shards this process has opened, so two splits touching one shard share it."""
    opened = {} if opened is None else opened
    for group in groups:
        if group not in opened:
            opened[group] = open_or_build_cache(root, listed[group], image_size, cache_dir, workers=workers,
                                                resize_mode=resize_mode)
    return ShardedImageCache([opened[group] for group in groups])
