"""The paper's weighted binary cross-entropy, with weights per study type (body part).

Rajpurkar et al.: L = -w_T1 * y * log p - w_T0 * (1 - y) * log(1 - p), with w_T1 = N_T / (A_T + N_T) and
w_T0 = A_T / (A_T + N_T) from the normal (N) and abnormal (A) image counts of body part T in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mura.data.audit import paper_loss_weights


def weighted_bce_with_logits(
    logits: torch.Tensor, labels: torch.Tensor, w_abnormal: torch.Tensor, w_normal: torch.Tensor
) -> torch.Tensor:
    """Mean weighted BCE. softplus(-x) = -log sigmoid(x) and softplus(x) = -log(1 - sigmoid(x)), exactly and
    without overflow for large |x|, which log(sigmoid(x)) is not."""
    logits = logits.float()
    labels = labels.float()
    per_image = w_abnormal * labels * F.softplus(-logits) + w_normal * (1 - labels) * F.softplus(logits)
    return per_image.mean()


class StudyTypeWeightedBCE(nn.Module):
    """Weighted BCE whose weights are looked up by body-part index; buffers, so checkpoints keep them."""

    def __init__(self, body_parts: list[str] | tuple[str, ...], weighted: bool = True):
        super().__init__()
        self.body_parts = list(body_parts)
        self.weighted = weighted
        # Plain BCE (the seed's loss) is weight 1 for both classes.
        self.register_buffer("w_abnormal", torch.ones(len(body_parts)))
        self.register_buffer("w_normal", torch.ones(len(body_parts)))

    def set_weights_from_counts(self, counts: dict[str, dict[str, int]]) -> None:
        if not self.weighted:
            return
        for position, body_part in enumerate(self.body_parts):
            weights = paper_loss_weights(counts[body_part]["normal"], counts[body_part]["abnormal"])
            self.w_abnormal[position] = weights["w_abnormal"]
            self.w_normal[position] = weights["w_normal"]

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, body_part_idx: torch.Tensor) -> torch.Tensor:
        return weighted_bce_with_logits(logits, labels, self.w_abnormal[body_part_idx], self.w_normal[body_part_idx])
