"""The CSV logger of `logger=csv`, whose file a resumed run continues instead of starting anew."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger


class ContinuableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run's `metrics.csv` holds every epoch, as the uninterrupted run's.

    Lightning deletes the folder's metrics.csv when its writer starts ("Previous log files in this directory will be
    deleted"), so a run killed after epoch 0 and resumed with ckpt_path=last lost epoch 0's rows. `continue_earlier_rows`
    (called by mura.train for a run that resumes, before anything is logged) reads the earlier rows first; they are
    written back in front of the resumed run's own, up to the first step the resumed run logs: rows the interrupted run
    logged after the checkpoint it resumes from are logged again by the resumed run (its steps are the same)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._earlier_rows: list[dict[str, Any]] | None = None

    def continue_earlier_rows(self) -> int:
        """Keep the rows the folder's metrics.csv holds now; returns how many."""
        path = Path(self.log_dir) / "metrics.csv"
        if not path.is_file():
            return 0
        with path.open(newline="") as file:
            self._earlier_rows = [{key: value for key, value in row.items() if value != ""} for row in csv.DictReader(file)]
        return len(self._earlier_rows)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._earlier_rows is not None:
            kept = [row for row in self._earlier_rows if step is None or int(row["step"]) < step]
            self._earlier_rows = None
            # Written by the writer with the new rows, under one header (the writer rewrites it when keys appear)
            self.experiment.metrics[:0] = [{**row, "step": int(row["step"])} for row in kept]
        super().log_metrics(metrics, step)
