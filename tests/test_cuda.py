"""What only a CUDA device can check (skipped without one; benchmarks/gpu_check.sh runs this file on a GPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
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


def test_all_parts_experiment_trains_on_the_fast_path(synthetic_root: Path, tmp_path: Path):
    """`experiment=all_parts` as shipped (DenseNet-169, bf16, channels_last, cache, augmentation on the GPU), shrunk."""
    from mura.train import train

    cfg = compose_config([
        "experiment=all_parts", f"data.root={synthetic_root}", "data.image_size=64", "data.batch_size=8", "data.num_workers=2",
        "model.pretrained=false", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}",
    ])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["trainer"]["precision"] == "bf16-mixed" and resolved["model"]["channels_last"]
    assert resolved["data"]["cache"] and resolved["data"]["augment_on_device"]

    metrics = train(cfg)
    assert all(math.isfinite(metrics[key]) for key in ("train/loss", "val/loss", "test/loss", "test/study/kappa"))
    assert list((tmp_path / "cache").glob("*.u8"))  # the decode-once cache was built and used
    assert (tmp_path / "metrics.json").is_file()


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
