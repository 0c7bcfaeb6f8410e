"""mura.export: the exported file, run by its own runtime on real images, gives the probabilities of the
classifier's own evaluation path, and its JSON contract, applied as written, gives them too."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from command_process import run_command
from conftest import REPO, compose_config
from mura import __version__
from mura.app.errors import ConfigError
from mura.data.images import ImageDecodeError, load_grayscale
from mura.data.transforms import build_transforms
from mura.export import export
from mura.inference.export import ExportMismatchError, check_export, example_input, export_with_contract
from mura.models.checkpoint import load_classifier
from mura.models.classifier import MuraClassifier

# Logits and probabilities, absolute. TorchScript runs the very ATen kernels PyTorch does; what differs is the
# float32 sigmoid inside the file against mura.predict's float64 one, and the order of a few sums (about 1e-7).
# ONNX Runtime has its own convolution kernels, whose float32 sums run in another order (about 1e-6 on logits of
# magnitude 1-10). Both bounds leave an order of margin or more and still catch any wrong preprocessing number,
# which moves logits by 1e-2 or more.
TOLERANCE = {"torchscript": 1e-5, "onnx": 1e-4}
FORMATS = ("torchscript", "onnx")
MODELS = ("paper_gray", "paper_rgb", "seed")


def one_batch_run(root: Path, output_dir: Path, overrides: list[str]) -> Path:
    """A real training run of one batch: a checkpoint written by `mura.train`, in seconds."""
    from mura.train import train

    train(compose_config([
        f"data.root={root}", "trainer=cpu", "data.batch_size=8", "data.num_workers=0", "data.val_fraction=0.3",
        f"paths.output_dir={output_dir}", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "test=false", "~callbacks.gradcam",
        "~callbacks.learning_curves", *overrides,
    ]))
    return output_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def checkpoints(trained_run, synthetic_root: Path, tmp_path_factory) -> dict[str, Path]:
    """The demo's model (paper recipe, one channel), the paper recipe on three channels (as DenseNet-169), and the
    seed notebook's CNN with its per-image standardisation."""
    runs = tmp_path_factory.mktemp("export_runs")
    return {
        "paper_gray": trained_run[0] / "checkpoints" / "best.ckpt",
        "paper_rgb": one_batch_run(synthetic_root, runs / "rgb", ["model=densenet_small", "model.in_channels=3",
                                                                  "data.image_size=48"]),
        "seed": one_batch_run(synthetic_root, runs / "seed", ["model=seed_cnn", "data.recipe=seed", "data.image_size=96"]),
    }


@pytest.fixture(scope="module")
def raw_images(synthetic_root: Path) -> list[np.ndarray]:
    """Real radiographs of the tiny tree (RGB and grayscale files, several sizes), and one nearly flat image, whose
    standard deviation is below the seed recipe's floor."""
    images = []
    for path in sorted((synthetic_root / "valid").rglob("*.png"))[:6]:
        try:
            images.append(load_grayscale(path))
        except ImageDecodeError:
            continue  # the tree's deliberately broken files
    nearly_flat = np.full((70, 50), 128, dtype=np.uint8)
    nearly_flat[10:14, 20:24] = 129
    return [*images, nearly_flat]


@pytest.fixture(scope="module")
def exports(checkpoints: dict[str, Path], tmp_path_factory):
    """(model file, contract) per (model, format), written once by the library as the command does."""
    folder = tmp_path_factory.mktemp("exports")
    written: dict[tuple[str, str], tuple[Path, dict]] = {}

    def get(model_name: str, export_format: str) -> tuple[Path, dict]:
        if export_format == "onnx":
            pytest.importorskip("onnxscript")
            pytest.importorskip("onnxruntime")
        if (model_name, export_format) not in written:
            model = load_classifier(checkpoints[model_name])
            model_path, contract_path = export_with_contract(model, checkpoints[model_name], folder / model_name, export_format)
            written[model_name, export_format] = (model_path, json.loads(contract_path.read_text()))
        return written[model_name, export_format]

    return get


def pytorch_logits(model: MuraClassifier, raw_images: list[np.ndarray]) -> np.ndarray:
    """What `mura.predict` computes: the classifier's evaluation transforms on the uint8 image, then the model."""
    hparams = model.hparams
    transform = build_transforms(hparams.recipe, hparams.image_size, hparams.in_channels, train=False)
    batch = torch.stack([transform(torch.from_numpy(image).unsqueeze(0)) for image in raw_images])
    with torch.inference_mode():
        return model(batch).double().numpy()


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


