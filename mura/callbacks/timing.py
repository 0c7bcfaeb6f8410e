"""Where a run's time goes before and between the steady epochs: process start to the first optimizer step, each
epoch's training and validation, each Grad-CAM gallery. `mura.train` writes it to <run>/timings.json and logs a
line; `python -m mura.bench runs=[startup]` reads it (issue #11's time-to-first-result goals)."""

from __future__ import annotations

import logging
import os
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def process_start_time() -> float | None:
    """The wall-clock time this process started, from Linux's /proc (10 ms resolution); None elsewhere. Counting from
    here, not from our first import, includes the interpreter's start and every import, as a user waits for them."""
    try:
        # Field 22 (starttime, in clock ticks since boot) is the 20th after the ")" that ends the command name.
        started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))


class RunTimings(pl.Callback):
    """Wall-clock marks of one fit. The first step is timed to its end on the device (one synchronisation, once);
    an epoch's validation time excludes the Grad-CAM gallery drawn inside it, which is reported on its own."""

    def __init__(self) -> None:
        self.process_start = process_start_time()
        self.fit_start: float | None = None
        self.first_step_end: float | None = None
        self.epochs: list[dict] = []
        self.galleries: list[dict] = []
        self._marks: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_start = time.time()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._marks = {"train_start": time.time()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first_step_end is None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.first_step_end = time.time()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._marks["val_start"] = time.time()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val_start" in self._marks:
            self._marks["val_end"] = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "train_start" not in self._marks:  # resumed at an epoch's end: nothing of this epoch ran here
            return
        end = time.time()
        marks = self._marks
        gallery = sum(entry["seconds"] for entry in self.galleries if entry["epoch"] == trainer.current_epoch)
        self.epochs.append({
            "epoch": trainer.current_epoch,
            "train_s": round(marks.get("val_start", end) - marks["train_start"], 3),
            "val_s": round(marks["val_end"] - marks["val_start"] - gallery, 3) if "val_end" in marks else None,
            "gallery_s": round(gallery, 3),
            "total_s": round(end - marks["train_start"], 3),
        })

    def record_gallery(self, folder: str, epoch: int, seconds: float) -> None:
        self.galleries.append({"gallery": folder, "epoch": epoch, "seconds": round(seconds, 3)})

    def summary(self) -> dict:
        """timings.json: absolute marks as seconds since the process started (or since fit started, off Linux)."""
        origin = self.process_start if self.process_start is not None else self.fit_start

        def since(mark: float | None) -> float | None:
            return None if mark is None or origin is None else round(mark - origin, 3)

        later = [epoch["train_s"] for epoch in self.epochs[1:]]
        steady = statistics.median(later) if later else None
        epoch0 = self.epochs[0]["train_s"] if self.epochs else None
        galleries = [entry["seconds"] for entry in self.galleries]
        return {
            "origin": "process start" if self.process_start is not None else "fit start",
            "fit_start_s": since(self.fit_start),
            "first_step_s": since(self.first_step_end),
            "first_epoch_train_s": epoch0,
            "steady_epoch_train_s": steady,
            "first_epoch_vs_steady": round(epoch0 / steady, 2) if epoch0 is not None and steady else None,
            "first_gallery_s": galleries[0] if galleries else None,
            "later_gallery_s": round(statistics.median(galleries[1:]), 3) if len(galleries) > 1 else None,
            "epochs": self.epochs,
            "galleries": self.galleries,
        }

    def describe(self) -> str:
        summary = self.summary()
        parts = [f"first optimizer step {summary['first_step_s']} s after {summary['origin']}"]
        if summary["first_epoch_vs_steady"] is not None:
            parts.append(f"epoch 0 trained in {summary['first_epoch_train_s']} s against {summary['steady_epoch_train_s']} s "
                         f"for a later one ({summary['first_epoch_vs_steady']}x)")
        if summary["first_gallery_s"] is not None:
            parts.append(f"Grad-CAM galleries {summary['first_gallery_s']} s first"
                         + (f", {summary['later_gallery_s']} s later" if summary["later_gallery_s"] is not None else ""))
        return "; ".join(parts)
