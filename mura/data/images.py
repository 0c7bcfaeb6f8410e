"""Decode any radiograph file to an 8-bit grayscale array, or fail with the file's name and the fix.

MURA mixes 8-bit `L` and `RGB` PNGs; other exports bring `LA`, `RGBA`, palette and 16-bit files. Every mode
ends as uint8 H x W. 16-bit and float images are windowed to their own min-max range, because their
stored range (often 12 bits in a 16-bit container) says nothing about brightness.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# A MURA image is at most 512 x 512; anything past this is a corrupt header or a decompression bomb.
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """An image that cannot be used, with the file named."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"{path}: {reason}. Replace the file from the original archive, or set data.on_bad_image=skip "
            "to leave it out (skips are counted and reported)"
        )


def to_grayscale_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode to uint8 H x W."""
    mode = image.mode
    if mode == "L":
        return np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only arrays
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.uint8)
        return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)
    if mode in ("LA", "La"):
        return np.array(image.getchannel("L"), dtype=np.uint8)
    if mode == "1":
        return np.array(image.convert("L"), dtype=np.uint8)
    # RGB, RGBA, P, PA, CMYK, YCbCr...: through RGB, ignoring alpha (radiographs are opaque).
    return np.array(image.convert("RGB").convert("L"), dtype=np.uint8)


def load_grayscale(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to uint8 H x W; raise `ImageDecodeError` for anything unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    if size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        path, f"{width}x{height} pixels exceeds the limit of {max_pixels} (possible decompression bomb)"
                    )
                image.load()
                return to_grayscale_array(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(path, f"decompression bomb refused ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(path, f"unreadable or truncated image ({error})") from None


def image_format(path: str | os.PathLike) -> str | None:
    """The container format PIL sees (`PNG`, `JPEG`...), or None if it is not an image."""
    try:
        with Image.open(path) as image:
            return image.format
    except (OSError, UnidentifiedImageError):
        return None
