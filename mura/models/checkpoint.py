"""Checkpoints, safely: loaded as tensors and plain values only (never pickled code), written atomically."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from mura.app.errors import CheckpointError
from mura.data.datamodule import MuraDataModule
from mura.models.classifier import CHECKPOINT_FORMAT, MuraClassifier

# Settings that only matter when a network is first built for training.
_TRAINING_ONLY = {"pretrained": False, "weights_path": None}


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, loaded with `weights_only=True` (no arbitrary code runs), checked to be ours."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; runs keep theirs in <run>/checkpoints/best.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - an untrusted file can fail in any way; each means "not ours"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: not a loadable mura checkpoint ({first_line}). Only tensors and plain values are read; "
            "pass a file written by `python -m mura.train`"
        ) from None
    if not isinstance(checkpoint, dict) or "mura" not in checkpoint:
        raise CheckpointError(f"{path}: not a mura checkpoint (no 'mura' entry); pass a file written by `python -m mura.train`")
    written_format = checkpoint["mura"].get("format")
    if written_format != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {written_format} (mura {checkpoint['mura'].get('version')}) is not the "
            f"format {CHECKPOINT_FORMAT} this version reads; evaluate it with the mura version that wrote it"
        )
    return checkpoint


def checkpoint_epoch(path: str | Path) -> int:
    """The epoch a checkpoint was saved at."""
    return _checkpoint_position(path)[0]


def checkpoint_step(path: str | Path) -> int:
    """The optimizer steps taken when the checkpoint was written."""
    return _checkpoint_position(path)[1]


def _checkpoint_position(path: str | Path) -> tuple[int, int]:
    """(epoch, optimizer steps) of the checkpoint, read once per version of the file (its inode, size and
    modification time: a checkpoint written again is renamed over the old one). The end of a run asks for them three
    times of the same best.ckpt, and each read unpickles every tensor of it, memory-mapped or not: a third of a second
    for DenseNet-169's 2,500 with their optimizer state."""
    stat = Path(path).stat()
    return _read_position(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_position(path: str, inode: int, size: int, modified_ns: int) -> tuple[int, int]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(checkpoint["epoch"]), int(checkpoint["global_step"])


def training_split(path: str | Path) -> dict | None:
    """What defined the training run's split (split seed, validation fraction, body parts, a digest of the
    validation patients: `MuraDataModule.state_dict`), or None for a checkpoint that records none."""
    checkpoint = read_checkpoint(path)
    return checkpoint.get(MuraDataModule.__qualname__, {}).get("split")


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> MuraClassifier:
    """A MuraClassifier rebuilt from the checkpoint's own settings, weights loaded strictly, in eval mode."""
    checkpoint = read_checkpoint(path)
    settings = {**checkpoint.get("hyper_parameters", {}), **_TRAINING_ONLY}
    try:
        model = MuraClassifier(**settings)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (TypeError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{path}: its settings or weights do not fit this mura version ({error})") from None
    return model.to(device).eval()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, fsync, then rename over it: a crash mid-write leaves the
    previous checkpoint intact, never a truncated one that breaks resume."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
