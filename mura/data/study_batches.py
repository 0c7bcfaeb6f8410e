"""Batches of whole studies for study models (model.study_pooling=max|attention, mura.models.study_pooling).

Item i of a `MuraStudyDataset` is study i of a split: its views, each read and augmented by the split's image dataset
with a seed of its own (drawn from the study's seed, so order and augmentation stay functions of (seed, epoch, index)
as for view batches, mura.data.sampling). `collate_studies` lays them out flat: N views of B studies, `view_study`
naming each view's study and `view_position` its place in it, study-level label and ids, and per-view image ids,
paths and augmentation seeds; the model pads to the batch's largest study only after the backbone.

A training study with more than `max_views` views gives a different draw of `max_views` of them each epoch (MURA's
studies hold 1 to 11 views, most of them 1 to 4); evaluation scores every view.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import Dataset

from mura.data.dataset import MuraImageDataset
from mura.data.sampling import sample_seed

STUDY_FIELDS = ("label", "study_idx", "patient_idx", "body_part_idx")
# model.study_pooling: `mean` is the view model (image batches), the others study models (batches of whole studies,
# mura.models.study_pooling).
STUDY_POOLINGS = ("mean", "max", "attention")
STUDY_MODELS = ("max", "attention")


class MuraStudyDataset(Dataset):
    """Studies of one split; `views` reads its images, one row of `table` (the split's image table, in the same
    order) each."""

    def __init__(self, views: MuraImageDataset, table: pd.DataFrame, max_views: int | None = None):
        if max_views is not None and max_views < 1:
            raise ValueError(f"data.study_max_views must be at least 1 (or null: every view), not {max_views}")
        self.views = views
        self.max_views = max_views
        positions = pd.Series(range(len(table)), index=table["study_idx"].to_numpy())
        self.members = [group.tolist() for _, group in positions.groupby(level=0, sort=True)]

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, key: int | tuple[int, int | None]) -> list[dict]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        rows = self.members[index]
        if seed is None:  # evaluation: every view, unaugmented
            return [self.views[row] for row in rows]
        if self.max_views is not None and len(rows) > self.max_views:
            generator = torch.Generator().manual_seed(sample_seed(seed, 0, -1))
            chosen = torch.randperm(len(rows), generator=generator)[: self.max_views].sort().values.tolist()
            rows = [rows[position] for position in chosen]
        return [self.views[(row, sample_seed(seed, 1, row))] for row in rows]


def collate_studies(studies: list[list[dict]]) -> dict:
    """Flat views of the studies with at least one readable view; unreadable views travel as `skipped` paths (a
    study without a readable view is left out whole, its paths counted there)."""
    views, view_study, view_position, study_rows, skipped = [], [], [], [], []
    for samples in studies:
        good = [sample for sample in samples if "skipped" not in sample]
        skipped += [sample["skipped"] for sample in samples if "skipped" in sample]
        if not good:
            continue
        for position, sample in enumerate(good):
            views.append(sample)
            view_study.append(len(study_rows))
            view_position.append(position)
        study_rows.append(good[0])
    if not views:
        return {"image": None, "skipped": skipped}
    batch = {field: torch.as_tensor([row[field] for row in study_rows]) for field in STUDY_FIELDS if field != "label"}
    batch["label"] = torch.stack([row["label"] for row in study_rows])
    batch.update({
        "image": torch.stack([sample["image"] for sample in views]),
        "image_idx": torch.as_tensor([sample["image_idx"] for sample in views]),
        "augment_seed": torch.as_tensor([sample["augment_seed"] for sample in views]),
        "path": [sample["path"] for sample in views],
        "view_study": torch.as_tensor(view_study),
        "view_position": torch.as_tensor(view_position),
        # The largest study's view count, a host int: the model lays views out by it without reading the device
        "views": max(view_position) + 1,
        "skipped": skipped,
    })
    return batch


def per_view(batch: dict, field: str) -> torch.Tensor:
    """A study-level field (label, study_idx, ...) with one value per view of the batch; an image batch's as it is."""
    return batch[field][batch["view_study"]] if "view_study" in batch else batch[field]
