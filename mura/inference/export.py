"""A trained classifier as a file another runtime can load (TorchScript or ONNX), with its contract in JSON.

The exported graph takes what a deployer has once an image is decoded and resized: the grayscale radiograph at
image_size x image_size, scaled to [0, 1], float32 N x 1 x S x S. The recipe's normalisation (channel repeat,
ImageNet mean/std or per-image standardisation) is inside the graph, where it cannot be got wrong; the resize
is not, because its input comes in every size. The graph returns `logit` and `probability` (sigmoid), N each.

Only generic `nn.Module` export is used (tracing, `torch.export`), so any backbone that maps N x C x S x S
images to N x 1 logits exports.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from mura import __version__
from mura.app.errors import ConfigError
from mura.data.device_augment import DeviceAugmentation
from mura.data.transforms import imagenet_normalize
from mura.models.backbones import classifier_head, view_embedding
from mura.models.classifier import MuraClassifier
from mura.models.study_pooling import StudyPooling

log = logging.getLogger(__name__)

FILE_NAMES = {"torchscript": "model.torchscript", "onnx": "model.onnx"}
FORMATS = tuple(FILE_NAMES)
CONTRACT_FORMAT = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("logit", "probability")
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
# The lowest opset torch.export's ONNX exporter writes, for the widest choice of runtimes (ONNX Runtime 1.14+).
ONNX_OPSET = 18
# The batch size the graph is recorded with; checks then run another, so a batch dimension frozen by mistake fails.
EXAMPLE_BATCH = 2
STUDY_CHECK_VIEWS = (1, 2, 5)  # a study model's file is checked on studies of these many views


class ExportMismatchError(RuntimeError):
    """The exported model's outputs (logit or probability) differ from PyTorch's by more than the tolerance."""


class DeployableClassifier(nn.Module):
    """N x 1 x S x S grayscale in [0, 1] -> (logit, probability): the recipe's normalisation (the training's own,
    DeviceAugmentation.normalize), then the network."""

    def __init__(self, network: nn.Module, normalization: DeviceAugmentation, image_size: int):
        super().__init__()
        self.network = network
        self.normalization = normalization
        # The seed recipe's std floor, 1/sqrt(pixels) of an S x S image, as a constant: taken from the input's shape
        # inside a traced graph, it would be recorded as a tensor-to-float conversion (with a warning).
        self.standardize_floor = 1.0 / image_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.network(self.normalization.normalize(images, self.standardize_floor)).flatten()
        return logit, torch.sigmoid(logit)


class DeployableStudyClassifier(DeployableClassifier):
    """A study model's: one study's V x 1 x S x S views (V dynamic) -> (logit, probability) of the study, 1 each: the
    views embedded by the backbone and pooled (mura.models.study_pooling)."""

    def __init__(self, network: nn.Module, pooling: StudyPooling, normalization: DeviceAugmentation, image_size: int):
        super().__init__(network, normalization, image_size)
        self.pooling = pooling

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = view_embedding(self.network, self.normalization.normalize(images, self.standardize_floor))
        logit, _ = self.pooling.single_study(embeddings, classifier_head(self.network))
        return logit, torch.sigmoid(logit)


def deployable(model: MuraClassifier) -> DeployableClassifier:
    """The exported module, on the CPU, in eval mode; a copy, so the caller's model stays where it was."""
    network = copy.deepcopy(model.network).to("cpu").eval()
    normalization = copy.deepcopy(model.device_augmentation).to("cpu")
    if model.is_study_model:
        pooling = copy.deepcopy(model.pooling).to("cpu").eval()
        return DeployableStudyClassifier(network, pooling, normalization, model.hparams.image_size).eval()
    return DeployableClassifier(network, normalization, model.hparams.image_size).eval()


def example_input(model: MuraClassifier, batch: int = EXAMPLE_BATCH, seed: int = 0) -> torch.Tensor:
    """Uniform [0, 1] images of the exported input's shape: synthetic, enough to record and check a graph."""
    size = model.hparams.image_size
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def _quiet_torchscript_deprecation() -> Iterator[None]:
    """torch.jit warns at every call that TorchScript is deprecated; docs/export.md says it once, with ONNX as the
    format to prefer. Only that warning, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def export_torchscript(model: MuraClassifier, path: str | Path) -> Path:
    """Traced (not scripted): tracing records any nn.Module's tensor operations, however Python built them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = deployable(model)
    with _quiet_torchscript_deprecation(), torch.no_grad():
        traced = torch.jit.trace(wrapper, example_input(model), check_inputs=[(example_input(model, EXAMPLE_BATCH + 1, 1),)])
        torch.jit.save(traced, str(path))
    return path


