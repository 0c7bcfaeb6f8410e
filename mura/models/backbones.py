"""Backbones, each ending in one logit: torchvision DenseNets (any input size), any timm model (`timm/<name>`),
and the seed's Keras CNN."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from mura.app.errors import ConfigError

log = logging.getLogger(__name__)

BACKBONES = ("densenet169", "densenet121", "densenet_small", "seed_cnn")
TIMM_PREFIX = "timm/"  # model.backbone=timm/efficientnet_b3: any model of timm's zoo
_TORCHVISION_DENSENETS = {
    "densenet169": (models.densenet169, models.DenseNet169_Weights.IMAGENET1K_V1),
    "densenet121": (models.densenet121, models.DenseNet121_Weights.IMAGENET1K_V1),
}
# torchvision's published DenseNet files predate its module names ("norm.1" for "norm1"); remap as it does.
_LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class SeedCNN(nn.Module):
    """The seed notebook's Keras model: five valid-padded 3x3 convolutions with 2x2 max-pooling, then
    Flatten - Dropout(0.05) - Dense(512, relu) - Dense(1). 651,009 parameters on 128 x 128 x 1."""

    def __init__(self, in_channels: int = 1, image_size: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for width in (32, 64, 128, 128, 128):
            layers += [nn.Conv2d(channels, width, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels, size = width, (size - 2) // 2
        if size < 1:
            raise ConfigError(f"seed_cnn needs images of at least 94 px; data.image_size={image_size} is too small")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.05), nn.Linear(channels * size * size, 512), nn.ReLU(inplace=True), nn.Linear(512, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def _read_state_dict(weights_path: str | Path) -> dict:
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights_path {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds; all mean "not a state dict we can read"
        raise ConfigError(f"model.weights_path {path}: not a readable PyTorch state dict ({error})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights_path {path}: holds a {type(state).__name__}, not a state dict (parameter name -> tensor)")
    return state


def _shape(value: object) -> tuple | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _load_strictly(model: nn.Module, state: dict, weights_path: str | Path) -> None:
    """Load `state` into `model`, every key and shape matching, or a ConfigError naming what does not fit."""
    expected = model.state_dict()
    # Files saved before torch 0.4.1 (torchvision's published DenseNets among them) carry no BatchNorm
    # `num_batches_tracked` counters; torch's own loading starts such counters at 0, and so does this (in place).
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    misshapen = sorted(f"{key} {_shape(state[key])} (model {_shape(expected[key])})"
                       for key in set(state) & set(expected) if _shape(state[key]) != _shape(expected[key]))
    if missing or unexpected or misshapen:
        raise ConfigError(
            f"model.weights_path {weights_path} does not fit {type(model).__name__}: "
            f"{len(missing)} missing key(s) {sorted(missing)[:5]}, {len(unexpected)} unexpected key(s) {sorted(unexpected)[:5]}"
            + (f", {len(misshapen)} of another shape {misshapen[:5]}" if misshapen else "")
        )
    model.load_state_dict(state, strict=True)


def _load_weights_file(model: nn.Module, weights_path: str | Path) -> None:
    state = _read_state_dict(weights_path)
    state = {(_LEGACY_DENSENET_KEY.sub(r"\1\2", key)): value for key, value in state.items()}
    _load_strictly(model, state, weights_path)


def _adapt_first_conv(model: models.DenseNet, in_channels: int) -> None:
    """Swap conv0 for `in_channels` inputs; pretrained RGB filters are summed so grayscale input keeps their response."""
    old = model.features.conv0
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
    model.features.conv0 = new


def build_backbone(
    name: str,
    in_channels: int = 3,
    image_size: int = 320,
    pretrained: bool = False,
    weights_path: str | None = None,
) -> nn.Module:
    """A network mapping N x in_channels x H x W images to N x 1 logits."""
    if name.startswith(TIMM_PREFIX):
        return build_timm(name.removeprefix(TIMM_PREFIX), in_channels, image_size, pretrained, weights_path)
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone must be one of {BACKBONES} or timm/<name> (any model of timm), not {name!r}")
    if name == "seed_cnn" or name == "densenet_small":
        if pretrained or weights_path:
            raise ConfigError(f"{name} is trained from scratch: there are no pretrained weights for it")
        if name == "seed_cnn":
            return SeedCNN(in_channels, image_size)
        # A DenseNet small enough for CPU runs and tests: same design, far fewer layers and features.
        model = models.DenseNet(growth_rate=12, block_config=(3, 6, 4), num_init_features=24, bn_size=4, num_classes=1)
        _adapt_first_conv(model, in_channels)
        return model
    constructor, imagenet = _TORCHVISION_DENSENETS[name]
    if weights_path:
        # A weights file means pretrained, from that file, whatever model.pretrained says: the offline form of the
        # ImageNet weights that experiment=wrist asks for (model.pretrained=true).
        model = constructor(weights=None)
        _load_weights_file(model, weights_path)
        log.info("%s: pretrained weights from model.weights_path %s", name, weights_path)
    elif pretrained:
        try:
            model = constructor(weights=imagenet)
        except (OSError, RuntimeError) as error:
            raise ConfigError(
                f"could not fetch torchvision's ImageNet weights for {name} ({error}). Offline, download "
                f"{imagenet.url} elsewhere and pass model.weights_path=FILE, or train from scratch with model.pretrained=false"
            ) from None
    else:
        model = constructor(weights=None)
    model.classifier = nn.Linear(model.classifier.in_features, 1)
    _adapt_first_conv(model, in_channels)
    return model


def build_timm(name: str, in_channels: int, image_size: int, pretrained: bool, weights_path: str | None) -> nn.Module:
    """A timm model with one output for `in_channels` inputs (timm adapts the first convolution of pretrained
    weights itself). Pretrained weights: a state dict of the ImageNet model from `weights_path` when one is given
    (offline), loaded strictly, then given the one-logit head and input channels; otherwise, with `pretrained`, timm's
    own loading (online, or already in its cache).
    Models built for one input size (vision transformers) are built for `image_size`."""
    import timm  # imported here: only timm backbones pay for its import
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"timm has no model {name!r} (model.backbone=timm/{name}); similar: {', '.join(close) or 'none'}")
    config = get_pretrained_cfg(name)
    size = {"img_size": image_size} if config is not None and config.fixed_input_size else {}
    if pretrained and not weights_path:
        try:
            return timm.create_model(name, pretrained=True, num_classes=1, in_chans=in_channels, **size)
        except Exception as error:  # noqa: BLE001 - hub, network and file errors all mean "no weights here"
            raise ConfigError(
                f"could not load timm's pretrained weights for {name} ({type(error).__name__}: {error}). Offline, save "
                "the ImageNet model's state dict elsewhere and pass model.weights_path=FILE, or "
                "train from scratch with model.pretrained=false"
            ) from None
    if not weights_path:
        return timm.create_model(name, pretrained=False, num_classes=1, in_chans=in_channels, **size)
    model = timm.create_model(name, pretrained=False, **size)  # the file's own shape: ImageNet head, three channels
    _load_strictly(model, _read_state_dict(weights_path), weights_path)
    log.info("timm/%s: pretrained weights from model.weights_path %s", name, weights_path)
    model.reset_classifier(1)
    if in_channels != 3:
        from timm.models import adapt_input_conv

        first = model.get_submodule(model.pretrained_cfg["first_conv"])
        adapted = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
                            first.dilation, first.groups, first.bias is not None)
        with torch.no_grad():
            adapted.weight.copy_(adapt_input_conv(in_channels, first.weight))
            if first.bias is not None:
                adapted.bias.copy_(first.bias)
        model.set_submodule(model.pretrained_cfg["first_conv"], adapted)
    return model


def view_embedding(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """N x D embeddings: what the network's last linear layer (`classifier_head`) reads, so that
    `classifier_head(network)(view_embedding(network, x))` is `network(x)`, the same operations in the same order."""
    if hasattr(network, "forward_head"):  # timm
        return network.forward_head(network.forward_features(images), pre_logits=True)
    if isinstance(network, SeedCNN):
        return network.classifier[:-1](network.features(images))
    if isinstance(network, models.DenseNet):  # torchvision's DenseNet.forward, up to its classifier
        features = torch.relu(network.features(images))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(features, (1, 1)), 1)
    raise TypeError(f"no view embedding known for {type(network).__name__}")


def classifier_head(network: nn.Module) -> nn.Linear:
    """The network's last layer: embedding -> one logit."""
    if hasattr(network, "get_classifier"):  # timm
        return network.get_classifier()
    if isinstance(network, SeedCNN):
        return network.classifier[-1]
    if isinstance(network, models.DenseNet):
        return network.classifier
    raise TypeError(f"no classifier head known for {type(network).__name__}")


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last feature map Grad-CAM should explain: for a timm model, the last stage its own feature information
    names; for ours, chosen by hand."""
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        return model.get_submodule(feature_info[-1]["module"])
    if isinstance(model, SeedCNN):
        return [layer for layer in model.features if isinstance(layer, nn.ReLU)][-1]
    if isinstance(model, models.DenseNet):
        return model.features[-1]  # norm5: the final dense block's output, before global pooling
    raise TypeError(f"no Grad-CAM layer known for {type(model).__name__}")


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
