"""Learning-rate schedules stepped every optimizer step (model.scheduler_interval: step)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float | None = 1.0,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up from ~0 to the optimiser's lr over `warmup_steps` (or `warmup_epochs` epochs), then cosine
    decay to `min_lr_ratio` x lr at `total_steps`: the usual recipe for training from scratch, where full-size
    Adam steps on random weights can blow up (lr 1e-3 diverged repeatedly on real humerus, issue #11)."""
    if warmup_steps is None:
        warmup_steps = round((warmup_epochs or 0.0) * steps_per_epoch)
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