def require_onnx() -> None:
    missing = [package for package in ONNX_PACKAGES if importlib.util.find_spec(package) is None]
    if missing:
        raise ConfigError(
            f"format=onnx needs the optional package(s) {', '.join(missing)}: pip install 'mura[export]' "
            "(or format=torchscript, which needs nothing more)"
        )


def export_onnx(model: MuraClassifier, path: str | Path) -> Path:
    """torch.export's ONNX exporter (the TorchScript-based one is deprecated), a dynamic batch dimension, and the
    weights inside the one file."""
    require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            deployable(model),
            (example_input(model),),
            dynamo=True,
            verbose=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: torch.export.Dim(_first_axis(model), min=1)}},
            external_data=False,
        )
    program.save(str(path), external_data=False)
    return path


EXPORTERS = {"torchscript": export_torchscript, "onnx": export_onnx}


def run_exported(path: str | Path, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The exported file's outputs on `images` (N x 1 x S x S float32), run by its own runtime."""
    path = Path(path)
    if path.suffix == ".onnx":
        require_onnx()
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.contiguous().numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(OUTPUT_NAMES, outputs, strict=True)}
    with _quiet_torchscript_deprecation(), torch.no_grad():
        outputs = torch.jit.load(str(path), map_location="cpu")(images)
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))


def _first_axis(model: MuraClassifier) -> str:
    """The exported input's first axis: a batch of images, or a study model's one study's views."""
    return "views" if model.is_study_model else "batch"


def reference_logits(model: MuraClassifier, images: torch.Tensor) -> torch.Tensor:
    """PyTorch's logits by the classifier's own evaluation pipeline, less the resize the images already had: one per
    image, or a study model's one for the study the images are the views of."""
    transform = model.eval_transform(resize=False)
    device = next(model.parameters()).device
    with torch.inference_mode():
        batch = torch.stack([transform(image) for image in images]).to(device)
        if model.is_study_model:
            count = torch.arange(len(batch), device=device)
            return model.study_forward(batch, torch.zeros_like(count), count, 1)[0].cpu()
        return model(batch).cpu()


def check_export(model: MuraClassifier, path: str | Path, images: torch.Tensor) -> float:
    """The largest absolute difference between the exported file's outputs and PyTorch's on `images`, over both the
    logits and the probabilities (float64 sigmoid, as `mura.predict`): probabilities alone hide any difference
    where they saturate. A study model's file is checked on studies of 1, 2 and 5 of the images' views (more
    images than it has: repeated)."""
    if model.is_study_model:
        repeated = images.repeat(math.ceil(max(STUDY_CHECK_VIEWS) / len(images)), 1, 1, 1)
        return max(_difference(model, path, repeated[:views]) for views in STUDY_CHECK_VIEWS)
    return _difference(model, path, images)


def _difference(model: MuraClassifier, path: str | Path, images: torch.Tensor) -> float:
    exported = run_exported(path, images)
    logits = reference_logits(model, images).double()
    if exported["logit"].shape != logits.shape:
        raise ExportMismatchError(f"{path}: {tuple(exported['logit'].shape)} outputs for {len(images)} images")
    logit_difference = (exported["logit"].double() - logits).abs().max()
    probability_difference = (exported["probability"].double() - torch.sigmoid(logits)).abs().max()
    return float(max(logit_difference, probability_difference))


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resize_step(mode: str, size: int) -> str:
    how = "bilinear with antialiasing (torchvision resize(antialias=True) on the uint8 image; PIL's BILINEAR agrees within 1 gray level)"
    if mode == "pad":
        return (f"scale the longer side to {size} px keeping the aspect ratio (new side = round(side * {size} / longer side)), "
                f"{how}, then pad with black to {size} x {size}, centred (left = ({size} - width) // 2, top = ({size} - height) // 2)")
    return f"resize to {size} x {size} (the aspect ratio is not kept), {how}"


