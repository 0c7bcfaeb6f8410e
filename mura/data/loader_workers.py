"""Stopping the data loaders' worker processes of a trainer run that ended in an exception, at once
(MuraDataModule.on_exception)."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter


def stop_loader_workers(trainer: pl.Trainer) -> None:
    """Lightning leaves the live iterator of a persistent-workers loader to the garbage collector when a fit ends in an
    exception, and torch's clean-up from there waits 5 s for each worker, which does not exit then
    (pytorch/pytorch#81794): 10 s of whatever runs next in the process (a notebook's next cell, a sweep's next job).
    Stopped here, while the loaders are at hand, the workers exit at once."""
    for loaders in (trainer.train_dataloader, trainer.val_dataloaders, trainer.test_dataloaders):
        for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
            iterator = getattr(loader, "_iterator", None)
            if isinstance(iterator, _MultiProcessingDataLoaderIter):
                iterator._shutdown_workers()  # what Lightning does with them when a fit ends normally
                loader._iterator = None