def caller_preprocessing(raw_images: list[np.ndarray], contract: dict) -> np.ndarray:
    """The contract's `preprocessing_by_caller` from its numbers: resize (bilinear, antialiased, uint8), / 255."""
    batch_, channels, height, width = contract["input"]["shape"]
    assert channels == 1 and contract["input"]["dtype"] == "float32" and contract["input"]["value_range"] == [0.0, 1.0]
    resized = [v2.functional.resize(torch.from_numpy(image).unsqueeze(0), [height, width], antialias=True)
               for image in raw_images]
    return (torch.stack(resized).numpy() / 255.0).astype(np.float32)


def run_file(model_path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The exported file in its own runtime, loaded the way a deployer would."""
    if model_path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        assert [node.name for node in session.get_inputs()] == ["image"]
        logit, probability = session.run(["logit", "probability"], {"image": images})
        return {"logit": logit, "probability": probability}
    module = torch.jit.load(str(model_path))
    with torch.no_grad():
        logit, probability = module(torch.from_numpy(images))
    return {"logit": logit.numpy(), "probability": probability.numpy()}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # README: prefer ONNX
@pytest.mark.parametrize("export_format", FORMATS)
@pytest.mark.parametrize("model_name", MODELS)
def test_the_exported_file_gives_pytorchs_probabilities_on_real_images(
        model_name: str, export_format: str, exports, checkpoints, raw_images):
    model_path, contract = exports(model_name, export_format)
    expected = pytorch_logits(load_classifier(checkpoints[model_name]), raw_images)
    images = caller_preprocessing(raw_images, contract)
    outputs = run_file(model_path, images)
    assert outputs["logit"].shape == outputs["probability"].shape == (len(raw_images),)  # recorded with 2: dynamic
    assert outputs["probability"].dtype == np.float32
    assert np.abs(outputs["logit"] - expected).max() <= TOLERANCE[export_format]
    assert np.abs(outputs["probability"] - sigmoid(expected)).max() <= TOLERANCE[export_format]
    assert expected.std() > 1e-3  # the images give different logits: a constant output would not pass
    single = run_file(model_path, images[:1])
    assert np.abs(single["logit"] - expected[:1]).max() <= TOLERANCE[export_format]


def normalise_as_written(images: np.ndarray, spec: dict) -> np.ndarray:
    """`preprocessing_in_model`, implemented from the contract's words and numbers alone."""
    x = images.astype(np.float64)
    for step in spec["steps"]:
        if step == "repeat_channels":
            x = np.repeat(x, spec["repeat_channels"], axis=1)
        elif spec["normalize"]["name"] == "imagenet":
            mean = np.array(spec["normalize"]["mean"]).reshape(1, -1, 1, 1)
            std = np.array(spec["normalize"]["std"]).reshape(1, -1, 1, 1)
            x = (x - mean) / std
        else:
            assert spec["normalize"]["name"] == "per_image_standardization"
            mean = x.mean(axis=(1, 2, 3), keepdims=True)
            std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), spec["normalize"]["min_std"])
            x = (x - mean) / std
    return x


@pytest.mark.parametrize("model_name", MODELS)
def test_the_contracts_numbers_are_the_models_preprocessing(model_name: str, exports, checkpoints, raw_images):
    _, contract = exports(model_name, "torchscript")
    model = load_classifier(checkpoints[model_name])
    network_input = normalise_as_written(caller_preprocessing(raw_images, contract), contract["preprocessing_in_model"])
    assert list(network_input.shape[1:]) == contract["network_input_shape"][1:]
    with torch.inference_mode():
        logits = model.network(torch.from_numpy(network_input).float()).flatten().double().numpy()
    assert np.abs(logits - pytorch_logits(model, raw_images)).max() <= 1e-5


