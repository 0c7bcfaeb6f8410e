"""What only a CUDA device can check (skipped without one; benchmarks/gpu_check.sh runs this file on a GPU)."""

from __future__ import annotations

import json
import math
import traceback
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from mura.data.device_augment import DeviceAugmentation

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_device_augmentation_on_cuda_matches_cpu():
    images = torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8)
    augment = DeviceAugmentation("paper", 3)
    theta = augment.matrices([1, 2, 3, 4])
    on_cpu = augment(images, theta)
    on_gpu = augment.cuda()(images.cuda(), theta).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=1e-4)


def test_the_loss_check_never_makes_the_host_wait_for_the_device():
    """Any implicit synchronisation (`.item()`, `if tensor`) raises in sync-debug mode 'error'."""
    from mura.models.loss_watch import DeferredLossCheck, NonFiniteLossError

    check = DeferredLossCheck()
    weights = torch.randn(2048, 2048, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        check.defer((weights @ weights).mean(), "step 0")
        check.check()
        check.defer(weights.sum() * float("nan"), "step 1")
        with pytest.raises(NonFiniteLossError, match="loss is nan at step 1"):
            check.check()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert check.last_value == pytest.approx((weights @ weights).mean().item(), rel=1e-3)
    # Sync-debug mode does not report torch.cuda.synchronize() or an event's wait: a check that waited for the whole
    # device would pass above. Here the check returns while work queued after the loss is still running.
    big = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    check.defer(big.mean(), "step 2")
    for _ in range(50):  # about 7 TFLOP: a tenth of a second or more on any current GPU
        big = big @ big / 64
    check.check()
    assert not torch.cuda.current_stream().query(), "the loss check waited for work queued after the loss"
    torch.cuda.synchronize()


SYNC_WARNING = "called a synchronizing CUDA operation"


class SyncDebugWindow(pl.Callback):
    """Records every synchronisation that CUDA's sync-debug mode ('warn') reports from the start of training batch
    `first` to the end of batch `last` of the first epoch, each with the Python stack that caused it, into `report`
    (JSON). Other warnings pass through as usual. What the mode reports: PyTorch's own waits (`.item()`, `if tensor`,
    `nonzero`, blocking copies); waits inside the CUDA driver are beyond it."""

    def __init__(self, report: str, first: int, last: int):
        self.report, self.first, self.last = Path(report), first, last
        self._context = None
        self._previous_mode = 0
        self._syncs: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.first and trainer.current_epoch == 0 and self._context is None:
            self._context = warnings.catch_warnings()  # restores the filters and showwarning on exit
            self._context.__enter__()
            warnings.filterwarnings("always", message=SYNC_WARNING)
            passthrough = warnings.showwarning

            def record(message, category, filename, lineno, file=None, line=None):
                if SYNC_WARNING not in str(message):
                    return passthrough(message, category, filename, lineno, file, line)
                frames = [frame for frame in traceback.extract_stack()[:-1] if "/warnings.py" not in frame.filename]
                self._syncs.append(" <- ".join(f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" for frame in frames[-6:][::-1]))

            warnings.showwarning = record
            self._previous_mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.last:
            self._stop(complete=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop(complete=False)  # fewer batches than `last`: the report says the window was cut short

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop(complete=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.report.exists():  # the window never opened (fewer batches than `first`)
            self.report.write_text(json.dumps({"complete": False, "syncs": []}))

    def _stop(self, complete: bool) -> None:
        if self._context is None:
            return
        torch.cuda.set_sync_debug_mode(self._previous_mode)
        self._context.__exit__(None, None, None)
        self._context = None
        self.report.write_text(json.dumps({"complete": complete, "syncs": self._syncs}))


def test_all_parts_experiment_trains_on_the_fast_path_and_no_step_waits_for_the_gpu(synthetic_root: Path, tmp_path: Path):
    """`experiment=all_parts` as shipped (DenseNet-169, bf16, channels_last, cache, augmentation on the GPU, the
    shipped callbacks and progress bar), shrunk. Its steady training steps read no device value, so the host keeps
    queueing work while the GPU runs. The loggers' read of the step loss, once every trainer.log_every_n_steps, is the
    one deliberate synchronisation: at 50 it falls outside these 10-batch epochs. The window (batches 2 to 8) leaves
    out the first steps, where Lightning registers each logged value (a copy to the device, once) and the run's
    timings wait for the first step, once."""
    from mura.train import train

    report = tmp_path / "syncs.json"
    cfg = compose_config([
        "experiment=all_parts", f"data.root={synthetic_root}", "data.image_size=64", "data.batch_size=8", "data.num_workers=2",
        "model.pretrained=false", "trainer.max_epochs=2", "trainer.log_every_n_steps=50",
        f"paths.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}",
        "+callbacks.sync_window._target_=test_cuda.SyncDebugWindow", f"+callbacks.sync_window.report={report}",
        "+callbacks.sync_window.first=2", "+callbacks.sync_window.last=8",
    ])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["trainer"]["precision"] == "bf16-mixed" and resolved["model"]["channels_last"]
    assert resolved["data"]["cache"] and resolved["data"]["augment_on_device"]

    try:
        metrics = train(cfg)
    finally:
        torch.cuda.set_sync_debug_mode(0)  # whatever happened, the rest of the session runs without it
    assert all(math.isfinite(metrics[key]) for key in ("train/loss", "val/loss", "test/loss", "test/study/kappa"))
    assert list((tmp_path / "cache").glob("*.u8"))  # the decode-once cache was built and used
    assert (tmp_path / "metrics.json").is_file()
    assert json.loads(report.read_text()) == {"complete": True, "syncs": []}


def test_the_averaged_weights_live_on_the_gpu(synthetic_root: Path, tmp_path: Path):
    """Lightning makes the averaged copy before the model moves to the GPU; mura's callback moves it along, so no step
    copies the weights between host and device."""
    from hydra.utils import instantiate

    from mura.models.weight_averaging import EMAOnceUpdated

    cfg = compose_config(["experiment=demo", f"data.root={synthetic_root}", "data.image_size=64", "data.num_workers=0",
                          f"paths.output_dir={tmp_path}", "model.ema.decay=0.9"])
    model = instantiate(cfg.model, _convert_="all")
    trainer = pl.Trainer(max_steps=3, limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, accelerator="gpu", devices=1)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    averaging = next(callback for callback in trainer.callbacks if isinstance(callback, EMAOnceUpdated))
    assert {tensor.device.type for tensor in averaging._average_model.parameters()} == {"cuda"}
    assert averaging.has_average()
