from __future__ import annotations

import atexit
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hydra.utils import instantiate

from conftest import CONF_DIR, compose_config, run_main_in_process
from conftest import tiny_training_overrides as tiny_overrides
from mura.train import instantiate_group

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
M_KEYS = {"n", "kappa", "kappa_ci95", "kappa_ci95_se", "auroc", "auroc_ci95", "accuracy", "sensitivity", "specificity",
          "bootstrap_replicates", "ece", "ece_bins", "brier"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment: str, synthetic_root: Path, tmp_path: Path):
    cfg = compose_config([f"experiment={experiment}", f"data.root={synthetic_root}",
                          f"paths.output_dir={tmp_path}", "model.pretrained=false"])
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    assert datamodule.image_size == model.hparams.image_size
    assert datamodule.channels == model.hparams.in_channels
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks), logger=instantiate_group(cfg.logger))
    assert trainer.max_epochs == cfg.trainer.max_epochs
    if experiment in ("wrist", "seed_wrist"):
        assert list(cfg.data.body_parts) == ["XR_WRIST"]
    if experiment.startswith("seed"):
        assert cfg.model.backbone == "seed_cnn" and cfg.data.image_size == 128 and not cfg.model.loss_weighted
    if experiment in ("wrist", "all_parts"):
        assert cfg.model.backbone == "densenet169" and cfg.data.image_size == 320 and cfg.model.optimizer.lr == 1e-4


