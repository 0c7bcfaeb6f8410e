"""MuraDataModule: index once, split by patient, serve dict batches that carry study ids."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from mura.data.cache import ImageCache, open_or_build_cache
from mura.data.dataset import MuraImageDataset, collate_samples
from mura.data.index import (
    BODY_PARTS,
    OFFICIAL_SPLITS,
    MuraDataError,
    build_index,
    check_root,
    parse_body_parts,
)
from mura.data.sampling import SeededSampler
from mura.data.split import SPLITS_CSV_COLUMNS, assign_splits, split_table
from mura.data.synthetic import SyntheticConfig, ensure_synthetic
from mura.data.transforms import ResizeSquare, build_transforms

log = logging.getLogger(__name__)


class MuraDataModule(pl.LightningDataModule):
    """Study-aware data for MURA.

    Args:
        root: the MURA-v1.1 folder (the one holding the four CSVs).
        body_parts: "all" or a list such as ["XR_WRIST"].
        synthetic: settings for `mura.data.synthetic.SyntheticConfig`; when given, a synthetic release is
            generated at `root` on first use and reused afterwards.
        splits_dir: where `setup` writes `splits.csv` and `split_table.md` (the run folder); None skips it.
        seed: the order of the training images and their augmentation (mura.data.sampling).
        split_seed: which patients go to validation; None: `seed`. Fixing it while `seed` varies trains an
            ensemble whose members differ in initialisation, order and augmentation but share one validation split.
        cache: decode and resize every image once into a memory-mapped file under `cache_dir` (mura.data.cache).
        augment_on_device: hand out resized uint8 images; the model augments and normalises whole batches on
            its device (mura.data.device_augment).
    """

    def __init__(
        self,
        root: str | None,
        body_parts: str | list[str] = "all",
        image_size: int = 320,
        recipe: str = "paper",
        channels: int = 3,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        val_fraction: float = 0.1,
        seed: int = 0,
        split_seed: int | None = None,
        on_bad_image: str = "error",
        pin_memory: bool = False,
        persistent_workers: bool = True,
        cache: bool = False,
        cache_dir: str | None = None,
        augment_on_device: bool = False,
        synthetic: dict[str, Any] | None = None,
        splits_dir: str | None = None,
    ):
        super().__init__()
        self.root = root
        self.body_parts = parse_body_parts(body_parts)
        self.image_size = image_size
        self.recipe = recipe
        self.channels = channels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.split_seed = seed if split_seed is None else split_seed
        self.on_bad_image = on_bad_image
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.cache = cache
        self.cache_dir = cache_dir or (str(Path(root).parent / "cache") if root else None)
        self.augment_on_device = augment_on_device
        self._caches: dict[str, ImageCache] = {}
        self.synthetic = SyntheticConfig(**synthetic) if synthetic else None
        self.splits_dir = splits_dir
        self.splits: pd.DataFrame | None = None
        self.studies: pd.DataFrame | None = None

    # -- Lightning hooks ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate the synthetic release if asked, then check that the root and its four CSVs exist, once,
        before any worker or process starts (the full per-row checks run in `setup`)."""
        if self.synthetic is not None:
            if self.root is None:
                raise MuraDataError("data.synthetic is set but data.root is not: say where to generate the data")
            ensure_synthetic(self.root, self.synthetic)
        root = check_root(self.root)
        for split in OFFICIAL_SPLITS:
            for kind in ("image_paths", "labeled_studies"):
                if not (root / f"{split}_{kind}.csv").is_file():
                    raise MuraDataError(f"{root / f'{split}_{kind}.csv'}: missing; data.root must be the MURA-v1.1 folder itself")

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        # A Trainer calls `prepare_data` first; notebooks and `mura.evaluate` use the module without one.
        self.prepare_data()
        index = build_index(self.root, self.body_parts, on_bad_image=self.on_bad_image)
        splits = assign_splits(index, self.val_fraction, self.split_seed)
        # Study and image indices are global and fixed here, so study-level metrics stay exact under
        # shuffling, several workers and several processes.
        splits["study_idx"] = pd.factorize(splits["study"])[0]
        splits["image_idx"] = range(len(splits))
        self.splits = splits
        self.studies = (
            splits.groupby("study_idx", sort=True)
            .agg(study=("study", "first"), split=("split", "first"), body_part=("body_part", "first"),
                 patient=("patient", "first"), label=("label", "first"), n_views=("path", "size"))
        )
        table = split_table(splits)
        log.info("split table (%s):\n%s", self.root, table.to_string(index=False))
        if self.splits_dir is not None:
            self.write_splits(self.splits_dir, table)

    # -- what the rest of the package asks for -----------------------------------------------------------

    def write_splits(self, directory: str | Path, table: pd.DataFrame) -> None:
        """splits.csv (a row per image) and the split table (`split_table(self.splits)`) as CSV and Markdown."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.splits[SPLITS_CSV_COLUMNS].to_csv(directory / "splits.csv", index=False)
        table.to_csv(directory / "split_table.csv", index=False)
        (directory / "split_table.md").write_text(table.to_markdown(index=False) + "\n")

    def split_frame(self, split: str) -> pd.DataFrame:
        self._require_setup()
        return self.splits[self.splits["split"] == split]

    def has_split(self, split: str) -> bool:
        return not self.split_frame(split).empty

    def train_image_counts(self) -> dict[str, dict[str, int]]:
        """Normal and abnormal image counts per body part in the training split (for the paper's loss weights)."""
        train = self.split_frame("train")
        counts = {}
        for body_part in BODY_PARTS:
            labels = train.loc[train["body_part"] == body_part, "label"]
            counts[body_part] = {"normal": int((labels == 0).sum()), "abnormal": int((labels == 1).sum())}
        return counts

    def dataset(self, split: str, augment: bool) -> MuraImageDataset:
        frame = self.split_frame(split)
        if frame.empty:
            raise MuraDataError(_empty_split_message(split, self.root, self.body_parts))
        cache = self.image_cache(split) if self.cache else None
        if self.augment_on_device:  # uint8 out, resized: the model augments and normalises on its device
            transform = None if cache is not None else ResizeSquare(self.image_size)
        else:
            transform = build_transforms(self.recipe, self.image_size, self.channels, train=augment, resize=cache is None)
        return MuraImageDataset(frame, self.root, transform, on_bad_image=self.on_bad_image, cache=cache)

    def image_cache(self, split: str) -> ImageCache:
        if split not in self._caches:
            self._caches[split] = open_or_build_cache(
                self.root, self.split_frame(split)["path"].tolist(), self.image_size, self.cache_dir,
                workers=max(1, self.num_workers),
            )
        return self._caches[split]

    def dataloader(self, split: str, shuffle: bool | None = None, train_transforms: bool | None = None) -> DataLoader:
        """Batches of one split; by default the train split is shuffled and augmented, the others are not."""
        is_train = split == "train"
        augment = is_train if train_transforms is None else train_transforms
        dataset = self.dataset(split, augment)
        sampler = SeededSampler(len(dataset), self.seed, shuffle=is_train if shuffle is None else shuffle, augment=augment)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if is_train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_samples,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def _require_setup(self) -> None:
        if self.splits is None:
            raise RuntimeError("MuraDataModule.setup() has not run yet")


def _empty_split_message(split: str, root: str | None, body_parts: list[str]) -> str:
    if split == "test":
        return (
            f"{root}: there is nothing to test on: valid_image_paths.csv lists no images for {body_parts} "
            "(the official valid split is the test set)"
        )
    if split == "val":
        return f"{root}: the validation split is empty; raise data.val_fraction (now too small for {body_parts})"
    return f"{root}: the {split} split has no images for {body_parts}"

