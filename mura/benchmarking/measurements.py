"""Throughput measurements behind `python -m mura.bench`: the paper's recipe against ours, side by side.

Each function returns a row of bench.json: kind (data, train, fit, infer), recipe (baseline, ours),
images_per_s (steady state, after warm-up), peak_mem_gib (CUDA only) and the config measured.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from mura.data.datamodule import MuraDataModule
from mura.data.device_augment import DeviceAugmentation
from mura.inference.predictor import autocast_bf16, predict_images
from mura.models.backbones import build_backbone
from mura.models.classifier import MuraClassifier
from mura.models.loss import weighted_bce_with_logits

log = logging.getLogger(__name__)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def row(kind: str, recipe: str, images: int, seconds: float, device: torch.device, config: dict) -> dict:
    return {"kind": kind, "recipe": recipe, "images_per_s": round(images / seconds, 1), "peak_mem_gib": _peak_gib(device),
            "config": config}


# -- (a) the input pipeline --------------------------------------------------------------------------------


def train_loader_datamodule(
    root: Path, image_size: int, channels: int, batch_size: int, workers: int, device: torch.device,
    cache: bool, augment_on_device: bool, cache_dir: Path, persistent_workers: bool = False, study_pooling: str = "mean",
) -> MuraDataModule:
    """The package's own data path over the official train split, cache built before any timing; batches of whole
    studies for a study model (`study_pooling` max or attention)."""
    datamodule = MuraDataModule(
        root=str(root), image_size=image_size, recipe="paper", channels=channels, batch_size=batch_size,
        num_workers=workers, val_fraction=0.0, seed=0, pin_memory=device.type == "cuda", persistent_workers=persistent_workers,
        cache=cache, cache_dir=str(cache_dir), augment_on_device=augment_on_device, study_pooling=study_pooling,
    )
    datamodule.setup("fit")
    if cache:
        datamodule.image_cache("train")  # made once and reused across runs, so not part of the throughput
    return datamodule


def measure_data(
    root: Path, recipe_name: str, image_size: int, channels: int, batch_size: int, workers: int,
    device: torch.device, cache_dir: Path, warmup_batches: int = 2,
) -> dict:
    """Decode, resize, augment, collate and move to the device. `ours` reads the cache and, on a GPU, augments
    whole batches there; on a CPU the workers augment (they are the cores a batched warp would use)."""
    ours = recipe_name == "ours"
    on_device = ours and device.type == "cuda"
    datamodule = train_loader_datamodule(root, image_size, channels, batch_size, workers, device, cache=ours,
                                          augment_on_device=on_device, cache_dir=cache_dir)
    augment = DeviceAugmentation("paper", channels).to(device)  # what MuraClassifier.preprocess does
    _reset_peak(device)
    images, started = 0, None
    for number, batch in enumerate(datamodule.train_dataloader()):
        tensor = batch["image"].to(device, non_blocking=True)
        if on_device:
            tensor = augment(tensor, augment.matrices(batch["augment_seed"].tolist()))
        synchronize(device)
        if number == warmup_batches - 1:
            started = time.perf_counter()
        elif number >= warmup_batches:
            images += len(tensor)
    if started is None or images == 0:
        raise ValueError(f"the train split has at most {warmup_batches} batches of {batch_size}: nothing was timed "
                         "after the warm-up; measure on more images or a smaller data.batch_size")
    seconds = time.perf_counter() - started
    config = {"image_size": image_size, "batch_size": batch_size, "workers": workers,
              "images": len(datamodule.split_frame("train")),
              "pipeline": ("memory-mapped cache + batch augmentation on the GPU" if on_device
                           else "memory-mapped cache + torchvision v2 in workers" if ours else "PIL decode + torchvision v2 in workers")}
    return row("data", recipe_name, images, seconds, device, config)


# -- (b) the model alone -----------------------------------------------------------------------------------


class NeedsCuda(RuntimeError):
    """A variant that only exists on a CUDA device (reported as not measured, not as a failure)."""


def measure_train_step(
    backbone: str, image_size: int, channels: int, batch_size: int, bf16: bool, channels_last: bool,
    steps: int, warmup: int, device: torch.device, recipe_name: str, fused_adam: bool = False, cuda_graph: bool = False,
) -> dict:
    """Forward, weighted BCE, backward and an Adam step on one fixed batch. `cuda_graph` captures the whole step
    once and replays it (no per-kernel launch cost; the input is copied into the captured buffer each step)."""
    if cuda_graph and device.type != "cuda":
        raise NeedsCuda("CUDA graphs need a CUDA device")
    network = build_backbone(backbone, channels, image_size).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    # capturable: Adam keeps its step count on the device, which a graph replay needs.
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, fused=fused_adam or None, capturable=cuda_graph)
    images = torch.randn(batch_size, channels, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    labels = (torch.rand(batch_size, device=device) > 0.5).float()
    weights = torch.full((batch_size,), 0.5, device=device)

    def step(batch: torch.Tensor) -> None:
        # The autocast cache must be off inside a graph capture (its casts would be captured once and go stale).
        with autocast_bf16(device, bf16, cache_enabled=not cuda_graph):
            loss = weighted_bce_with_logits(network(batch).squeeze(1), labels, weights, weights)
        loss.backward()
        optimizer.step()

    def eager_step(batch: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        step(batch)

    if cuda_graph:
        run_step = _captured_step(step, eager_step, optimizer, images, warmup, device)  # resets the peak itself
    else:
        _reset_peak(device)
        run_step = eager_step
    started = None
    for number in range(warmup + steps):
        if number == warmup:
            synchronize(device)
            started = time.perf_counter()
        run_step(images)
    synchronize(device)
    config = {"backbone": backbone, "image_size": image_size, "batch_size": batch_size,
              "precision": "bf16-mixed" if bf16 and device.type == "cuda" else "32-true", "channels_last": channels_last,
              "fused_adam": fused_adam, "cuda_graph": cuda_graph}
    return row("train", recipe_name, steps * batch_size, time.perf_counter() - started, device, config)


def _captured_step(step, eager_step, optimizer: torch.optim.Optimizer, example: torch.Tensor, warmup: int,
                   device: torch.device):
    """PyTorch's whole-network capture: warm up on a side stream (cuDNN picks its algorithms there), capture one
    step into a CUDA graph with the gradients allocated inside it (each replay overwrites them, so no zeroing), and
    return a function that copies a batch into the captured input and replays the graph."""
    static_input = example.clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 3)):
            eager_step(static_input)
    torch.cuda.current_stream(device).wait_stream(side)
    # The peak is taken from here, between the eager warm-up and the capture: the graph's private memory pool fills
    # while it is captured and a replay allocates nothing, so a peak reset after the capture missed the activations
    # (it read 0.67 GiB on an H100), and one reset before the warm-up would report the eager steps' peak.
    _reset_peak(device)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step(static_input)

    def replay(batch: torch.Tensor) -> None:
        static_input.copy_(batch, non_blocking=True)
        graph.replay()

    return replay


# -- (c) end to end from PNG files -------------------------------------------------------------------------


class SteadyStateWindow(pl.Callback):
    """Images per second over the training batches after the first `warmup`, up to the end of the last one: the
    epoch's end (its metrics report, the workers' shutdown) is a once-per-epoch cost, not the steady state."""

    def __init__(self, warmup: int, last_batch: int):
        self.warmup = warmup
        self.last_batch = last_batch
        self.started = None
        self.ended = None
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.images += len(batch["image"])  # images: a study batch's views, not its studies
        # From the end of the last warm-up step: a batch's loading and transfer come before its on_train_batch_start,
        # so starting there would time one load fewer than steps.
        if batch_idx == self.warmup - 1:
            synchronize(pl_module.device)
            self.started = time.perf_counter()
        if batch_idx == self.last_batch:
            synchronize(pl_module.device)  # once, at the end: a synchronisation every step would slow the steps
            self.ended = time.perf_counter()

    def images_per_second(self) -> tuple[int, float]:
        if self.started is None or self.ended is None:
            raise ValueError(f"the epoch ended before batch {self.last_batch}, or within the {self.warmup} warm-up "
                             "batches: lower its warmup or batches (fit.*, profile.*) or the batch size, or measure on more images")
        return self.images, self.ended - self.started


def build_fit(
    root: Path, backbone: str, image_size: int, channels: int, batch_size: int, workers: int, bf16: bool,
    channels_last: bool, cache: bool, augment_on_device: bool, batches: int, warmup: int, device: torch.device,
    cache_dir: Path, callback: pl.Callback, fused_adam: bool = False, study_pooling: str = "mean",
) -> tuple[MuraDataModule, MuraClassifier, pl.Trainer, dict]:
    """The package's data module and model, a one-epoch Trainer of `warmup + batches` training batches, no
    validation, and the row's config: what the fit and profile measurements run, with their own callback. A study
    model (`study_pooling` max or attention) trains on batches of `batch_size` whole studies."""
    datamodule = train_loader_datamodule(root, image_size, channels, batch_size, workers, device, cache=cache,
                                         augment_on_device=augment_on_device, cache_dir=cache_dir,
                                         study_pooling=study_pooling)
    model = MuraClassifier(backbone=backbone, in_channels=channels, image_size=image_size, channels_last=channels_last,
                           optimizer=lambda params: torch.optim.Adam(params, lr=1e-4, fused=fused_adam or None), scheduler=None,
                           study_pooling=study_pooling)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision="bf16-mixed" if bf16 and device.type == "cuda" else "32-true",
        max_epochs=1, limit_train_batches=warmup + batches, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        benchmark=device.type == "cuda" and study_pooling == "mean", callbacks=[callback],  # as mura.train.autotuning
    )
    config = {"backbone": backbone, "image_size": image_size, "batch_size": batch_size, "workers": workers,
              "precision": trainer.precision, "channels_last": channels_last, "cache": cache, "augment_on_device": augment_on_device,
              "fused_adam": fused_adam, "timed_batches": batches, "study_pooling": study_pooling}
    _reset_peak(device)  # the row's own peak, from here: fit's and the profile's alike
    return datamodule, model, trainer, config


def measure_fit(
    root: Path, recipe_name: str, backbone: str, image_size: int, channels: int, batch_size: int, workers: int,
    bf16: bool, channels_last: bool, cache: bool, augment_on_device: bool, batches: int, warmup: int,
    device: torch.device, cache_dir: Path, fused_adam: bool = False, study_pooling: str = "mean",
) -> dict:
    timer = SteadyStateWindow(warmup, last_batch=warmup + batches - 1)
    datamodule, model, trainer, config = build_fit(root, backbone, image_size, channels, batch_size, workers, bf16, channels_last,
                                                   cache, augment_on_device, batches, warmup, device, cache_dir, timer, fused_adam,
                                                   study_pooling)
    trainer.fit(model, train_dataloaders=datamodule.train_dataloader())
    images, seconds = timer.images_per_second()
    return row("fit", recipe_name, images, seconds, device, config)


# -- (d) inference -----------------------------------------------------------------------------------------


def measure_inference(
    backbone: str, image_size: int, channels: int, batch_size: int, bf16: bool, channels_last: bool,
    steps: int, warmup: int, device: torch.device, recipe_name: str,
) -> dict:
    network = build_backbone(backbone, channels, image_size).to(device).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    images = torch.randn(batch_size, channels, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    _reset_peak(device)
    started = None
    with torch.inference_mode():
        for step in range(warmup + steps):
            if step == warmup:
                synchronize(device)
                started = time.perf_counter()
            with autocast_bf16(device, bf16):
                network(images)
    synchronize(device)
    config = {"backbone": backbone, "image_size": image_size, "batch_size": batch_size,
              "precision": "bf16-mixed" if bf16 and device.type == "cuda" else "32-true", "channels_last": channels_last}
    return row("infer", recipe_name, steps * batch_size, time.perf_counter() - started, device, config)


def measure_evaluation(
    root: Path, recipe_name: str, backbone: str, image_size: int, channels: int, batch_size: int, bf16: bool,
    channels_last: bool, workers: int, device: torch.device, cache_dir: Path, cache: bool = False,
) -> dict:
    """What `mura.evaluate` does per model, over the official train split (the largest): decode the PNGs (or read
    the cache and normalise uint8 batches on the device), batch, move, predict, tabulate. The second of two passes
    is timed: the first warms cuDNN and the page cache, and the workers persist (their start is not counted)."""
    datamodule = train_loader_datamodule(root, image_size, channels, batch_size, workers, device, cache=cache,
                                          augment_on_device=cache, cache_dir=cache_dir, persistent_workers=workers > 0)
    model = MuraClassifier(backbone=backbone, in_channels=channels, image_size=image_size, channels_last=channels_last)
    model = model.to(device).eval()
    loader = datamodule.dataloader("train", shuffle=False, train_transforms=False)
    predict_images(model, loader, bf16=bf16, progress=False)
    _reset_peak(device)
    started = time.perf_counter()
    predictions, _ = predict_images(model, loader, bf16=bf16, progress=False)
    seconds = time.perf_counter() - started
    config = {"backbone": backbone, "image_size": image_size, "batch_size": batch_size, "workers": workers,
              "precision": "bf16-mixed" if bf16 and device.type == "cuda" else "32-true", "channels_last": channels_last,
              "end_to_end": True, "cache": cache, "images": len(predictions)}
    return row("infer", recipe_name, len(predictions), seconds, device, config)
