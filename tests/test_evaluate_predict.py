from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from command_process import run_command
from conftest import CONF_DIR, compose_config
from mura.app.errors import CheckpointError, ConfigError
from mura.app.paths import expand_paths
from mura.evaluate import evaluate
from mura.models.checkpoint import load_classifier, read_checkpoint
from mura.predict import predict


def evaluate_config(root: Path, output_dir: Path, ckpt, *extra: str):
    ckpt_override = f"ckpt_path=[{','.join(map(str, ckpt))}]" if isinstance(ckpt, list) else f"ckpt_path={ckpt}"
    overrides = [ckpt_override, f"data.root={root}", "data.num_workers=0", f"paths.output_dir={output_dir}", *extra]
    return compose_config(overrides, config_name="evaluate")


def all_numbers(report: dict) -> list[float]:
    values = []
    for groups in report.values():
        for metrics in groups.values():
            for value in metrics.values():
                values += value if isinstance(value, list) else [value]
    return [v for v in values if v is not None]


def test_evaluate_reproduces_the_training_test_numbers(trained_run, synthetic_root: Path, tmp_path: Path):
    run_dir, _ = trained_run
    report = evaluate(evaluate_config(synthetic_root, tmp_path, run_dir / "checkpoints" / "best.ckpt"))
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert np.allclose(all_numbers(report), all_numbers(trained), atol=1e-6, rtol=0)
    ours = pd.read_csv(tmp_path / "predictions.csv").set_index("study")
    theirs = pd.read_csv(run_dir / "predictions.csv").set_index("study")
    assert np.allclose(ours.loc[theirs.index, "probability"], theirs["probability"], atol=1e-6)
    for name in ("metrics.json", "report.md", "roc.png", "confusion.png", "predictions_images.csv"):
        assert (tmp_path / name).is_file()
    written = sorted(path.name for path in tmp_path.iterdir())
    help_text = OmegaConf.load(CONF_DIR / "evaluate.yaml").hydra.help.template
    assert [name for name in written if name not in help_text] == []  # --help names every file it writes
    markdown = (tmp_path / "report.md").read_text()
    assert "| overall" in markdown and "0.705 (0.700 to 0.710)" in markdown  # the paper's overall kappa beside ours


def test_evaluation_from_the_cache_with_normalisation_on_the_device_equals_the_plain_path(
        trained_run, synthetic_root: Path, tmp_path: Path):
    """What mura.evaluate does by default on a GPU (conf/evaluate.yaml), checked against the plain path."""
    best = trained_run[0] / "checkpoints" / "best.ckpt"
    plain = evaluate(evaluate_config(synthetic_root, tmp_path / "plain", best, "data.cache=false", "data.augment_on_device=false"))
    fast = evaluate(evaluate_config(synthetic_root, tmp_path / "fast", best, "data.cache=true", "data.augment_on_device=true",
                                    f"data.cache_dir={tmp_path / 'cache'}"))
    assert list((tmp_path / "cache").glob("*.u8"))
    assert np.allclose(all_numbers(fast), all_numbers(plain), atol=1e-5, rtol=0)
    plain_studies, fast_studies = (pd.read_csv(tmp_path / name / "predictions.csv") for name in ("plain", "fast"))
    assert np.allclose(fast_studies["probability"], plain_studies["probability"], atol=1e-5)


@pytest.fixture(scope="module")
def wrist_hand_run(synthetic_root: Path, tmp_path_factory) -> Path:
    """A second, different model: another seed (and so another validation split), wrist and hand only."""
    from conftest import tiny_training_overrides
    from mura.train import train

    output_dir = tmp_path_factory.mktemp("wrist_hand_run")
    train(compose_config([*tiny_training_overrides(synthetic_root, output_dir), "seed=7", "data.body_parts=[XR_WRIST,XR_HAND]",
                          "trainer.max_epochs=1", "callbacks.gradcam.every_n_epochs=0"]))
    return output_dir


def image_probabilities(folder: Path) -> pd.Series:
    return pd.read_csv(folder / "predictions_images.csv").set_index("path")["probability"].sort_index()


