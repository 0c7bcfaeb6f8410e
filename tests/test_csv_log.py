"""A resumed run's CSV log keeps the earlier rows, even when the resume itself fails before it logs anything."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mura.callbacks.csv_log import EARLIER, ContinuableCSVLogger


def _logger(folder: Path) -> ContinuableCSVLogger:
    return ContinuableCSVLogger(save_dir=str(folder), name="csv", version="")


def test_a_resume_that_fails_before_logging_loses_no_row_and_the_next_one_writes_them_back(tmp_path: Path):
    first = _logger(tmp_path)
    for step in range(4):
        first.log_metrics({"val/loss": 1.0 / (step + 1)}, step=step)
    first.finalize("success")
    log = Path(first.log_dir) / "metrics.csv"
    assert len(pd.read_csv(log)) == 4

    failed = _logger(tmp_path)  # a resume refused after its loggers started (a second SIGTERM, a wrong setting...)
    assert failed.continue_earlier_rows() == 4
    failed.log_hyperparams({"lr": 0.1})  # Lightning's writer starts here and deletes metrics.csv
    failed.finalize("failed")
    assert (Path(failed.log_dir) / EARLIER).is_file()

    resumed = _logger(tmp_path)
    assert resumed.continue_earlier_rows() == 4
    resumed.log_hyperparams({"lr": 0.1})
    resumed.log_metrics({"val/loss": 0.1}, step=2)  # resumed from the checkpoint after step 1: step 2 is logged again
    resumed.finalize("success")
    rows = pd.read_csv(log)
    assert rows["step"].tolist() == [0, 1, 2] and rows["val/loss"].tolist()[-1] == 0.1
    assert not (Path(resumed.log_dir) / EARLIER).exists()
