"""Keeps a training job's math threads at its share of the cores while other mura jobs start and end beside it."""

from __future__ import annotations

import pytorch_lightning as pl

from mura.app.cpu_share import current_cpu_share

CHECK_EVERY_N_BATCHES = 20  # a directory listing: tens of microseconds, against a step of tens of milliseconds or more


class KeepCpuShare(pl.Callback):
    """Applies `mura.app.cpu_share` again at each stage's start and every CHECK_EVERY_N_BATCHES training batches: jobs
    of a sweep start within seconds of each other, so the share a job took at its start is often not its share a
    minute later. Does nothing in a process no command started (a notebook, a test calling train())."""

    def _apply(self) -> None:
        share = current_cpu_share()
        if share is not None:
            share.apply()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx and batch_idx % CHECK_EVERY_N_BATCHES == 0:
            self._apply()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply()
