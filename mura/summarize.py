"""python -m mura.summarize runs=...: one table for many runs (see conf/summarize.yaml)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mura.app.errors import exit_on_user_error
from mura.app.paths import expand_paths
from mura.app.run_start import start_run
from mura.evaluation.summary import cross_validation_table, find_runs, summarize_runs, summary_markdown

log = logging.getLogger(__name__)


def summarize(cfg: DictConfig) -> str:
    output_dir = Path(cfg.paths.output_dir)
    # A pattern such as 'outputs/*/*' also matches this command's own new folder: it is not a run.
    folders = expand_paths(cfg.runs, "runs", keep=os.path.isdir)
    runs = [run for run in find_runs(folders) if run.resolve() != output_dir.resolve()]
    table, common, skipped = summarize_runs(runs)
    cross_validation = cross_validation_table(table)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(table, cross_validation, common, skipped)
    (output_dir / "summary.md").write_text(markdown)
    table.to_csv(output_dir / "summary.csv", index=False)
    if not cross_validation.empty:
        cross_validation.to_csv(output_dir / "summary_cv.csv", index=False)
    if skipped:
        log.warning("%d folder(s) not summarised (listed in summary.md)", len(skipped))
    print(markdown + f"\nwritten to {output_dir}")
    return markdown


@hydra.main(version_base="1.3", config_path="../conf", config_name="summarize")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start_run(cfg)
    summarize(cfg)


if __name__ == "__main__":
    main()
