"""Accumulate per-image predictions across batches, workers and processes, exactly once per image.

A torchmetrics `Metric` with "cat" states, so under DDP `compute()` gathers every process's rows. The
DistributedSampler pads the last batches by repeating images; rows are de-duplicated by the global image
index, so no image (and no study) is counted twice and none is dropped.
"""

from __future__ import annotations

import pandas as pd
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mura.data.index import BODY_PARTS

FIELDS = ("image_idx", "study_idx", "patient_idx", "body_part_idx", "label", "logit")


class PredictionStore(Metric):
    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in FIELDS:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, image_idx, study_idx, patient_idx, body_part_idx, label, logit) -> None:  # noqa: D102
        self.image_idx.append(torch.as_tensor(image_idx, device=self.device).long())
        self.study_idx.append(torch.as_tensor(study_idx, device=self.device).long())
        self.patient_idx.append(torch.as_tensor(patient_idx, device=self.device).long())
        self.body_part_idx.append(torch.as_tensor(body_part_idx, device=self.device).long())
        self.label.append(label.detach().float())
        self.logit.append(logit.detach().float())

    def compute(self) -> dict[str, torch.Tensor]:
        if not self.has_rows:
            return {name: torch.empty(0) for name in FIELDS}
        columns = {name: dim_zero_cat(getattr(self, name)) for name in FIELDS}
        _, first = first_occurrence(columns["image_idx"])
        return {name: values[first] for name, values in columns.items()}

    @property
    def has_rows(self) -> bool:
        # A list of batch tensors before syncing; one gathered tensor after (under DDP).
        state = self.image_idx
        return state.numel() > 0 if isinstance(state, torch.Tensor) else len(state) > 0


def first_occurrence(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys and, for each, the position of its first occurrence."""
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    positions = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(unique),), len(keys), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


def predictions_frame(columns: dict[str, torch.Tensor]) -> pd.DataFrame:
    """The image table the metrics read: image_idx, study_idx, patient, body_part, label, logit, probability."""
    # torchmetrics' compute squeezes a one-element state to a 0-d tensor: a split of one image had no list to read
    columns = {name: value.reshape(-1) for name, value in columns.items()}
    logits = columns["logit"].cpu().double()
    return pd.DataFrame(
        {
            "image_idx": columns["image_idx"].cpu().numpy(),
            "study_idx": columns["study_idx"].cpu().numpy(),
            "patient": columns["patient_idx"].cpu().numpy(),
            "body_part": [BODY_PARTS[i] for i in columns["body_part_idx"].cpu().tolist()],
            "label": columns["label"].cpu().numpy().astype(int),
            "logit": logits.numpy(),
            "probability": torch.sigmoid(logits).numpy(),
        }
    )
