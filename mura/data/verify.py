"""Check every listed image file once, cheaply, before training starts.

With ``data.on_bad_image=error`` an unreadable, empty, truncated or non-image file must stop a run before its
first training step, naming the file and the fix, not crash a worker hours in. When the decode-once cache is
on, building it runs this check and then decodes every image in full, recording the failures. When the cache
is off nothing else reads the files up front: `find_unreadable` checks them all, in several processes, at a
small fraction of the cost of a full decode.

What the check does per file (`check_image_file`):

* ``stat``: missing and zero-byte files.
* ``Image.open``: reads the header and, for PNG, every chunk before the pixel data with its CRC: non-image
  files, truncated headers, and the width x height limit (a decompression bomb is refused from its header,
  before any pixel memory is allocated).
* PNG: ``Image.verify()`` reads every remaining chunk (IDAT...) and checks its CRC **without decompressing
  the pixel data**. It catches a file cut anywhere inside or between IDAT chunks, a file cut right before
  or inside IEND (PIL's full decode accepts both: the pixels are complete, but the copy is not), and any
  flipped byte inside a chunk (CRC mismatch). It does not read IEND's own CRC, so a file missing only its
  last 1-4 bytes passes `verify()`; that case is checked here explicitly.
* Not caught, by design (it would need the decompression this check avoids): a PNG whose chunks all have
  valid CRCs but whose compressed stream is itself corrupt or too short, i.e. a file written wrong, not one
  damaged after writing. The full decode in the dataset still raises `ImageDecodeError` for it.
* Other formats (a JPEG named .png...): PIL's ``verify()`` checks nothing for them, so they are decoded in
  full. They are rare in MURA (all 40,005 images are PNG), so this costs nothing in practice.

Reasons use `load_grayscale`'s wording where they overlap, so both paths report a bad file the same way.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mura.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_grayscale
from mura.data.parallel import map_in_processes

_IEND_CRC = struct.pack(">I", zlib.crc32(b"IEND"))
MAX_CHUNK = 256  # files per worker task: a few tens of ms of work, so process overhead stays small


def _unreadable(error: BaseException) -> str:
    detail = str(error) or type(error).__name__
    if not isinstance(error, (OSError, SyntaxError, ValueError)):
        detail = f"{type(error).__name__}: {detail}"  # unexpected errors from a malformed file: name the type
    return f"unreadable or truncated image ({detail})"


def check_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None if `path` looks usable, else why not (a reason in `ImageDecodeError`'s wording).

    Cheap for PNG: header and chunk CRCs, no pixel decompression. Other formats are decoded in full.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return _unreadable(error)
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Our own file object: PIL then leaves it open after verify(), and its position tells where IEND is.
            with open(path, "rb") as file, Image.open(file) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return f"{width}x{height} pixels exceeds the limit of {max_pixels} (possible decompression bomb)"
                if image.format != "PNG":
                    image.load()  # verify() is a no-op for JPEG and most other formats
                    return None
                image.verify()  # every chunk from the first IDAT to IEND, CRCs checked, nothing decompressed
                # verify() stops after IEND's length and type; its CRC must follow (a cut copy loses it first).
                if file.read(4) != _IEND_CRC:
                    return "unreadable or truncated image (truncated PNG file: IEND chunk incomplete)"
                return None
    except UnidentifiedImageError:
        return "not an image file (unrecognised format)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f"decompression bomb refused ({error})"
    except Exception as error:  # any failure of a malformed file is a reason, not a crash
        return _unreadable(error)


def load_checked_grayscale(path: str | os.PathLike) -> np.ndarray:
    """`load_grayscale` after `check_image_file`: one verdict on a file whoever reads it (a PNG cut after its pixel
    data decodes, but is not the file it was). Raises ImageDecodeError with the check's reason."""
    reason = check_image_file(path)
    if reason is not None:
        raise ImageDecodeError(path, reason)
    return load_grayscale(path)


def _check_chunk(job: tuple[str, list[str], int]) -> list[tuple[str, str]]:
    """(relative path, reason) of the failures among one chunk of files (runs in worker processes)."""
    root, paths, max_pixels = job
    failures = []
    for relative in paths:
        reason = check_image_file(Path(root) / relative, max_pixels)
        if reason is not None:
            failures.append((relative, reason))
    return failures


def find_unreadable(
    root: str | os.PathLike,
    paths: Sequence[str],
    workers: int = 2,
    progress: bool = True,
    desc: str = "checking image files",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, str]:
    """{relative path: reason} for every file of `paths` (relative to `root`) that `check_image_file`
    rejects, in input order. Checked in `workers` processes (inline if `workers <= 1`), with a progress bar."""
    root = str(root)
    paths = list(paths)
    total = len(paths)
    chunk = max(1, min(MAX_CHUNK, total // max(1, workers * 8)))
    jobs = [(root, paths[start : start + chunk], max_pixels) for start in range(0, total, chunk)]
    failures: dict[str, str] = {}
    # fork: the workers run only PIL code, so the parent's torch threads are never touched.
    for result in map_in_processes(_check_chunk, jobs, [len(job[1]) for job in jobs], workers, desc, progress, fork=True):
        failures.update(result)
    return failures
