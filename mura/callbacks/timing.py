"""Where a run's time goes before and between the steady epochs: start to the first optimizer step, each epoch's
training, validation, figures (Grad-CAM galleries, learning curves) and the rest (checkpoints, early stopping),
and after fit the test, the final gallery and the reports. `mura.train` writes it to <run>/timings.json and logs a line; `python -m mura.bench runs=[startup]` reads it (issue
#11's time-to-first-result goals)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch

_process_start_claimed = False  # the process start is the first run's origin only (see RunTimings)
_run_started: float | None = None  # when mura.train's train() began (note_run_start), for a later run's origin


def note_run_start() -> None:
    """Mark the start of a training run (mura.train calls it first): a later run of the same process counts from
    here, its data module's and model's construction included, not from when its callbacks were made."""
    global _run_started
    _run_started = time.perf_counter()


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


def _overlap(start: float, end: float, windows: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(end, window_end) - max(start, window_start)) for window_start, window_end in windows)


class RunTimings(pl.Callback):
    """Marks of one fit, on the monotonic clock. The origin is the process start for the first run of a process
    (`python -m mura.train`); a later run in the same process (a Hydra multirun's next job, a notebook, a test)
    counts from its own start (note_run_start, else when its callbacks were made), so it is not charged with the
    runs before it.

    An epoch runs from its training start to the next one's (or the fit's end): `train_s` (training batches),
    `val_s` (validation loops, their metrics included, figures drawn inside them excluded), `figures_s` (galleries and
    curves drawn in the epoch, wherever their callbacks sit) and `other_s` (the rest: checkpoints, early stopping).
    The first step is timed to its end on the device (one synchronisation, once)."""

    def __init__(self) -> None:
        global _process_start_claimed, _run_started
        now_wall, now = time.time(), time.perf_counter()
        process_start = None if _process_start_claimed else process_start_time()
        _process_start_claimed = True
        run_start, _run_started = _run_started or now, None  # each mark serves one run
        self.origin = "process start" if process_start is not None else "run start"
        self.origin_time = now - (now_wall - process_start) if process_start is not None else run_start
        # Marks on the way to the first step (to_first_step): made, data set up, fit started, training started.
        self.created = now
        self.setup_end: float | None = None
        self.fit_start: float | None = None
        self.train_start: float | None = None
        self.first_step_end: float | None = None
        self.epochs: list[dict] = []
        self.drawings: list[dict] = []
        self.after_fit: dict[str, float] = {}  # seconds of each step after fit (timed_after_fit)
        self._epoch: dict | None = None

    def record_drawing(self, kind: str, name: str, epoch: int, started: float, ended: float) -> None:
        """A figure drawn by another callback (perf_counter times): kind `gallery` or `curves`."""
        self.drawings.append({"kind": kind, "name": name, "epoch": epoch, "started": started, "ended": ended})

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # Lightning calls it right after the data module's setup (index, checks, split, cache)
            self.setup_end = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_start = time.perf_counter()  # after the sanity check, before the training workers start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self._close_epoch(now)
        self._epoch = {"epoch": trainer.current_epoch, "start": now, "train_end": None, "validations": [], "open_val": None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first_step_end is None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.first_step_end = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._epoch["open_val"] = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch is not None and self._epoch["open_val"] is not None:
            self._epoch["validations"].append((self._epoch["open_val"], time.perf_counter()))
            self._epoch["open_val"] = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch is not None:
            self._epoch["train_end"] = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch(time.perf_counter())

    def _close_epoch(self, end: float) -> None:
        epoch, self._epoch = self._epoch, None
        if epoch is None:
            return
        validations = epoch["validations"]
        # Training batches end where the first validation starts (Lightning validates at the epoch's end), or at the
        # epoch-end hook; validation inside the epoch (val_check_interval < 1) is taken out of training.
        train_end = validations[-1][0] if validations else (epoch["train_end"] or end)
        figures = [drawing for drawing in self.drawings if epoch["start"] <= drawing["started"] < end]
        in_validation = sum(_overlap(drawing["started"], drawing["ended"], validations) for drawing in figures)
        validation = sum(stop - start for start, stop in validations)
        train = train_end - epoch["start"] - sum(stop - start for start, stop in validations[:-1])
        figures_s = sum(drawing["ended"] - drawing["started"] for drawing in figures)
        total = end - epoch["start"]
        self.epochs.append({
            "epoch": epoch["epoch"],
            "train_s": round(train, 3),
            "val_s": round(validation - in_validation, 3) if validations else None,
            "figures_s": round(figures_s, 3),
            "other_s": round(max(total - train - (validation - in_validation) - figures_s, 0.0), 3),
            "total_s": round(total, 3),
        })

    def _since_origin(self, mark: float | None) -> float | None:
        return None if mark is None else round(mark - self.origin_time, 3)

    def to_first_step(self) -> dict[str, float] | None:
        """Where the time to the first step went, in order (seconds; they add up to first_step_s):
        - the interpreter, imports and config (a later run of a process: none) and the data module's and model's
          construction;
        - the loggers', callbacks' and Trainer's construction, the device's start (CUDA), the trackers' runs, and
          the data module's setup (index, image checks, split, cache);
        - the model's setup (loss weights), its move to the device, the optimizer, a resumed checkpoint;
        - the fit-start hooks (the gallery's studies) and the sanity check (a validation of two batches: its workers'
          start, cuDNN's first searches);
        - the first training step: the training workers' start, the first batch, the step (cuDNN's searches for the
          backward pass)."""
        if None in (self.setup_end, self.fit_start, self.train_start, self.first_step_end):
            return None  # not trained (resumed at its last epoch, say)
        marks = [("imports, config, data module and model", self.origin_time, self.created),
                 ("Trainer, device, trackers and data setup (index, checks, split, cache)", self.created, self.setup_end),
                 ("model setup, to the device, optimizer", self.setup_end, self.fit_start),
                 ("fit-start hooks and the sanity check", self.fit_start, self.train_start),
                 ("first training step (workers, first batch, step)", self.train_start, self.first_step_end)]
        return {name: round(end - start, 3) for name, start, end in marks}

    def summary(self) -> dict:
        """timings.json: marks as seconds since the origin, each epoch, each figure."""
        first = self.epochs[0] if self.epochs else None
        later = [epoch["train_s"] for epoch in self.epochs[1:]]
        steady = round(statistics.median(later), 3) if later else None  # a mean of two middle ones: 7.291499999999999
        galleries = [drawing["ended"] - drawing["started"] for drawing in self.drawings if drawing["kind"] == "gallery"]
        return {
            "origin": self.origin,
            "fit_start_s": self._since_origin(self.fit_start),
            "first_step_s": self._since_origin(self.first_step_end),
            "to_first_step": self.to_first_step(),
            "first_epoch": first["epoch"] if first else None,
            "first_epoch_train_s": first["train_s"] if first else None,
            "steady_epoch_train_s": steady,
            "first_epoch_vs_steady": round(first["train_s"] / steady, 2) if first and steady else None,
            "first_epoch_extra_s": round(first["train_s"] - steady, 3) if first and steady is not None else None,
            "first_gallery_s": round(galleries[0], 3) if galleries else None,
            "later_gallery_s": round(statistics.median(galleries[1:]), 3) if len(galleries) > 1 else None,
            "epochs": self.epochs,
            "figures": [{"kind": drawing["kind"], "name": drawing["name"], "epoch": drawing["epoch"],
                         "at_s": self._since_origin(drawing["started"]),
                         "seconds": round(drawing["ended"] - drawing["started"], 3)} for drawing in self.drawings],
            "after_fit": self.after_fit,
        }

    def describe(self) -> str:
        """The log line: seconds to 0.01 s for people (timings.json keeps milliseconds)."""
        summary = self.summary()
        first_step = summary["first_step_s"]
        parts = [f"first optimizer step {_seconds(first_step)} after {summary['origin']}" if first_step is not None
                 else "no optimizer step"]  # resumed at its last epoch
        if summary["first_epoch_vs_steady"] is not None:
            parts.append(f"epoch {summary['first_epoch']} trained in {_seconds(summary['first_epoch_train_s'])} against "
                         f"{_seconds(summary['steady_epoch_train_s'])} for a later one ({summary['first_epoch_vs_steady']}x)")
        if summary["first_gallery_s"] is not None:
            parts.append(f"Grad-CAM galleries {_seconds(summary['first_gallery_s'])} first"
                         + (f", {_seconds(summary['later_gallery_s'])} later" if summary["later_gallery_s"] is not None else ""))
        if self.after_fit:
            parts.append("after fit " + ", ".join(f"{name.removesuffix('_s').replace('_', ' ')} {_seconds(seconds)}"
                                                  for name, seconds in self.after_fit.items()))
        return "; ".join(parts)


def _seconds(value: float) -> str:
    return f"{value:.2f} s"


def run_timings(trainer: pl.Trainer) -> list[RunTimings]:
    """The run's RunTimings callbacks (none or one)."""
    return [callback for callback in trainer.callbacks if isinstance(callback, RunTimings)]


def record_drawing(trainer: pl.Trainer, kind: str, name: str, started: float) -> None:
    """Tell the run's RunTimings (if any) that a figure was drawn from `started` (perf_counter) until now."""
    ended = time.perf_counter()
    for timings in run_timings(trainer):
        timings.record_drawing(kind, name, trainer.current_epoch, started, ended)


@contextmanager
def timed_after_fit(trainer: pl.Trainer, name: str) -> Iterator[None]:
    """Time a step after fit (the test, the final gallery, the reports) into the run's timings as `<name>_s`."""
    started = time.perf_counter()
    yield
    for timings in run_timings(trainer):
        timings.after_fit[f"{name}_s"] = round(time.perf_counter() - started, 3)
