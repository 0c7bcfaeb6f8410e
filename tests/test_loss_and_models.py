from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import models

from mura.app.errors import ConfigError
from mura.data.index import BODY_PARTS
from mura.models import backbones
from mura.models.backbones import build_backbone, count_parameters, gradcam_layer
from mura.models.loss import StudyTypeWeightedBCE, weighted_bce_with_logits


def test_weighted_bce_equals_hand_computation():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    w1, w0 = 0.6, 0.4
    p = [1 / (1 + math.exp(-x)) for x in logits.tolist()]
    hand = (-w1 * math.log(p[0]) - w1 * math.log(p[1]) - w0 * math.log(1 - p[2]) - w0 * math.log(1 - p[3])) / 4
    got = weighted_bce_with_logits(logits, labels, torch.full((4,), w1), torch.full((4,), w0))
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_weighted_bce_is_finite_for_extreme_logits():
    logits = torch.tensor([200.0, -200.0])
    labels = torch.tensor([0.0, 1.0])
    loss = weighted_bce_with_logits(logits, labels, torch.ones(2), torch.ones(2))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(200.0)


def test_study_type_weights_come_from_counts_and_plain_bce_when_unweighted():
    counts = {part: {"normal": 0, "abnormal": 0} for part in BODY_PARTS}
    counts["XR_WRIST"] = {"normal": 5765, "abnormal": 3987}  # REFERENCE.md: .5912 / .4088
    loss = StudyTypeWeightedBCE(BODY_PARTS)
    loss.set_weights_from_counts(counts)
    wrist = BODY_PARTS.index("XR_WRIST")
    assert loss.w_abnormal[wrist].item() == pytest.approx(0.5912, abs=1e-4)
    assert loss.w_normal[wrist].item() == pytest.approx(0.4088, abs=1e-4)
    plain = StudyTypeWeightedBCE(BODY_PARTS, weighted=False)
    plain.set_weights_from_counts(counts)
    logits, labels = torch.randn(6), torch.tensor([1.0, 0, 1, 0, 1, 0])
    parts = torch.full((6,), wrist)
    assert plain(logits, labels, parts).item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, labels).item(), rel=1e-6)
    assert "w_abnormal" in loss.state_dict()


def test_seed_cnn_has_the_seed_parameter_count():
    assert count_parameters(build_backbone("seed_cnn", in_channels=1, image_size=128)) == 651_009


@pytest.mark.parametrize("name", ["densenet_small", "densenet121"])
@pytest.mark.parametrize("size", [64, 97])
def test_densenets_take_any_input_size(name: str, size: int):
    network = build_backbone(name, in_channels=1, image_size=size).eval()
    with torch.no_grad():
        assert network(torch.zeros(2, 1, size, size + 13)).shape == (2, 1)
    assert gradcam_layer(network) is network.features[-1]


def test_weights_file_loads_strictly_and_names_bad_keys(tmp_path: Path):
    reference = models.densenet121(weights=None)
    good = tmp_path / "densenet121.pth"
    torch.save(reference.state_dict(), good)
    loaded = build_backbone("densenet121", in_channels=3, weights_path=str(good))
    assert torch.equal(loaded.features.conv0.weight, reference.features.conv0.weight)
    state = reference.state_dict()
    state.pop("features.norm5.weight")
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ConfigError, match=r"1 missing key\(s\) \['features.norm5.weight'\], 1 unexpected key\(s\) \['extra.weight'\]"):
        build_backbone("densenet121", weights_path=str(bad))


def test_offline_pretrained_says_both_options(monkeypatch):
    def offline(weights=None):
        raise OSError("no network")

    monkeypatch.setitem(backbones._TORCHVISION_DENSENETS, "densenet169", (offline, models.DenseNet169_Weights.IMAGENET1K_V1))
    with pytest.raises(ConfigError, match="model.weights_path=FILE.*model.pretrained=false"):
        build_backbone("densenet169", pretrained=True)


def test_from_scratch_models_refuse_pretrained():
    with pytest.raises(ConfigError, match="trained from scratch"):
        build_backbone("seed_cnn", in_channels=1, image_size=128, pretrained=True)
