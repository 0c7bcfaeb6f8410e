"""The bench's `profile` measurement: where a steady-state training step of `Trainer.fit` goes, phase by phase.

Each phase is timed between device synchronisations, so GPU work is charged to the phase that launched it (a
host-side profiler would charge it to whichever later call waited). The synchronisations stop the host from
running ahead, so the profiled step is slower than an unprofiled one: the shares are the finding, and the `fit`
row is the throughput. Phases nest (the optimizer step runs the forward and backward passes inside its closure);
each is reported exclusive of the phases inside it, and what no phase covers is Lightning's loop, its hooks and
everything else."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from pathlib import Path

import torch

from mura.benchmarking.measurements import SteadyStateWindow, build_fit, row, synchronize
from mura.models.classifier import MuraClassifier

OTHER = "Lightning loop, hooks and the rest"


class PhaseClock:
    """Exclusive, synchronised wall time per named phase, while `recording`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.recording = False
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[list] = []  # [name, start, time spent in phases inside it]

    def start(self, name: str) -> None:
        if self.recording:
            synchronize(self.device)
            self._open.append([name, time.perf_counter(), 0.0])

    def stop(self, name: str) -> None:
        if not self._open or self._open[-1][0] != name:
            return  # started before recording began
        synchronize(self.device)
        _, started, inside = self._open.pop()
        elapsed = time.perf_counter() - started
        self.seconds[name] += elapsed - inside
        if self._open:
            self._open[-1][2] += elapsed

    def timed(self, name: str, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            self.start(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.stop(name)

        return wrapper


class _TimedLoader:
    """The training loader, with the time spent waiting for each batch charged to `loader wait`."""

    def __init__(self, loader, clock: PhaseClock):
        self.loader, self.clock = loader, clock

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            self.clock.start("loader wait")
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.clock.stop("loader wait")
            yield batch


class _PhaseHooks(SteadyStateWindow):
    """fit's timing window, recording phases inside it; backward is timed from Lightning's hooks."""

    def __init__(self, clock: PhaseClock, warmup: int, last_batch: int):
        super().__init__(warmup, last_batch)
        self.clock = clock

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.clock.start("backward")

    def on_after_backward(self, trainer, pl_module) -> None:
        self.clock.stop("backward")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # From the end of the last warm-up step to the end of the last timed one: the epoch's end (metrics report,
        # logging) is not a step's cost.
        self.clock.recording = self.started is not None and self.ended is None


def instrument(model: MuraClassifier, clock: PhaseClock) -> None:
    """Wrap the module's own parts in phases (instance attributes: the class and other instances are untouched).
    The optimizer step's own time is Adam's update and Lightning's closure plumbing: the training step, zero_grad
    and backward run inside it and are charged to themselves."""
    model.on_before_batch_transfer = clock.timed("augmentation parameters (host)", model.on_before_batch_transfer)
    model.transfer_batch_to_device = clock.timed("host to device", model.transfer_batch_to_device)
    model.preprocess = clock.timed("augmentation (device)", model.preprocess)
    model.network.forward = clock.timed("forward", model.network.forward)
    model.criterion.forward = clock.timed("loss", model.criterion.forward)
    model.train_store.update = clock.timed("metric store", model.train_store.update)
    model.log = clock.timed("self.log", model.log)
    model.training_step = clock.timed("training_step, the rest", model.training_step)
    model.optimizer_zero_grad = clock.timed("zero_grad", model.optimizer_zero_grad)
    model.optimizer_step = clock.timed("optimizer step", model.optimizer_step)


def measure_profile(
    root: Path, recipe_name: str, backbone: str, image_size: int, channels: int, batch_size: int, workers: int,
    bf16: bool, channels_last: bool, cache: bool, augment_on_device: bool, batches: int, warmup: int,
    device: torch.device, cache_dir: Path, fused_adam: bool = False,
) -> dict:
    """`fit`'s settings, profiled: milliseconds per step of each phase over `batches` steps after `warmup`."""
    clock = PhaseClock(device)
    hooks = _PhaseHooks(clock, warmup, last_batch=warmup + batches - 1)
    datamodule, model, trainer, config = build_fit(root, backbone, image_size, channels, batch_size, workers, bf16, channels_last,
                                                   cache, augment_on_device, batches, warmup, device, cache_dir, hooks, fused_adam)
    instrument(model, clock)
    trainer.fit(model, train_dataloaders=_TimedLoader(datamodule.train_dataloader(), clock))
    images, total = hooks.images_per_second()
    phases = dict(clock.seconds)
    phases[OTHER] = max(total - sum(phases.values()), 0.0)
    per_step_ms = {name: round(1000 * seconds / batches, 2) for name, seconds in phases.items()}
    measured = row("profile", recipe_name, images, total, device, config)
    measured["phases_ms_per_step"] = dict(sorted(per_step_ms.items(), key=lambda item: -item[1]))
    return measured
