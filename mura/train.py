"""python -m mura.train: fit, then test the best checkpoint on the test split (see conf/train.yaml)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mura.app.errors import ConfigError, exit_on_user_error
from mura.app.run_start import start_run
from mura.callbacks.artifacts import continue_tracker_runs, finish_tracking, log_config, record_tracker_runs
from mura.callbacks.csv_log import ContinuableCSVLogger
from mura.callbacks.gradcam import GradCamGallery
from mura.callbacks.timing import note_run_start, run_timings, timed_after_fit
from mura.data.datamodule import SKIPPED_IMAGES_FILE
from mura.data.index import BODY_PARTS, refuse_writes_inside
from mura.evaluation.metrics import LOGGED_METRICS
from mura.evaluation.report import STUDY_MODEL_NOTE, metrics_table, predictions_tables, write_run_outputs
from mura.models.checkpoint import checkpoint_epoch, checkpoint_step, read_checkpoint

log = logging.getLogger(__name__)

# What MuraClassifier logs per stage: the loss, and the report's metrics overall and per body part.
SELECTABLE = re.compile(rf"(train|val)/(loss|(study|image)(/(?P<part>{'|'.join(BODY_PARTS)}))?/({'|'.join(LOGGED_METRICS)}))")


def instantiate_group(group: DictConfig | None) -> list:
    """Callbacks and loggers are dicts of configs: adding one needs no code change here."""
    return [instantiate(config) for config in (group or {}).values() if config is not None and "_target_" in config]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the selected checkpoint, as `cfg` says; returns the final callback metrics as floats, and
    `selection/score`: the selection metric's value at the selected checkpoint (what a sweeper receives)."""
    note_run_start()
    if cfg.get("seed") is not None:  # `is not None`: seed 0 is a seed
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    check_selection(cfg.selection.metric, cfg.selection.mode, datamodule.body_parts)
    refuse_writes_inside(datamodule.root, {"paths.output_dir (the run folder)": output_dir})
    # _convert_="all": every value reaching the model (the optimiser's betas, say) and so its checkpoints is a plain
    # Python value; an OmegaConf ListConfig in the optimiser state makes torch.load(weights_only=True) refuse the file.
    model = instantiate(cfg.model, _convert_="all")
    ckpt_path = requested_checkpoint(cfg)
    if ckpt_path != cfg.get("ckpt_path"):
        log.info("SLURM requeued this job (restart %s): resuming from its last checkpoint", os.environ["SLURM_RESTART_COUNT"])
    checkpoints = refuse_to_overwrite(output_dir / "checkpoints", ckpt_path)
    # Only a run that resumes from a checkpoint continues the tracker runs its folder recorded: a new start in a folder
    # that has none (a crash before the first epoch ended) logs into new ones.
    resumes = ckpt_path is not None and (ckpt_path != "last" or bool(checkpoints))
    logger_config = continue_tracker_runs(cfg.get("logger"), output_dir) if resumes else cfg.get("logger")
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=instantiate_group(logger_config) or False,
        sync_batchnorm=sync_batchnorm_where_supported(cfg.trainer), benchmark=autotuning(cfg.trainer, model),
    )
    refuse_lightning_sharding(trainer.world_size, cfg.trainer.get("use_distributed_sampler", True))
    if resumes:  # before anything is logged: Lightning's CSV writer deletes the folder's metrics.csv when it starts
        for logger in trainer.loggers:
            if isinstance(logger, ContinuableCSVLogger):
                logger.continue_earlier_rows()
    log_config(trainer.loggers, cfg)  # after the refusals: a run refused at the start leaves no tracker run behind
    record_tracker_runs(trainer.loggers, output_dir)  # so that resuming in this folder continues the tracker runs
    try:
        with warnings.catch_warnings():
            # With an on-exception checkpoint configured, Lightning reads fit(ckpt_path=None) as "resume from the
            # last checkpoint if there is one" and says so twice; refuse_to_overwrite has made sure there is none.
            warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
            warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
            # Resumed mid-epoch, our train loader does restart at the first batch not trained on (resume_position).
            warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
            # weights_only: resuming reads tensors and plain values, never pickled code.
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        log.error("stopped by SIGTERM (how to resume: the warning above)")
        raise SystemExit(128 + signal.SIGTERM) from None
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    selected = selected_checkpoint(trainer, cfg.selection.metric)
    metrics["selection/score"] = selected["score"]

    tested = cfg.get("test") and datamodule.has_split("test")
    if cfg.get("test") and not tested:
        log.warning("no test split: %s lists no valid images for %s; skipping the test", datamodule.root, datamodule.body_parts)
    if tested:
        with timed_after_fit(trainer, "test"):  # the selected checkpoint's loading included
            trainer.test(model, datamodule=datamodule, ckpt_path=selected["checkpoint"], verbose=False, weights_only=True)
        metrics.update({key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")})
    elif selected["checkpoint"]:
        model.load_state_dict(read_checkpoint(selected["checkpoint"])["state_dict"])  # what a test would have scored
    draw_final_galleries(trainer, model, selected)  # before the test outputs: report.html embeds the final gallery
    if datamodule.has_split("val"):
        write_validation_predictions(trainer, model, datamodule, selected, output_dir)
    if tested and trainer.is_global_zero:
        with timed_after_fit(trainer, "reports"):
            write_test_outputs(model, datamodule, output_dir, selected["description"])
    if trainer.is_global_zero:
        record = {key: value for key, value in selected.items() if key != "description"}
        record["score"] = None if math.isnan(record["score"]) else record["score"]  # JSON has no NaN
        (output_dir / "selection.json").write_text(json.dumps(
            {"metric": cfg.selection.metric, "mode": cfg.selection.mode, **record}, indent=2))
    report_skipped(sorted(set(model.all_skipped_images()) | set(datamodule.skipped)), output_dir, trainer.is_global_zero)
    write_timings(trainer, output_dir)
    finish_tracking(trainer.loggers, output_dir, trainer.global_step)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Lightning leaves the process group up; tearing it down here keeps gloo's threads from aborting at exit.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return metrics


def check_selection(metric: str, mode: str, body_parts: list[str]) -> None:
    """The selection rule names a metric training logs for these body parts (checked before anything runs), and a
    direction."""
    if mode not in ("min", "max"):
        raise ConfigError(f"selection.mode must be min or max, not {mode!r}")
    match = SELECTABLE.fullmatch(metric)
    if not match:
        raise ConfigError(
            f"selection.metric {metric!r} is not a metric training logs: val/loss, val/study/kappa, val/image/auroc, "
            f"val/study/XR_WRIST/kappa, ... ({', '.join(LOGGED_METRICS)}; train/ works too). A model is never chosen "
            "on the test split"
        )
    if match.group("part") and match.group("part") not in body_parts:
        raise ConfigError(f"selection.metric {metric!r} names a body part this run does not train on ({', '.join(body_parts)})")


def sync_batchnorm_where_supported(trainer_cfg: DictConfig) -> bool:
    """trainer.sync_batchnorm where torch can do it: its SyncBatchNorm runs on CUDA devices only ("SyncBatchNorm layers
    only work with GPU modules" ended every process of trainer=ddp on a CPU machine). Elsewhere each process normalises
    with its own batch's statistics, as with trainer.devices=2, and the run says so once."""
    asked = bool(trainer_cfg.get("sync_batchnorm", False))
    on_cuda = torch.cuda.is_available() and str(trainer_cfg.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
    if asked and not on_cuda:
        log.info("trainer.sync_batchnorm: off, synchronised BatchNorm needs CUDA devices; each process normalises "
                 "with its own batch's statistics")
    return asked and on_cuda


def autotuning(trainer_cfg: DictConfig, model) -> bool | None:
    """trainer.benchmark (cuDNN autotuning), but for a study model: its batches hold as many images as their
    studies have views, a new count nearly every batch, and autotuning starts over for each (57 s against 2 s for an
    epoch when it did so for a few shapes, docs/speed.md)."""
    asked = trainer_cfg.get("benchmark")
    if asked and model.is_study_model:
        log.info("trainer.benchmark: off for a study model (batches of whole studies hold a different number of "
                 "images nearly every time, and cuDNN would tune again for each)")
        return False
    return asked


def refuse_lightning_sharding(world_size: int, use_distributed_sampler: bool) -> None:
    """Our sampler shards itself across processes; Lightning's distributed sampler on top would shard the shards."""
    if world_size > 1 and use_distributed_sampler:
        raise ConfigError(
            f"trainer.use_distributed_sampler=true with {world_size} processes would give each process a 1/{world_size} "
            f"share of its own shard (mura's sampler shards itself, exactly): leave it false, as trainer=ddp does "
            "(or use trainer=ddp)"
        )


def selected_checkpoint(trainer: pl.Trainer, metric: str) -> dict:
    """The checkpoint the selection rule chose (best.ckpt: the checkpoint callback that monitors the selection metric),
    its epoch and score; without one, the final weights and the last epoch's score."""
    callback = next((callback for callback in trainer.checkpoint_callbacks if getattr(callback, "monitor", None) == metric), None)
    if callback is not None and callback.best_model_path:
        epoch = checkpoint_epoch(callback.best_model_path)
        return {"checkpoint": callback.best_model_path, "epoch": epoch, "score": _defined(callback.best_model_score),
                "description": f"{callback.best_model_path} (epoch {epoch})"}
    return {"checkpoint": None, "epoch": trainer.current_epoch - 1, "score": _defined(trainer.callback_metrics.get(metric)),
            "description": "the final weights (no checkpoint callback monitors selection.metric)"}


def _defined(value) -> float:
    """A score, or NaN when undefined: ModelCheckpoint stores an undefined (NaN) score as -inf or +inf."""
    return float(value) if value is not None and math.isfinite(float(value)) else float("nan")


def draw_final_galleries(trainer: pl.Trainer, model: pl.LightningModule, selected: dict) -> None:
    """The final Grad-CAM gallery shows the selected (tested) weights, not the last epoch's."""
    when = f"{Path(selected['checkpoint']).name}, epoch {selected['epoch']}" if selected["checkpoint"] else "final weights"
    for callback in trainer.callbacks:
        if isinstance(callback, GradCamGallery):
            with timed_after_fit(trainer, "final_gallery"):
                callback.render(trainer, model, "final", when)


def write_timings(trainer: pl.Trainer, output_dir: Path) -> None:
    """<run>/timings.json and one log line: the time to the first step, epoch 0 against a later one, the galleries."""
    timings = next(iter(run_timings(trainer)), None)
    if timings is None or not trainer.is_global_zero:
        return
    (output_dir / "timings.json").write_text(json.dumps(timings.summary(), indent=2))
    log.info("timings: %s (timings.json)", timings.describe())


def requested_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ckpt_path, or `last` when SLURM requeued this job (preemption, or submitit
    after a timeout): the same command again, in its folder."""
    ckpt_path = cfg.get("ckpt_path")
    return "last" if ckpt_path is None and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0 else ckpt_path


def refuse_to_overwrite(checkpoint_dir: Path, ckpt_path: str | None) -> list[str]:
    """A new run in a folder that holds checkpoints would overwrite them (and Lightning would quietly resume from
    one): resuming is asked for by name, ckpt_path=last. Returns the checkpoints the folder holds."""
    existing = sorted(path.name for path in checkpoint_dir.glob("*.ckpt"))
    if existing and ckpt_path is None:
        raise ConfigError(f"{checkpoint_dir} already holds {', '.join(existing)}: pass ckpt_path=last to resume that run, "
                          "or leave hydra.run.dir out (or name a new folder) to start a new one")
    return existing


def report_skipped(skipped: list[str], output_dir: Path, write: bool) -> None:
    """Counted skips are reported at the end of the run and listed in skipped_images.txt, never silent."""
    if not skipped:
        return
    log.warning("%d unreadable image(s) were skipped (data.on_bad_image=skip), listed in %s: %s",
                len(skipped), output_dir / SKIPPED_IMAGES_FILE, skipped[:5])
    if write:
        (output_dir / SKIPPED_IMAGES_FILE).write_text("".join(path + "\n" for path in skipped))


def write_validation_predictions(trainer: pl.Trainer, model, datamodule, selected: dict, output_dir: Path) -> None:
    """`val_predictions.csv` (a row per study) and `val_predictions_images.csv` (a row per image): the selected
    checkpoint's validation predictions, every process's share gathered. Pooled over a cross-validation's folds they
    score every training study once, each by the model that never trained on it (what mura.compare compares
    settings on). When the fit's latest validation scored the selected weights (the checkpoint was written at its
    step), its predictions are these; otherwise the checkpoint is scored again, with the loggers set aside (the
    history holds the fit's epochs only)."""
    step = checkpoint_step(selected["checkpoint"]) if selected["checkpoint"] else trainer.global_step
    if model.validated_at_step != step or "val" not in model.predictions:
        loggers, trainer.loggers = trainer.loggers, []
        try:
            with timed_after_fit(trainer, "val_predictions"):
                trainer.validate(model, datamodule=datamodule, ckpt_path=selected["checkpoint"], verbose=False,
                                 weights_only=True)
        finally:
            trainer.loggers = loggers
    if trainer.is_global_zero:
        studies, images = predictions_tables(model.predictions["val"], datamodule.studies, datamodule.splits["path"],
                                             model.hparams.threshold)
        studies.to_csv(output_dir / "val_predictions.csv", index=False)
        images.to_csv(output_dir / "val_predictions_images.csv", index=False)


def write_test_outputs(model, datamodule, output_dir: Path, tested: str) -> None:
    report = model.reports["test"]
    split = f"the test split (official valid) of {datamodule.root}, body parts {', '.join(datamodule.body_parts)}"
    scored, listed = report["image"]["overall"]["n"], int((datamodule.splits["split"] == "test").sum())
    partial = ""
    if scored < listed:  # trainer.limit_test_batches (debug=limit): no number to report as the test result
        partial = f"PARTIAL: {scored} of its {listed} images (trainer.limit_test_batches)"
        log.warning("the test scored %s; its numbers are not the test split's", partial)
        split += f"; {partial}"
    if model.is_study_model:
        split += f"; {STUDY_MODEL_NOTE.format(pooling=model.hparams.study_pooling)}"
    write_run_outputs(
        output_dir, report, model.predictions["test"], datamodule.studies, datamodule.splits["path"],
        model.hparams.threshold, title="Test results after training", split_description=split, checkpoints=[tested],
    )
    table = metrics_table(report, "study").to_markdown(index=False)
    heading = f"Test split ({datamodule.root}{', ' + partial if partial else ''}), study level"
    print(f"\n{heading}:\n{table}\n\nwritten to {output_dir}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    # Before anything is written: a refused run leaves the run folder it refused (its config.yaml, .hydra/) as it was.
    refuse_to_overwrite(Path(cfg.paths.output_dir) / "checkpoints", requested_checkpoint(cfg))
    start_run(cfg)
    return sweep_value(train(cfg)["selection/score"], cfg.selection.metric)


def sweep_value(score: float, metric: str) -> float | None:
    """What a sweeper optimises: the selected checkpoint's score. None, not NaN, when it is undefined (kappa of a
    validation split that holds one class): the Optuna sweeper records such a trial as failed and goes on (with
    max_failure_rate 1.0, conf/hparams_search/optuna.yaml), while a NaN stops the whole search."""
    if math.isnan(score):
        log.warning("selection.metric %s is undefined (NaN) at the selected checkpoint; this trial reports no value to "
                    "the sweeper", metric)
        return None
    return score


if __name__ == "__main__":
    main()
