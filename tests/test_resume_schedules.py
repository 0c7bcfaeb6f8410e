"""Every shipped learning-rate schedule, with and without weight averaging, resumes exactly: the real `mura.train` code
(`train()` on the composed configs, two loader workers), stopped in the middle of an epoch, then resumed from the
interruption's checkpoint (SIGTERM, Ctrl-C, a preemption) or from the previous epoch's last.ckpt (SIGKILL)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from conftest import compose_config, tiny_training_overrides
from mura.train import train


class _Stopped(Exception):
    pass


class StopAtStep(pl.Callback):
    """Ends the fit with an exception as training reaches `step` (the interruption checkpoint is written)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise _Stopped


def _overrides(root: Path, output_dir: Path, schedule: str, ema: bool, pooling: str = "mean") -> list[str]:
    return [
        *tiny_training_overrides(root, output_dir), "data.image_size=32", "data.num_workers=2", "data.cache=false",
        "data.augment_on_device=false", "data.body_parts=[XR_WRIST,XR_HAND,XR_ELBOW]", "test=false",
        "callbacks.gradcam=null", "callbacks.learning_curves=null", "callbacks.lr_monitor=null", "callbacks.timings=null",
        "++trainer.num_sanity_val_steps=0", "trainer.max_epochs=2", "trainer.deterministic=true",
        f"model/scheduler={schedule}", *(["model.ema.decay=0.9", "model.ema.start_step=2"] if ema else []),
        f"model.study_pooling={pooling}",
    ]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """The final state: the checkpointed weights (the average, with EMA) and, with EMA, the live ones too."""
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = {f"state_dict.{k}": v for k, v in checkpoint["state_dict"].items()}
    state.update({f"live.{k}": v for k, v in checkpoint.get("current_model_state", {}).items()})
    return state


def _epoch_rows(run: Path) -> list[float]:
    """csv/metrics.csv's validation rows, flattened: epoch, step, val/loss, val/study/auroc of each."""
    rows = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/loss"])
    return rows[["epoch", "step", "val/loss", "val/study/auroc"]].to_numpy(dtype=float).ravel().tolist()


# Every schedule, and weight averaging with a schedule stepped per epoch on a metric (plateau) and with one stepped per
# step, on a study model (attention over batches of whole studies, each view with its own augmentation draw): each
# pair of settings that can interact is run once, not every combination (each case is four trainings).
CASES = [("none", False, "mean"), ("plateau", True, "mean"), ("cosine", False, "mean"), ("warmup_cosine", False, "mean"),
         ("warmup_cosine", True, "attention")]


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "ema", "pooling"), CASES,
                         ids=[f"{schedule}-{'ema' if ema else 'plain'}-{pooling}" for schedule, ema, pooling in CASES])
def test_every_schedule_resumes_as_the_uninterrupted_run(synthetic_root: Path, tmp_path: Path, schedule: str, ema: bool,
                                                         pooling: str):
    straight = tmp_path / "straight"
    expected = train(compose_config(_overrides(synthetic_root, straight, schedule, ema, pooling)))
    per_epoch = int(torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]) // 2
    stop = per_epoch + per_epoch // 2  # the middle of the second epoch

    stopped = tmp_path / "stopped"
    cfg = compose_config([*_overrides(synthetic_root, stopped, schedule, ema, pooling), f"+callbacks.stop._target_={__name__}.StopAtStep",
                          f"+callbacks.stop.step={stop}"])
    with pytest.raises(_Stopped):
        train(cfg)
    # Both resumes start from the same stopped folder, at its own path (the best checkpoint's tracking is tied to it)
    saved = tmp_path / "saved"
    shutil.copytree(stopped, saved)

    final = _weights(straight)
    for resumed_from in ("last.ckpt", "interrupted.ckpt"):
        shutil.rmtree(stopped)
        shutil.copytree(saved, stopped)
        if resumed_from == "last.ckpt":  # as SIGKILL leaves it: no interruption checkpoint, last.ckpt of the first epoch
            (stopped / "checkpoints" / "interrupted.ckpt").unlink()
        resumed = train(compose_config([*_overrides(synthetic_root, stopped, schedule, ema, pooling), "ckpt_path=last"]))
        for key in ("val/loss", "val/study/kappa", "val/study/auroc", "selection/score"):
            assert resumed[key] == pytest.approx(expected[key], abs=1e-6, nan_ok=True), (resumed_from, key)
        # Its CSV log holds every epoch, as the uninterrupted run's (Lightning deleted the earlier epochs' rows)
        assert _epoch_rows(stopped) == pytest.approx(_epoch_rows(straight), abs=1e-6), resumed_from
        weights = _weights(stopped)
        assert weights.keys() == final.keys()
        for name, value in final.items():
            torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=f"from {resumed_from}: {name}")
