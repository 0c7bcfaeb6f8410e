"""Save the state to resume from when training is interrupted (SIGTERM, Ctrl-C, a crash), and only then."""

from __future__ import annotations

import logging
from pathlib import Path

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
        if trainer.is_global_zero:
            log.warning(resume_advice(self.ckpt_path, trainer.current_epoch,
                                      trainer.fit_loop.epoch_loop.batch_progress.current.completed))


def resume_advice(saved: str, epoch: int, batches_done: int) -> str:
    """What a user needs after an interruption: where the state is and how to resume."""
    folder = Path(saved).parent
    advice = (f"interrupted in epoch {epoch} after {batches_done} of its batches: {saved} holds the state. Resume with "
              f"the same command plus hydra.run.dir={folder.parent} ckpt_path=last (it takes that file)")
    if batches_done:
        # mura.data.datamodule.resume_position: the loader restarts at the first batch not trained on
        advice += (f"; it goes on with batch {batches_done + 1} of epoch {epoch}, and that epoch's training metrics cover "
                   "the batches after the resume")
    return advice + "."
