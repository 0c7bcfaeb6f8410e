"""Cross-validated settings compared on every training study.

A fold's validation set is 1/k of the training split; pooled over the k folds, every training study is scored once,
by the fold model that never trained on it. Each setting's pool (`val_predictions.csv` of each fold's run: its
selected checkpoint's predictions) is compared with the baseline setting's by the paired tests of
`mura.evaluation.comparison`, on all the training studies at once. Beside it, per fold, the difference of the fold's
validation kappa and AUROC, with a paired t-test and a sign test over the folds: the fold-to-fold view, which treats
each fold's models as one draw of the recipe. Settings that differ only in `seed` form a seed group: the spread of its
pooled numbers is the run-to-run noise a difference between recipes must clear, which the paired tests (they take
each setting's trained models as given) do not see.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from scipy.stats import t as student_t

from mura.app.errors import ConfigError
from mura.evaluation.comparison import (
    METRIC_NAMES,
    family_tables,
    holm,
    mcnemar_exact,
    p_text,
    replicate_metrics,
    signed,
    study_decisions,
)
from mura.evaluation.summary import summarize_runs

VALIDATION_PREDICTIONS = "val_predictions.csv"
FOLD_METRICS = ("kappa", "auroc")
SEED_OVERRIDE = re.compile(r"^\+*seed=")
FOLD_OVERRIDE = re.compile(r"^\+*data\.cv_fold=")


@dataclass
class CrossValidatedSetting:
    """One setting's fold runs and their validation study predictions (`fold_studies`, fold -> study table)."""

    name: str
    overrides: str  # the command-line settings that set it apart from the other settings compared (but the fold)
    seed: int | None
    folds: int
    runs: dict[int, Path]
    fold_studies: dict[int, pd.DataFrame] = field(repr=False)

    @property
    def seed_group(self) -> str:
        """Its overrides but `seed`: the settings of one seed group differ in nothing else."""
        return " ".join(item for item in self.overrides.split(" ") if item and not SEED_OVERRIDE.match(item))

    @property
    def pooled(self) -> pd.DataFrame:
        """Every fold's validation studies: each training study once, scored by the model that never trained on it."""
        return pd.concat([self.fold_studies[fold] for fold in sorted(self.fold_studies)], ignore_index=True)


def is_cross_validation_run(run: Path) -> bool:
    """Whether `run` is a training run of one cross-validation fold (its recorded config sets data.cv_fold)."""
    path = Path(run) / ".hydra" / "config.yaml"
    return path.is_file() and OmegaConf.select(OmegaConf.load(path), "data.cv_fold", default=None) is not None


def cross_validated_settings(runs: list[Path]) -> list[CrossValidatedSetting]:
    """The settings among the fold runs `runs` (runs whose model settings differ in nothing but the fold: a fold
    resumed or run with other loader workers stays in its setting, `MODEL_NEUTRAL_OVERRIDES`), in the order of their
    first run, each holding every fold once; refused with the reason otherwise."""
    table, _, skipped = summarize_runs(runs)
    if skipped:
        folder, why = skipped[0]
        raise ConfigError(f"{folder}: {why}; every fold must have finished to pool its predictions")
    position = {str(run): index for index, run in enumerate(runs)}  # summarize_runs ranks; we keep the user's order
    table = (table.assign(setting=[_without_fold(settings) for settings in table["model_settings"]],
                          position=table["run"].map(position))
             .sort_values("position", kind="stable"))
    return _named([_setting(setting, table[table["setting"] == setting]) for setting in dict.fromkeys(table["setting"])])


def _without_fold(model_settings: str) -> str:
    return " ".join(item for item in model_settings.split(" ") if item and not FOLD_OVERRIDE.match(item))


