"""Study models (model.study_pooling=max|attention): the pooling's invariants on the module, study batches, and one
real attention run on the tiny tree (studies of 1 to 5 views) read by every downstream path: its run folder, the
loss weights, mura.evaluate (alone and in an ensemble with a view model), mura.predict, the Grad-CAM figures and
export. The resume test (tests/test_resume_schedules.py) and the two-process test (tests/test_reliability.py) run a
study model too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config, tiny_training_overrides
from mura.data.audit import paper_loss_weights
from mura.data.images import load_grayscale
from mura.data.study_batches import MuraStudyDataset, collate_studies
from mura.evaluate import evaluate
from mura.inference.export import export_with_contract, run_exported
from mura.models.backbones import classifier_head, view_embedding
from mura.models.checkpoint import load_classifier, read_checkpoint
from mura.models.classifier import MuraClassifier
from mura.models.study_pooling import padded
from mura.predict import predict

VIEWS = (1, 2, 3, 4, 5)


def study_model(pooling: str, backbone: str = "densenet_small", image_size: int = 32) -> MuraClassifier:
    torch.manual_seed(0)
    return MuraClassifier(backbone=backbone, in_channels=1, image_size=image_size, study_pooling=pooling).eval()


def flat(studies: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The views of several studies as a study batch lays them out."""
    view_study = torch.cat([torch.full((len(views),), index) for index, views in enumerate(studies)])
    view_position = torch.cat([torch.arange(len(views)) for views in studies])
    return torch.cat(studies), view_study, view_position


@pytest.mark.parametrize(("pooling", "backbone", "size"), [("max", "densenet_small", 32), ("attention", "densenet_small", 32),
                                                        ("attention", "timm/test_resnet", 32), ("max", "seed_cnn", 96)])
def test_padding_never_changes_a_studys_output(pooling: str, backbone: str, size: int):
    """Every kind of backbone: its embedding and its own head give the study's logit."""
    model = study_model(pooling, backbone, size)
    generator = torch.Generator().manual_seed(1)
    studies = [torch.rand(views, 1, size, size, generator=generator) for views in VIEWS]
    with torch.no_grad():  # the embedding through the head is the network itself: the view model's logit
        views = studies[-1]
        assert classifier_head(model.network)(view_embedding(model.network, views)).squeeze(1) == pytest.approx(
            model(views), abs=1e-6)
    with torch.no_grad():
        batched, weights = model.study_forward(*flat(studies), len(studies))
        for index, views in enumerate(studies):
            alone, alone_weights = model.study_forward(*flat([views]), 1)
            # Alone, or padded to the batch's five views beside four other studies: the same study probability.
            assert torch.sigmoid(alone) == pytest.approx(torch.sigmoid(batched[index : index + 1]), abs=1e-5)
            # The exported path (no batch layout) gives the same numbers.
            single, single_weights = model.pooling.single_study(view_embedding(model.network, views),
                                                                classifier_head(model.network))
            assert single == pytest.approx(alone, abs=1e-5)
            assert single_weights.tolist() == pytest.approx(alone_weights.tolist(), abs=1e-6)
    _, view_study, view_position = flat(studies)
    grid, mask = padded(weights, view_study, view_position, len(studies))
    assert mask.sum(dim=1).tolist() == list(VIEWS)
    assert (grid[~mask] == 0).all()  # nothing on padding
    if pooling == "attention":
        assert grid.sum(dim=1) == pytest.approx(torch.ones(len(VIEWS)), abs=1e-6)  # a distribution over real views
        assert (grid[mask] > 0).all()
    else:  # max: the view that gave the study its logit
        assert grid.sum(dim=1).tolist() == [1.0] * len(VIEWS)


def test_max_pooling_weighs_one_view_even_among_ties():
    model = study_model("max")
    view = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, weights = model.study_forward(*flat([view.repeat(3, 1, 1, 1)]), 1)  # three identical views: tied logits
        _, single = model.pooling.single_study(view_embedding(model.network, view.repeat(3, 1, 1, 1)),
                                               classifier_head(model.network))
    assert weights.tolist() == [1.0, 0.0, 0.0] and single.tolist() == [1.0, 0.0, 0.0]