def test_training_run_writes_the_whole_run_folder(trained_run):
    tmp_path, metrics = trained_run
    assert {"val/loss", "val/study/kappa", "train/loss", "test/study/kappa"} <= set(metrics)
    for name in ("splits.csv", "split_table.md", "metrics.json", "predictions.csv", "predictions_images.csv", "curves.png",
                 "val_predictions.csv", "val_predictions_images.csv",
                 "report.md", "roc.png", "confusion.png", "calibration.png", "report.html", "predictions_official.csv",
                 "history.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert set(report) == {"study", "image", "views"}  # views: study results by number of views per study
    assert set(report["study"]["overall"]) == M_KEYS
    splits = pd.read_csv(tmp_path / "splits.csv")
    test_studies = splits[splits["split"] == "test"]["study"].nunique()
    assert report["study"]["overall"]["n"] == test_studies
    assert report["image"]["overall"]["n"] == (splits["split"] == "test").sum()
    assert {part for part in report["study"] if part != "overall"} == set(splits.loc[splits["split"] == "test", "body_part"])
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    logged = pd.read_csv(tmp_path / "csv" / "metrics.csv")  # calibration is logged every epoch, with kappa and AUROC
    for stage in ("train", "val"):
        per_epoch = logged.dropna(subset=[f"{stage}/study/brier"])
        assert per_epoch["epoch"].tolist() == [0, 1] and per_epoch[f"{stage}/study/ece"].notna().all()
    assert {"val/image/brier", "val/study/XR_WRIST/ece"} <= set(logged.columns)
    assert {"train/loss", "val/loss", "train/study/kappa", "val/study/kappa"} <= set(history[0])
    gradcams = sorted((tmp_path / "gradcam").rglob("*.png"))
    assert {path.parent.name for path in gradcams} == {"epoch_000", "epoch_001", "final"}
    assert len(list((tmp_path / "gradcam" / "final").glob("*.png"))) == 2  # studies_per_class=1: a normal and an abnormal one
    checkpoint = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["mura"]["format"] == 1
    assert "criterion.w_abnormal" in checkpoint["state_dict"]
    timings = json.loads((tmp_path / "timings.json").read_text())
    # The fixture's run counts from its own start (a command's first run counts from the process start: the startup
    # measurement of tests/test_bench.py)
    assert timings["origin"] == "run start"
    assert 0 <= timings["fit_start_s"] < timings["first_step_s"]
    # The way to the first step, phase by phase, adds up to it. This run's origin is its own start, or the process's:
    # either way its data module and model were built after it.
    phases = timings["to_first_step"]
    assert list(phases) == ["imports, config, data module and model",
                            "Trainer, device, trackers and data setup (index, checks, split, cache)",
                            "model setup, to the device, optimizer", "fit-start hooks and the sanity check",
                            "first training step (workers, first batch, step)"]
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["imports, config, data module and model"] > 0 and phases["fit-start hooks and the sanity check"] > 0
    assert sum(phases.values()) == pytest.approx(timings["first_step_s"], abs=0.01)
    assert [epoch["epoch"] for epoch in timings["epochs"]] == [0, 1]
    for epoch in timings["epochs"]:
        assert epoch["train_s"] > 0 and epoch["val_s"] > 0 and epoch["figures_s"] > 0 and epoch["other_s"] >= 0
        # An epoch's parts add up to it: each figure counted once, apart from validation.
        parts = epoch["train_s"] + epoch["val_s"] + epoch["figures_s"] + epoch["other_s"]
        assert parts == pytest.approx(epoch["total_s"], abs=0.01)
    figures = [(figure["kind"], figure["name"], figure["epoch"]) for figure in timings["figures"]]
    # Galleries are drawn at the validation epoch's end, curves at validation's end, the final gallery after fit.
    assert figures == [("gallery", "epoch_000", 0), ("curves", "curves.png", 0), ("gallery", "epoch_001", 1),
                       ("curves", "curves.png", 1), ("gallery", "final", 2)]
    assert timings["first_epoch_vs_steady"] == pytest.approx(timings["first_epoch_train_s"] / timings["steady_epoch_train_s"], abs=0.01)
    # val_predictions_s: the selected checkpoint's validation scored again, when the fit's last one was another's
    assert set(timings["after_fit"]) - {"val_predictions_s"} == {"test_s", "final_gallery_s", "reports_s"}
    final_gallery = next(figure["seconds"] for figure in timings["figures"] if figure["name"] == "final")
    assert timings["after_fit"]["final_gallery_s"] >= final_gallery > 0
    assert timings["after_fit"]["test_s"] > 0 and timings["after_fit"]["reports_s"] > 0


def small_experiment_overrides(experiment: str, root: Path) -> list[str]:
    shrink = [] if experiment.startswith("seed") else ["data.image_size=32", "model.pretrained=false"]
    return [f"experiment={experiment}", f"data.root={root}", "data.batch_size=4", "data.num_workers=0",
            "trainer.accelerator=cpu", *shrink]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_one_real_epoch_of_every_experiment_writes_safe_checkpoints(experiment: str, synthetic_root: Path, tmp_path: Path):
    """A real epoch (fast_dev_run writes no checkpoint): every checkpoint loads with weights_only=True, so every config
    value that reached it is a plain Python value (the seed recipes' NAdam betas once arrived as a ListConfig and
    made testing the best checkpoint fail), and the seed recipes run to their test table."""
    from mura.train import train

    overrides = small_experiment_overrides(experiment, synthetic_root)
    limits = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2", "data.val_fraction=0.3",
              "callbacks.gradcam.every_n_epochs=0", "callbacks.gradcam.studies_per_class=1", "trainer.enable_progress_bar=false"]
    if not experiment.startswith("seed"):  # DenseNet-169 on a CPU: a few test batches show the same
        limits.append("+trainer.limit_test_batches=2")
    metrics = train(compose_config([*overrides, *limits, f"paths.output_dir={tmp_path}"]))
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(tmp_path / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert checkpoint["epoch"] == 0 and checkpoint["optimizer_states"]
    assert "test/study/kappa" in metrics and (tmp_path / "metrics.json").is_file()
    if experiment.startswith("seed"):
        report = json.loads((tmp_path / "metrics.json").read_text())
        assert report["study"]["overall"]["n"] == pd.read_csv(tmp_path / "splits.csv").query("split == 'test'")["study"].nunique()


@pytest.mark.slow
def test_optuna_receives_each_trials_selected_score_and_goes_on_past_an_undefined_one(synthetic_root: Path, tmp_path: Path,
                                                                                      capfd, monkeypatch):
    """A trial's value is the score of the checkpoint it selected (test=false: the value never depends on the test
    split); a trial whose score is undefined (an AUROC over one class) is recorded as failed and the search goes on.
    Two trials: the seeded sampler draws the undefined metric first, then val/study/kappa."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from mura.data.datamodule import MuraDataModule

    probe = MuraDataModule(root=str(synthetic_root), val_fraction=0.3, seed=12345, num_workers=0)
    probe.setup("validate")
    val = probe.split_frame("val").drop_duplicates("study")
    one_class = next(part for part, frame in val.groupby("body_part") if frame["label"].nunique() == 1)
    undefined = f"val/study/{one_class}/auroc"
    # The shipped search with its space replaced by the selection metric alone, as a config of its own (the
    # sweeper's params take no new keys from the command line).
    search = yaml.safe_load((CONF_DIR / "hparams_search" / "optuna.yaml").read_text())
    search["hydra"]["sweeper"]["params"] = {"selection.metric": f"choice(val/study/kappa,{undefined})"}
    (tmp_path / "configs" / "hparams_search").mkdir(parents=True)
    (tmp_path / "configs" / "hparams_search" / "probe.yaml").write_text("# @package _global_\n" + yaml.safe_dump(search))
    sweep_dir = tmp_path / "optuna"
    # The command's own main, in this process (the sweeper runs its trials in-process anyway; a second interpreter
    # would only add its start-up)
    monkeypatch.chdir(tmp_path)
    code = run_main_in_process("train", [
        "hparams_search=probe", f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "experiment=demo",
        f"data.root={synthetic_root}", "data.num_workers=0", "data.image_size=40", "data.val_fraction=0.3",
        "trainer.max_epochs=2", "callbacks.gradcam.every_n_epochs=0", "callbacks.gradcam.studies_per_class=1", "test=false",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0", f"hydra.sweep.dir={sweep_dir}"])
    printed = capfd.readouterr()
    assert code == 0, printed.err[-3000:]
    jobs = {json.loads((sweep_dir / job / "selection.json").read_text())["metric"]: json.loads((sweep_dir / job / "selection.json").read_text())
            for job in ("0", "1")}
    assert set(jobs) == {"val/study/kappa", undefined}
    assert jobs[undefined]["score"] is None  # undefined
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_params"]["selection.metric"] == "val/study/kappa"
    assert results["best_value"] == pytest.approx(jobs["val/study/kappa"]["score"])
    kappa_job = next(job for job in ("0", "1") if "val/study/kappa" in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text())
    history = json.loads((sweep_dir / kappa_job / "history.json").read_text())
    assert jobs["val/study/kappa"]["score"] == pytest.approx(max(row["val/study/kappa"] for row in history))
    assert f"selection.metric {undefined} is undefined" in printed.err
    assert "Failed experiment" in printed.out + printed.err  # the sweeper's word for a trial recorded as failed


def test_one_selection_rule_drives_checkpoint_early_stopping_and_the_sweeper(synthetic_root: Path, tmp_path: Path, monkeypatch):
    from mura.app.errors import ConfigError
    from mura.callbacks.gradcam import GradCamGallery
    from mura.train import sweep_value, train

    drawn = {}
    render = GradCamGallery.render

    def recording_render(self, trainer, pl_module, folder, when):
        drawn[folder] = {key: value.clone() for key, value in pl_module.state_dict().items()}
        return render(self, trainer, pl_module, folder, when)

    monkeypatch.setattr(GradCamGallery, "render", recording_render)
    cfg = compose_config([f"data.root={synthetic_root}", "selection.metric=val/study/auroc", "selection.mode=max",
                          f"paths.output_dir={tmp_path}"])
    assert (cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode) == ("val/study/auroc", "max")
    assert (cfg.callbacks.early_stopping.monitor, cfg.callbacks.early_stopping.mode) == ("val/study/auroc", "max")
    # The checkpoint selected by val/loss max (a rule that picks an early epoch here) is what is tested and drawn.
    overrides = [*tiny_overrides(synthetic_root, tmp_path / "run"), "trainer.max_epochs=3", "selection.mode=max",
                 "trainer.deterministic=true"]
    metrics = train(compose_config(overrides))
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    worst = max(history, key=lambda row: row["val/loss"])
    assert selection["epoch"] == worst["epoch"] and selection["score"] == pytest.approx(worst["val/loss"])
    assert sweep_value(metrics["selection/score"], "val/loss") == pytest.approx(worst["val/loss"])
    assert sweep_value(float("nan"), "val/study/kappa") is None
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == worst["epoch"]
    assert f"best.ckpt (epoch {worst['epoch']})" in (tmp_path / "run" / "report.md").read_text()
    # The final Grad-CAM gallery shows the selected, tested weights, not the last epoch's.
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2  # written every epoch, not only in epochs that improved the selection metric
    assert best["epoch"] != last["epoch"]  # else the gallery check below would prove nothing
    assert all(torch.equal(drawn["final"][key], value) for key, value in best["state_dict"].items())
    assert not all(torch.equal(drawn["final"][key], value) for key, value in last["state_dict"].items())
    with pytest.raises(ConfigError, match="not a metric training logs"):
        train(compose_config([*overrides, "selection.metric=test/study/kappa"]))


def test_tensorboard_logger_receives_curves_and_gradcam_figures(synthetic_root: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import tiny_training_overrides
    from mura.train import train

    train(compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "logger=tensorboard", "trainer.max_epochs=1",
                          "callbacks.gradcam.every_n_epochs=1"]))
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    images = events.Tags()["images"]
    # One series per gallery study: its picture after the epoch, then the final one (mura/callbacks/artifacts.py).
    gallery = sorted(path.stem for path in (tmp_path / "gradcam" / "final").glob("*.png"))
    assert sorted(tag.removeprefix("gradcam/") for tag in images if tag.startswith("gradcam/")) == gallery
    assert all(len(events.Images(f"gradcam/{name}")) == 2 for name in gallery)
    assert {"curves", "roc", "confusion", "calibration"} <= set(images)
    assert "report/text_summary" in events.Tags()["tensors"]
    assert "val/study/kappa" in events.Tags()["scalars"]


def test_a_run_that_fails_before_writing_anything_leaves_no_folder_and_every_other_keeps_its_own(
        synthetic_root: Path, tmp_path: Path, monkeypatch):
    """A debug=fdr run refused for a setting left outputs/debug/<time>/ behind, holding its log and config records
    only. The commands run through their Hydra mains in this process, and what they leave for the process's exit runs
    when each returns, as it would at exit."""

    from mura.app.run_start import only_start_records

    at_exit: list = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    monkeypatch.setattr(atexit, "unregister", lambda function: at_exit.remove(function) if function in at_exit else None)

    def process_exit() -> None:
        while at_exit:
            at_exit.pop()()

    def exit_after(command: str, args: list[str]) -> int | str | None:
        code = run_main_in_process(command, args)
        process_exit()
        return code

    refused = [f"data.root={synthetic_root}", "debug=fdr", "selection.metric=val/kappa"]
    outputs = tmp_path / "outputs"
    assert run_main_in_process("train", [*refused, f"hydra.run.dir={outputs / 'debug' / 'first'}"]) == 2
    assert sorted(path.name for path in (outputs / "debug" / "first").iterdir()) == [".hydra", "config.yaml", "train.log"]
    process_exit()
    assert not outputs.exists()  # outputs/debug/ as well: this run made it
    # A folder that was there before (an earlier run's, a resume's) stays, whatever the run wrote into it.
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    assert exit_after("train", [*refused, f"hydra.run.dir={earlier}"]) == 2
    assert sorted(path.name for path in earlier.iterdir()) == [".hydra", "config.yaml", "train.log"]
    # A run that finished keeps its folder, holding nothing else though it may (mura.synth writes elsewhere).
    made = tmp_path / "synth_run"
    assert exit_after("synth", [f"data.synthetic.dir={tmp_path / 'tiny' / 'MURA-v1.1'}", "data.synthetic.image_size=32",
                                "data.synthetic.train_patients_per_part=1", "data.synthetic.valid_patients_per_part=1",
                                f"hydra.run.dir={made}"]) == 0
    assert sorted(path.name for path in made.iterdir()) == [".hydra", "config.yaml", "synth.log"]
    # A run that got as far as writing anything of its own (its splits, a checkpoint) keeps its folder.
    assert only_start_records(made, "synth.log")
    (made / "checkpoints").mkdir()
    (made / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert not only_start_records(made, "synth.log")
    assert not only_start_records(made, "train.log")
