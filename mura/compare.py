"""python -m mura.compare runs=[A,B,C] baseline=A: paired differences between runs on the same studies (see
conf/compare.yaml)."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from mura.app.errors import ConfigError, exit_on_user_error
from mura.app.paths import expand_paths
from mura.app.run_start import start_run
from mura.evaluation.comparison import compare_runs, comparison_markdown, plot_forest, read_run_predictions
from mura.evaluation.summary import find_runs


def compare(cfg: DictConfig) -> pd.DataFrame:
    output_dir = Path(cfg.paths.output_dir)
    # A pattern such as 'outputs/*/*' also matches this command's own new folder: it is not a run.
    folders = expand_paths(cfg.runs, "runs", keep=os.path.isdir)
    runs = [run for run in find_runs(folders) if run.resolve() != output_dir.resolve()]
    runs = with_baseline_first(runs, cfg.baseline)
    names = run_names(runs)
    table = compare_runs({name: read_run_predictions(run) for name, run in zip(names, runs, strict=True)}, names[0],
                         threshold=cfg.threshold, replicates=cfg.bootstrap, seed=cfg.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = comparison_markdown(table, {name: str(run) for name, run in zip(names, runs, strict=True)}, names[0],
                                   cfg.bootstrap, cfg.seed, cfg.threshold)
    (output_dir / "compare.md").write_text(markdown)
    table.to_csv(output_dir / "compare.csv", index=False)
    plot_forest(table, output_dir / "compare.png")
    print(markdown + f"\nwritten to {output_dir}")
    return table


def with_baseline_first(runs: list[Path], baseline: str | None) -> list[Path]:
    """The runs with the baseline first: `baseline` (a run folder, added when `runs` lacks it), or the first run."""
    resolved = [run.resolve() for run in runs]
    repeated = next((run for index, run in enumerate(runs) if resolved[index] in resolved[:index]), None)
    if repeated is not None:
        raise ConfigError(f"runs: {repeated} is listed twice")
    if baseline is None:
        chosen = runs[:1]
    else:
        chosen = find_runs([str(baseline)])
        if len(chosen) != 1:
            raise ConfigError(f"baseline: {baseline} is a sweep folder ({len(chosen)} jobs); pass one run folder")
    return [chosen[0], *(run for run, path in zip(runs, resolved, strict=True) if path != chosen[0].resolve())]


def run_names(runs: list[Path]) -> list[str]:
    """Each run's path below the folder that holds them all (sweep jobs: 0, 1, ...), as the tables and plot name
    them."""
    resolved = [run.resolve() for run in runs]
    common = Path(os.path.commonpath([path.parent for path in resolved]))
    return [path.relative_to(common).as_posix() for path in resolved]


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start_run(cfg)
    compare(cfg)


if __name__ == "__main__":
    main()
