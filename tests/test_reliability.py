"""Nothing lost, correct at scale, reproducible: crash and resume, interruption, NaN, DDP, seeds."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from command_process import run_command
from conftest import REPO, compose_config, run_main_in_process, tiny_training_overrides
from mura.data.datamodule import MuraDataModule
from mura.data.sampling import SeededSampler
from mura.models.checkpoint import AtomicCheckpointIO
from mura.models.loss_watch import NonFiniteLossError
from mura.train import train

HELPERS = str(REPO / "tests" / "helpers")


def cli_overrides(root: Path, run_dir: Path, epochs: int = 3, workers: int = 0) -> list[str]:
    return [
        "experiment=demo", f"data.root={root}", "data.image_size=40", "data.batch_size=16",
        f"data.num_workers={workers}", "data.val_fraction=0.3", f"trainer.max_epochs={epochs}", "trainer.deterministic=true",
        "trainer.enable_progress_bar=false", "callbacks.gradcam.every_n_epochs=0", "callbacks.gradcam.studies_per_class=1",
        "cpu_threads=1", f"hydra.run.dir={run_dir}",
    ]


def train_in_process(overrides: list[str]) -> None:
    """The command's train() on the same settings, in this process (seconds saved: no interpreter and imports), with one
    math thread as the command line's cpu_threads=1, so that both compute the same sums."""
    run_dir = next(item for item in overrides if item.startswith("hydra.run.dir=")).split("=", 1)[1]
    settings = [item for item in overrides if not item.startswith(("hydra.run.dir=", "cpu_threads="))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_config([*settings, f"paths.output_dir={run_dir}"]))
    finally:
        torch.set_num_threads(threads)


