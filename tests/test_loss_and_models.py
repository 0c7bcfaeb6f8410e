from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchvision import models

from conftest import compose_config
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


def save_as_torchvision_published(state: dict, path: Path) -> None:
    """Write `state` as torchvision's published DenseNet files are (densenet169-b2777c0a.pth, 2017): dense layers' keys
    in their old spelling (`norm.1`, `relu.1`, `conv.1`, the names torchvision's `_load_state_dict` remaps) and no
    BatchNorm `num_batches_tracked` counters, which torch added in 0.4.1."""
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
              for key, value in state.items() if not key.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, path)


def test_the_readmes_offline_command_loads_torchvisions_published_file_format(synthetic_root: Path, tmp_path: Path):
    """`python -m mura.train experiment=wrist model.weights_path=FILE`, the offline form of the paper's ImageNet start
    that the README and the download error give: the experiment's model.pretrained=true and a weights file mean
    pretrained, from that file."""
    torch.manual_seed(0)
    reference = models.densenet169(weights=None)
    with torch.no_grad():  # statistics and weights that no fresh network has, so loading them is what shows
        for name, buffer in reference.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
        reference.features.denseblock1.denselayer1.norm1.weight.normal_()
    weights = tmp_path / "densenet169-b2777c0a.pth"
    save_as_torchvision_published(reference.state_dict(), weights)
    cfg = compose_config(["experiment=wrist", f"data.root={synthetic_root}", f"model.weights_path={weights}",
                          "data.image_size=32", "data.num_workers=0", f"paths.output_dir={tmp_path}"])
    assert cfg.model.pretrained  # as the experiment sets it: the file is its offline source, not a conflict
    network = instantiate(cfg.model, _convert_="all").network  # as mura.train builds its model
    expected = reference.state_dict()
    for key, value in network.state_dict().items():
        if key.startswith("features."):  # the head is new: one logit
            assert torch.equal(value, expected[key]), key
    assert network.features.denseblock1.denselayer1.norm1.num_batches_tracked.item() == 0
    assert network.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1)


def test_a_weights_file_of_another_shape_is_named_not_a_traceback(tmp_path: Path):
    state = models.densenet121(weights=None).state_dict()
    state["features.conv0.weight"] = torch.zeros(64, 1, 7, 7)  # a one-channel first convolution
    torch.save(state, tmp_path / "one_channel.pth")
    with pytest.raises(ConfigError, match=r"1 of another shape \['features.conv0.weight \(64, 1, 7, 7\) \(model \(64, 3, 7, 7\)\)'\]"):
        build_backbone("densenet121", weights_path=str(tmp_path / "one_channel.pth"))


def test_a_timm_weights_file_is_used_when_pretrained_is_also_set(tmp_path: Path, monkeypatch):
    import timm

    source = timm.create_model("resnet10t")  # ImageNet-shaped: 1,000 classes, three channels
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail, not fetch
    model = build_backbone("timm/resnet10t", pretrained=True, weights_path=str(tmp_path / "imagenet.pth"))
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"])


def test_offline_pretrained_says_both_options(monkeypatch):
    def offline(weights=None):
        raise OSError("no network")

    monkeypatch.setitem(backbones._TORCHVISION_DENSENETS, "densenet169", (offline, models.DenseNet169_Weights.IMAGENET1K_V1))
    with pytest.raises(ConfigError, match="model.weights_path=FILE.*model.pretrained=false"):
        build_backbone("densenet169", pretrained=True)


def test_from_scratch_models_refuse_pretrained():
    with pytest.raises(ConfigError, match="trained from scratch"):
        build_backbone("seed_cnn", in_channels=1, image_size=128, pretrained=True)
