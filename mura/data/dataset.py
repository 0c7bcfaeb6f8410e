"""A torch Dataset over the image table: samples are dicts, so ids travel with every image."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from mura.data.cache import ImageCache, ShardedImageCache
from mura.data.images import ImageDecodeError, load_grayscale
from mura.data.index import BODY_PARTS

log = logging.getLogger(__name__)

ON_BAD_IMAGE = ("error", "skip")


class MuraImageDataset(Dataset):
    """Rows of `table` (columns path, label, study_idx, image_idx, patient_idx, body_part) read from under
    `root`, or from a decode-once `cache` that holds every row's path.

    With ``on_bad_image="skip"`` an unreadable image yields ``{"skipped": path, "reason": ...}``, which
    `collate_samples` counts and drops; with ``"error"`` it raises `ImageDecodeError` naming the file.
    Every sample carries its augmentation seed (-1: none), which `DeviceAugmentation` uses when the transform
    leaves the image uint8 (data.augment_on_device=true).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        root: str | Path,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        on_bad_image: str = "error",
        cache: ImageCache | ShardedImageCache | None = None,
    ):
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image must be one of {ON_BAD_IMAGE}, not {on_bad_image!r}")
        self.root = Path(root)
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.cache = cache
        # Plain lists: cheap to pickle into workers and no pandas indexing in __getitem__.
        self.paths = table["path"].tolist()
        self.labels = table["label"].astype("float32").tolist()
        self.study_indices = table["study_idx"].tolist()
        self.image_indices = table["image_idx"].tolist()
        self.patient_indices = table["patient_idx"].tolist()
        self.cache_positions = [cache.position(path) for path in self.paths] if cache is not None else None
        self.body_part_indices = [BODY_PARTS.index(part) for part in table["body_part"]]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int | None]) -> dict:
        # `SeededSampler` hands (index, augmentation seed); a plain index means "no fixed seed".
        index, augmentation_seed = key if isinstance(key, tuple) else (key, None)
        path = self.paths[index]
        try:
            pixels = self._pixels(index)
        except ImageDecodeError as error:
            if self.on_bad_image == "error":
                raise
            log.warning("skipping %s: %s", path, error.reason)
            return {"skipped": path, "reason": error.reason}
        image = torch.from_numpy(pixels).unsqueeze(0)
        if self.transform is not None and augmentation_seed is None:
            image = self.transform(image)
        elif self.transform is not None:
            # The transforms draw from torch's global generator; fork it so the seed stays local to this sample.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(augmentation_seed)
                image = self.transform(image)
        return {
            "image": image,
            "label": torch.tensor(self.labels[index]),
            "study_idx": self.study_indices[index],
            "image_idx": self.image_indices[index],
            "patient_idx": self.patient_indices[index],
            "body_part_idx": self.body_part_indices[index],
            "path": path,
            "augment_seed": -1 if augmentation_seed is None else augmentation_seed,
        }

    def _pixels(self, index: int):
        if self.cache is None:
            return load_grayscale(self.root / self.paths[index])
        position = self.cache_positions[index]
        pixels = self.cache.pixels(position)
        if pixels is None:
            raise ImageDecodeError(self.root / self.paths[index], self.cache.failures[position])
        return pixels


def collate_samples(samples: list[dict]) -> dict:
    """default_collate over the good samples; skipped ones travel as `skipped` paths so they are counted."""
    good = [sample for sample in samples if "skipped" not in sample]
    skipped = [sample["skipped"] for sample in samples if "skipped" in sample]
    batch = default_collate(good) if good else {"image": None}
    batch["skipped"] = skipped
    return batch
