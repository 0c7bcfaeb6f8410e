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
from mura.evaluation.out_of_fold import (
    all_cross_validation_folds,
    check_same_folds,
    cross_validated_settings,
    cross_validation_markdown,
    fold_differences,
    fold_tests,
    seed_groups,
    test_train_ratio,
)
from mura.evaluation.summary import find_runs


def compare(cfg: DictConfig) -> pd.DataFrame:
    output_dir = Path(cfg.paths.output_dir)
    # A pattern such as 'outputs/*/*' also matches this command's own new folder: it is not a run.
    folders = expand_paths(cfg.runs, "runs", keep=os.path.isdir)
    runs = [run for run in find_runs(folders) if run.resolve() != output_dir.resolve()]
    if all_cross_validation_folds(runs):
        return compare_cross_validated(cfg, runs, output_dir)
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


def compare_cross_validated(cfg: DictConfig, runs: list[Path], output_dir: Path) -> pd.DataFrame:
    """Cross-validated settings (sweeps over data.cv_fold) compared on their pooled out-of-fold predictions; the
    baseline setting is the one of `cfg.baseline`'s runs (a sweep folder or one fold's run), else the first."""
    baseline_runs = find_runs([str(cfg.baseline)]) if cfg.baseline is not None else runs[:1]
    if not all_cross_validation_folds(baseline_runs):
        raise ConfigError(f"baseline: {cfg.baseline} is not a cross-validation sweep (its runs set no data.cv_fold), "
                          "and the runs are: pass one of the compared settings' sweep folders, or one of its fold runs")
    listed = {run.resolve() for run in runs}
    settings = cross_validated_settings([*(run for run in baseline_runs if run.resolve() not in listed), *runs])
    chosen = {setting.name for setting in settings for run in baseline_runs
              if run.resolve() in {path.resolve() for path in setting.runs.values()}}
    if len(chosen) != 1:
        raise ConfigError(f"baseline: {cfg.baseline} holds runs of {len(chosen)} settings ({', '.join(sorted(chosen))}); "
                          "pass one setting's sweep folder, or one of its fold runs")
    baseline = next(setting for setting in settings if setting.name in chosen)
    settings = [baseline, *(setting for setting in settings if setting is not baseline)]
    if len(settings) < 2:
        raise ConfigError(f"nothing to compare with the baseline {baseline.name}: its runs are all one setting; pass "
                          "the sweeps of at least two settings")
    check_same_folds(settings, baseline)
    # The baseline recipe's other seeds measure noise, not a recipe: their tests form families of their own, so they
    # leave the real settings' Holm adjustment as it was.
    noise = {setting.name for setting in settings[1:] if setting.seed_group == baseline.seed_group}
    table = compare_runs({setting.name: setting.pooled for setting in settings}, baseline.name, threshold=cfg.threshold,
                         replicates=cfg.bootstrap, seed=cfg.seed, noise_runs=noise)
    folds = fold_differences(settings, baseline, cfg.threshold)
    tests = fold_tests(folds, test_train_ratio(baseline))
    seeds = seed_groups(settings, cfg.threshold)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = cross_validation_markdown(table, settings, baseline, folds, tests, seeds, cfg.bootstrap, cfg.seed,
                                         cfg.threshold)
    (output_dir / "compare.md").write_text(markdown)
    table.to_csv(output_dir / "compare.csv", index=False)
    folds.merge(tests, on=["run", "baseline", "metric"]).to_csv(output_dir / "compare_folds.csv", index=False)
    seeds.to_csv(output_dir / "compare_seeds.csv", index=False)
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
