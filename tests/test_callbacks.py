from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mura.callbacks.curves import draw_curves, overfitting_onset
from mura.inference.explain import gradcam_maps
from mura.models.backbones import build_backbone


def test_overfitting_onset_is_the_best_epoch_once_the_gap_opens():
    train = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3]
    val = [1.0, 0.85, 0.7, 0.75, 0.8, 0.9]
    assert overfitting_onset(train, val) == 2
    assert overfitting_onset(train, [1.0, 0.8, 0.7, 0.6, 0.55, 0.5]) is None  # still improving
    assert overfitting_onset(train, [1.0, 0.8, 0.7, 0.701, 0.702, 0.701]) is None  # a plateau is not overfitting


def test_curves_png_is_drawn_and_marks_the_onset(tmp_path: Path):
    history = [{"epoch": e, "train/loss": t, "val/loss": v, "train/study/kappa": 0.1 * e, "val/study/kappa": 0.05 * e}
               for e, (t, v) in enumerate(zip([1.0, 0.8, 0.6, 0.5, 0.4, 0.3], [1.0, 0.85, 0.7, 0.75, 0.8, 0.9], strict=True))]
    path = tmp_path / "curves.png"
    assert draw_curves(history, path) == 2
    with Image.open(path) as image:
        assert image.size[0] > image.size[1] > 100


@pytest.mark.parametrize("train_mode", [True, False])
def test_gradcam_works_inside_inference_mode_and_restores_the_mode(train_mode: bool):
    torch.manual_seed(0)
    network = build_backbone("densenet_small", in_channels=1, image_size=64)
    network.train(train_mode)
    images = torch.randn(3, 1, 64, 64)
    with torch.inference_mode():  # as in Lightning's validation loop
        maps, probabilities = gradcam_maps(network, images)
    assert network.training is train_mode
    assert maps.shape == (3, 64, 64) and np.all((maps >= 0) & (maps <= 1))
    assert probabilities.shape == (3,) and np.all((probabilities > 0) & (probabilities < 1))
    assert maps.reshape(3, -1).std(axis=1).min() > 0  # a real map, not a constant