def test_mean_is_todays_view_model(synthetic_root: Path, trained_run, tmp_path: Path):
    """The default (mean) builds the view model of before, with the same weights and image batches: its numbers are
    today's; a checkpoint written before the setting existed loads as a mean model."""
    cfg = compose_config(tiny_training_overrides(synthetic_root, tmp_path))
    assert cfg.model.study_pooling == "mean" and cfg.data.study_pooling == "mean"
    model = instantiate(cfg.model, _convert_="all")
    assert not model.is_study_model and model.pooling is None
    checkpoint = read_checkpoint(trained_run[0] / "checkpoints" / "best.ckpt")
    assert set(model.state_dict()) == set(checkpoint["state_dict"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert not datamodule.study_batches and "view_study" not in next(iter(datamodule.dataloader("val")))
    old = dict(checkpoint["hyper_parameters"])
    old.pop("study_pooling", None)
    assert MuraClassifier(**old).hparams.study_pooling == "mean"


def test_study_batches_group_views_and_draw_the_cap_per_epoch(synthetic_root: Path, tmp_path: Path):
    cfg = compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "model.study_pooling=attention",
                          "data.study_max_views=2"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    train = datamodule.dataset("train", augment=True)
    assert isinstance(train, MuraStudyDataset)
    studies = datamodule.studies[datamodule.studies["split"] == "train"]
    assert len(train) == len(studies)
    large = max(range(len(train)), key=lambda index: len(train.members[index]))
    assert len(train.members[large]) >= 3
    draws = {tuple(sample["image_idx"] for sample in train[(large, seed)]) for seed in range(8)}
    assert all(len(draw) == 2 for draw in draws) and len(draws) > 1  # two views, another pair as the seed changes
    assert len(train[large]) == len(train.members[large])  # evaluation: every view
    batch = collate_studies([train[(index, 7)] for index in range(4)])
    assert batch["image"].shape[0] == len(batch["view_study"]) == len(batch["path"])
    assert len(set(batch["augment_seed"].tolist())) == len(batch["path"])  # each view its own augmentation draw
    assert batch["view_study"].unique().tolist() == [0, 1, 2, 3] and len(batch["label"]) == 4
    for study in range(4):  # each view's study is the one its path names
        paths = [path for path, owner in zip(batch["path"], batch["view_study"].tolist(), strict=True) if owner == study]
        assert {path.rsplit("/", 1)[0] for path in paths} == {studies["study"].iloc[study]}
    skipped = collate_studies([[{"skipped": "a.png", "reason": "x"}], train[(0, 1)]])
    assert skipped["skipped"] == ["a.png"] and len(skipped["label"]) == 1  # a study without a readable view is left out


@pytest.fixture(scope="module")
def attention_run(synthetic_root: Path, tmp_path_factory) -> Path:
    from mura.train import train

    output_dir = tmp_path_factory.mktemp("attention_run")
    train(compose_config([*tiny_training_overrides(synthetic_root, output_dir), "model.study_pooling=attention"]))
    return output_dir


def test_a_study_model_trains_and_every_path_reads_it(attention_run: Path, trained_run, synthetic_root: Path,
                                                      tmp_path: Path):
    run = attention_run
    best = run / "checkpoints" / "best.ckpt"
    studies = pd.read_csv(run / "predictions.csv")
    images = pd.read_csv(run / "predictions_images.csv")
    splits = pd.read_csv(run / "splits.csv")
    test = splits[splits["split"] == "test"]
    assert sorted(studies["study"]) == sorted(test["study"].unique()) and len(images) == len(test)
    assert test.groupby("study").size().max() > 1  # studies of several views
    # One probability per study: each view's row carries its study's.
    assert (images.groupby("study")["probability"].nunique() == 1).all()
    # The loss weights balance the training studies, not images.
    counts = splits[splits["split"] == "train"].drop_duplicates("study")
    model = load_classifier(best, "cpu")
    for part in ("XR_WRIST", "XR_HAND"):
        normal = int(((counts["body_part"] == part) & (counts["label"] == 0)).sum())
        abnormal = int(((counts["body_part"] == part) & (counts["label"] == 1)).sum())
        expected = paper_loss_weights(normal, abnormal)["w_abnormal"]
        assert float(model.criterion.w_abnormal[model.criterion.body_parts.index(part)]) == pytest.approx(expected)
    # Its validation loss is the loss it trains on: one term per study, not per view (history at the selected epoch).
    validation = pd.read_csv(run / "val_predictions.csv")
    selected = json.loads((run / "selection.json").read_text())["epoch"]
    logged = json.loads((run / "history.json").read_text())[selected]["val/loss"]
    probability = torch.tensor(validation["probability"].to_numpy())
    recomputed = model.criterion(torch.logit(probability).float(), torch.tensor(validation["label"].to_numpy()).float(),
                                 torch.tensor([model.criterion.body_parts.index(part) for part in validation["body_part"]]))
    assert float(recomputed) == pytest.approx(logged, abs=1e-5)
    # mura.evaluate reproduces training's test predictions from the checkpoint alone.
    evaluate(compose_config([f"ckpt_path={best}", f"data.root={synthetic_root}", "data.num_workers=0",
                             f"paths.output_dir={tmp_path / 'alone'}"], config_name="evaluate"))
    scored = pd.read_csv(tmp_path / "alone" / "predictions.csv").set_index("study")
    assert np.allclose(scored.loc[studies["study"], "probability"], studies["probability"], atol=1e-6)
    assert "a study model (attention pooling)" in (run / "report.md").read_text()
    # Flip TTA: the mean of the study's probability and its mirrored views' study probability.
    evaluate(compose_config([f"ckpt_path={best}", f"data.root={synthetic_root}", "data.num_workers=0", "eval.tta=true",
                             f"paths.output_dir={tmp_path / 'tta'}"], config_name="evaluate"))
    tta = pd.read_csv(tmp_path / "tta" / "predictions.csv").set_index("study")
    largest = studies.loc[studies["n_views"].idxmax(), "study"]
    transform = model.eval_transform()
    paths = sorted((synthetic_root / largest).glob("*.png"))
    views = torch.stack([transform(torch.from_numpy(load_grayscale(path)).unsqueeze(0)) for path in paths])
    expected = (model.score_study(views)[0] + model.score_study(torch.flip(views, dims=[-1]))[0]) / 2
    assert tta.loc[largest, "probability"] == pytest.approx(expected, abs=1e-6)
    # An ensemble of the study model and a view model averages their study probabilities.
    view_best = trained_run[0] / "checkpoints" / "best.ckpt"
    evaluate(compose_config([f"ckpt_path=[{best},{view_best}]", f"data.root={synthetic_root}", "data.num_workers=0",
                             "data.body_parts=[XR_WRIST]", f"paths.output_dir={tmp_path / 'ensemble'}"],
                            config_name="evaluate"))
    evaluate(compose_config([f"ckpt_path={view_best}", f"data.root={synthetic_root}", "data.num_workers=0",
                             "data.body_parts=[XR_WRIST]", f"paths.output_dir={tmp_path / 'view'}"], config_name="evaluate"))
    ensemble, view = (pd.read_csv(tmp_path / name / "predictions.csv").set_index("study") for name in ("ensemble", "view"))
    expected = (scored.loc[ensemble.index, "probability"] + view.loc[ensemble.index, "probability"]) / 2
    assert np.allclose(ensemble["probability"], expected, atol=1e-9)
    # mura.predict: a study folder in, one probability out (training's), each view's weight beside its probability.
    study = studies.iloc[int(np.argmax(studies["n_views"]))]
    lines = predict(compose_config([f"ckpt_path={best}", f"input={synthetic_root / study['study']}", "cam=true",
                                    f"paths.output_dir={tmp_path / 'predict'}"], config_name="predict"))
    assert lines[0]["probability"] == pytest.approx(study["probability"], abs=1e-6)
    assert sum(view["weight"] for view in lines[0]["views"]) == pytest.approx(1.0, abs=1e-6)
    assert len(lines[0]["views"]) == study["n_views"] and Path(lines[0]["cam"][0]).is_file()
    # The Grad-CAM gallery of the selected checkpoint, drawn during training.
    assert list((run / "gradcam" / "final").glob("*.png"))
    selection = json.loads((run / "selection.json").read_text())
    assert selection["checkpoint"].endswith("best.ckpt")


def test_a_study_model_exports_one_study_in_one_probability_out(attention_run: Path, tmp_path: Path):
    best = attention_run / "checkpoints" / "best.ckpt"
    model = load_classifier(best, "cpu")
    path, contract_path = export_with_contract(model, best, tmp_path, "torchscript", check_images=3)
    contract = json.loads(contract_path.read_text())
    assert contract["input"]["shape"][0] == "views" and contract["outputs"]["probability"]["shape"] == [1]
    assert contract["check"]["studies_of_views"] == [1, 2, 5] and contract["check"]["max_abs_difference"] < 1e-5
    size = model.hparams.image_size
    views = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(3))
    outputs = run_exported(path, views)
    transform = model.eval_transform(resize=False)
    expected, _, _ = model.score_study(torch.stack([transform(view) for view in views]))
    assert outputs["probability"].shape == (1,)
    assert float(outputs["probability"][0]) == pytest.approx(expected, abs=1e-5)
