"""What every command does for the person running it: its own --help, the resolved config shown (on stderr) and
saved, tags recorded, the known noise silenced and nothing else, and the debug modes (conf/debug/) running a real
tiny training through the real composition."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import CONF_DIR, compose_config, run_main_in_process
from mura.app.cpu_share import fit_workers_to_cores
from mura.app.quiet import ADVERT_LOGGER, quiet_known_noise
from mura.app.run_start import announce_run

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
DEBUG_MODES = sorted(path.stem for path in (CONF_DIR / "debug").glob("*.yaml") if path.stem != "default")
# Each command's purpose (the start of its help) and settings its help must name.
HELP = {
    "train": ("mura.train: train a model", ["experiment=", "data.root=", "trainer=gpu", "selection.metric=", "tags=",
                                           "debug=", "hydra/launcher=slurm", "wrist", "all_parts", "seed_wrist",
                                           "seed_all_parts", "demo", *DEBUG_MODES]),
    "evaluate": ("mura.evaluate: score one trained checkpoint", ["ckpt_path=", "data.root=", "eval.split=", "eval.tta=",
                                                                 "eval.bootstrap="]),
    "predict": ("mura.predict: the abnormality probability", ["ckpt_path=", "input=", "cam=", "device="]),
    "audit": ("mura.audit: check a MURA-v1.1 release", ["data.root=", "check_pixels=", "workers="]),
    "synth": ("mura.synth: generate a synthetic MURA-v1.1 tree", ["data.synthetic.dir=", "force="]),
    "bench": ("mura.bench: time the paper's recipe", ["bench_preset=gpu", "data_root=", "device=", "runs="]),
    "summarize": ("mura.summarize: many training runs in one table", ["runs="]),
    "compare": ("mura.compare: paired differences between runs", ["runs=", "baseline=", "bootstrap=", "threshold="]),
    "export": ("mura.export: a trained checkpoint as one TorchScript or ONNX file", ["ckpt_path=", "format=", "output=",
                                                                                    "check=", "tolerance="]),
}


def command_help(command: str) -> str:
    """`python -m mura.COMMAND --help`, through the command's own main() (in this process: a Python start-up per
    command would take seconds each)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_main_in_process(command, ["--help"]) in (None, 0)
    return printed.getvalue()


def test_each_command_has_its_own_help():
    """One test for all commands: a help costs a second (Hydra lists every config group), and spread over the test
    workers the helps were made once per worker."""
    helps = {command: command_help(command) for command in HELP}
    for command, text in helps.items():
        purpose, settings = HELP[command]
        assert text.startswith(purpose), command
        assert [setting for setting in settings if setting not in text] == [], command
        examples = text.split("== Examples ==")[1]
        assert examples.count(f"python -m mura.{command}") == 2, command
        assert "powered by Hydra" not in text, command  # Hydra's generic help, the same for every command, is gone
        assert [other for other, other_text in helps.items() if other != command and other_text == text] == [], command
    # predict's help names only predict's settings
    assert [word for word in ("experiment", "trainer", "bench_preset", "hparams_search", "Configuration groups")
            if word in helps["predict"]] == []


