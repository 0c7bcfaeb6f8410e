"""Save the state to resume from when training is interrupted (SIGTERM, Ctrl-C, a crash), and only then."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import OnExceptionCheckpoint

from mura.models.loss_watch import NonFiniteLossError

log = logging.getLogger(__name__)


class InterruptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's on-exception checkpoint, except where its state is not worth resuming from, since
    `ckpt_path=last` takes the newest of it and last.ckpt: before the first optimizer step (an error found while
    setting up: data.root unset, an unreadable image) and after a NaN or infinite loss (the weights may be NaN;
    last.ckpt, from before it, is what to resume from with a lower learning rate)."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0 or isinstance(exception, NonFiniteLossError):
            log.info("no %s written: %s", self.ckpt_path,
                     "nothing was trained yet" if trainer.global_step == 0 else "the weights may not be finite")
            return
        super().on_exception(trainer, pl_module, exception)
