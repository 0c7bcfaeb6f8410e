"""Shared fixtures: one tiny synthetic MURA tree per session, and writable copies for tests that break it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mura.data.synthetic import SyntheticConfig, generate

TINY_SYNTHETIC = SyntheticConfig(
    seed=3,
    train_patients_per_part=5,
    valid_patients_per_part=2,
    image_size=96,
    max_views=3,
    workers=1,
    edge_cases=True,
)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A read-only-by-convention tiny synthetic release (do not modify; use `writable_root`)."""
    root = tmp_path_factory.mktemp("synthetic") / "MURA-v1.1"
    generate(root, TINY_SYNTHETIC, progress=False)
    return root


@pytest.fixture
def writable_root(synthetic_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "MURA-v1.1"
    shutil.copytree(synthetic_root, copy)
    return copy


def csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> None:
    path.write_bytes("".join(line + newline for line in lines).encode())