def test_an_ensemble_is_the_mean_of_its_members_probabilities(trained_run, wrist_hand_run, synthetic_root: Path, tmp_path: Path):
    members = [trained_run[0] / "checkpoints" / "best.ckpt", wrist_hand_run / "checkpoints" / "best.ckpt"]
    for index, member in enumerate(members):
        evaluate(evaluate_config(synthetic_root, tmp_path / str(index), member, "data.body_parts=[XR_WRIST]"))
    ensemble = evaluate(evaluate_config(synthetic_root, tmp_path / "ensemble", members, "data.body_parts=[XR_WRIST]"))
    first, second = image_probabilities(tmp_path / "0"), image_probabilities(tmp_path / "1")
    assert not np.allclose(first, second)  # two different models, or this test would prove nothing
    assert np.allclose(image_probabilities(tmp_path / "ensemble"), (first + second) / 2, atol=1e-9)
    assert set(ensemble["study"]) == {"overall", "XR_WRIST"}
    assert "Evaluation (ensemble of 2)" in (tmp_path / "ensemble" / "report.md").read_text()
    with pytest.raises(ConfigError, match="trained on different body parts"):
        evaluate(evaluate_config(synthetic_root, tmp_path / "mixed", members))


def test_tta_is_the_mean_of_each_image_and_its_mirror(trained_run, synthetic_root: Path, tmp_path: Path):
    from mura.data.datamodule import MuraDataModule

    best = trained_run[0] / "checkpoints" / "best.ckpt"
    evaluate(evaluate_config(synthetic_root, tmp_path, best, "eval.tta=true"))
    model = load_classifier(best)
    module = MuraDataModule(root=str(synthetic_root), image_size=model.hparams.image_size, recipe=model.hparams.recipe,
                            channels=model.hparams.in_channels, num_workers=0, val_fraction=0.3)
    module.setup("test")
    batch = next(iter(module.dataloader("test", shuffle=False)))
    with torch.inference_mode():
        plain = torch.sigmoid(model(batch["image"]).double())
        mirrored = torch.sigmoid(model(torch.flip(batch["image"], dims=[-1])).double())
    expected = ((plain + mirrored) / 2).numpy()
    assert not np.allclose(plain.numpy(), expected)  # the mirror changes something
    assert np.allclose(image_probabilities(tmp_path).loc[batch["path"]].to_numpy(), expected, atol=1e-6)


def test_confidence_intervals_are_a_patient_bootstrap_that_contains_the_estimate(trained_run, synthetic_root: Path, tmp_path: Path):
    report = evaluate(evaluate_config(synthetic_root, tmp_path, trained_run[0] / "checkpoints" / "best.ckpt",
                                      "eval.bootstrap=300"))
    for level in ("study", "image"):
        overall = report[level]["overall"]
        assert overall["bootstrap_replicates"] == 300
        for name in ("kappa", "auroc"):
            low, high = overall[f"{name}_ci95"]
            assert low <= overall[name] <= high, (level, name)
        assert overall["auroc_ci95"][0] < overall["auroc_ci95"][1]  # (this barely trained model's kappa may be 0 throughout)
        assert overall["kappa_ci95_se"] is not None  # kept, named for what it is
    assert "percentile bootstrap over patients (300 replicates" in (tmp_path / "report.md").read_text()