@pytest.mark.parametrize("export_format", FORMATS)
def test_the_contract_names_everything_a_deployer_needs(export_format: str, exports, checkpoints):
    model_path, contract = exports("seed", export_format)
    model = load_classifier(checkpoints["seed"])
    assert {"contract_format", "mura_version", "backbone", "recipe", "source_checkpoint", "input",
            "preprocessing_by_caller", "preprocessing_in_model", "network_input_shape", "outputs", "threshold",
            "decision", "study_rule", "file", "check"} <= set(contract)
    assert contract["mura_version"] == __version__
    assert (contract["backbone"], contract["recipe"]) == ("seed_cnn", "seed")
    assert contract["input"]["shape"] == ["batch", 1, 96, 96]
    assert contract["preprocessing_in_model"]["normalize"]["min_std"] == pytest.approx(1 / 96)
    assert contract["source_checkpoint"]["path"] == str(checkpoints["seed"].resolve())
    assert contract["source_checkpoint"]["sha256"] == hashlib.sha256(checkpoints["seed"].read_bytes()).hexdigest()
    assert contract["threshold"] == model.hparams.threshold
    assert set(contract["outputs"]) == {"logit", "probability"}
    assert "mean of its views" in contract["study_rule"]
    assert contract["file"]["name"] == model_path.name and contract["file"]["format"] == export_format
    recorded = contract["check"]
    assert recorded["tolerance"] == 1e-4 and recorded["images"] == 4
    # The recorded difference is the one measured on those images (the same check, run again, finds it), and never 0:
    # the file's float32 probabilities are not mura's float64 ones
    again = check_export(model, model_path, example_input(model, recorded["images"], seed=1))
    assert recorded["max_abs_difference"] == pytest.approx(again, rel=1e-6, abs=1e-12)
    assert 0 < recorded["max_abs_difference"] <= TOLERANCE[export_format]


def test_the_paper_contract_gives_imagenets_numbers(exports):
    gray = exports("paper_gray", "torchscript")[1]["preprocessing_in_model"]
    rgb = exports("paper_rgb", "torchscript")[1]["preprocessing_in_model"]
    assert rgb["steps"] == ["repeat_channels", "normalize"] and rgb["repeat_channels"] == 3
    assert rgb["normalize"]["mean"] == [0.485, 0.456, 0.406] and rgb["normalize"]["std"] == [0.229, 0.224, 0.225]
    assert gray["normalize"]["mean"] == pytest.approx([0.449]) and gray["normalize"]["std"] == pytest.approx([0.226])


def test_the_check_sees_a_model_that_differs_from_the_file(exports, checkpoints, raw_images):
    model_path, contract = exports("paper_gray", "torchscript")
    model = load_classifier(checkpoints["paper_gray"])
    images = torch.from_numpy(caller_preprocessing(raw_images, contract))
    assert check_export(model, model_path, images) <= TOLERANCE["torchscript"]
    with torch.no_grad():
        model.network.classifier.bias += 0.01
    assert check_export(model, model_path, images) == pytest.approx(0.01, abs=1e-5)


def export_config(checkpoint: Path, output: Path, *extra: str):
    return compose_config([f"ckpt_path={checkpoint}", f"output={output}", *extra], config_name="export")


def test_a_failed_check_leaves_no_contract(checkpoints, tmp_path: Path):
    """A tolerance of 0 cannot be met: the file's float32 probabilities are not mura's float64 ones."""
    stale = tmp_path / "model.torchscript.json"
    stale.write_text("{}")
    with pytest.raises(ExportMismatchError, match="no contract was written"):
        export(export_config(checkpoints["paper_gray"], tmp_path, "tolerance=0.0"))
    assert (tmp_path / "model.torchscript").is_file() and not stale.exists()


def test_onnx_without_its_packages_names_the_extra(checkpoints, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # how Python marks a package as not importable
    with pytest.raises(ConfigError, match=r"onnxruntime.*pip install 'mura\[export\]'"):
        export(export_config(checkpoints["paper_gray"], tmp_path, "format=onnx"))
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_is_refused(checkpoints, tmp_path: Path):
    with pytest.raises(ConfigError, match="format must be one of"):
        export(export_config(checkpoints["paper_gray"], tmp_path, "format=tflite"))


@pytest.mark.slow
def test_the_command_writes_the_file_and_its_contract(checkpoints, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_command("mura.export", [f"ckpt_path={checkpoints['paper_gray']}", f"hydra.run.dir={run_dir}"], REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f"model: {run_dir / 'model.torchscript'}",
                                          f"contract: {run_dir / 'model.torchscript.json'}"]
    contract = json.loads((run_dir / "model.torchscript.json").read_text())
    assert contract["check"]["images"] == 4 and contract["check"]["max_abs_difference"] <= 1e-4
    assert f"largest difference from PyTorch (logit or probability) on 4 synthetic images: " \
           f"{contract['check']['max_abs_difference']:.2e}" in result.stderr  # the contract records what was measured