def _setting(overrides: str, runs: pd.DataFrame) -> CrossValidatedSetting:
    label = f"setting '{overrides or '(the settings every run shares)'}'"
    counts = runs["cv_folds"].astype(int).unique()
    if len(counts) > 1:
        raise ConfigError(f"{label}: its runs use different data.cv_folds ({', '.join(map(str, sorted(counts)))})")
    folds = int(counts[0])
    by_fold = runs.groupby(runs["cv_fold"].astype(int))["run"].apply(list)
    doubled = {fold: found for fold, found in by_fold.items() if len(found) > 1}
    if doubled:
        fold, found = next(iter(doubled.items()))
        raise ConfigError(f"{label}: fold {fold} was run {len(found)} times ({', '.join(found)}): each training study "
                          "must be scored once; pass the run folders of one of them")
    missing = [fold for fold in range(folds) if fold not in by_fold.index]
    if missing:
        raise ConfigError(f"{label}: fold(s) {', '.join(map(str, missing))} of {folds} missing (it has "
                          f"{', '.join(map(str, by_fold.index))}): their studies would be left out of the pool; pass "
                          "every fold's run (data.cv_fold=0,...,k-1)")
    fold_runs = {fold: Path(found[0]) for fold, found in by_fold.items()}
    fold_studies = {fold: _validation_predictions(run, fold) for fold, run in fold_runs.items()}
    setting = CrossValidatedSetting(name="", overrides=overrides, seed=_seed(fold_runs[0]), folds=folds, runs=fold_runs,
                                    fold_studies=fold_studies)
    _check_every_training_study_once(setting, label)
    return setting


def _seed(run: Path) -> int | None:
    seed = OmegaConf.select(OmegaConf.load(run / ".hydra" / "config.yaml"), "seed", default=None)
    return None if seed is None else int(seed)


def _validation_predictions(run: Path, fold: int) -> pd.DataFrame:
    path = run / VALIDATION_PREDICTIONS
    if not path.is_file():
        raise ConfigError(f"{run} (fold {fold}): no {VALIDATION_PREDICTIONS}, the selected checkpoint's validation "
                          "predictions (mura.train writes it since 2026-12-07); train the fold again with this mura")
    return pd.read_csv(path)


def _check_every_training_study_once(setting: CrossValidatedSetting, label: str) -> None:
    """The pool holds every study of the training split (from each run's splits.csv) once."""
    where = {}
    for fold, studies in setting.fold_studies.items():
        for study in studies["study"]:
            if study in where:
                raise ConfigError(f"{label}: study {study} is in the validation predictions of fold {where[study]} "
                                  f"and fold {fold}: the folds overlap (runs of different data.split_seed?)")
            where[study] = fold
    for fold, run in setting.runs.items():
        path = run / "splits.csv"
        if not path.is_file():
            raise ConfigError(f"{run} (fold {fold}): no splits.csv: its training split is unknown")
        splits = pd.read_csv(path, usecols=["split", "study"])
        training = set(splits.loc[splits["split"].isin(["train", "val"]), "study"])
        unscored = sorted(training - set(where))
        if unscored or set(where) - training:
            what = (f"{len(unscored)} of its training split's {len(training)} studies are in no fold's predictions "
                    f"(e.g. {unscored[0]})" if unscored else "the pool holds studies its training split lacks")
            raise ConfigError(f"{label}, fold {fold} ({run}): {what}; a fold scored only part of its validation "
                              "split (trainer.limit_val_batches?), or the folds come from other data")


def _named(settings: list[CrossValidatedSetting]) -> list[CrossValidatedSetting]:
    """Each setting's name: the folder that holds its runs (a sweep folder) where that folder holds no other
    setting's runs; else its overrides."""
    parents = [{run.resolve().parent for run in setting.runs.values()} for setting in settings]
    for index, setting in enumerate(settings):
        shared = any(parents[index] & other for position, other in enumerate(parents) if position != index)
        folder = next(iter(parents[index])) if len(parents[index]) == 1 and not shared else None
        setting.name = folder.name if folder is not None else (setting.overrides or "(common settings)")
    names = [setting.name for setting in settings]
    for setting in settings:
        if names.count(setting.name) > 1:  # two sweeps in folders of one name: the overrides tell them apart
            setting.name = setting.overrides or "(common settings)"
    return settings


def check_same_folds(settings: list[CrossValidatedSetting], baseline: CrossValidatedSetting) -> None:
    """Every setting validated fold f on the baseline's fold-f studies: the same folds, so the per-fold differences
    pair up (the pooled comparison checks labels, patients and body parts)."""
    for setting in settings:
        if setting.folds != baseline.folds:
            raise ConfigError(f"{setting.name} has {setting.folds} folds and the baseline {baseline.name} "
                              f"{baseline.folds}: settings compare on the same folds only")
        for fold in range(baseline.folds):
            ours, theirs = set(setting.fold_studies[fold]["study"]), set(baseline.fold_studies[fold]["study"])
            if ours != theirs:
                raise ConfigError(
                    f"{setting.name}'s fold {fold} ({setting.runs[fold]}) validated on other studies than the "
                    f"baseline {baseline.name}'s fold {fold} ({len(ours ^ theirs)} differ): other folds (another "
                    "data.split_seed or data.cv_folds; conf/experiment/cv_small.yaml fixes the split seed) or another "
                    "release")