def run_train(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m mura.train ARGS` in a process of its own (tests/command_process.py), tests/helpers importable."""
    env = {**os.environ, "PYTHONPATH": HELPERS + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = run_command("mura.train", args, cwd, env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_numbers(run_dir: Path) -> dict[str, float]:
    history = json.loads((run_dir / "history.json").read_text())[-1]
    report = json.loads((run_dir / "metrics.json").read_text())
    return {**{k: v for k, v in history.items() if k != "epoch"},
            "test_kappa": report["study"]["overall"]["kappa"], "test_auroc": report["study"]["overall"]["auroc"],
            "test_image_accuracy": report["image"]["overall"]["accuracy"]}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(synthetic_root: Path, tmp_path: Path, capfd):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    # Worker processes, as the shipped configs load: they draw a resumed epoch's first samples before Lightning's
    # set_epoch, which once gave the resumed run epoch 0's order and augmentation.
    train_in_process(cli_overrides(synthetic_root, straight, epochs=2, workers=2))  # the reference, never interrupted
    # 3 or 4 training batches per epoch: step 5 is in the middle of the second epoch.
    killed = run_train([*cli_overrides(synthetic_root, crashed, epochs=2, workers=2),
                        "+callbacks.killer._target_=crash_callbacks.KillAtStep", "+callbacks.killer.step=5"], tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (crashed / "metrics.json").exists()
    last = torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # the end of the first epoch survived the kill
    # The resume, the command's own main in this process (a second interpreter would only add its start-up)
    assert run_main_in_process("train", [*cli_overrides(synthetic_root, crashed, epochs=2, workers=2), "ckpt_path=last"]) == 0
    expected, resumed = final_numbers(straight), final_numbers(crashed)
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        assert resumed[key] == pytest.approx(value, abs=1e-6), key
    history = json.loads((crashed / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    csv_log = pd.read_csv(crashed / "csv" / "metrics.csv").dropna(subset=["val/loss"])
    assert csv_log["epoch"].tolist() == [0, 1]  # Lightning's CSV writer deleted epoch 0's rows when the resume started
    # Stopped by SIGTERM mid-epoch (a preemption) and resumed from interrupted.ckpt, every schedule with and without
    # weight averaging: tests/test_resume_schedules.py (in-process); the signal's own handling: the test below.
    # A new run asked for in that folder is refused, and leaves the run's record as it was: summarize reads its settings.
    record = {path: path.read_bytes() for path in [crashed / "config.yaml", *(crashed / ".hydra").iterdir()]}
    assert {path.name for path in record} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert "ckpt_path=last" in (crashed / ".hydra" / "overrides.yaml").read_text()  # the resume's own command line
    code = run_main_in_process("train", [*cli_overrides(synthetic_root, crashed, epochs=3), "model.optimizer.lr=0.5"])
    assert code == 2 and "already holds" in capfd.readouterr().err
    assert {path: path.read_bytes() for path in record} == record


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exiting(synthetic_root: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_train([*cli_overrides(synthetic_root, run_dir, epochs=5), "+callbacks.killer._target_=crash_callbacks.KillAtStep",
                        "+callbacks.killer.step=6", "+callbacks.killer.sig=SIGTERM"], tmp_path, check=False)
    assert result.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in result.stderr
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file()
    checkpoint = torch.load(interrupted, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] >= 6 and "mura" in checkpoint
    # Mid-epoch (3 or 4 batches an epoch): where the state is and how to resume
    advice = " ".join(result.stderr.split())  # the log line may wrap
    assert f"{interrupted} holds the state. Resume with the same command plus hydra.run.dir={run_dir} ckpt_path=last" in advice
    assert re.search(r"it goes on with batch \d of epoch 1", advice)


def test_a_new_run_in_a_folder_with_checkpoints_is_refused(synthetic_root: Path, tmp_path: Path):
    """Rather than overwriting the run's checkpoints (or resuming from one unasked, as Lightning would)."""
    from mura.app.errors import ConfigError

    interrupted = tmp_path / "checkpoints" / "interrupted.ckpt"
    interrupted.parent.mkdir()
    interrupted.write_bytes(b"the state of an interrupted run")
    with pytest.raises(ConfigError, match=r"holds interrupted\.ckpt: pass ckpt_path=last to resume"):
        train(compose_config(tiny_training_overrides(synthetic_root, tmp_path)))
    assert interrupted.read_bytes() == b"the state of an interrupted run"


def test_a_slurm_requeued_job_resumes_its_run_from_last_ckpt(synthetic_root: Path, tmp_path: Path, monkeypatch):
    """A preempted job started again by SLURM (or submitit after a timeout) runs the same command in the same folder."""
    overrides = tiny_training_overrides(synthetic_root, tmp_path)
    train(compose_config([*overrides, "trainer.max_epochs=1", "test=false"]))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train(compose_config([*overrides, "test=false"]))  # two epochs: the first is not run again
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert [epoch["epoch"] for epoch in timings["epochs"]] == [1]


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.ones(3)}, target)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_checkpoints_epoch_and_step_are_read_once_and_again_once_it_is_rewritten(tmp_path: Path, monkeypatch):
    from mura.models.checkpoint import checkpoint_epoch, checkpoint_step

    io, target, loads = AtomicCheckpointIO(), tmp_path / "best.ckpt", []
    io.save_checkpoint({"epoch": 3, "global_step": 40, "weights": torch.ones(3)}, target)
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args[0]) or load(*args, **kwargs))
    assert (checkpoint_epoch(target), checkpoint_step(target), checkpoint_epoch(str(target))) == (3, 40, 3)
    assert len(loads) == 1  # the end of a run asks three times of its best.ckpt
    io.save_checkpoint({"epoch": 5, "global_step": 60, "weights": torch.ones(3)}, target)  # a new best, same size
    assert (checkpoint_epoch(target), checkpoint_step(target)) == (5, 60)
    assert len(loads) == 2


def test_nan_loss_stops_with_step_and_batch(synthetic_root: Path, tmp_path: Path, monkeypatch):
    from mura.models.loss import StudyTypeWeightedBCE

    monkeypatch.setattr(StudyTypeWeightedBCE, "forward", lambda self, logits, labels, parts: logits.sum() * float("nan"))
    cfg = compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "+trainer.num_sanity_val_steps=0"])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, global step 0, batch 0 \(first image "):
        train(cfg)


class _StopInValidation(pl.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            raise _Stop


def test_a_fit_ended_by_an_exception_leaves_no_loader_worker_behind(synthetic_root: Path, tmp_path: Path):
    """Stopped in validation, the train loader's persistent workers are alive; left to the garbage collector, their
    clean-up took 10 s of whatever ran next in the process."""
    before = {child.pid for child in multiprocessing.active_children()}
    cfg = compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "data.num_workers=2", "trainer.max_epochs=1",
                          f"+callbacks.stop._target_={__name__}._StopInValidation"])
    with pytest.raises(_Stop):
        train(cfg)
    assert [child.pid for child in multiprocessing.active_children() if child.pid not in before] == []


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(synthetic_root: Path, tmp_path: Path):
    def run(seed: int, name: str) -> dict:
        # test=false: the weights decide the test's numbers; validation already shows the evaluation is repeatable
        overrides = [*tiny_training_overrides(synthetic_root, tmp_path / name), f"seed={seed}", "trainer.max_epochs=1",
                     "callbacks.gradcam.every_n_epochs=0", "trainer.deterministic=true", "data.image_size=32", "test=false"]
        return train(compose_config(overrides))

    first, again, other = run(7, "a"), run(7, "b"), run(8, "c")
    keys = ["val/loss", "train/loss", "val/study/auroc"]
    assert [first[k] for k in keys] == [again[k] for k in keys]
    assert [first[k] for k in keys] != [other[k] for k in keys]


def test_sampler_depends_only_on_seed_epoch_and_index():
    sampler = SeededSampler(50, seed=3, shuffle=True, augment=True)
    sampler.set_epoch(2)
    first = list(sampler)
    torch.manual_seed(999)  # the global RNG must not matter
    assert list(sampler) == first
    sampler.set_epoch(3)
    assert list(sampler) != first
    assert sorted(index for index, _ in first) == list(range(50))
    assert list(SeededSampler(5, 0, shuffle=False, augment=False)) == [(i, None) for i in range(5)]
    sampler.resume_at(2, samples_done=20)  # resumed inside epoch 2: its samples from the 21st on, then whole epochs
    assert len(sampler) == 50 and list(sampler) == first[20:]
    assert list(sampler) == first


@pytest.mark.slow
# trainer.devices=2 with a study model covers the plain Lightning way and a study model's batches of whole studies
# at once (a view model on two processes: trainer=ddp); each variant costs two interpreters and a training.
@pytest.mark.parametrize("asked", [["trainer=ddp"],
                                   ["trainer.accelerator=cpu", "trainer.devices=2", "model.study_pooling=attention", "data.batch_size=4"]],
                         ids=["trainer=ddp", "devices=2-study_model"])
def test_two_devices_asked_the_plain_lightning_way_give_exactly_the_single_process_metrics(synthetic_root: Path, tmp_path: Path,
                                                                                          asked: list[str]):
    """Two processes, every image scored once, asked as Lightning users do (trainer.devices=2 on the default trainer
    config: Lightning's distributed sampler used to wrap ours and shard the shards, each process saw a quarter) or with
    the README's trainer=ddp (synchronised BatchNorm, which torch runs on CUDA only: off on this CPU, said once; it
    ended every process in a traceback). A study model's batches of whole studies are sharded alike: each study
    scored once."""
    run_dir = tmp_path / "two_devices"
    # Six body parts leave 31 test images on the tiny tree: an odd count, so the two ranks' shards are padded.
    parts = "data.body_parts=[XR_ELBOW,XR_FINGER,XR_FOREARM,XR_HAND,XR_HUMERUS,XR_SHOULDER]"
    result = run_train([*cli_overrides(synthetic_root, run_dir, epochs=1), parts, *asked], tmp_path)
    assert "distributed_backend=gloo" in result.stderr and "All distributed processes registered" in result.stderr
    assert result.stderr.count("synchronised BatchNorm needs CUDA") == (asked == ["trainer=ddp"])
    ddp_report = json.loads((run_dir / "metrics.json").read_text())
    splits = pd.read_csv(run_dir / "splits.csv")
    test = splits[splits["split"] == "test"]
    assert len(test) % 2 == 1
    assert ddp_report["image"]["overall"]["n"] == len(test)  # no image counted twice, none dropped
    assert ddp_report["study"]["overall"]["n"] == test["study"].nunique()
    val_studies = splits.loc[splits["split"] == "val", "study"].nunique()
    assert f"({val_studies} studies)" in result.stderr.split("epoch 0 val:")[1].splitlines()[0]
    # The selected checkpoint's validation predictions, gathered from both processes: every study once.
    written = pd.read_csv(run_dir / "val_predictions.csv")
    assert sorted(written["study"]) == sorted(splits.loc[splits["split"] == "val", "study"].unique())
    assert len(pd.read_csv(run_dir / "val_predictions_images.csv")) == (splits["split"] == "val").sum()
    from mura.evaluate import evaluate

    single_report = evaluate(compose_config([f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"data.root={synthetic_root}",
                                             "data.num_workers=0", f"paths.output_dir={tmp_path / 'single'}"],
                                            config_name="evaluate"))
    for level in ("study", "image"):
        for group, metrics in single_report[level].items():
            for name, value in metrics.items():
                got = ddp_report[level][group][name]
                assert np.allclose(np.asarray(got, dtype=float), np.asarray(value, dtype=float), atol=1e-6, equal_nan=True), (level, group, name)


def test_lightning_sharding_on_top_of_ours_is_refused(synthetic_root: Path, tmp_path: Path):
    from mura.app.errors import ConfigError

    cfg = compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "trainer.accelerator=cpu", "trainer.devices=2",
                          "trainer.use_distributed_sampler=true"])
    with pytest.raises(ConfigError, match="trainer.use_distributed_sampler=true with 2 processes.*trainer=ddp"):
        train(cfg)
    assert compose_config(["trainer=ddp"]).trainer.use_distributed_sampler is False
    assert compose_config(["trainer=gpu"]).trainer.use_distributed_sampler is False


def test_skipped_images_are_counted_and_listed_at_the_end(writable_root: Path, tmp_path: Path):
    from mura.data.index import build_index

    table = build_index(writable_root)
    victims = sorted(table[table["split"] == "train"]["path"].iloc[[0, 3]])
    (writable_root / victims[0]).write_bytes(b"")
    (writable_root / victims[1]).write_text("not an image")
    cfg = compose_config([*tiny_training_overrides(writable_root, tmp_path), "data.on_bad_image=skip", "trainer.max_epochs=1",
                          "callbacks.gradcam.every_n_epochs=0"])
    train(cfg)
    assert (tmp_path / "skipped_images.txt").read_text().splitlines() == victims


def test_an_override_with_a_typo_is_refused_by_hydra():
    """The configs are structured: a misspelt key is an error (Hydra's), not a new setting nobody reads."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="Could not override 'data.bach_size'"):
        compose_config(["data.bach_size=4"])


def test_nan_in_the_last_step_of_an_epoch_never_reaches_last_ckpt(synthetic_root: Path, tmp_path: Path, monkeypatch):
    from mura.models.loss import StudyTypeWeightedBCE

    original = StudyTypeWeightedBCE.forward
    calls = {"train": 0}

    def nan_on_the_fourth_training_step(self, logits, labels, parts):
        loss = original(self, logits, labels, parts)
        if torch.is_grad_enabled():  # training steps; validation runs without gradients
            calls["train"] += 1
            if calls["train"] == 4:  # the tiny tree has 4 training batches: the first epoch's last step
                return loss * float("nan")
        return loss

    monkeypatch.setattr(StudyTypeWeightedBCE, "forward", nan_on_the_fourth_training_step)
    cfg = compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "+trainer.num_sanity_val_steps=0",
                          "trainer.max_epochs=2"])
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, global step 3, batch 3"):
        train(cfg)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    # Nor an interrupted.ckpt of possibly-NaN weights, which ckpt_path=last (the newest) would resume from.
    assert not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()


def test_an_error_before_training_leaves_no_checkpoint_behind(synthetic_root: Path, tmp_path: Path, monkeypatch):
    """It used to leave checkpoints/interrupted.ckpt of an untrained model, which ckpt_path=last would resume."""
    from mura.data.index import MuraDataError

    monkeypatch.delenv("MURA_ROOT", raising=False)
    plain = [override for override in tiny_training_overrides(synthetic_root, tmp_path)
             if not override.startswith(("experiment=", "data.root="))]
    with pytest.raises(MuraDataError, match="data.root is not set"):
        train(compose_config(plain))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_an_unreadable_image_stops_even_a_smoke_test_before_its_first_step(writable_root: Path, tmp_path: Path):
    """fast_dev_run on a broken release used to pass; the test split's images are checked before training too."""
    from mura.data.index import MuraDataError

    listed = (writable_root / "valid_image_paths.csv").read_text().splitlines()
    victim = "/".join(listed[-1].split("/")[1:])
    (writable_root / victim).write_bytes(b"")
    for name, extra in (("smoke", ["trainer.fast_dev_run=true"]), ("cached", ["data.cache=true", "data.augment_on_device=true"])):
        with pytest.raises(MuraDataError, match=f"unreadable image.*{victim}: empty file"):
            train(compose_config([*tiny_training_overrides(writable_root, tmp_path / name), *extra]))
        assert not list((tmp_path / name).rglob("*.ckpt"))


def test_without_checkpointing_the_report_names_the_weights_it_tested(synthetic_root: Path, tmp_path: Path):
    overrides = [override for override in tiny_training_overrides(synthetic_root, tmp_path) if not override.startswith("callbacks.")]
    train(compose_config([*overrides, "callbacks=none", "trainer.max_epochs=1", "+trainer.enable_checkpointing=false"]))
    report = (tmp_path / "report.md").read_text()
    assert "the final weights (no checkpoint callback monitors selection.metric)" in report and "best.ckpt" not in report


def test_a_selection_metric_for_a_body_part_not_trained_on_is_refused_before_training(synthetic_root: Path, tmp_path: Path):
    from mura.app.errors import ConfigError

    with pytest.raises(ConfigError, match="names a body part this run does not train on"):
        train(compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "data.body_parts=[XR_WRIST]",
                              "selection.metric=val/study/XR_HAND/kappa", "selection.mode=max"]))
    assert not (tmp_path / "checkpoints").exists()


def test_the_loss_is_checked_one_step_later_and_a_non_finite_one_raises_once():
    from mura.models.loss_watch import DeferredLossCheck

    check = DeferredLossCheck()
    check.check()  # nothing pending: nothing to do
    check.defer(torch.tensor(0.25), "epoch 0, global step 0")
    assert check.last_value is None  # not read until the next step
    check.check()
    assert check.last_value == 0.25
    check.defer(torch.tensor(float("inf")), "epoch 0, global step 1, batch 1 (first image a.png)")
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 0, global step 1, batch 1 \(first image a.png\)"):
        check.check()
    assert check.last_value == 0.25
    check.check()  # raised once, then cleared


def test_the_progress_bar_shows_the_previous_steps_checked_loss(synthetic_root: Path, tmp_path: Path):
    """Not the live loss tensor: the bar reads its value every step, which would make every step wait for the GPU."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    cfg = compose_config(tiny_training_overrides(synthetic_root, tmp_path))
    shown = []

    class RecordTheBar(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            shown.append((float(outputs["loss"]), trainer.progress_bar_metrics.get("loss")))

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                         callbacks=[RecordTheBar()])
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    losses, bar = zip(*shown, strict=True)
    assert bar[0] is None  # nothing checked yet at the first step
    assert list(bar[1:]) == pytest.approx(list(losses[:-1]))  # each step shows the one before it, once checked


class _Indexed(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, key):
        index, _ = key
        return torch.tensor([float(index)]), index


class _ResumableData(MuraDataModule):
    """MuraDataModule's train loader logic (SeededSampler, drop_last, the resume position it saves in checkpoints and
    restores) over 40 numbered samples."""

    def __init__(self, workers: int):
        pl.LightningDataModule.__init__(self)
        self.workers, self.split_definition, self._resume_from = workers, None, None

    def prepare_data(self):
        pass

    def setup(self, stage: str):
        pass

    def dataloader(self, split: str):
        # Workers draw their first samples when the iterator is made, before Lightning's set_epoch
        return torch.utils.data.DataLoader(_Indexed(), batch_size=4, drop_last=True, num_workers=self.workers,
                                           persistent_workers=self.workers > 0,
                                           sampler=SeededSampler(40, seed=0, shuffle=True, augment=True))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(_Indexed(), batch_size=4, sampler=SeededSampler(40, 0, shuffle=False, augment=False))


class _Stop(Exception):
    pass


class _Recorder(pl.LightningModule):
    """Records the samples of every training batch; raises _Stop once, where asked. `per_step_schedule`: its
    configure_optimizers reads trainer.estimated_stepping_batches, as a schedule stepped per step does (warmup_cosine),
    which builds and starts the train loader before Lightning restores the fit loop's progress."""

    def __init__(self, trained: list, stop_where: str | None = None, stop_at: int = -1, per_step_schedule: bool = False):
        super().__init__()
        self.layer, self.trained, self.stop_where, self.stop_at = torch.nn.Linear(1, 1), trained, stop_where, stop_at
        self.per_step_schedule = per_step_schedule

    def training_step(self, batch, batch_idx):
        self.trained.append((self.current_epoch, batch[1].tolist()))
        if self.stop_where == "training_step" and self.global_step == self.stop_at:
            raise _Stop
        return self.layer(batch[0]).sum()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.stop_where == "on_train_batch_end" and self.global_step == self.stop_at:
            raise _Stop

    def validation_step(self, batch, batch_idx):
        if self.stop_where == "validation" and self.current_epoch == self.stop_at and batch_idx == 2:
            raise _Stop

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        if not self.per_step_schedule:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@pytest.mark.parametrize(("stop_where", "stop_at", "workers", "per_step_schedule"), [
    ("training_step", 15, 0, False),  # mid-epoch, inside a step: that batch again
    ("on_train_batch_end", 15, 0, False),  # mid-epoch, after a step: Lightning counts the batch as done
    ("on_train_batch_end", 10, 2, False),  # after the epoch's last batch: the next epoch whole
    ("validation", 0, 2, False),  # in the end-of-epoch validation: the next epoch whole
    ("training_step", 15, 2, True),  # the same, with a schedule that reads the run's length in configure_optimizers
    ("on_train_batch_end", 15, 0, True),
    ("validation", 0, 2, True),
])
def test_a_resumed_fit_trains_on_the_batches_the_uninterrupted_one_does(tmp_path: Path, stop_where: str, stop_at: int,
                                                                       workers: int, per_step_schedule: bool):
    """Each kind of interruption's checkpoint, resumed: every epoch trains on the same batches, in the same order, as
    a fit never stopped (10 batches an epoch; the batch being trained when it stopped counts once)."""
    def fit(trained: list, folder: Path, ckpt_path: str | None = None, **stop) -> None:
        trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", num_sanity_val_steps=0, default_root_dir=folder,
                             callbacks=[pl.callbacks.OnExceptionCheckpoint(folder, "interrupted")])
        with contextlib.suppress(_Stop):  # MuraDataModule.on_exception stops the loaders' workers at once
            trainer.fit(_Recorder(trained, per_step_schedule=per_step_schedule, **stop), datamodule=_ResumableData(workers),
                        ckpt_path=ckpt_path)

    straight, resumed = [], []
    fit(straight, tmp_path / "straight")
    fit(resumed, tmp_path / "stopped", stop_where=stop_where, stop_at=stop_at)
    assert (tmp_path / "stopped" / "interrupted.ckpt").is_file()
    fit(resumed, tmp_path / "stopped", ckpt_path=str(tmp_path / "stopped" / "interrupted.ckpt"))
    once = [batch for position, batch in enumerate(resumed) if batch not in resumed[:position]]
    assert once == straight and len(straight) == 30
