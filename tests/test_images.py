from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mura.data.images import ImageDecodeError, load_grayscale

GRADIENT = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))  # 30 x 50


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1"])
def test_every_8bit_mode_decodes_to_uint8_grayscale(tmp_path: Path, mode: str):
    path = tmp_path / f"{mode}.png"
    Image.fromarray(GRADIENT).convert(mode).save(path)
    pixels = load_grayscale(path)
    assert pixels.dtype == np.uint8 and pixels.shape == GRADIENT.shape
    if mode != "1":  # 1-bit keeps only black and white
        assert np.abs(pixels.astype(int) - GRADIENT).max() <= 2


def test_16bit_is_windowed_to_its_range(tmp_path: Path):
    path = tmp_path / "sixteen.png"
    twelve_bit = (GRADIENT.astype(np.uint16) * 16).astype(np.uint16)  # 0..3920 in a 16-bit container
    Image.fromarray(twelve_bit).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    pixels = load_grayscale(path)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels[0].astype(int)) >= 0)


def test_zero_byte_file(tmp_path: Path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty.png: empty file"):
        load_grayscale(path)


def test_truncated_png(tmp_path: Path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageDecodeError, match=r"cut.png: unreadable or truncated"):
        load_grayscale(path)


def test_text_file_with_png_name(tmp_path: Path):
    path = tmp_path / "fake.png"
    path.write_text("this is not an image")
    with pytest.raises(ImageDecodeError, match=r"fake.png: not an image file.*data.on_bad_image=skip"):
        load_grayscale(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path):
    path = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(path)  # compresses to a few kB
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_grayscale(path, max_pixels=1000 * 1000)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ImageDecodeError, match="nothing.png: file not found"):
        load_grayscale(tmp_path / "nothing.png")
