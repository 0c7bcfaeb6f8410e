"""Exponential moving average of the weights that stands in for the network only once it holds an average."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn


class EMAOnceUpdated(EMAWeightAveraging):
    """Lightning's `EMAWeightAveraging`, with four corrections.

    - Until the first update (`update_starting_at_step` > 0), the averaged copy is the initial, untrained network:
      Lightning swapped it in at every validation, so the validation metrics, best.ckpt and, for a run shorter than the
      start step, the tested model were the random initial network's. Here the live weights are validated, saved as the
      checkpoint's weights and kept at the end until the average has been updated once.
    - The averaged copy is made in `setup`, before the strategy moves the model to its device: it sat on the CPU of a
      GPU run and every step copied every weight across. It follows the model at the start of the fit.
    - A checkpoint written in the middle of validation (an interruption there) held the two weight sets the wrong way
      round, the average as the live weights; it is written as anywhere else.
    - Testing or validating a checkpoint scores the weights its state_dict holds (the average, once updated): the
      callback left over from fitting neither loads other weights over them nor warns that the checkpoint "was not
      created with WeightAveraging".
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._swapped = False  # the module holds the average (during validation), the averaged copy the live weights

    def has_average(self) -> bool:
        """Whether the averaged copy has been updated at least once (before that it is the initial network)."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._device is None and self._average_model is not None:
            self._average_model.to(pl_module.device)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only while fitting: trainer.validate(ckpt_path=...) after a fit scores the checkpoint's weights, not the
        # average this callback kept from the fit
        self._swapped = self.has_average() and trainer.state.fn == TrainerFn.FITTING
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.has_average():
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._swapped:  # Lightning's hook took the module's weights (now the average) for the live ones, and the
            # averaged copy's (now the live weights) for the average
            checkpoint["state_dict"], checkpoint["current_model_state"] = (
                checkpoint["current_model_state"], checkpoint["state_dict"])
        if self._average_model is not None and not self.has_average():
            checkpoint["state_dict"] = checkpoint["current_model_state"]  # no average yet: the live weights

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