def test_the_validation_split_is_the_training_runs_own(trained_run, wrist_hand_run, synthetic_root: Path, tmp_path: Path):
    """Rebuilt from the checkpoint's record (split seed, fraction, body parts, a digest of the patients); a setting
    that would give another split is refused."""
    run_dir = trained_run[0]
    best = run_dir / "checkpoints" / "best.ckpt"
    evaluate(evaluate_config(synthetic_root, tmp_path / "val", best, "eval.split=val"))
    trained = pd.read_csv(run_dir / "splits.csv")
    scored = pd.read_csv(tmp_path / "val" / "predictions.csv")
    assert set(scored["study"]) == set(trained.loc[trained["split"] == "val", "study"])
    assert (scored["patient"] == scored["study"].str.split("/").str[2]).all()  # MURA's patient ids, not an index
    # Training wrote the same predictions of its selected checkpoint (what mura.compare pools over folds) ...
    written = pd.read_csv(run_dir / "val_predictions.csv").set_index("study")
    assert list(written.columns) == list(scored.set_index("study").columns)
    assert np.allclose(written.loc[scored["study"], "probability"], scored["probability"], atol=1e-6)
    images = pd.read_csv(run_dir / "val_predictions_images.csv")
    assert set(images["path"]) == set(trained.loc[trained["split"] == "val", "path"])
    # ... whose kappa is the one the fit logged at the selected epoch (scored again only when the fit validated another
    # epoch last); the history holds the fit's epochs only.
    selected = json.loads((run_dir / "selection.json").read_text())["epoch"]
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    logged = history[selected]["val/study/kappa"]
    rescored = "val_predictions_s" in json.loads((run_dir / "timings.json").read_text())["after_fit"]
    assert rescored == (selected != history[-1]["epoch"])  # the last validation's own predictions, when they are these
    assert cohen_kappa_score(written["label"], written["prediction"]) == pytest.approx(logged, abs=1e-6)
    for override in ("data.split_seed=999", "data.val_fraction=0.5"):
        with pytest.raises(ConfigError, match="differs from the training run's"):
            evaluate(evaluate_config(synthetic_root, tmp_path / "other", best, "eval.split=val", override))
    # Without data.body_parts, a wrist-and-hand model is scored on wrists and hands only ...
    wrist_hand = wrist_hand_run / "checkpoints" / "best.ckpt"
    report = evaluate(evaluate_config(synthetic_root, tmp_path / "own_parts", wrist_hand))
    assert set(report["study"]) == {"overall", "XR_HAND", "XR_WRIST"}
    # ... and on every part's validation studies, none of its training patients appear.
    evaluate(evaluate_config(synthetic_root, tmp_path / "val_all", wrist_hand, "eval.split=val", "data.body_parts=all"))
    scored = set(pd.read_csv(tmp_path / "val_all" / "predictions.csv")["study"].str.split("/").str[2])
    its_training = pd.read_csv(wrist_hand_run / "splits.csv").query("split == 'train'")["patient"]
    assert scored and not scored & set(its_training)
    with pytest.raises(ConfigError, match="different validation splits"):
        evaluate(evaluate_config(synthetic_root, tmp_path / "mixed", [best, wrist_hand], "eval.split=val", "data.body_parts=all"))


def test_checkpoints_given_as_a_glob_pattern_expand_in_sorted_order(tmp_path: Path):
    for job in ("1", "0", "10"):  # a multirun's job folders
        (tmp_path / job / "checkpoints").mkdir(parents=True)
        (tmp_path / job / "checkpoints" / "best.ckpt").touch()
    pattern = f"{tmp_path}/*/checkpoints/best.ckpt"
    cfg = evaluate_config(tmp_path, tmp_path, f"'{pattern}'")  # quoted, as on the command line
    expected = [str(tmp_path / job / "checkpoints" / "best.ckpt") for job in ("0", "1", "10")]
    assert expand_paths(cfg.ckpt_path, "ckpt_path") == expected
    assert expand_paths([str(tmp_path / "1" / "checkpoints" / "best.ckpt"), pattern], "ckpt_path") == [expected[1], *expected]
    with pytest.raises(ConfigError, match="ckpt_path pattern .* matches nothing"):
        expand_paths(f"{tmp_path}/*/checkpoints/last.ckpt", "ckpt_path")