def fold_differences(settings: list[CrossValidatedSetting], baseline: CrossValidatedSetting,
                     threshold: float | None = None) -> pd.DataFrame:
    """A row per setting (but the baseline), metric (`FOLD_METRICS`) and fold: the fold's validation value of the
    baseline and of the setting, and the difference (setting - baseline). Undefined values are NaN."""
    rows = []
    for setting in settings:
        if setting is baseline:
            continue
        for fold in range(baseline.folds):
            values = {name: _fold_metrics(studies.fold_studies[fold], threshold)
                      for name, studies in (("baseline", baseline), ("run", setting))}
            for metric in FOLD_METRICS:
                rows.append({"run": setting.name, "baseline": baseline.name, "metric": metric, "fold": fold,
                             "baseline_value": values["baseline"][metric], "run_value": values["run"][metric],
                             "difference": values["run"][metric] - values["baseline"][metric]})
    return pd.DataFrame(rows)


def _fold_metrics(studies: pd.DataFrame, threshold: float | None) -> dict[str, float]:
    labels = studies["label"].to_numpy().astype(bool)
    metrics = replicate_metrics(labels, study_decisions(studies, threshold),
                                studies["probability"].to_numpy(dtype=np.float64), np.ones((1, len(studies)), np.int32))
    return {metric: float(metrics[metric][0]) for metric in FOLD_METRICS}


