"""Learning curves after every validation epoch: loss, accuracy and study kappa, train vs validation,
with the epoch where overfitting starts marked (the seed's overfitting analysis, made automatic)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytorch_lightning as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mura.callbacks.timing import record_drawing
from mura.evaluation.figure_margins import set_margins

log = logging.getLogger(__name__)

PANELS = (("loss", "{stage}/loss"), ("image accuracy", "{stage}/image/accuracy"), ("study kappa", "{stage}/study/kappa"))
# Recorded in history.json beside the panels' metrics: what mura.summarize reads at a run's selected epoch.
RECORDED = (*(template for _, template in PANELS), "{stage}/study/auroc")


def overfitting_onset(
    train_loss: list[float], val_loss: list[float], patience: int = 2, min_rise: float = 0.05
) -> int | None:
    """The epoch (index) of the best validation loss, if validation loss then stays above it for `patience`
    epochs, ends at least `min_rise` (relative) above it, and training loss keeps falling: where the
    train-validation gap starts to open for good. A flat plateau is not overfitting."""
    if len(val_loss) < patience + 1:
        return None
    best = min(range(len(val_loss)), key=val_loss.__getitem__)
    after = range(best + 1, len(val_loss))
    if len(after) < patience:
        return None
    rose = val_loss[-1] >= val_loss[best] * (1 + min_rise)
    if rose and all(val_loss[i] > val_loss[best] for i in after) and train_loss[-1] < train_loss[best]:
        return best
    return None


class LearningCurves(pl.Callback):
    """Writes `curves.png` and `history.json` into `output_dir` after each validation epoch."""

    def __init__(self, output_dir: str, patience: int = 2):
        self.output_dir = Path(output_dir)
        self.patience = patience
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The fit's epochs only: mura.train scores the selected checkpoint's validation predictions again after it.
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        started = time.perf_counter()
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for template in RECORDED:
            for stage in ("train", "val"):
                key = template.format(stage=stage)
                if key in metrics:
                    value = float(metrics[key])
                    row[key] = None if math.isnan(value) else value  # undefined this epoch; JSON has no NaN
        self.history = [entry for entry in self.history if entry["epoch"] != row["epoch"]] + [row]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "history.json").write_text(json.dumps(self.history, indent=2))
        draw_curves(self.history, self.output_dir / "curves.png", self.patience)
        record_drawing(trainer, "curves", "curves.png", started)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict.get("history", [])


def draw_curves(history: list[dict[str, float]], path: Path, patience: int = 2) -> int | None:
    """Plot the history into `path`; returns the overfitting onset epoch it marked, if any."""
    figure, onset = curves_figure(history, patience)
    figure.savefig(path, dpi=100)
    return onset


def _series(history: list[dict[str, float]], key: str) -> list[float]:
    """One metric per epoch; NaN where history.json holds none (null: undefined that epoch)."""
    return [float("nan") if row.get(key) is None else row[key] for row in history]


def curves_figure(history: list[dict[str, float]], patience: int = 2) -> tuple[Figure, int | None]:
    """The learning curves as a figure (a bare `Figure`: no backend, no pyplot state to close; a notebook can
    `display` it), and the overfitting onset epoch it marks, if any."""
    epochs = [row["epoch"] for row in history]
    train_loss, val_loss = _series(history, "train/loss"), _series(history, "val/loss")
    onset_index = overfitting_onset(train_loss, val_loss, patience)
    figure = Figure(figsize=(5 * len(PANELS), 4))
    set_margins(figure, left=0.5, right=0.15, bottom=0.6, top=0.36, wspace=0.13)
    axes = figure.subplots(1, len(PANELS))
    for axis, (title, template) in zip(axes, PANELS, strict=True):
        for stage, style in (("train", "-o"), ("val", "-s")):
            axis.plot(epochs, _series(history, template.format(stage=stage)), style, label=stage, markersize=3)
        if onset_index is not None:
            axis.axvline(epochs[onset_index], color="tab:red", linestyle="--", label="overfitting starts")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        # Whole epochs only: a short run's axis read 0.5, 0.25...; min_n_ticks=1 holds a one-epoch axis to integers too
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axis.grid(alpha=0.3)
    if onset_index is not None:
        axes[0].fill_between(epochs[onset_index:], train_loss[onset_index:], val_loss[onset_index:], color="tab:red",
                             alpha=0.15, label="train-val gap")
    axes[0].legend()
    return figure, epochs[onset_index] if onset_index is not None else None
