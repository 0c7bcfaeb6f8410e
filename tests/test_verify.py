from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mura.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_grayscale
from mura.data.verify import check_image_file, find_unreadable

NOISE = np.random.default_rng(0).integers(0, 256, (64, 80), dtype=np.uint8)  # incompressible: a long IDAT
UNREADABLE = "unreadable or truncated image ("


def png_bytes(path: Path, mode: str = "L") -> bytes:
    Image.fromarray(NOISE).convert(mode).save(path, "PNG")
    return path.read_bytes()


def chunk_spans(data: bytes) -> dict[bytes, tuple[int, int]]:
    """{chunk type: (offset of its length field, data length)} of the last chunk of each type."""
    spans, position = {}, 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        spans[data[position + 4 : position + 8]] = (position, length)
        position += 12 + length
    return spans


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header(width: int, height: int) -> bytes:
    """A PNG claiming width x height 8-bit grey pixels, with a few bytes of pixel data: valid chunks, tiny file."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def decode_reason(path: Path) -> str | None:
    try:
        load_grayscale(path)
    except ImageDecodeError as error:
        return error.reason
    return None


# --- files that must pass ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGB", "LA", "P"])
def test_good_8bit_pngs_pass(tmp_path: Path, mode: str):
    path = tmp_path / f"{mode}.png"
    png_bytes(path, mode)
    assert check_image_file(path) is None


def test_good_16bit_png_passes(tmp_path: Path):
    path = tmp_path / "sixteen.png"
    Image.fromarray(NOISE.astype(np.uint16) * 16).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    assert check_image_file(path) is None


def test_jpeg_named_png_is_a_readable_image(tmp_path: Path):
    path = tmp_path / "really_a_jpeg.png"
    Image.fromarray(NOISE).convert("RGB").save(path, "JPEG")
    assert check_image_file(path) is None


# --- files that must fail, with load_grayscale's wording ------------------------------------------------


def test_missing_file(tmp_path: Path):
    assert check_image_file(tmp_path / "absent.png") == "file not found"


def test_zero_byte_file(tmp_path: Path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert check_image_file(path) == "empty file (0 bytes)"


@pytest.mark.parametrize("content", [b"this is not an image\n", np.random.default_rng(1).bytes(4096)], ids=["text", "random"])
def test_non_image_named_png(tmp_path: Path, content: bytes):
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    assert check_image_file(path) == "not an image file (unrecognised format)"


def test_png_cut_inside_idat(tmp_path: Path):
    path = tmp_path / "cut.png"
    data = png_bytes(path)
    start, length = chunk_spans(data)[b"IDAT"]
    path.write_bytes(data[: start + 8 + length // 2])
    assert check_image_file(path).startswith(UNREADABLE)


def test_png_cut_right_before_iend(tmp_path: Path):
    # All pixel data is there (PIL's full decode may accept it), but the copy is incomplete: caught by verify().
    path = tmp_path / "no_iend.png"
    data = png_bytes(path)
    path.write_bytes(data[: chunk_spans(data)[b"IEND"][0]])
    assert check_image_file(path) == UNREADABLE + "truncated PNG file)"


@pytest.mark.parametrize("missing", [1, 4, 6])
def test_png_cut_inside_iend(tmp_path: Path, missing: int):
    # verify() does not read IEND's CRC: losing only the last 1-4 bytes is checked explicitly.
    path = tmp_path / "short_iend.png"
    path.write_bytes(png_bytes(path)[:-missing])
    assert check_image_file(path).startswith(UNREADABLE)


def test_png_cut_between_idat_chunks(tmp_path: Path):
    from PIL import ImageFile

    path = tmp_path / "multi.png"
    block = ImageFile.MAXBLOCK
    ImageFile.MAXBLOCK = 1024  # several IDAT chunks
    try:
        data = png_bytes(path)
    finally:
        ImageFile.MAXBLOCK = block
    idat_starts = [i - 4 for i in range(len(data)) if data[i : i + 4] == b"IDAT"]
    assert len(idat_starts) > 2
    path.write_bytes(data[: idat_starts[2]])  # ends exactly on a chunk boundary
    assert check_image_file(path) == UNREADABLE + "truncated PNG file)"


def test_png_with_a_flipped_byte_in_idat(tmp_path: Path):
    path = tmp_path / "flipped.png"
    data = bytearray(png_bytes(path))
    start, length = chunk_spans(bytes(data))[b"IDAT"]
    data[start + 8 + length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    reason = check_image_file(path)
    assert reason.startswith(UNREADABLE) and "checksum" in reason


def test_truncated_jpeg_named_png(tmp_path: Path):
    # verify() checks nothing in a JPEG, so non-PNG files are decoded in full.
    path = tmp_path / "cut_jpeg.png"
    Image.fromarray(NOISE).convert("RGB").save(path, "JPEG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert check_image_file(path).startswith(UNREADABLE)


def test_too_many_pixels_refused_from_the_header(tmp_path: Path):
    # 5000 x 5000 claimed (over our limit, under PIL's own), 64 bytes of pixel data: refused from the header,
    # so nothing is allocated (a decode would allocate 25 MB, then fail on the missing data with another reason).
    path = tmp_path / "huge.png"
    path.write_bytes(png_with_header(5000, 5000))
    expected = f"5000x5000 pixels exceeds the limit of {DEFAULT_MAX_PIXELS} (possible decompression bomb)"
    assert check_image_file(path) == expected
    assert decode_reason(path) == expected  # same words as the full decode


def test_past_pils_own_bomb_limit(tmp_path: Path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_header(100_000, 100_000))
    assert check_image_file(path).startswith("decompression bomb refused (")


def test_max_pixels_is_honoured(tmp_path: Path):
    path = tmp_path / "small.png"
    png_bytes(path)
    assert check_image_file(path, max_pixels=64 * 80) is None
    assert check_image_file(path, max_pixels=64 * 80 - 1) == "80x64 pixels exceeds the limit of 5119 (possible decompression bomb)"


def test_same_reason_kind_as_the_full_decode(tmp_path: Path):
    data = png_bytes(tmp_path / "good.png")
    start, length = chunk_spans(data)[b"IDAT"]
    cases = {
        "empty.png": b"",
        "text.png": b"not an image",
        "cut.png": data[: start + 8 + length // 2],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    for name in [*cases, "absent.png"]:
        check, decode = check_image_file(tmp_path / name), decode_reason(tmp_path / name)
        assert check is not None and decode is not None
        assert check.split(" (")[0] == decode.split(" (")[0], name


# --- find_unreadable -----------------------------------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path: Path) -> tuple[Path, list[str], dict[str, str]]:
    root = tmp_path / "release"
    paths, expected = [], {}
    for study in range(6):
        folder = root / "train" / "XR_HUMERUS" / f"patient{study:05d}" / "study1_negative"
        folder.mkdir(parents=True)
        for view in (1, 2):
            relative = f"train/XR_HUMERUS/patient{study:05d}/study1_negative/image{view}.png"
            Image.fromarray(NOISE).convert("RGB" if view == 2 else "L").save(root / relative)
            paths.append(relative)
    bad = {
        "train/XR_HUMERUS/patient00001/study1_negative/image2.png": (b"", "empty file (0 bytes)"),
        "train/XR_HUMERUS/patient00003/study1_negative/image1.png": (b"<html>", "not an image file (unrecognised format)"),
        "train/XR_HUMERUS/patient00004/study1_negative/image2.png": (None, UNREADABLE),
    }
    for relative, (content, reason) in bad.items():
        target = root / relative
        target.write_bytes(content if content is not None else target.read_bytes()[:200])
        expected[relative] = reason
    paths.append("train/XR_HUMERUS/patient00099/study1_negative/image1.png")  # listed, not on disk
    expected[paths[-1]] = "file not found"
    return root, paths, expected


@pytest.mark.parametrize("workers", [1, 2])
def test_find_unreadable_names_relative_paths_in_input_order(mixed_folder, workers: int):
    root, paths, expected = mixed_folder
    found = find_unreadable(root, paths, workers=workers, progress=False)
    assert list(found) == [path for path in paths if path in expected]  # input order, relative paths
    for path, reason in found.items():
        assert reason.startswith(expected[path]), (path, reason)


def test_find_unreadable_same_answer_inline_and_in_processes(mixed_folder):
    root, paths, _ = mixed_folder
    inline = find_unreadable(root, paths, workers=1, progress=False)
    pooled = find_unreadable(str(root), paths, workers=2, progress=True, desc="test")
    assert inline == pooled and len(inline) == 4


def test_find_unreadable_on_good_and_empty_lists(mixed_folder):
    root, paths, expected = mixed_folder
    good = [path for path in paths if path not in expected]
    assert find_unreadable(root, good, workers=2, progress=False) == {}
    assert find_unreadable(root, [], workers=2, progress=False) == {}