def paired_t_test(differences: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of "mean difference 0" over paired differences (Student's paired t-test, n - 1 degrees of
    freedom); NaN with fewer than two. Differences all equal: p = 1 when they are 0, else NaN (no spread to test
    against)."""
    return corrected_t_test(differences, 0.0)


def corrected_t_test(differences: np.ndarray, test_train_ratio: float) -> tuple[float, float]:
    """(t, two-sided p) of Nadeau & Bengio's corrected resampled t-test (2003, Machine Learning 52:239): the folds'
    training sets overlap, so their differences are correlated and the plain paired t-test's variance is too small;
    this one multiplies it by (1/k + n_test/n_train) instead of 1/k; `test_train_ratio` 0 is the plain paired
    t-test."""
    differences = np.asarray(differences, dtype=np.float64)
    differences = differences[~np.isnan(differences)]
    if len(differences) < 2:
        return float("nan"), float("nan")
    mean, variance = differences.mean(), differences.var(ddof=1)
    if variance == 0:
        return (float("nan"), 1.0) if mean == 0 else (float("nan"), float("nan"))
    statistic = mean / math.sqrt((1 / len(differences) + test_train_ratio) * variance)
    return float(statistic), float(2 * student_t.sf(abs(statistic), len(differences) - 1))


def sign_test(differences: np.ndarray) -> tuple[int, int, float]:
    """(folds above 0, folds below 0, two-sided exact p): ties and undefined folds dropped; under no difference each
    remaining fold is above 0 with probability 1/2, the binomial of McNemar's exact test."""
    differences = np.asarray(differences, dtype=np.float64)
    above, below = int((differences > 0).sum()), int((differences < 0).sum())
    return above, below, mcnemar_exact(below, above)


def fold_tests(differences: pd.DataFrame, test_train_ratio: float) -> pd.DataFrame:
    """A row per setting and metric: folds (where the difference is defined), mean and sd of the fold differences,
    the paired t-test (t, p_t), Nadeau & Bengio's corrected one (t_corrected, p_corrected; `test_train_ratio`: the
    folds' mean validation / training study ratio) and the sign test (above, below, p_sign), each p also
    Holm-adjusted within its test over all rows."""
    rows = []
    for (run, metric), group in differences.groupby(["run", "metric"], sort=False):
        values = group["difference"].to_numpy(dtype=np.float64)
        defined = values[~np.isnan(values)]
        statistic, p_t = paired_t_test(defined)
        corrected, p_corrected = corrected_t_test(defined, test_train_ratio)
        above, below, p_sign = sign_test(defined)
        rows.append({"run": run, "baseline": group["baseline"].iloc[0], "metric": metric, "folds": len(defined),
                     "mean": defined.mean() if len(defined) else np.nan,
                     "sd": defined.std(ddof=1) if len(defined) > 1 else np.nan,
                     "t": statistic, "p_t": p_t, "t_corrected": corrected, "p_corrected": p_corrected,
                     "above": above, "below": below, "p_sign": p_sign})
    table = pd.DataFrame(rows)
    if not table.empty:
        for column in ("p_t", "p_corrected", "p_sign"):
            table.insert(table.columns.get_loc(column) + 1, f"{column}_holm", holm(table[column].to_numpy(dtype=np.float64)))
    return table


def test_train_ratio(setting: CrossValidatedSetting) -> float:
    """The folds' mean ratio of validation to training studies (1/(k-1) for k equal folds)."""
    sizes = np.array([len(setting.fold_studies[fold]) for fold in sorted(setting.fold_studies)], dtype=np.float64)
    return float(np.mean(sizes / (sizes.sum() - sizes)))


def seed_groups(settings: list[CrossValidatedSetting], threshold: float | None = None) -> pd.DataFrame:
    """A row per seed group of two settings or more and metric: its seeds, each seed's pooled value, their sd, and
    the largest difference between two of its seeds (what seed alone moved the pooled number by)."""
    rows = []
    groups: dict[str, list[CrossValidatedSetting]] = {}
    for setting in settings:
        groups.setdefault(setting.seed_group, []).append(setting)
    for members in groups.values():
        if len(members) < 2:
            continue
        values = {metric: [_fold_metrics(member.pooled, threshold)[metric] for member in members] for metric in FOLD_METRICS}
        for metric in FOLD_METRICS:
            metric_values = np.asarray(values[metric], dtype=np.float64)
            spread = max(abs(a - b) for a, b in combinations(metric_values, 2))
            rows.append({"group": members[0].seed_group or "(common settings)",
                         "settings": " ".join(member.name for member in members),
                         "seeds": " ".join(str(member.seed) for member in members), "metric": metric,
                         "values": " ".join(f"{value:.3f}" for value in metric_values),
                         "sd": float(np.std(metric_values, ddof=1)), "largest_seed_difference": float(spread)})
    return pd.DataFrame(rows)


def all_cross_validation_folds(runs: list[Path]) -> bool:
    """True when every run is a cross-validation fold, False when none is; a mixture is refused (pooled folds and
    one run's test predictions are not the same studies)."""
    folds = [is_cross_validation_run(run) for run in runs]
    if any(folds) and not all(folds):
        fold_run, other = (next(run for run, is_fold in zip(runs, folds, strict=True) if is_fold is flag)
                           for flag in (True, False))
        raise ConfigError(f"runs mix cross-validation folds ({fold_run}) with other runs ({other}): folds are compared "
                          "on their pooled validation predictions, other runs on their test predictions; compare "
                          "them separately")
    return bool(folds) and all(folds)


def cross_validation_markdown(pooled: pd.DataFrame, settings: list[CrossValidatedSetting], baseline: CrossValidatedSetting,
                              folds: pd.DataFrame, tests: pd.DataFrame, seeds: pd.DataFrame, replicates: int, seed: int,
                              threshold: float | None) -> str:
    """compare.md for cross-validated settings: the settings, the pooled paired comparison (a table per setting),
    the fold-by-fold differences with their tests, the seed groups, and what can be read from them."""
    overall = pooled[pooled["group"] == "overall"].iloc[0]
    lines = [
        "# Cross-validated settings compared on their pooled out-of-fold predictions",
        "",
        f"Baseline: **{baseline.name}**. Each setting's {baseline.folds} folds pooled: every training study scored "
        f"once, by the fold model that never trained on it ({overall['studies']} studies of {overall['patients']} "
        "patients).",
        "",
        "| setting | overrides | seed | fold runs |",
        "|---|---|---|---|",
        *(f"| {setting.name} | `{setting.overrides or '(common settings)'}` | {setting.seed} | {_fold_runs(setting)} |"
          for setting in settings),
        "",
        "## Summary",
        "",
        summary_table(pooled, tests, seeds, settings, baseline).to_markdown(index=False, disable_numparse=True),
        "",
        "Pooled: every training study once; Δ = setting - baseline with its 95% paired bootstrap interval, p raw / "
        "Holm (kappa: the bootstrap's; AUROC: DeLong's). Folds: the folds whose kappa rose / fell, and Nadeau & "
        "Bengio's corrected t-test's p over them. Seed noise: whether the difference exceeds every difference "
        "between the baseline recipe's seeds (n/a without seeds). The sections below hold the rest.",
        "",
        "## Pooled out-of-fold studies: paired differences from the baseline",
        "",
    ]
    for name, rows in pooled.groupby("run", sort=False):
        lines += [f"### {name} - {baseline.name}", "", *family_tables(rows)]
    lines += [
        "## Fold by fold",
        "",
        "Each fold's validation kappa and AUROC, setting - baseline, fold by fold; mean and sd over the folds, the "
        "paired t-test (n - 1 degrees of freedom), Nadeau & Bengio's corrected resampled t-test (the folds' training "
        "sets overlap, so the plain test's p is too small; the corrected one multiplies the variance by 1/k + "
        "n_validation/n_training) and the sign test (folds above / below 0), p raw / Holm-adjusted within each test "
        "over all rows.",
        "",
        _fold_table(folds, tests).to_markdown(index=False, disable_numparse=True),
        "",
    ]
    lines += _seed_section(pooled, seeds, baseline, settings)
    lines += [
        "## How to read it",
        "",
        f"The pooled tests take each setting's trained models as given: paired bootstrap over patients ({replicates:,} "
        f"replicates, seed {seed}) for kappa and the intervals, DeLong for AUROC, McNemar's exact test for sensitivity "
        "and specificity, Holm-adjusted over all the pooled tests of the body parts and overall (the studies by "
        "number of views apart; * marks Holm p < 0.05). They say whether two sets "
        "of models score these studies differently, not whether the recipes would again: a recipe's models vary "
        "with the seed, and only the seed groups measure that. The fold-by-fold tests treat each fold's models as "
        f"a draw of the recipe, but there are few folds (a sign test on {baseline.folds} folds cannot go below p = "
        f"{2 / 2 ** baseline.folds:.3g}). Decisions: "
        + ("each run's own calls" if threshold is None else f"p(abnormal) > {threshold:g}") + ".",
    ]
    return "\n".join(lines) + "\n"


def _fold_runs(setting: CrossValidatedSetting) -> str:
    """`sweep/` (jobs 0, 1, ...) where one folder holds its fold runs, else every run."""
    runs = [setting.runs[fold] for fold in sorted(setting.runs)]
    parents = {run.parent for run in runs}
    if len(parents) == 1:
        return f"`{parents.pop()}` (jobs {', '.join(run.name for run in runs)})"
    return ", ".join(f"`{run}`" for run in runs)


def _fold_table(folds: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for test in tests.itertuples():
        fold_rows = folds[(folds["run"] == test.run) & (folds["metric"] == test.metric)].sort_values("fold")
        rows.append({
            "setting": test.run, "metric": METRIC_NAMES[test.metric],
            **{f"fold {row.fold}": signed(row.difference) for row in fold_rows.itertuples()},
            "mean (sd)": f"{signed(test.mean)} ({_plain(test.sd)})",
            "t-test p": f"{p_text(test.p_t)} / {p_text(test.p_t_holm)}",
            "corrected t p": f"{p_text(test.p_corrected)} / {p_text(test.p_corrected_holm)}",
            "sign test": f"{test.above}/{test.below}, p {p_text(test.p_sign)} / {p_text(test.p_sign_holm)}",
        })
    return pd.DataFrame(rows)


def _seed_section(pooled: pd.DataFrame, seeds: pd.DataFrame, baseline: CrossValidatedSetting,
                  settings: list[CrossValidatedSetting]) -> list[str]:
    lines = ["## Seed noise", ""]
    if seeds.empty:
        return lines + ["No two settings differ only in `seed`: the run-to-run noise is not measured here. Repeat the "
                        "baseline with seed=1,2 (on the same folds) to measure it.", ""]
    lines += ["Settings that differ only in `seed`, the pooled value of each seed, their sd and the largest "
              "difference between two seeds:", "",
              seeds.assign(metric=seeds["metric"].map(METRIC_NAMES), sd=seeds["sd"].map(_plain),
                           largest_seed_difference=seeds["largest_seed_difference"].map(_plain))
              .rename(columns={"largest_seed_difference": "largest seed difference"})
              .to_markdown(index=False, disable_numparse=True), ""]
    noise = _baseline_noise(seeds, baseline)
    if noise.empty:
        return lines
    lines += [f"Against the baseline recipe's seed noise ({noise.loc['kappa', 'seeds'].count(' ') + 1} seeds), each "
              "setting's pooled difference:", "", "| setting | Δ kappa | Δ AUROC | beyond the baseline's seed noise |",
              "|---|---|---|---|"]
    overall = pooled[pooled["group"] == "overall"].set_index(["run", "metric"])["difference"]
    for setting in settings:
        if setting is baseline:
            continue
        differences = {metric: overall.get((setting.name, metric), np.nan) for metric in FOLD_METRICS}
        verdict = _noise_verdict(setting, baseline, noise, differences)
        lines.append(f"| {setting.name} | {signed(differences['kappa'])} | {signed(differences['auroc'])} | {verdict} |")
    lines += ["", "Beyond: the difference is larger than the largest difference between two seeds of the baseline "
              "recipe. A few seeds give a rough floor, not a test.", ""]
    return lines


def _baseline_noise(seeds: pd.DataFrame, baseline: CrossValidatedSetting) -> pd.DataFrame:
    """The baseline recipe's seed group, by metric; empty without one."""
    if seeds.empty:
        return pd.DataFrame()
    return seeds[seeds["group"] == (baseline.seed_group or "(common settings)")].set_index("metric")


def _noise_verdict(setting: CrossValidatedSetting, baseline: CrossValidatedSetting, noise: pd.DataFrame,
                   differences: dict[str, float]) -> str:
    """Whether a setting's pooled differences exceed the baseline recipe's largest seed-to-seed difference."""
    if noise.empty:
        return "n/a"
    if setting.seed_group == baseline.seed_group:
        return f"(the baseline recipe, seed {setting.seed})"
    beyond = [METRIC_NAMES[metric] for metric in FOLD_METRICS
              if abs(differences[metric]) > noise.loc[metric, "largest_seed_difference"]]
    return ("yes: " + " and ".join(beyond)) if beyond else "no"


def summary_table(pooled: pd.DataFrame, tests: pd.DataFrame, seeds: pd.DataFrame,
                  settings: list[CrossValidatedSetting], baseline: CrossValidatedSetting) -> pd.DataFrame:
    """A row per setting, the baseline first: pooled kappa and AUROC, their differences from the baseline with
    interval and p (raw / Holm), the folds whose kappa rose / fell with the corrected t-test's p, and the seed-noise
    verdict."""
    overall = pooled[pooled["group"] == "overall"].set_index(["run", "metric"])
    noise = _baseline_noise(seeds, baseline)
    first = overall.xs("kappa", level="metric").iloc[0], overall.xs("auroc", level="metric").iloc[0]
    rows = [{"setting": baseline.name, "kappa": _plain(first[0]["baseline_value"]), "Δ kappa (95% CI)": "baseline",
             "p kappa": "", "AUROC": _plain(first[1]["baseline_value"]), "Δ AUROC (95% CI)": "baseline",
             "p AUROC": "", "folds ↑/↓ (kappa), corrected t p": "", "beyond seed noise": ""}]
    fold_tests = tests.set_index(["run", "metric"]) if not tests.empty else pd.DataFrame()
    for setting in settings:
        if setting is baseline:
            continue
        kappa, auroc = overall.loc[(setting.name, "kappa")], overall.loc[(setting.name, "auroc")]
        folds = fold_tests.loc[(setting.name, "kappa")] if (setting.name, "kappa") in fold_tests.index else None
        rows.append({
            "setting": setting.name, "kappa": _plain(kappa["run_value"]),
            "Δ kappa (95% CI)": f"{signed(kappa['difference'])} ({_plain(kappa['ci_low'])} to {_plain(kappa['ci_high'])})",
            "p kappa": f"{p_text(kappa['p_value'])} / {p_text(kappa['p_holm'])}",
            "AUROC": _plain(auroc["run_value"]),
            "Δ AUROC (95% CI)": f"{signed(auroc['difference'])} ({_plain(auroc['ci_low'])} to {_plain(auroc['ci_high'])})",
            "p AUROC": f"{p_text(auroc['p_value'])} / {p_text(auroc['p_holm'])}",
            "folds ↑/↓ (kappa), corrected t p": "" if folds is None else
            f"{folds['above']}/{folds['below']}, {p_text(folds['p_corrected'])}",
            "beyond seed noise": _noise_verdict(setting, baseline, noise, {"kappa": kappa["difference"],
                                                                            "auroc": auroc["difference"]}),
        })
    return pd.DataFrame(rows)


def _plain(value: float) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.3f}"
