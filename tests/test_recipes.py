"""Beyond the paper's recipe: timm backbones, patient-grouped cross-validation, weight averaging, warm-up + cosine,
aspect-preserving resize. Real compositions, real trainers, tiny models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from conftest import compose_config, tiny_training_overrides
from mura.data.datamodule import MuraDataModule
from mura.data.index import build_index
from mura.data.split import assign_fold
from mura.data.transforms import resize_square
from mura.evaluate import evaluate
from mura.models.schedules import warmup_cosine
from mura.train import train

TINY_TIMM = "timm/resnet10t"


@pytest.mark.slow
def test_a_timm_backbone_trains_validates_explains_and_evaluates(trained_run, synthetic_root: Path, tmp_path: Path):
    """channels_last, the decode-once cache, device augmentation, the Grad-CAM gallery (target layer from timm's own
    feature information), mura.evaluate alone and in an ensemble with a torchvision DenseNet, mura.predict."""
    from mura.predict import predict

    run = tmp_path / "timm"
    train(compose_config([*tiny_training_overrides(synthetic_root, run), "model=timm", f"model.backbone={TINY_TIMM}",
                          "model.pretrained=false", "model.in_channels=1", "model.channels_last=true", "data.cache=true",
                          "data.augment_on_device=true", f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1"]))
    best = run / "checkpoints" / "best.ckpt"
    assert torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]["backbone"] == TINY_TIMM
    assert len(list((run / "gradcam" / "final").glob("*.png"))) >= 2
    alone = evaluate(compose_config([f"ckpt_path={best}", f"data.root={synthetic_root}", "data.num_workers=0",
                                     f"paths.output_dir={tmp_path / 'alone'}"], config_name="evaluate"))
    assert alone["study"]["overall"]["n"] > 0
    mixed = [best, trained_run[0] / "checkpoints" / "best.ckpt"]
    evaluate(compose_config([f"ckpt_path=[{mixed[0]},{mixed[1]}]", f"data.root={synthetic_root}", "data.num_workers=0",
                             f"paths.output_dir={tmp_path / 'mixed'}"], config_name="evaluate"))
    assert "ensemble of 2" in (tmp_path / "mixed" / "report.md").read_text()
    study = next((synthetic_root / "valid" / "XR_HAND").glob("patient*/study*"))
    [line] = predict(compose_config([f"ckpt_path={best}", f"input={study}", "cam=true", f"paths.output_dir={tmp_path / 'predict'}"],
                                    config_name="predict"))
    assert 0 < line["probability"] < 1 and Path(line["cam"][0]).is_file()


def test_timm_weights_from_a_file_load_strictly(tmp_path: Path):
    import timm

    from mura.app.errors import ConfigError
    from mura.models.backbones import build_backbone

    source = timm.create_model("resnet10t")  # ImageNet-shaped: 1,000 classes, three channels
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    model = build_backbone(TINY_TIMM, in_channels=1, weights_path=str(tmp_path / "imagenet.pth"))
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 1)
    kept = source.state_dict()["layer1.0.conv1.weight"]
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], kept)  # the file's weights, not fresh ones
    broken = {key: value for key, value in source.state_dict().items() if not key.startswith("layer4")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['layer4"):
        build_backbone(TINY_TIMM, weights_path=str(tmp_path / "broken.pth"))
    with pytest.raises(ConfigError, match="timm has no model"):
        build_backbone("timm/no_such_net")


def test_cross_validation_folds_are_patient_grouped_stratified_and_deterministic(synthetic_root: Path):
    index = build_index(synthetic_root)
    folds = [assign_fold(index, 4, fold, seed=3) for fold in range(4)]
    val_patients = [set(f.loc[f["split"] == "val", "patient"]) for f in folds]
    train_patients = set(index.loc[index["split"] == "train", "patient"])
    assert set().union(*val_patients) == train_patients  # every training patient validates exactly once
    assert sum(len(patients) for patients in val_patients) == len(train_patients)
    for fold in folds:
        assert not set(fold.loc[fold["split"] == "val", "study"]) & set(fold.loc[fold["split"] == "train", "study"])
        assert (fold.loc[fold["split"] == "test", "path"] == index.loc[index["split"] == "valid", "path"]).all()
    assert assign_fold(index, 4, 2, seed=3).equals(folds[2]) and not assign_fold(index, 4, 2, seed=4).equals(folds[2])
    abnormal = [f.loc[f["split"] == "val", "label"].mean() for f in folds]
    assert max(abnormal) - min(abnormal) < 0.25  # stratified by label (and body part) as far as patients allow
    module = MuraDataModule(root=str(synthetic_root), cv_folds=4, cv_fold=2, split_seed=3, num_workers=0)
    module.setup("validate")
    assert set(module.split_frame("val")["patient"]) == val_patients[2]
    assert module.state_dict()["split"]["cv_fold"] == 2


def test_weight_averaging_validates_saves_and_tests_the_averaged_weights(synthetic_root: Path, tmp_path: Path):
    run = tmp_path / "ema"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(compose_config([*tiny_training_overrides(synthetic_root, run), "model.ema.decay=0.5", "trainer.max_epochs=2",
                              "callbacks.gradcam.every_n_epochs=0"]))
    # Testing best.ckpt, which holds the averaging state, is no reason to warn that it "was not created with" it
    assert not [warning for warning in caught if "not created with WeightAveraging" in str(warning.message)]
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    averaged, current = best["state_dict"], best["current_model_state"]
    assert any(not torch.equal(averaged[key], current[key]) for key in averaged if key.startswith("network."))
    assert any(key.endswith("running_mean") and not torch.equal(averaged[key], current[key]) for key in averaged)  # BN too
    # The validation metrics of the selected epoch are those of the checkpoint's (averaged) weights.
    history = json.loads((run / "history.json").read_text())
    selected = next(row for row in history if row["epoch"] == best["epoch"])
    report = evaluate(compose_config([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"data.root={synthetic_root}",
                                      "eval.split=val", "eval.bootstrap=0", "data.num_workers=0",
                                      f"paths.output_dir={tmp_path / 'val'}"], config_name="evaluate"))
    assert report["study"]["overall"]["auroc"] == pytest.approx(selected["val/study/auroc"], abs=1e-6)
    # ... and the test after training scores them too (a leftover EMA callback once loaded the raw weights back).
    tested = evaluate(compose_config([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"data.root={synthetic_root}",
                                      "eval.bootstrap=0", "data.num_workers=0", f"paths.output_dir={tmp_path / 'test'}"],
                                     config_name="evaluate"))
    trained = json.loads((run / "metrics.json").read_text())
    for level in ("study", "image"):
        assert trained[level]["overall"]["auroc"] == pytest.approx(tested[level]["overall"]["auroc"], abs=1e-6)
        assert trained[level]["overall"]["brier"] == pytest.approx(tested[level]["overall"]["brier"], abs=1e-6)


def test_weight_averaging_that_has_not_started_leaves_the_run_as_without_it(trained_run, synthetic_root: Path, tmp_path: Path):
    """model.ema.start_step past the run's end: the average is never updated, so every validation, best.ckpt and the
    test are the live weights', as in the same run without averaging (the session's trained run); they were the random
    initial network's."""
    plain, _ = trained_run
    run = tmp_path / "late_ema"
    train(compose_config([*tiny_training_overrides(synthetic_root, run), "callbacks.gradcam.every_n_epochs=1",
                          "model.ema.decay=0.5", "model.ema.start_step=100000"]))
    assert json.loads((run / "history.json").read_text()) == json.loads((plain / "history.json").read_text())
    best, reference = (torch.load(folder / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
                       for folder in (run, plain))
    assert best["state_dict"].keys() == reference["state_dict"].keys()
    assert all(torch.equal(best["state_dict"][key], reference["state_dict"][key]) for key in reference["state_dict"])
    tested, expected = (json.loads((folder / "metrics.json").read_text())["study"]["overall"] for folder in (run, plain))
    assert tested["kappa"] == expected["kappa"] and tested["auroc"] == expected["auroc"]


def test_the_averaged_copy_follows_the_model_to_its_device():
    """Lightning makes the averaged copy in setup, before the strategy moves the model: on a GPU it stayed on the CPU
    and every step copied every weight across. Here the 'meta' device stands in for the GPU."""
    from mura.models.weight_averaging import EMAOnceUpdated

    module = pl.LightningModule()
    module.layer = torch.nn.Linear(2, 1)
    callback = EMAOnceUpdated(decay=0.9)
    callback.setup(None, module, "fit")
    assert not callback.has_average()  # nothing averaged yet: validation and checkpoints take the live weights
    module.to("meta")
    callback.on_fit_start(None, module)
    assert {tensor.device.type for tensor in [*callback._average_model.parameters(), *callback._average_model.buffers()]} == {"meta"}


def test_warmup_cosine_rises_then_decays_per_step(synthetic_root: Path, tmp_path: Path):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = warmup_cosine(optimizer, total_steps=20, steps_per_epoch=5, warmup_epochs=1)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] < rates[1] < rates[4] <= 1.0 and rates[4] == pytest.approx(5 / 6)
    assert rates[5] == pytest.approx(1.0) and all(a >= b for a, b in zip(rates[5:], rates[6:], strict=False))
    assert rates[-1] < 0.02  # 0.5 (1 + cos(pi 14/15)) = 0.011 one step before the end
    assert warmup_cosine(torch.optim.SGD([parameter], lr=1.0), 20, 5, warmup_steps=2).lr_lambdas[0](2) == pytest.approx(1.0)
    # Through the config group, stepped every optimizer step by a real trainer.
    cfg = compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "model/scheduler=warmup_cosine",
                          "trainer.max_epochs=2", "callbacks.gradcam.every_n_epochs=0", "callbacks.lr_monitor.logging_interval=step",
                          "trainer.log_every_n_steps=1"])
    train(cfg)
    logged = pd.read_csv(tmp_path / "csv" / "metrics.csv").dropna(subset=["lr-Adam"])["lr-Adam"].tolist()
    peak = cfg.model.optimizer.lr
    assert logged[0] < peak / 2 and max(logged) == pytest.approx(peak, rel=0.05) and logged[-1] < peak / 2
    assert len(logged) > 2 * 2  # per step, not per epoch


