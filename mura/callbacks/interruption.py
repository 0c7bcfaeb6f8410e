"""Save the state to resume from when training is interrupted (SIGTERM, Ctrl-C, a crash), and only then."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.callbacks import OnExceptionCheckpoint

from mura.data.datamodule import resume_position
from mura.models.loss_watch import NonFiniteLossError

log = logging.getLogger(__name__)


class InterruptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's on-exception checkpoint, except where its state is not worth resuming from, since
    `ckpt_path=last` takes the newest of it and last.ckpt: before the first optimizer step (an error found while
    setting up: data.root unset, an unreadable image) and after a NaN or infinite loss (the weights may be NaN;
    last.ckpt, from before it, is what to resume from with a lower learning rate)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resumed = False  # from the fit's start to its first batch, when it resumes from a checkpoint

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resumed = trainer.ckpt_path is not None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self._resumed:
            # The step the loggers write (the CSV's step column, the epoch's validation row). Restarting inside an
            # epoch, Lightning adds one to it, as if the checkpoint had been saved inside on_train_batch_end before its
            # count moved on; one saved by an interruption (here, in a step or between steps) counted it already, so
            # every row the resumed run logged was a step late. With one optimizer it is the optimizer step count.
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
            self._resumed = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0 or isinstance(exception, NonFiniteLossError):
            log.info("no %s written: %s", self.ckpt_path,
                     "nothing was trained yet" if trainer.global_step == 0 else "the weights may not be finite")
            return
        super().on_exception(trainer, pl_module, exception)
        if trainer.is_global_zero:
            sweep_job = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
            log.warning(resume_advice(self.ckpt_path, *resume_position(trainer), sweep_job=sweep_job))


def resume_advice(saved: str, epoch: int, batches_done: int, sweep_job: bool = False) -> str:
    """What a user needs after an interruption: where the state is, how to resume, and where the resumed run goes on
    (`resume_position`: the epoch and the batches of it already trained)."""
    run_dir = Path(saved).parent.parent
    command = ("this sweep job's own command, without -m (its overrides are in .hydra/overrides.yaml)," if sweep_job
               else "the same command")
    advice = (f"interrupted: {saved} holds the state. Resume with {command} plus hydra.run.dir={run_dir} ckpt_path=last "
              f"(it takes that file); it goes on with ")
    if batches_done:
        return advice + (f"batch {batches_done + 1} of epoch {epoch}, and that epoch's training metrics will cover the "
                         "batches after the resume.")
    return advice + f"epoch {epoch}."
