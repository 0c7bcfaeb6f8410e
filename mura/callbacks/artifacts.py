"""What a run's experiment trackers receive beyond Lightning's metrics: the resolved config as parameters, and the
files the run writes (figures, reports, metrics.json, splits.csv, the Grad-CAM galleries) as artifacts.

One table, `PUBLISHERS`, says how each kind of tracker takes a file; a logger it does not name (CSV) keeps metrics
only. The Grad-CAM gallery hands its pictures over as it draws them, `mura.train` the rest of the run folder when
the run is done (`finish_tracking`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from mura.app.quiet import without_wandb_link_notices

log = logging.getLogger(__name__)

# The run folder's files a tracker should hold, as the run leaves them; absent ones are skipped (the test outputs
# exist only after a test; config.yaml, the resolved config, and .hydra/overrides.yaml, the command line's
# settings, only for a run started from the command line).
RUN_FILES = (
    "config.yaml", ".hydra/overrides.yaml", "curves.png", "history.json",
    "metrics.json", "report.md", "report.html", "roc.png", "confusion.png", "calibration.png",
    "predictions.csv", "predictions_images.csv", "predictions_official.csv", "val_predictions.csv",
    "val_predictions_images.csv",
    "splits.csv", "split_table.csv", "split_table.md", "selection.json", "skipped_images.txt",
)
# Lightning's MLFlowLogger keeps the first 250 characters of a parameter value and drops the rest without a word;
# a longer value is cut here first, with a mark and a warning, the same for every tracker.
MAX_PARAMETER_LENGTH = 250
# The trackers' run ids of a run folder ({"mlflow": ..., "wandb": ...}): the run resumed in that folder (ckpt_path=last,
# a requeued SLURM job) continues those tracker runs instead of starting new ones.
TRACKER_RUNS_FILE = "tracker_runs.json"
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"  # conf/logger/mlflow.yaml reads the user's tracking server from it


@dataclass(frozen=True)
class RunFile:
    """A file of a run folder as trackers take it: `name` is its path under `run_dir` ("gradcam/final/x.png") and so
    its path among MLflow's artifacts and wandb's files; a picture also joins the image series `series` (TensorBoard's
    tag, wandb's key), where the same study's Grad-CAM after each epoch lines up."""

    run_dir: Path
    name: str
    series: str

    @property
    def path(self) -> Path:
        return self.run_dir / self.name


def run_file(run_dir: Path, name: str) -> RunFile:
    """A file that is its own series, named by its path without the suffix ("roc")."""
    return RunFile(Path(run_dir), name, PurePosixPath(name).with_suffix("").as_posix())


def to_tensorboard(logger: TensorBoardLogger, file: RunFile, step: int) -> None:
    """Pictures as images, Markdown as text (TensorBoard renders it); TensorBoard has no place for other files."""
    if file.path.suffix == ".png":
        with Image.open(file.path) as image:
            pixels = np.asarray(image.convert("RGB"))
        logger.experiment.add_image(file.series, pixels, global_step=step, dataformats="HWC")
    elif file.path.suffix == ".md":
        logger.experiment.add_text(file.series, file.path.read_text(), global_step=step)


def to_mlflow(logger: MLFlowLogger, file: RunFile, step: int) -> None:
    """Every file, in the run folder's layout (a gallery's folder names its epoch)."""
    folder = PurePosixPath(file.name).parent.as_posix()
    logger.experiment.log_artifact(logger.run_id, str(file.path), None if folder == "." else folder)


def to_wandb(logger: WandbLogger, file: RunFile, step: int) -> None:
    """Pictures as wandb images (a series steps through the epochs), every other file among the run's files."""
    if file.path.suffix == ".png":
        logger.log_image(key=file.series, images=[str(file.path)], step=step)
    else:
        with without_wandb_link_notices():
            logger.experiment.save(str(file.path), base_path=str(file.run_dir), policy="now")


PUBLISHERS: dict[type[Logger], Callable[[Any, RunFile, int], None]] = {
    TensorBoardLogger: to_tensorboard,
    MLFlowLogger: to_mlflow,
    WandbLogger: to_wandb,
}


@rank_zero_only
def publish(loggers: Iterable[Logger], files: Sequence[RunFile], step: int) -> None:
    """Hand `files` to every logger that takes files, at training step `step`."""
    for logger in loggers:
        publisher = next((publisher for kind, publisher in PUBLISHERS.items() if isinstance(logger, kind)), None)
        if publisher is None:
            continue
        for file in files:
            publisher(logger, file, step)


