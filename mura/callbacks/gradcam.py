"""Grad-CAM gallery: heat maps over a fixed set of validation studies, at chosen epochs and at the end."""

from __future__ import annotations

import logging
import time
from itertools import zip_longest
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl

from mura.callbacks.artifacts import RunFile, publish
from mura.callbacks.timing import record_drawing
from mura.data.images import load_grayscale
from mura.inference.explain import save_figure, study_heatmap_figure

log = logging.getLogger(__name__)


def choose_gallery_studies(
    val: pd.DataFrame, studies_per_part: int = 1, studies_per_class: int | None = None
) -> list[pd.DataFrame]:
    """`studies_per_part` normal and as many abnormal studies of every body part of `val` (the first by study path, so
    the same every epoch and every run), normal ones first; `studies_per_class` caps each class, taking every
    part's first study before any part's second (None: no cap). Each study is its image rows, sorted by view."""
    chosen = []
    studies = val.drop_duplicates("study").sort_values("study")
    for label in (0, 1):
        by_part = [frame["study"].head(studies_per_part).tolist()
                   for _, frame in studies[studies["label"] == label].groupby("body_part", sort=True)]
        picked = [study for round_ in zip_longest(*by_part) for study in round_ if study is not None]
        chosen += [val[val["study"] == study].sort_values("view") for study in picked[:studies_per_class]]
    return chosen


class GradCamGallery(pl.Callback):
    """Writes `<output_dir>/epoch_NNN/` (every `every_n_epochs`) PNGs, one per study, each view with its heat map,
    the true label and the predicted probability, over the validation studies `choose_gallery_studies` picks (every
    body part); and hands them to the run's trackers (mura/callbacks/artifacts.py). `mura.train` renders
    `<output_dir>/final/` itself, from the selected (tested) checkpoint."""

    def __init__(self, output_dir: str, every_n_epochs: int = 5, studies_per_part: int = 1,
                 studies_per_class: int | None = None, max_views: int = 4):
        self.output_dir = Path(output_dir)
        self.every_n_epochs = every_n_epochs
        self.studies_per_part = studies_per_part
        self.studies_per_class = studies_per_class
        self.max_views = max_views
        self.gallery: list[pd.DataFrame] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and datamodule.has_split("val"):
            self.gallery = choose_gallery_studies(datamodule.split_frame("val"), self.studies_per_part,
                                                  self.studies_per_class)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # At the end of validation, not of the training epoch: with weight averaging (model.ema) the weights in the
        # model now are the averaged ones that were validated; after validation they are swapped back.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.render(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}", f"after epoch {trainer.current_epoch}")

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, folder: str, when: str) -> list[Path]:
        if not trainer.is_global_zero or not self.gallery:
            return []
        started = time.perf_counter()
        datamodule = trainer.datamodule
        written = []
        for study in self.gallery:
            views = study.head(self.max_views)
            raw = [load_grayscale(Path(datamodule.root) / path) for path in views["path"]]
            first = views.iloc[0]
            label = "abnormal" if first["label"] == 1 else "normal"
            title = f"{first['body_part']} {first['patient']}: truth {label}, study p(abnormal) = {{probability:.2f}} ({when})"
            if len(views) < len(study):  # the probability (a study model's weights too) is of the views shown
                title += f"; {len(views)} of its {len(study)} views"
            figure, _ = study_heatmap_figure(pl_module, raw, title)  # the module's own preprocessing and resize mode
            name = f"{first['body_part']}_{first['patient']}_{Path(first['study']).name}"
            file = RunFile(self.output_dir.parent, f"{self.output_dir.name}/{folder}/{name}.png", f"gradcam/{name}")
            save_figure(figure, file.path)
            written.append(file)
        publish(trainer.loggers, written, trainer.global_step)
        record_drawing(trainer, "gallery", folder, started)
        log.info("Grad-CAM gallery: %d studies in %s (%.1f s)", len(written), self.output_dir / folder, time.perf_counter() - started)
        return [file.path for file in written]
