"""The CSV logger of `logger=csv`, whose file a resumed run continues instead of starting anew."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger

EARLIER = "metrics.csv.earlier"  # the rows a resumed run has not yet written back, kept on disk until it has


class ContinuableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run's `metrics.csv` holds every epoch, as the uninterrupted run's.

    Lightning deletes the folder's metrics.csv when its writer starts ("Previous log files in this directory will be
    deleted"), so a run killed after epoch 0 and resumed with ckpt_path=last lost epoch 0's rows. `continue_earlier_rows`
    (called by mura.train for a run that resumes, before anything is logged) moves the file aside to metrics.csv.earlier
    first; at the resumed run's first logged step its rows are written back in front of the new ones, up to that step
    (rows the interrupted run logged after the checkpoint it resumes from are logged again by the resumed run: its
    steps are the same), and only then is the earlier file removed. A resume that fails before that point leaves the
    earlier file for the next resume to take up: no row is lost."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._earlier_rows: list[dict[str, Any]] | None = None

    def continue_earlier_rows(self) -> int:
        """Set the folder's earlier rows aside (metrics.csv.earlier, or a failed resume's); returns how many."""
        folder = Path(self.log_dir)
        earlier, current = folder / EARLIER, folder / "metrics.csv"
        if not earlier.is_file():
            if not current.is_file():
                return 0
            os.replace(current, earlier)
        with earlier.open(newline="") as file:
            self._earlier_rows = [{key: value for key, value in row.items() if value != ""} for row in csv.DictReader(file)]
        return len(self._earlier_rows)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._earlier_rows is not None:
            kept = [row for row in self._earlier_rows if step is None or int(row["step"]) < step]
            self._earlier_rows = None
            self.experiment.metrics[:0] = [{**row, "step": int(row["step"])} for row in kept]
            super().log_metrics(metrics, step)
            self.save()  # the earlier rows are in metrics.csv now: their copy can go
            (Path(self.log_dir) / EARLIER).unlink(missing_ok=True)
            return
        super().log_metrics(metrics, step)
