"""Pooling a study's views into one study logit inside the network (multiple-instance learning).

MURA labels studies: a study is abnormal when any of its views shows it. The paper's recipe trains every view on its
study's label and averages the view probabilities at the end (`mean`, our default: a view model). A study model
embeds each view with the shared backbone and pools inside the network, trained on the study label:
- `max`: the study logit is its most abnormal view's logit (the "any view" rule of MURA's labels);
- `attention`: gated attention over the views' embeddings (Ilse, Tomczak & Welling 2018, Attention-based Deep
  Multiple Instance Learning, ICML): a weight per view, softmax over the study's views, the weighted mean embedding
  through the backbone's own classifier head.

Views travel flat (N views of B studies, `view_study` naming each view's study and `view_position` its place in it),
so the backbone runs on real views only; the pooling lays the per-view values out as B x V (V: the batch's largest
study) with a mask, and padding never reaches a study's output.
"""

from __future__ import annotations

import torch
from torch import nn

from mura.data.study_batches import STUDY_MODELS


def padded(values: torch.Tensor, view_study: torch.Tensor, view_position: torch.Tensor, studies: int,
           fill: float = 0.0, views: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B x V x ... values, B x V mask) from N x ... per-view values; padding holds `fill`. `views` (V, the largest
    study's) as the batch says it on the host; without it, read from `view_position` (a device read: a wait on a GPU)."""
    if views is None:
        views = int(view_position.max()) + 1 if len(view_position) else 1
    out = values.new_full((studies, views, *values.shape[1:]), fill)
    out[view_study, view_position] = values
    mask = torch.zeros(studies, views, dtype=torch.bool, device=values.device)
    mask[view_study, view_position] = True
    return out, mask


class StudyPooling(nn.Module):
    """Per-view embeddings (N x D) -> study logits (B) and each view's weight in its study (N: attention's weights,
    for max 1 on the view that gave the study logit, the first of tied ones, and 0 elsewhere). `head` is the backbone's own classifier head,
    passed at each call (it belongs to the backbone: one set of weights, saved once)."""

    def __init__(self, kind: str, embedding_dim: int, attention_dim: int = 128):
        super().__init__()
        if kind not in STUDY_MODELS:
            raise ValueError(f"study pooling must be one of {STUDY_MODELS} for a study model, not {kind!r}")
        self.kind = kind
        if kind == "attention":
            self.attention_value = nn.Linear(embedding_dim, attention_dim)  # V in Ilse et al.
            self.attention_gate = nn.Linear(embedding_dim, attention_dim)   # U
            self.attention_weight = nn.Linear(attention_dim, 1)             # w

    def forward(self, embeddings: torch.Tensor, view_study: torch.Tensor, view_position: torch.Tensor, studies: int,
                head: nn.Module, views: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if views is None:  # once for the batch, not at each layout below
            views = int(view_position.max()) + 1 if len(view_position) else 1
        if self.kind == "max":
            view_logits = head(embeddings).squeeze(1)
            grid, mask = padded(view_logits, view_study, view_position, studies, float("-inf"), views)
            study_logits, chosen = grid.max(dim=1)
            # One view each, the first of tied ones: weights that sum to 1 whatever the ties (bf16 makes them likelier)
            weights = (view_position == chosen[view_study]).to(embeddings.dtype)
            return study_logits, weights
        scores = self.attention_weight(torch.tanh(self.attention_value(embeddings))
                                       * torch.sigmoid(self.attention_gate(embeddings))).squeeze(1)
        grid, mask = padded(scores, view_study, view_position, studies, float("-inf"), views)
        attention = torch.softmax(grid, dim=1).masked_fill(~mask, 0.0)  # B x V, 0 on padding
        embedded, _ = padded(embeddings, view_study, view_position, studies, views=views)
        pooled = (attention.unsqueeze(2) * embedded).sum(dim=1)
        return head(pooled).squeeze(1), attention[view_study, view_position]

    def single_study(self, embeddings: torch.Tensor, head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """One study's (logit (1), each view's weight (V)) from its V views' embeddings, without the batch layout:
        no shape depends on the values, so an exported graph keeps V dynamic. The same numbers as `forward` on a
        batch of that one study."""
        if self.kind == "max":
            view_logits = head(embeddings).squeeze(1)
            logit, chosen = view_logits.max(dim=0, keepdim=True)
            positions = torch.cumsum(torch.ones_like(view_logits), dim=0) - 1  # 0..V-1, V dynamic in a traced graph
            return logit, (positions == chosen).to(embeddings.dtype)
        scores = self.attention_weight(torch.tanh(self.attention_value(embeddings))
                                       * torch.sigmoid(self.attention_gate(embeddings))).squeeze(1)
        attention = torch.softmax(scores, dim=0)
        pooled = (attention.unsqueeze(1) * embeddings).sum(dim=0, keepdim=True)
        return head(pooled).squeeze(1), attention
