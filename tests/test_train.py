from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF_DIR, compose_config
from mura.train import instantiate_group

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
M_KEYS = {"n", "kappa", "kappa_ci95", "auroc", "accuracy", "sensitivity", "specificity"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment: str, synthetic_root: Path, tmp_path: Path):
    cfg = compose_config([f"experiment={experiment}", f"data.root={synthetic_root}", "data.synthetic=null",
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
                 "report.md", "roc.png", "confusion.png",
                 "history.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert set(report) == {"study", "image"}
    assert set(report["study"]["overall"]) == M_KEYS
    splits = pd.read_csv(tmp_path / "splits.csv")
    test_studies = splits[splits["split"] == "test"]["study"].nunique()
    assert report["study"]["overall"]["n"] == test_studies
    assert report["image"]["overall"]["n"] == (splits["split"] == "test").sum()
    assert {part for part in report["study"] if part != "overall"} == set(splits.loc[splits["split"] == "test", "body_part"])
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    assert {"train/loss", "val/loss", "train/study/kappa", "val/study/kappa"} <= set(history[0])
    gradcams = sorted((tmp_path / "gradcam").rglob("*.png"))
    assert {path.parent.name for path in gradcams} == {"epoch_000", "epoch_001", "final"}
    assert len(list((tmp_path / "gradcam" / "final").glob("*.png"))) == 4
    checkpoint = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["mura"]["format"] == 1
    assert "criterion.w_abnormal" in checkpoint["state_dict"]


def run_cli(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "mura.train", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def fast_dev_run_overrides(experiment: str, root: Path) -> list[str]:
    shrink = [] if experiment.startswith("seed") else ["data.image_size=64", "model.pretrained=false"]
    return [f"experiment={experiment}", f"data.root={root}", "data.synthetic=null", "trainer.fast_dev_run=true",
            "data.batch_size=4", "data.num_workers=0", "trainer.accelerator=cpu", *shrink]


def test_all_parts_fast_dev_run_through_the_command_line(synthetic_root: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_cli([*fast_dev_run_overrides("all_parts", synthetic_root), f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert "Test split" in result.stdout
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "splits.csv").is_file()
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("experiment", [name for name in EXPERIMENTS if name != "all_parts"])
def test_fast_dev_run_of_every_other_experiment(experiment: str, synthetic_root: Path, tmp_path: Path):
    """The same, in this process (the command line adds only Hydra's run folder, tested above and by the sweeps)."""
    from mura.train import train

    metrics = train(compose_config([*fast_dev_run_overrides(experiment, synthetic_root), f"paths.output_dir={tmp_path}"]))
    assert "test/study/kappa" in metrics or "test/loss" in metrics
    assert (tmp_path / "splits.csv").is_file() and (tmp_path / "metrics.json").is_file()


def test_two_job_multirun(synthetic_root: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    run_cli(
        ["-m", "experiment=demo", f"data.root={synthetic_root}", "data.synthetic=null", "trainer.fast_dev_run=true",
         "data.num_workers=0", "data.image_size=48", "model.optimizer.lr=1e-4,3e-4", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
    )
    for job, lr in (("0", "0.0001"), ("1", "0.0003")):
        overrides = (sweep_dir / job / ".hydra" / "overrides.yaml").read_text()
        assert f"model.optimizer.lr={lr}" in overrides
        assert (sweep_dir / job / "metrics.json").is_file()
    # ... and one table of the sweep, read from the folders Hydra wrote.
    summary = subprocess.run([sys.executable, "-m", "mura.summarize", f"runs={sweep_dir}", f"hydra.run.dir={tmp_path / 'summary'}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0, summary.stderr[-2000:]
    table = pd.read_csv(tmp_path / "summary" / "summary.csv")
    assert sorted(table["settings"]) == ["model.optimizer.lr=0.0001", "model.optimizer.lr=0.0003"]
    assert "2 run(s)" in summary.stdout and "`experiment=demo`" in summary.stdout


def test_optuna_search_goes_on_past_a_trial_without_a_value(synthetic_root: Path, tmp_path: Path):
    """A trial whose metric is missing or undefined (kappa of a one-class validation split) is recorded as failed
    and the search goes on. Two trials, one scored on a metric that is never logged (which one is the seeded
    sampler's draw: val/undefined first, then val/study/kappa)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "optuna"
    result = run_cli(
        ["hparams_search=optuna", "experiment=demo", f"data.root={synthetic_root}", "data.synthetic=null", "data.num_workers=0",
         "data.image_size=40", "trainer.max_epochs=1", "callbacks.gradcam.every_n_epochs=0",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0",
         # every searched setting pinned but the metric; a `+` key, since the params node takes no new keys otherwise
         "hydra.sweeper.params={model.optimizer.lr:'choice(1e-3)',model.optimizer.weight_decay:'choice(0.0)',"
         "data.batch_size:'choice(16)',data.image_size:'choice(40)'}",
         "+hydra.sweeper.params.optimized_metric='choice(val/study/kappa,val/undefined)'",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
    )
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "optimized_metric: val/study/kappa" in results and "model.optimizer.lr" in results
    assert (sweep_dir / "0" / "metrics.json").is_file() and (sweep_dir / "1" / "metrics.json").is_file()
    assert "optimized_metric val/undefined is not logged" in result.stderr
    assert "Failed experiment" in result.stdout + result.stderr  # the sweeper's word for a trial recorded as failed


def test_tensorboard_logger_receives_curves_and_gradcam_figures(synthetic_root: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import tiny_training_overrides
    from mura.train import train

    train(compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "logger=tensorboard", "trainer.max_epochs=1"]))
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert any(tag.startswith("gradcam/") for tag in events.Tags()["images"])
    assert "val/study/kappa" in events.Tags()["scalars"]