def preprocessing_contract(model: MuraClassifier, checkpoint_path: str | Path) -> dict:
    """What the exported model expects and returns, in numbers a deployer can implement without mura."""
    hparams = model.hparams
    size, channels, recipe = hparams.image_size, hparams.in_channels, hparams.recipe
    if recipe == "paper":
        normalize = imagenet_normalize(channels)
        normalization = {
            "name": "imagenet",
            "formula": "(x - mean[c]) / std[c] for each channel c",
            "mean": [float(value) for value in normalize.mean],
            "std": [float(value) for value in normalize.std],
        }
    else:
        normalization = {
            "name": "per_image_standardization",
            "formula": "(x - mean(x)) / max(std(x), min_std) over the image's pixels; std divides by the pixel count",
            "min_std": 1.0 / size,
        }
    contract = {
        "contract_format": CONTRACT_FORMAT,
        "mura_version": __version__,
        "backbone": hparams.backbone,
        "recipe": recipe,
        "source_checkpoint": {"path": str(Path(checkpoint_path).resolve()), "sha256": sha256(checkpoint_path)},
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 1, size, size],
            "dtype": "float32",
            "layout": "NCHW, one grayscale channel",
            "value_range": [0.0, 1.0],
            "resize": hparams.resize,  # squash (stretch to the square) or pad (keep the aspect ratio, black margins)
        },
        "preprocessing_by_caller": [
            "decode to 8-bit grayscale (colour through PIL's convert('L'); 16-bit windowed to its own min-max)",
            _resize_step(hparams.resize, size),
            "divide by 255 (float32)",
        ],
        "preprocessing_in_model": {
            "steps": ["repeat_channels", "normalize"] if recipe == "paper" else ["normalize", "repeat_channels"],
            "repeat_channels": channels,
            "normalize": normalization,
        },
        "network_input_shape": ["batch", channels, size, size],
        "outputs": {
            "logit": {"shape": ["batch"], "dtype": "float32", "meaning": "the logit of 'abnormal', one per image"},
            "probability": {"shape": ["batch"], "dtype": "float32", "formula": "sigmoid(logit)"},
        },
        "threshold": float(hparams.threshold),
        "decision": "a study is abnormal when its probability > threshold",
        "study_rule": "a study's probability is the mean of its views' (images') probabilities",
    }
    if model.is_study_model:  # one study in, its probability out
        contract["input"]["shape"] = ["views", 1, size, size]
        contract["input"]["layout"] = "NCHW, one grayscale channel; N: the views of ONE study (1 or more)"
        contract["network_input_shape"] = ["views", channels, size, size]
        contract["outputs"] = {
            "logit": {"shape": [1], "dtype": "float32", "meaning": "the logit of 'abnormal' of the study"},
            "probability": {"shape": [1], "dtype": "float32", "formula": "sigmoid(logit)"},
        }
        contract["study_rule"] = (f"the model pools the study's views itself ({hparams.study_pooling} pooling over "
                                  "the views' embeddings); pass every view of one study at a time")
    return contract


def _file_description(path: Path, export_format: str) -> dict:
    if export_format == "onnx":
        return {"name": path.name, "format": "onnx", "opset": ONNX_OPSET, "load": "onnxruntime.InferenceSession(path)"}
    return {"name": path.name, "format": "torchscript", "torch": torch.__version__.split("+")[0],
            "load": "torch.jit.load(path) (Python) or torch::jit::load (libtorch)"}


def export_with_contract(
    model: MuraClassifier,
    checkpoint_path: str | Path,
    output_dir: str | Path,
    export_format: str,
    check_images: int = 4,
    tolerance: float = 1e-4,
) -> tuple[Path, Path]:
    """Write the model file and `<file>.json` beside it (the contract, with the check's result when
    `check_images` > 0). A check above `tolerance` raises, and no contract is written for that file."""
    if export_format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, not {export_format!r}")
    model_path = Path(output_dir) / FILE_NAMES[export_format]
    contract_path = model_path.with_name(model_path.name + ".json")
    contract_path.unlink(missing_ok=True)  # a contract left from an earlier export must not vouch for this file
    EXPORTERS[export_format](model, model_path)
    contract = {**preprocessing_contract(model, checkpoint_path), "file": _file_description(model_path, export_format)}
    if check_images > 0:
        images = example_input(model, check_images, seed=1)
        difference = check_export(model, model_path, images)
        log.info("%s: largest difference from PyTorch (logit or probability) on %d synthetic images: %.2e (tolerance %.0e)",
                 model_path, check_images, difference, tolerance)
        if not difference <= tolerance:
            raise ExportMismatchError(
                f"{model_path}: its outputs differ from PyTorch's by {difference:.2e} (tolerance {tolerance:.0e}) "
                f"on {check_images} synthetic images, so no contract was written: do not deploy this file"
            )
        contract["check"] = {"images": check_images, "max_abs_difference": difference, "of": list(OUTPUT_NAMES),
                             "tolerance": tolerance}
        if model.is_study_model:
            contract["check"]["studies_of_views"] = list(STUDY_CHECK_VIEWS)
    contract_path.write_text(json.dumps(contract, indent=2) + "\n")
    return model_path, contract_path