@rank_zero_only
def finish_tracking(loggers: Sequence[Logger], run_dir: str | Path, step: int) -> None:
    """The run's last word to its trackers: the files of `RUN_FILES` it wrote, then each tracker's run closed (a wandb
    run otherwise stays open until the process ends, and the next run of a sweep would log into it)."""
    run_dir = Path(run_dir)
    publish(loggers, [run_file(run_dir, name) for name in RUN_FILES if (run_dir / name).is_file()], step)
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def config_parameters(config: Mapping) -> dict[str, Any]:
    """A (resolved) config as flat dotted keys ("model.optimizer.lr"): scalars as they are, lists and empty mappings
    as JSON, values longer than MAX_PARAMETER_LENGTH cut with a mark."""
    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=True)
    parameters: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                visit(f"{prefix}.{key}", item)
        else:
            parameters[prefix] = json.dumps(value, default=str) if isinstance(value, (Mapping, list, tuple)) else value

    for key, value in config.items():
        visit(str(key), value)
    cut = sorted(key for key, value in parameters.items() if len(str(value)) > MAX_PARAMETER_LENGTH)
    if cut:
        log.warning("config values longer than %d characters are cut in the trackers' parameters: %s",
                    MAX_PARAMETER_LENGTH, ", ".join(cut))
    for key in cut:
        parameters[key] = str(parameters[key])[: MAX_PARAMETER_LENGTH - 1] + "…"
    return parameters


def log_config(loggers: Iterable[Logger], config: Mapping) -> None:
    """The run's resolved config as every logger's hyperparameters (MLflow's parameters, wandb's config,
    TensorBoard's hparams, the CSV logger's hparams.yaml)."""
    parameters = config_parameters(config)
    for logger in loggers:
        logger.log_hyperparams(parameters)


def default_run_name(run_dir: Path) -> str:
    """The run folder's name; a sweep's numbered job folder with its sweep's ("multirun_2026-01-02_10-00-00/3")."""
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


def recorded_tracker_runs(run_dir: str | Path) -> dict[str, str]:
    """The tracker run ids that `run_dir` recorded ({"mlflow": ..., "wandb": ...}; record_tracker_runs)."""
    path = Path(run_dir) / TRACKER_RUNS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        log.warning("%s is unreadable (%s): the tracker runs start anew", path, error)
        return {}


@rank_zero_only
def record_tracker_runs(loggers: Iterable[Logger], run_dir: str | Path) -> None:
    """Write the trackers' run ids into the run folder (after their runs exist: log_config makes them), beside the
    ids of trackers this run does not use; atomically, so a job killed mid-write leaves the previous record."""
    ids = recorded_tracker_runs(run_dir)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            ids["mlflow"] = logger.run_id
        elif isinstance(logger, WandbLogger):
            ids["wandb"] = logger.version
    if ids:
        path = Path(run_dir) / TRACKER_RUNS_FILE
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(ids, indent=2))
        os.replace(partial, path)


def continue_tracker_runs(logger_config: DictConfig | None, run_dir: str | Path) -> DictConfig | None:
    """The logger group's config, with the tracker runs `run_dir` recorded handed to the loggers that can continue
    them (mlflow_logger, wandb_logger): for a run that resumes from its own checkpoint, and only then."""
    recorded = recorded_tracker_runs(run_dir)
    if logger_config is None or not recorded:
        return logger_config
    config = copy.deepcopy(logger_config)
    with open_dict(config):
        for node in config.values():
            target = node.get("_target_") if isinstance(node, DictConfig) else None
            if target == f"{__name__}.mlflow_logger" and "mlflow" in recorded:
                node.continue_run_id = recorded["mlflow"]
            elif target == f"{__name__}.wandb_logger" and "wandb" in recorded:
                node.continue_id = recorded["wandb"]
    return config