def test_pad_keeps_the_aspect_ratio_and_every_path_agrees(synthetic_root: Path, tmp_path: Path):
    tall = torch.full((1, 60, 30), 200, dtype=torch.uint8)
    padded = resize_square(tall, 32, "pad")
    assert padded.shape == (1, 32, 32)
    assert (padded[0, :, :8] == 0).all() and (padded[0, :, 24:] == 0).all() and (padded[0, :, 8:24] == 200).all()
    assert (resize_square(tall, 32, "squash") == 200).all()

    def val_images(**settings):
        module = MuraDataModule(root=str(synthetic_root), image_size=40, resize="pad", num_workers=0, val_fraction=0.3,
                                cache_dir=str(tmp_path / "cache"), **settings)
        module.setup("validate")
        dataset = module.dataset("val", augment=False)
        return torch.stack([dataset[index]["image"] for index in range(6)])

    plain, cached = val_images(), val_images(cache=True)
    assert torch.equal(plain, cached)
    from mura.data.device_augment import DeviceAugmentation

    raw = val_images(cache=True, augment_on_device=True)
    assert raw.dtype == torch.uint8
    assert torch.allclose(DeviceAugmentation("paper", 3)(raw, theta=None), plain, atol=1e-5)


def test_the_resize_mode_travels_with_the_checkpoint_and_the_export_contract(synthetic_root: Path, tmp_path: Path):
    from mura.inference.export import preprocessing_contract
    from mura.models.checkpoint import load_classifier

    train(compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "data.resize=pad", "trainer.max_epochs=1"]))
    best = tmp_path / "checkpoints" / "best.ckpt"
    model = load_classifier(best)
    assert model.hparams.resize == "pad"
    tall = torch.zeros((1, 60, 30), dtype=torch.uint8)
    tall[:, :, 10:20] = 255  # a bright bar in the middle third
    transformed = model.eval_transform()(tall)[0]
    # Padded, the bar keeps its third of the width (8 of 24 content columns); squashed, it would span 16 of 48.
    bright = (transformed[24] > transformed[24].min() + 1).sum().item()
    assert 7 <= bright <= 9
    contract = preprocessing_contract(model, best)
    assert contract["input"]["resize"] == "pad" and "aspect ratio" in " ".join(contract["preprocessing_by_caller"])
