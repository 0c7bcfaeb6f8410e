"""Save the state to resume from when training is interrupted (SIGTERM, Ctrl-C, a crash), and only then."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import OnExceptionCheckpoint

log = logging.getLogger(__name__)


class InterruptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's on-exception checkpoint, except before the first optimizer step: an error found while setting
    up (data.root unset, an unreadable image) would otherwise leave `interrupted.ckpt` of an untrained model,
    which a later `ckpt_path=last` run would resume from."""

    def on_exception(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        if trainer.global_step == 0:
            log.info("stopped before the first training step: no %s written", self.ckpt_path)
            return
        super().on_exception(trainer, *args, **kwargs)
