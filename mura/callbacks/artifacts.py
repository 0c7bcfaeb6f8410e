"""What a run's experiment trackers receive beyond Lightning's metrics: the resolved config as parameters, and the
files the run writes (figures, reports, metrics.json, splits.csv, the Grad-CAM galleries) as artifacts.

One table, `PUBLISHERS`, says how each kind of tracker takes a file; a logger it does not name (CSV) keeps metrics
only. The Grad-CAM gallery hands its pictures over as it draws them, `mura.train` the rest of the run folder when
the run is done (`finish_tracking`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

# The run folder's files a tracker should hold, as the run leaves them; absent ones are skipped (the test outputs
# exist only after a test; config.yaml, the resolved config, and .hydra/overrides.yaml, the command line's
# settings, only for a run started from the command line).
RUN_FILES = (
    "config.yaml", ".hydra/overrides.yaml", "curves.png", "history.json",
    "metrics.json", "report.md", "report.html", "roc.png", "confusion.png", "calibration.png",
    "predictions.csv", "predictions_images.csv", "predictions_official.csv",
    "splits.csv", "split_table.csv", "split_table.md", "selection.json", "skipped_images.txt",
)
# Lightning's MLFlowLogger keeps the first 250 characters of a parameter value and drops the rest without a word;
# a longer value is cut here first, with a mark and a warning, the same for every tracker.
MAX_PARAMETER_LENGTH = 250


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


def mlflow_logger(
    run_dir: str | Path,
    experiment_name: str,
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    run_name: str | None = None,
    tags: Iterable[str] | Mapping[str, Any] = (),
    **options: Any,
) -> MLFlowLogger:
    """Lightning's MLFlowLogger, by default with a store of the run's own: without a tracking URI, SQLite at
    `<run_dir>/mlflow/mlflow.db` and the artifacts in `<run_dir>/mlflow/artifacts` (MLflow 3 refuses a plain-folder
    store unless MLFLOW_ALLOW_FILE_STORE is set; SQLite is the local store it recommends). `run_name` defaults to the
    run folder's name; `tags` are names (each becomes the tag `name=true`) or a mapping."""
    run_dir = Path(run_dir).resolve()
    if not tracking_uri:
        store = run_dir / "mlflow"
        store.mkdir(parents=True, exist_ok=True)  # SQLite creates the database file, not its folder
        tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        artifact_location = artifact_location or str(store / "artifacts")
    tag_values = dict(tags) if isinstance(tags, Mapping) else {str(tag): "true" for tag in tags}
    return MLFlowLogger(experiment_name=experiment_name, run_name=run_name or default_run_name(run_dir),
                        tracking_uri=tracking_uri, artifact_location=artifact_location, tags=tag_values or None,
                        **options)
