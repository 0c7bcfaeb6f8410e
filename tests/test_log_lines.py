"""What a run prints, line by line: true (the test line names the checkpoint it scored, the loss weights the body
parts trained on), readable (seconds rounded) and said once (no INFO line per DDP process, no known noise)."""

from __future__ import annotations

import ast
import logging
import re
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from conftest import compose_config, tiny_training_overrides
from mura.app.quiet import quiet_known_noise
from mura.callbacks import timing
from mura.callbacks.timing import RunTimings
from mura.data.index import BODY_PARTS

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def bare_trainer(**settings) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **settings)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the bare trainer lacks the run's callbacks
def test_the_test_line_names_the_checkpoint_it_scored_and_that_checkpoints_epoch(trained_run, synthetic_root: Path,
                                                                                  tmp_path: Path, caplog):
    """mura.train tests the selected checkpoint, often an earlier epoch than the trainer's last: the line said
    `epoch <max_epochs> test`. A fresh trainer (at epoch 0) testing last.ckpt (epoch 1) shows where the epoch comes from."""
    run_dir, _ = trained_run
    cfg = compose_config(tiny_training_overrides(synthetic_root, tmp_path))
    model, datamodule = instantiate(cfg.model, _convert_="all"), instantiate(cfg.data)
    last = run_dir / "checkpoints" / "last.ckpt"
    epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert epoch == 1
    trainer = bare_trainer(limit_test_batches=1)
    with caplog.at_level(logging.INFO, logger="mura.models.classifier"):
        trainer.test(model, datamodule=datamodule, ckpt_path=str(last), verbose=False, weights_only=True)
        trainer.test(model, datamodule=datamodule, verbose=False)
    lines = [message for message in caplog.messages if ": loss " in message]
    assert len(lines) == 2
    assert lines[0].startswith("test of last.ckpt (epoch 1): loss ")
    assert lines[1].startswith("test of the weights in memory: loss ")


def test_the_loss_weights_line_lists_only_the_body_parts_trained_on(synthetic_root: Path, tmp_path: Path, caplog):
    cfg = compose_config([*tiny_training_overrides(synthetic_root, tmp_path), "data.body_parts=[XR_WRIST,XR_HAND]"])
    model, datamodule = instantiate(cfg.model, _convert_="all"), instantiate(cfg.data)
    # No batch trained or validated: the fit sets the weights up (model.setup) and stops.
    trainer = bare_trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, num_sanity_val_steps=0)
    with caplog.at_level(logging.INFO, logger="mura.models.classifier"):
        trainer.fit(model, datamodule=datamodule)
    [line] = [message for message in caplog.messages
              if message.startswith("loss weights w_abnormal per body part (from image counts): ")]
    weights = ast.literal_eval(line.split(": ", 1)[1])
    assert set(weights) == set(datamodule.split_frame("train")["body_part"]) == {"XR_WRIST", "XR_HAND"}
    assert weights == {part: round(float(model.criterion.w_abnormal[BODY_PARTS.index(part)]), 4) for part in weights}


def test_the_timings_line_rounds_seconds_for_people(monkeypatch):
    """A median of two epochs is their mean, 7.000500000000001 s: the line printed it so. timings.json keeps
    milliseconds, the line hundredths."""
    monkeypatch.setattr(timing, "_process_start_claimed", True)
    monkeypatch.setattr(timing, "_run_started", None)
    timings = RunTimings()
    start = timings.origin_time
    timings.setup_end, timings.fit_start, timings.train_start, timings.first_step_end = (start + s for s in (1, 2, 3, 6.54321))
    timings.epochs = [{"epoch": epoch, "train_s": seconds} for epoch, seconds in enumerate((9.5, 7.0, 7.001))]
    timings.after_fit = {"test_s": 0.125, "reports_s": 1.0}
    summary = timings.summary()
    assert summary["steady_epoch_train_s"] == pytest.approx(7.0005, abs=0.001)
    assert len(str(summary["steady_epoch_train_s"]).split(".")[1]) <= 3
    line = timings.describe()
    assert line == ("first optimizer step 6.54 s after run start; epoch 0 trained in 9.50 s against 7.00 s for a later "
                    "one (1.36x); after fit test 0.12 s, reports 1.00 s")
    assert not re.search(r"\d\.\d{3}", line)


@pytest.mark.parametrize(("variables", "infos"), [
    ({}, True),                                  # one process
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),    # torchrun's rank zero
    ({"LOCAL_RANK": "1"}, False),                # Lightning's second DDP process (trainer.devices=2)
    ({"SLURM_PROCID": "3"}, False),              # a SLURM task
])
def test_only_rank_zero_prints_muras_info_lines_and_every_rank_its_warnings(variables: dict, infos: bool, monkeypatch,
                                                                             caplog):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    mura_logger = logging.getLogger("mura")
    level = mura_logger.level
    try:
        with warnings.catch_warnings(), caplog.at_level(logging.INFO):  # the warning filters it adds go with the block
            quiet_known_noise()
            logging.getLogger("mura.models.classifier").info("epoch 0 val: loss 0.5")
            logging.getLogger("mura.train").warning("2 unreadable image(s) were skipped")
    finally:
        mura_logger.setLevel(level)  # setLevel, not the attribute: it empties the loggers' level caches
    shown = ["epoch 0 val: loss 0.5"] if infos else []
    assert caplog.messages == [*shown, "2 unreadable image(s) were skipped"]


def test_the_short_epoch_logging_interval_warning_is_known_noise_from_lightnings_fit_loop_only():
    from lightning_fabric.utilities.warnings import PossibleUserWarning

    message = ("The number of training batches (2) is smaller than the logging interval Trainer(log_every_n_steps=10). "
               "Set a lower value for log_every_n_steps if you want to see logs for the training epoch.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        for module in ("pytorch_lightning.loops.fit_loop", "mura.train"):  # where Lightning's warning points; ours
            warnings.warn_explicit(message, PossibleUserWarning, filename=module.replace(".", "/") + ".py", lineno=1,
                                   module=module)
    assert [warning.filename for warning in caught] == ["mura/train.py"]


def test_wandb_link_notices_are_dropped_and_its_other_words_shown(capsys, monkeypatch):
    """wandb prints "Symlinked 1 file into the W&B run directory; ..." on stderr for every file a run saves (13 at the
    end of a logger=wandb run); its own code makes the notices here."""
    wandb = pytest.importorskip("wandb")
    from wandb.errors import term
    from wandb.sdk.lib.filesystem import LinkStats

    from mura.app.quiet import without_wandb_link_notices

    monkeypatch.setattr(term, "_silent", False)  # as in a run without WANDB_SILENT (an earlier test may have set it)
    monkeypatch.setattr(term, "_show_warnings", True)

    def save_notices() -> None:
        for mode, count in (("symlink", 1), ("hardlink", 2)):  # hard links where symbolic ones are not allowed
            stats = LinkStats()
            for _ in range(count):
                stats.record(mode)
            stats.emit_warnings()
        wandb.termwarn("something else")

    save_notices()
    printed = capsys.readouterr().err
    assert "Symlinked 1 file into the W&B run directory" in printed and "Linked 2 files into the W&B run directory" in printed
    with without_wandb_link_notices():
        save_notices()
    assert capsys.readouterr().err == "wandb: WARNING something else\n"