def run_training_command(args: list[str], cwd: Path, cores: int | None = None) -> subprocess.CompletedProcess:
    """`python -m mura.train ARGS` from `cwd`, in an interpreter of its own (not tests/command_process.py: what the
    libraries print while they are imported is part of what a user sees); on `cores` CPU cores when given (its
    affinity, as SLURM sets it)."""
    def pin():
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])

    result = subprocess.run([sys.executable, "-m", "mura.train", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300, preexec_fn=pin if cores else None)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins the command to one core (Linux)")
def test_a_run_shows_its_config_saves_it_resolved_and_prints_real_warnings_only(synthetic_root: Path, tmp_path: Path):
    """One real command-line run (debug=limit): the config tree goes to stderr (stdout carries results), the resolved
    config and the tags are saved, the run folder given relative is reported absolute, and of the warnings only
    the known noise is gone. On one core, data.num_workers=2 is lowered to 1 instead of the DataLoader warning."""
    result = run_training_command(
        ["experiment=demo", f"data.root={synthetic_root}", "data.image_size=40", "data.batch_size=16",
         "data.val_fraction=0.3", "debug=limit", "data.num_workers=2", "tags=[first,second]",
         "trainer.enable_progress_bar=false", "callbacks.gradcam.every_n_epochs=0", "callbacks.gradcam.studies_per_class=1",
         "hydra.run.dir=relative_run"],
        cwd=tmp_path, cores=1,
    )
    run_dir = tmp_path / "relative_run"
    for branch in ("├── task_name: debug", "├── data", "├── trainer", "limit_train_batches: 4", "- first"):
        assert branch in result.stderr
    assert "├──" not in result.stdout and "Test split" in result.stdout
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "${" not in (run_dir / "config.yaml").read_text()
    assert saved["tags"] == ["first", "second"] and saved["task_name"] == "debug"
    assert saved["paths"]["output_dir"] == str(run_dir) and saved["data"]["root"] == str(synthetic_root)
    assert saved["data"]["num_workers"] == 1 and saved["trainer"]["limit_train_batches"] == 4
    assert f"hydra.run.dir=relative_run -> {run_dir}" in result.stderr
    assert "data.num_workers=2 lowered to 1" in result.stderr
    silenced = ["LeafSpec", "but have passed in a `LightningDataModule`", "💡 Tip", "litmodels", "litlogger",
                "This DataLoader will create", "is smaller than the logging interval"]
    assert [message for message in silenced if message in result.stderr] == []
    # debug=limit: two epochs of at most 4 training batches, then the test report as in a real run.
    train_images = (pd.read_csv(run_dir / "splits.csv")["split"] == "train").sum()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 * min(4, math.ceil(train_images / 16))
    # Two test batches score part of the test split: said wherever the numbers appear, never passed off as the test
    test_images = (pd.read_csv(run_dir / "splits.csv")["split"] == "test").sum()
    scored = json.loads((run_dir / "metrics.json").read_text())["image"]["overall"]["n"]
    assert scored < test_images
    partial = f"PARTIAL: {scored} of its {test_images} images (trainer.limit_test_batches)"
    assert partial in result.stdout and partial in (run_dir / "report.md").read_text() and partial in result.stderr


def test_noise_is_silenced_by_exact_message_and_origin_only():
    leafspec = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`"
    transfer = ("You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a "
                "`LightningDataModule`. It will use the implementation from `LightningModule` instance.")
    emitted = [
        (leafspec, FutureWarning, "pytorch_lightning.utilities._pytree", False),
        (transfer, UserWarning, "pytorch_lightning.trainer.connectors.data_connector", False),
        (leafspec, FutureWarning, "mura.models.classifier", True),  # the same words from our own code still show
        ("something else entirely", UserWarning, "pytorch_lightning.trainer.connectors.data_connector", True),
        (transfer.replace("LightningModule` but", "LightningModule` and"), UserWarning,
         "pytorch_lightning.trainer.connectors.data_connector", True),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        for message, category, module, _ in emitted:
            warnings.warn_explicit(message, category, filename=module.replace(".", "/") + ".py", lineno=1, module=module)
    assert [str(warning.message) for warning in caught] == [message for message, _, _, shows in emitted if shows]

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    advert_logger = logging.getLogger(ADVERT_LOGGER)
    collect, level = Collect(), advert_logger.level
    advert_logger.addHandler(collect)
    advert_logger.setLevel(logging.INFO)
    try:
        advert_logger.info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](...)")
        advert_logger.info("GPU available: False, used: False")
    finally:
        advert_logger.removeHandler(collect)
        advert_logger.setLevel(level)
        advert_logger.filters.clear()
    assert collect.messages == ["GPU available: False, used: False"]


def test_data_workers_are_lowered_to_the_jobs_share_of_the_cores_only_when_they_exceed_it(monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    configs = {workers: compose_config([f"data.num_workers={workers}"]) for workers in (8, 4, 1, 0)}
    with caplog.at_level(logging.INFO, logger="mura.app.cpu_share"):
        for cfg in configs.values():
            fit_workers_to_cores(cfg)
    assert {workers: cfg.data.num_workers for workers, cfg in configs.items()} == {8: 4, 4: 4, 1: 1, 0: 0}
    assert caplog.messages == ["data.num_workers=8 lowered to 4, the CPU cores this process may use"]  # said once
    # Three mura jobs on these 4 cores: a worker each, none where none were asked for
    shared = {workers: compose_config([f"data.num_workers={workers}"]) for workers in (8, 1, 0)}
    for cfg in shared.values():
        fit_workers_to_cores(cfg, jobs=3)
    assert {workers: cfg.data.num_workers for workers, cfg in shared.items()} == {8: 1, 1: 1, 0: 0}


def test_the_saved_config_resolves_what_it_can_and_keeps_the_rest(tmp_path: Path):
    """mura.evaluate's data.channels comes from the checkpoint later (no `model` in its config); ckpt_path is required."""
    cfg = compose_config(["eval.tta=true", "tags=[ensemble]"], config_name="evaluate")
    announce_run(cfg, tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["data"]["channels"] == "${model.in_channels}" and saved["ckpt_path"] == "???"
    assert saved["eval"]["tta"] is True and saved["tags"] == ["ensemble"]
    assert saved["data"]["cache_dir"] == str(Path(os.environ["MURA_DATA_DIR"]) / "cache")  # resolved


@pytest.mark.parametrize("mode", DEBUG_MODES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_debug_mode_composes_with_every_experiment(experiment: str, mode: str, synthetic_root: Path):
    cfg = compose_config([f"experiment={experiment}", f"debug={mode}", f"data.root={synthetic_root}"])
    assert cfg.task_name == "debug"  # debug runs go to outputs/debug/, apart from the experiments'
    assert cfg.model.backbone == compose_config([f"experiment={experiment}"]).model.backbone  # the experiment, shrunk
    expected = {"fdr": {"fast_dev_run": True}, "limit": {"max_epochs": 2, "limit_train_batches": 4},
                "overfit": {"overfit_batches": 2, "max_epochs": 20}, "profiler": {"max_epochs": 1}}[mode]
    assert {key: cfg.trainer[key] for key in expected} == expected


FEWER_GRADCAMS = ["callbacks.gradcam.every_n_epochs=0", "callbacks.gradcam.studies_per_class=1"]


def debug_run(mode: str, root: Path, output_dir: Path, *more: str):
    from mura.train import train

    overrides = ["experiment=demo", f"data.root={root}", "data.image_size=40", "data.batch_size=16",
                 "data.val_fraction=0.3", "data.num_workers=0", f"paths.output_dir={output_dir}",
                 "trainer.enable_progress_bar=false", f"debug={mode}", *more]
    return train(compose_config(overrides))


def test_debug_fdr_runs_one_batch_of_each_stage_and_writes_no_checkpoint(synthetic_root: Path, tmp_path: Path):
    metrics = debug_run("fdr", synthetic_root, tmp_path, *FEWER_GRADCAMS)
    assert "test/study/kappa" in metrics
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))


def test_debug_overfit_drives_the_training_loss_down(synthetic_root: Path, tmp_path: Path):
    """The same 2 batches every epoch: the loss falls fast (6 of the mode's 20 epochs, without callbacks, for time)."""
    debug_run("overfit", synthetic_root, tmp_path, "trainer.max_epochs=6", "callbacks=none")
    logged = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    losses = logged.dropna(subset=["train/loss"]).groupby("epoch")["train/loss"].mean()
    assert list(losses.index) == list(range(6))
    assert losses.iloc[-1] < 0.5 * losses.iloc[0] and losses.iloc[-2:].mean() < losses.iloc[:2].mean(), losses.round(3).tolist()
    assert not (tmp_path / "metrics.json").exists()  # nothing tested


def test_debug_profiler_writes_its_report_into_the_run_folder(synthetic_root: Path, tmp_path: Path):
    debug_run("profiler", synthetic_root, tmp_path, *FEWER_GRADCAMS)
    report = (tmp_path / "fit-profile.txt").read_text()
    assert "run_training_epoch" in report and "optimizer_step" in report


def test_tags_are_a_setting_of_the_commands_that_record_runs():
    assert list(compose_config([]).tags) == []
    assert list(compose_config(["tags=[wrist,baseline]"]).tags) == ["wrist", "baseline"]
    assert list(compose_config(["tags=[ensemble]"], config_name="evaluate").tags) == ["ensemble"]
