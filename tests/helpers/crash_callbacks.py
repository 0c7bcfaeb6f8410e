"""Callbacks that simulate failures, injected into real command-line runs through Hydra (`+callbacks.x=...`)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """SIGKILL this process (no cleanup, as a power cut or the OOM killer) when training reaches `step`."""

    def __init__(self, step: int, sig: str = "SIGKILL"):
        self.step = step
        self.signal = getattr(signal, sig)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)