def test_not_a_mura_checkpoint_is_refused(tmp_path: Path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="not a mura checkpoint"):
        read_checkpoint(plain)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a loadable mura checkpoint"):
        read_checkpoint(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")


class _Payload:
    """Unpickling this would create a file: the loader must refuse it without running it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"mura": {"format": 1}, "payload": _Payload(str(marker))}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="not a loadable"):
        read_checkpoint(evil)
    assert not marker.exists()


def test_checkpoint_of_another_format_is_refused(trained_run, tmp_path: Path):
    run_dir, _ = trained_run
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    checkpoint["mura"]["format"] = 99
    future = tmp_path / "future.ckpt"
    torch.save(checkpoint, future)
    with pytest.raises(CheckpointError, match="format 99"):
        load_classifier(future)


def test_predict_reports_each_study_and_goes_on(trained_run, synthetic_root: Path, tmp_path: Path):
    run_dir, _ = trained_run
    inputs = tmp_path / "inputs"
    good_study = inputs / "XR_WRIST" / "patient1" / "study1"
    good_study.mkdir(parents=True)
    source = sorted((synthetic_root / "valid" / "XR_WRIST").rglob("image*.png"))[:2]
    for index, path in enumerate(source):
        (good_study / f"image{index + 1}.png").write_bytes(path.read_bytes())
    (good_study / "scan.dat").write_bytes(b"not an image")  # tried, and reported
    (good_study / "readme.txt").write_text("notes")  # not a view, as the release's CSVs beside the studies
    (inputs / "valid_image_paths.csv").write_text("MURA-v1.1/valid/XR_WRIST/patient1/study1/image1.png\n")
    (good_study / "._image1.png").write_bytes(b"\x00\x05\x16\x07")
    big = inputs / "big"
    big.mkdir()
    Image.new("L", (2000, 2000)).save(big / "huge.png")
    (inputs / "empty").mkdir()
    cfg = compose_config([f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"input={inputs}", "cam=true",
                          "max_pixels=1000000", f"paths.output_dir={tmp_path / 'out'}"], config_name="predict")
    lines = {Path(line["study"]).name: line for line in predict(cfg)}
    study = lines["study1"]
    assert study["body_part"] == "XR_WRIST" and len(study["views"]) == 2
    assert study["probability"] == pytest.approx(np.mean([view["probability"] for view in study["views"]]))
    assert study["abnormal"] == (study["probability"] > 0.5)
    assert [Path(s["path"]).name for s in study["skipped"]] == ["scan.dat"]
    assert set(lines) == {"study1", "big", "empty"}  # the folder holding the CSV is no study
    assert Path(study["cam"][0]).is_file()
    assert lines["big"]["error"] == "no readable image" and "decompression bomb" in lines["big"]["skipped"][0]["reason"]
    assert lines["empty"]["error"] == "no files to read"
    written = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(written) == 3
    # Stanford's submission format: only the decided study, no header; outside a release (no split folder above the
    # body part), spelled from the input's own name on.
    official = (tmp_path / "out" / "predictions_official.csv").read_text()
    assert official == f"inputs/XR_WRIST/patient1/study1/,{int(study['abnormal'])}\n"


def test_predictions_inside_a_renamed_release_are_spelled_as_its_csvs(trained_run, synthetic_root: Path, tmp_path: Path):
    """Stanford's evaluation joins on the exact study string: predictions of /data/my_mura/valid/... must read
    MURA-v1.1/valid/..., as valid_labeled_studies.csv does, or none of them is scored."""
    renamed = tmp_path / "my_mura"
    renamed.symlink_to(synthetic_root, target_is_directory=True)
    cfg = compose_config([f"ckpt_path={trained_run[0] / 'checkpoints' / 'best.ckpt'}", f"input={renamed / 'valid'}",
                          f"paths.output_dir={tmp_path / 'out'}"], config_name="predict")
    decided = [line for line in predict(cfg) if "abnormal" in line]
    official = pd.read_csv(tmp_path / "out" / "predictions_official.csv", header=None, names=["study", "prediction"])
    labelled = pd.read_csv(synthetic_root / "valid_labeled_studies.csv", header=None, names=["study", "label"])
    assert official["study"].iloc[0].startswith("MURA-v1.1/valid/XR_")
    joined = official.merge(labelled, on="study")  # the official script's inner join
    assert len(joined) == len(official) == len(decided) == len(labelled)


def test_predict_on_nothing_is_an_error_not_an_empty_success(trained_run, tmp_path: Path):
    """It used to exit 0 saying one study was predicted, the error only inside its JSON line."""
    checkpoint = trained_run[0] / "checkpoints" / "best.ckpt"
    empty = tmp_path / "empty"
    (empty / "study1").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    for target, message in ((tmp_path / "nowhere", "nowhere: no such file or folder"), (empty, "no files to predict")):
        cfg = compose_config([f"ckpt_path={checkpoint}", f"input={target}", f"paths.output_dir={tmp_path / 'out'}"],
                             config_name="predict")
        with pytest.raises(ConfigError, match=message):
            predict(cfg)
    assert not (tmp_path / "out").exists()


def test_predict_with_nothing_predictable_exits_2_naming_the_files(trained_run, tmp_path: Path, caplog):
    """A text file named .png, or notes.txt, used to give exit 0, "1 study predicted, 1 with problems" and an empty
    predictions_official.csv."""
    from mura.predict import main

    checkpoint = trained_run[0] / "checkpoints" / "best.ckpt"
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image either")
    for target, message in ((fake, f"input={fake}: nothing could be predicted: {fake}: "),
                            (notes, f"input={notes}: not an image")):
        out = tmp_path / f"out_{target.stem}"
        caplog.clear()
        with pytest.raises(SystemExit) as stopped:  # the command's own main, as `python -m mura.predict` runs it
            main(compose_config([f"ckpt_path={checkpoint}", f"input={target}", f"paths.output_dir={out}"],
                                config_name="predict"))
        assert stopped.value.code == 2
        assert message in caplog.text
        assert not (out / "predictions_official.csv").exists()


@pytest.mark.slow
def test_predict_command_into_a_closed_pipe(trained_run, synthetic_root: Path, tmp_path: Path):
    run_dir, _ = trained_run
    # `| head -n 1` on a folder of studies: the first line, then a quiet end (it was a BrokenPipeError, exit 1).
    piped = run_command("mura.predict", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"input={synthetic_root / 'valid'}",
                                         f"hydra.run.dir={tmp_path / 'piped'}"], tmp_path, piped_into=["head", "-n", "1"])
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr
    assert "stdout was closed after" in piped.stderr
    [line] = [json.loads(text) for text in piped.stdout.splitlines()]
    assert line["study"].startswith(str(synthetic_root / "valid")) and 0 < line["probability"] < 1


def test_evaluate_without_a_data_root_says_what_to_do(trained_run, tmp_path: Path, monkeypatch):
    from mura.data.index import MuraDataError

    monkeypatch.delenv("MURA_ROOT", raising=False)
    cfg = compose_config([f"ckpt_path={trained_run[0] / 'checkpoints' / 'best.ckpt'}", f"paths.output_dir={tmp_path}"],
                         config_name="evaluate")
    with pytest.raises(MuraDataError, match="data.root is not set.*data=synthetic"):
        evaluate(cfg)


def test_an_earlier_selected_epoch_has_its_validation_predictions_scored_again(synthetic_root: Path, tmp_path: Path):
    """Without BatchNorm and at learning rate 0 every epoch scores the same, so the first epoch stays selected (a
    tie never replaces it) and the fit's last validation is not the selected one's: training scores best.ckpt again."""
    from conftest import tiny_training_overrides
    from mura.train import train

    run_dir = tmp_path / "run"
    train(compose_config([*tiny_training_overrides(synthetic_root, run_dir), "model=seed_cnn", "data.image_size=96",
                          "model.optimizer.lr=0", "test=false", "~callbacks.gradcam"]))
    assert json.loads((run_dir / "selection.json").read_text())["epoch"] == 0
    assert [row["epoch"] for row in json.loads((run_dir / "history.json").read_text())] == [0, 1]
    assert "val_predictions_s" in json.loads((run_dir / "timings.json").read_text())["after_fit"]  # scored again
    evaluate(evaluate_config(synthetic_root, tmp_path / "val", run_dir / "checkpoints" / "best.ckpt", "eval.split=val"))
    scored = pd.read_csv(tmp_path / "val" / "predictions.csv").set_index("study")
    written = pd.read_csv(run_dir / "val_predictions.csv").set_index("study")
    assert sorted(written.index) == sorted(scored.index)
    assert np.allclose(written.loc[scored.index, "probability"], scored["probability"], atol=1e-6)
