from __future__ import annotations

import pytest
import torch

from mura.data.transforms import build_transforms

torch.manual_seed(0)
IMAGE = torch.randint(0, 256, (1, 90, 60), dtype=torch.uint8)


def test_paper_eval_pipeline_is_deterministic_imagenet_normalised():
    transform = build_transforms("paper", 64, channels=3, train=False)
    out = transform(IMAGE)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, transform(IMAGE))
    # channel 0 = (x - 0.485) / 0.229 of the resized grayscale
    plain = build_transforms("paper", 64, channels=1, train=False)(IMAGE)
    grey = plain[0] * (0.229 + 0.224 + 0.225) / 3 + (0.485 + 0.456 + 0.406) / 3
    assert torch.allclose(out[0], (grey - 0.485) / 0.229, atol=1e-5)


def test_paper_train_pipeline_is_random():
    transform = build_transforms("paper", 64, channels=3, train=True)
    outputs = [transform(IMAGE) for _ in range(4)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_seed_recipe_standardises_each_image():
    out = build_transforms("seed", 128, channels=1, train=False)(IMAGE)
    assert out.shape == (1, 128, 128)
    assert abs(out.mean().item()) < 1e-5 and abs(out.std(unbiased=False).item() - 1) < 1e-3


def test_unknown_recipe():
    with pytest.raises(ValueError, match="data.recipe"):
        build_transforms("keras", 64, 1, train=False)
