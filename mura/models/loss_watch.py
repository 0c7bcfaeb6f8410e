"""A non-finite training loss stops the run, named by step and image, without making any step wait for the GPU."""

from __future__ import annotations

import math

import torch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: stop with where it happened, instead of training on garbage."""


class DeferredLossCheck:
    """Each step's loss is copied to the host as the GPU gets to it and checked one step later (or at the epoch's
    end). Reading the device tensor instead (`.item()`, `if tensor`, a progress bar showing it) waits for everything
    queued before the read, the previous step's backward pass and optimizer step included, and leaves the GPU idle
    while the next step is launched. The copy has its own event, which completes once the forward pass that made the
    loss has run: long before the next step needs it."""

    def __init__(self) -> None:
        self._pending: tuple[torch.Tensor, torch.cuda.Event | None, str] | None = None
        self.last_value: float | None = None  # the last loss checked: what the progress bar shows

    def defer(self, loss: torch.Tensor, where: str) -> None:
        """`where` completes "loss is nan at ..." in the error."""
        value, ready = loss.detach(), None
        if value.is_cuda:
            host = torch.empty((), dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            value = host
        self._pending = (value, ready, where)

    def check(self) -> None:
        """Raise NonFiniteLossError if the deferred loss is not finite; a no-op when none is pending."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        value, ready, where = pending
        if ready is not None:
            ready.synchronize()
        loss = float(value)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss} at {where}; lower model.optimizer.lr or check that image")
        self.last_value = loss