@contextlib.contextmanager
def _environment_kept(*names: str) -> Iterator[None]:
    """Environment variables `names` as they were before the block (set back only where changed)."""
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if os.environ.get(name) != value:
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class ContinuableMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, able to continue a run, and leaving the process's environment as it found it.

    MLflow keeps a run's parameters for good and refuses to change one, so a continued run logs only the parameters
    the run lacks, and each one it changes (ckpt_path=last, a longer trainer.max_epochs) as the tag
    `resumed.<name>`."""

    @property
    def experiment(self):  # noqa: D102 (Lightning's)
        if self._initialized:  # every log call comes here; only the first access touches the environment
            return super().experiment
        # Lightning's first access calls mlflow.set_tracking_uri, which also sets MLFLOW_TRACKING_URI for the whole
        # process: the next run of a sweep in this process would take it for the user's and log into this run's store.
        with _environment_kept(TRACKING_URI_VARIABLE):
            return super().experiment

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        flat = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        super().log_hyperparams({key: value for key, value in flat.items() if key not in logged})
        # Lightning's own cut (250 characters) on the way in, so an unchanged long value compares equal.
        changed = [RunTag(f"resumed.{key}"[:MAX_PARAMETER_LENGTH], str(value)) for key, value in flat.items()
                   if key in logged and logged[key] != str(value)[:MAX_PARAMETER_LENGTH]]
        if changed:
            self.experiment.log_batch(self.run_id, tags=changed)


def _reopen_mlflow_run(tracking_uri: str, run_id: str) -> bool:
    """Mark `run_id` running again, if the store holds it as a run to log into (not deleted): its first part ended
    FINISHED or FAILED. False if it does not; other errors (a server down) raise."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return False
        raise
    if run.info.lifecycle_stage != "active":
        return False
    client.update_run(run_id, status="RUNNING")
    return True


def mlflow_logger(
    run_dir: str | Path,
    experiment_name: str,
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    run_name: str | None = None,
    tags: Iterable[str] | Mapping[str, Any] = (),
    continue_run_id: str | None = None,
    **options: Any,
) -> MLFlowLogger:
    """Lightning's MLFlowLogger, by default with a store of the run's own: without a tracking URI, SQLite at
    `<run_dir>/mlflow/mlflow.db` and the artifacts in `<run_dir>/mlflow/artifacts` (MLflow 3 refuses a plain-folder
    store unless MLFLOW_ALLOW_FILE_STORE is set; SQLite is the local store it recommends). `run_name` defaults to the
    run folder's name; `tags` are names (each becomes the tag `name=true`) or a mapping. `continue_run_id` (set by
    continue_tracker_runs for a resumed run) is continued, running again, if the store holds it, not deleted; else a
    new run starts."""
    run_dir = Path(run_dir).resolve()
    if not tracking_uri:
        store = run_dir / "mlflow"
        store.mkdir(parents=True, exist_ok=True)  # SQLite creates the database file, not its folder
        tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        artifact_location = artifact_location or str(store / "artifacts")
    if continue_run_id is not None and not _reopen_mlflow_run(tracking_uri, continue_run_id):
        log.warning("the resumed run's MLflow run %s is not in %s (or was deleted): starting a new run", continue_run_id,
                    tracking_uri)
        continue_run_id = None
    tag_values = dict(tags) if isinstance(tags, Mapping) else {str(tag): "true" for tag in tags}
    return ContinuableMLFlowLogger(experiment_name=experiment_name, run_name=run_name or default_run_name(run_dir),
                                   tracking_uri=tracking_uri, artifact_location=artifact_location, tags=tag_values or None,
                                   run_id=options.pop("run_id", None) or continue_run_id, **options)


class EnvironmentKeepingWandbLogger(WandbLogger):
    """Lightning's WandbLogger, leaving the process's environment as it found it: an offline logger's first access sets
    WANDB_MODE=dryrun for the whole process, and the next run of a sweep in this process, though configured to log
    live, would run offline. wandb reads the variable when its run starts, so putting it back after is safe."""

    @property
    def experiment(self):  # noqa: D102 (Lightning's)
        if self._experiment is not None:  # every log call comes here; only the first access touches the environment
            return super().experiment
        with _environment_kept("WANDB_MODE"):
            return super().experiment


def wandb_logger(save_dir: str | Path, offline: bool = False, continue_id: str | None = None, **options: Any) -> WandbLogger:
    """Lightning's WandbLogger writing into the run folder `save_dir`. `continue_id` (set by continue_tracker_runs for
    a resumed run) is continued when logging live (the same id; Lightning asks wandb for resume="allow"). Offline it is
    not: a second offline run of the same id, synced, would overwrite the first one's history on the server."""
    offline = offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled")
    if continue_id is not None and offline:
        log.info("wandb runs offline: the resumed run logs into a new wandb run (wandb cannot continue an offline run)")
        continue_id = None
    return EnvironmentKeepingWandbLogger(save_dir=str(save_dir), offline=offline, id=options.pop("id", None) or continue_id,
                                         **options)
