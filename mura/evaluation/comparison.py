"""Paired comparison of runs scored on the same studies: differences from a baseline run, their 95% intervals and
tests, overall and per body part.

Each run is a plain table of study predictions (a row per study: study, patient, body_part, label, probability, and
the run's own 0/1 call `prediction` and `n_views` where present), as `predictions.csv` holds them; tables pooled from
several runs (cross-validation folds' out-of-fold predictions) compare the same way. Every run must hold the same
studies with the same labels: a difference between runs on different studies says nothing about the models.

For each run against the baseline, overall and per body part:
- study kappa: the difference with a percentile 95% interval and a two-sided p-value from a paired bootstrap over
  patients (both runs' studies of a patient drawn together, the same draws for every run), the p-value inverting the
  percentile interval: 2 min(P*(d <= 0), P*(d >= 0)) over the replicate differences d (Efron & Tibshirani 1993, An
  Introduction to the Bootstrap, on tests from confidence intervals), each proportion as (1 + count) / (R + 1) so a
  finite bootstrap never claims p = 0 (Davison & Hinkley 1997, Bootstrap Methods and their Application, ch. 4);
- AUROC: DeLong's test (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837) by Sun & Xu's midrank algorithm
  (2014, IEEE Signal Processing Letters 21:1389), with the paired bootstrap's interval beside it; DeLong treats
  studies as independent, the bootstrap resamples patients;
- sensitivity and specificity: McNemar's exact test (McNemar 1947, Psychometrika 12:153) on the discordant studies,
  abnormal ones for sensitivity, normal ones for specificity, and the paired bootstrap's interval;
- every p-value also adjusted by Holm's step-down method (Holm 1979, Scand. J. Statist. 6:65) over all the tests of
  the comparison, every run, group and metric, within its family: the body parts and overall, and apart from them
  the studies by number of views (1, 2, 3, 4+).

Each group resamples its own patients, as the 95% CIs of metrics.json do; replicates in which a difference is
undefined (a resample without one of the classes) are dropped, and their number kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mura.app.errors import ConfigError
from mura.evaluation.metrics import (
    VIEW_GROUPS,
    format_interval,
    patient_bootstrap_weights,
    percentile_interval,
    views_group,
    weighted_auroc,
    weighted_kappa,
)

COMPARISON_REPLICATES = 10_000
STUDY_COLUMNS = ("study", "patient", "body_part", "label", "probability")
# A study's identity: runs that disagree on any of these were not scored on the same studies.
STUDY_KEYS = ("label", "body_part", "patient")
METRICS = ("kappa", "auroc", "sensitivity", "specificity")
METRIC_NAMES = {"kappa": "kappa", "auroc": "AUROC", "sensitivity": "sensitivity", "specificity": "specificity"}
TESTS = {"kappa": "paired bootstrap", "auroc": "DeLong", "sensitivity": "McNemar exact", "specificity": "McNemar exact"}
# Replicates x studies per block of bootstrap weights: bounds memory (a pooled training split holds 13,000 studies)
# while each block stays large enough for numpy's vectorised sums to dominate.
BLOCK_ELEMENTS = 4_000_000
SIGNIFICANCE = 0.05


def read_run_predictions(run: Path) -> pd.DataFrame:
    """A run folder's study predictions (`predictions.csv`, as mura.train and mura.evaluate write it)."""
    path = Path(run) / "predictions.csv"
    if not path.is_file():
        raise ConfigError(f"{run}: no predictions.csv (a run still going, one trained with test=false, or not a "
                          "mura.train or mura.evaluate folder); leave it out of runs")
    return pd.read_csv(path)


def align_runs(runs: dict[str, pd.DataFrame], baseline: str) -> dict[str, pd.DataFrame]:
    """The runs' study tables, each sorted by study; refused unless every run holds the baseline's studies, one row
    each, with the same labels, body parts and patients."""
    if baseline not in runs:
        raise ConfigError(f"baseline {baseline!r} is not among the runs ({', '.join(runs)})")
    aligned = {}
    for name, table in runs.items():
        missing = [column for column in STUDY_COLUMNS if column not in table.columns]
        if missing:
            raise ConfigError(f"run {name}: its study predictions lack column(s) {', '.join(missing)} (an older mura "
                              "wrote them?); the comparison needs " + ", ".join(STUDY_COLUMNS))
        if table.empty:
            raise ConfigError(f"run {name}: no studies in its predictions")
        undefined = [column for column in STUDY_COLUMNS if table[column].isna().any()]
        if undefined:
            raise ConfigError(f"run {name}: studies without a value in column(s) {', '.join(undefined)}")
        repeated = table["study"][table["study"].duplicated()]
        if len(repeated):
            raise ConfigError(f"run {name}: {len(repeated)} study(ies) listed more than once (e.g. {repeated.iloc[0]})")
        aligned[name] = table.sort_values("study", kind="stable").reset_index(drop=True)
    if len(aligned) < 2:
        raise ConfigError(f"nothing to compare with the baseline {baseline}: pass at least two runs")
    reference = aligned[baseline]
    for name, table in aligned.items():
        difference = _study_difference(reference, table, baseline, name)
        if difference:
            raise ConfigError(f"runs {baseline} and {name} were not scored on the same studies (the same split, body "
                              f"parts and release): {difference}")
    return aligned


def _study_difference(reference: pd.DataFrame, table: pd.DataFrame, baseline: str, name: str) -> str | None:
    """What differs between two runs' studies, or None."""
    reference_studies, studies = set(reference["study"]), set(table["study"])
    if reference_studies != studies:
        lacks, extra = sorted(reference_studies - studies), sorted(studies - reference_studies)
        parts = []
        if lacks:
            parts.append(f"{name} lacks {len(lacks)} of {baseline}'s {len(reference_studies)} studies (e.g. {lacks[0]})")
        if extra:
            parts.append(f"{name} has {len(extra)} that {baseline} lacks (e.g. {extra[0]})")
        return "; ".join(parts)
    for key in STUDY_KEYS:
        # Labels as numbers (a CSV column with a gap reads 1 as 1.0), the rest as text
        kind = int if key == "label" else str
        differs = reference[key].astype(kind).to_numpy() != table[key].astype(kind).to_numpy()
        if differs.any():
            first = np.flatnonzero(differs)[0]
            return (f"the {key} differs on {differs.sum()} studies (e.g. {reference['study'].iloc[first]}: "
                    f"{reference[key].iloc[first]} in {baseline}, {table[key].iloc[first]} in {name})")
    return None


def study_decisions(studies: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
    """The 0/1 calls, as booleans: probability > threshold; without a threshold the run's own calls (`prediction`,
    written at the run's own threshold) where its table has them, else probability > 0.5."""
    if threshold is None and "prediction" in studies.columns:
        return studies["prediction"].to_numpy().astype(bool)
    return studies["probability"].to_numpy(dtype=np.float64) > (0.5 if threshold is None else threshold)


def bootstrap_weight_blocks(patients: Sequence, replicates: int, seed: int = 0) -> Iterator[np.ndarray]:
    """`replicates` patient-bootstrap replicates in blocks of (replicates, studies) weights: how many times each
    study's patient was drawn. One generator, seeded once: the same seed and studies give the same replicates."""
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_ELEMENTS // max(len(patients), 1))
    for start in range(0, replicates, block):
        yield patient_bootstrap_weights(patients, min(block, replicates - start), rng)


def replicate_metrics(labels: np.ndarray, decisions: np.ndarray, probabilities: np.ndarray,
                      weights: np.ndarray) -> dict[str, np.ndarray]:
    """Kappa, AUROC, sensitivity and specificity for every row of `weights` (replicates x studies); NaN where
    undefined. A row of ones gives the observed values."""
    abnormal, normal = labels.astype(np.int64), (~labels).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "kappa": weighted_kappa(labels, decisions, weights),
            "auroc": weighted_auroc(labels, probabilities, weights),
            "sensitivity": (weights @ (decisions & labels).astype(np.int64)) / (weights @ abnormal),
            "specificity": (weights @ (~decisions & ~labels).astype(np.int64)) / (weights @ normal),
        }


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from the replicate differences: 2 min(P*(d <= 0), P*(d >= 0)), each
    (1 + count) / (R + 1) over the R defined replicates; NaN with none."""
    defined = differences[~np.isnan(differences)]
    if not len(defined):
        return float("nan")
    tails = (1 + np.count_nonzero(defined <= 0), 1 + np.count_nonzero(defined >= 0))
    return min(1.0, 2 * min(tails) / (len(defined) + 1))


def midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, tied values sharing the mean of their ranks."""
    values = np.atleast_2d(values)
    ranks = np.empty(values.shape, dtype=np.float64)
    for row, row_values in enumerate(values):
        _, inverse, counts = np.unique(row_values, return_inverse=True, return_counts=True)
        ranks[row] = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return ranks


def delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUROCs, V10, V01) of each row of `scores` (models x studies) by Sun & Xu's midranks: V10[k, i] is the share of
    negatives that positive i outranks under model k (ties count one half), V01[k, j] the share of positives that
    outrank negative j; the AUROC is either's mean."""
    labels = np.asarray(labels).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    combined = midranks(np.hstack([positives, negatives]))
    v10 = (combined[:, :m] - midranks(positives)) / n
    v01 = 1 - (combined[:, m:] - midranks(negatives)) / m
    return v10.mean(axis=1), v10, v01


def delong_test(labels: np.ndarray, baseline_scores: np.ndarray, run_scores: np.ndarray) -> tuple[float, float, float]:
    """(AUROC difference run - baseline, its variance, two-sided p-value) by DeLong's test; variance and p-value NaN
    with fewer than two abnormal or two normal studies. Runs that order every pair alike: difference and variance 0,
    p = 1."""
    labels = np.asarray(labels).astype(bool)
    m, n = int(labels.sum()), int((~labels).sum())
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    aurocs, v10, v01 = delong_components(labels, np.vstack([run_scores, baseline_scores]))
    difference = float(aurocs[0] - aurocs[1])
    if m < 2 or n < 2:
        return difference, float("nan"), float("nan")
    # The variance of the components' differences: S10_aa + S10_bb - 2 S10_ab over m, plus S01's over n, without
    # the cancellation that subtracting near-equal covariances brings for nearly identical runs.
    variance = float(np.var(v10[0] - v10[1], ddof=1) / m + np.var(v01[0] - v01[1], ddof=1) / n)
    if variance == 0:
        # No spread to test against: equal runs are p = 1; unequal ones (a perfect run against a constant one on a
        # handful of studies) are untestable here, not certainly different
        return difference, 0.0, 1.0 if difference == 0 else float("nan")
    return difference, variance, math.erfc(abs(difference) / math.sqrt(2 * variance))


def mcnemar_exact(baseline_only: int, run_only: int) -> float:
    """Two-sided exact McNemar p-value: under no difference each discordant study (right in one run only) is the
    run's with probability 1/2, so the smaller count is binomial(discordant, 1/2); p = min(1, 2 P(X <= smaller))."""
    discordant = baseline_only + run_only
    tail = sum(math.comb(discordant, k) for k in range(min(baseline_only, run_only) + 1))
    return min(1.0, 2 * tail / 2**discordant)  # exact integers: a correctly rounded float however many studies


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of the defined p-values (NaN stays NaN and is not counted): the i-th smallest of
    m is multiplied by m - i + 1, then made non-decreasing in that order and capped at 1."""
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p_values.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p_values))
    order = defined[np.argsort(p_values[defined], kind="stable")]
    steps = (len(order) - np.arange(len(order))) * p_values[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def study_groups(studies: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(family, name, row mask): the main family, each body part in order then overall (overall alone for studies of
    one body part: its rows would repeat overall's, and count every test twice in Holm's adjustment); then, where
    the studies say their number of views (`n_views`), the views family: studies of 1, 2, 3 and 4+ views (a model
    that fails on single-view studies should be seen failing), each group that holds studies."""
    body_parts = studies["body_part"].to_numpy()
    parts = sorted(set(body_parts))
    overall = ("main", "overall", np.ones(len(studies), bool))
    groups = [overall] if len(parts) == 1 else [*(("main", part, body_parts == part) for part in parts), overall]
    if "n_views" in studies.columns:
        views = studies["n_views"].map(views_group).to_numpy()
        groups += [("views", f"{group} view{'s' if group != '1' else ''}", views == group) for group in VIEW_GROUPS
                   if (views == group).any()]
    return groups


def compare_runs(runs: dict[str, pd.DataFrame], baseline: str, threshold: float | None = None,
                 replicates: int = COMPARISON_REPLICATES, seed: int = 0, noise_runs: set[str] = frozenset()) -> pd.DataFrame:
    """A row per run (but the baseline), group (`study_groups`: body parts, overall, then the studies of 1, 2, 3
    and 4+ views) and metric (`METRICS`): run, baseline, family (main: body parts and overall; views), group, metric,
    studies and patients of the group, n (the studies the metric is over: abnormal ones for
    sensitivity, normal ones for specificity), baseline_value, run_value, difference (run - baseline), ci_low and
    ci_high (paired patient bootstrap, 95% percentile), replicates (those where the difference is defined), test,
    p_value, p_holm (Holm-adjusted within its family: the subgroups by views are a family of their own, so adding
    them leaves the main tests' adjustment as it was), and for McNemar's test baseline_only and run_only (the
    discordant studies each run alone got right). Undefined values are NaN.

    `runs` maps a name to its study table (STUDY_COLUMNS, and `prediction` for the run's own calls); `threshold`
    None: each run's own calls (`study_decisions`). `noise_runs`: runs that measure noise (the baseline recipe with
    another seed) rather than a recipe: their families are their own ("seed main", "seed views").
    """
    aligned = align_runs(runs, baseline)
    reference = aligned[baseline]
    labels = reference["label"].to_numpy().astype(bool)
    decisions = {name: study_decisions(table, threshold) for name, table in aligned.items()}
    probabilities = {name: table["probability"].to_numpy(dtype=np.float64) for name, table in aligned.items()}
    others = [name for name in aligned if name != baseline]
    rows = []
    for family, group, mask in study_groups(reference):
        group_labels, patients = labels[mask], reference["patient"].to_numpy()[mask]
        observed = {name: replicate_metrics(group_labels, decisions[name][mask], probabilities[name][mask],
                                            np.ones((1, int(mask.sum())), dtype=np.int32)) for name in aligned}
        blocks: dict[str, list] = {name: [] for name in aligned}
        for weights in bootstrap_weight_blocks(patients, replicates, seed):
            for name in aligned:
                blocks[name].append(replicate_metrics(group_labels, decisions[name][mask], probabilities[name][mask],
                                                      weights))
        replicated = {name: {metric: np.concatenate([block[metric] for block in blocks[name]]) if blocks[name]
                             else np.empty(0) for metric in METRICS} for name in aligned}
        for name in others:
            tests = _tests(group_labels, decisions[baseline][mask], decisions[name][mask],
                           probabilities[baseline][mask], probabilities[name][mask])
            for metric in METRICS:
                differences = replicated[name][metric] - replicated[baseline][metric]
                interval = percentile_interval(differences) or [np.nan, np.nan]
                baseline_value, run_value = observed[baseline][metric][0], observed[name][metric][0]
                p_value = bootstrap_p_value(differences) if metric == "kappa" else tests[metric]["p_value"]
                rows.append({
                    "run": name, "baseline": baseline, "family": f"seed {family}" if name in noise_runs else family,
                    "group": group, "metric": metric,
                    "studies": int(mask.sum()),
                    "patients": len(set(patients)), "n": tests[metric]["n"], "baseline_value": baseline_value,
                    "run_value": run_value, "difference": run_value - baseline_value, "ci_low": interval[0],
                    "ci_high": interval[1], "replicates": int(np.count_nonzero(~np.isnan(differences))),
                    "test": TESTS[metric], "p_value": p_value,
                    "baseline_only": tests[metric].get("baseline_only", np.nan),
                    "run_only": tests[metric].get("run_only", np.nan),
                })
    table = pd.DataFrame(rows)
    adjusted = np.full(len(table), np.nan)
    for family in table["family"].unique():  # the body parts' and overall's tests, and the views' apart
        rows_of = (table["family"] == family).to_numpy()
        adjusted[rows_of] = holm(table.loc[rows_of, "p_value"].to_numpy(dtype=np.float64))
    table.insert(table.columns.get_loc("p_value") + 1, "p_holm", adjusted)
    return table


def _tests(labels: np.ndarray, baseline_decisions: np.ndarray, run_decisions: np.ndarray,
           baseline_probabilities: np.ndarray, run_probabilities: np.ndarray) -> dict[str, dict]:
    """Per metric: n (the studies it is over) and, where it has a test of its own, p_value (DeLong for AUROC,
    McNemar for sensitivity and specificity, with its discordant counts)."""
    tests = {"kappa": {"n": len(labels)},
             "auroc": {"n": len(labels), "p_value": delong_test(labels, baseline_probabilities, run_probabilities)[2]}}
    for metric, among in (("sensitivity", labels), ("specificity", ~labels)):
        baseline_right = baseline_decisions[among] == labels[among]
        run_right = run_decisions[among] == labels[among]
        baseline_only, run_only = int((baseline_right & ~run_right).sum()), int((run_right & ~baseline_right).sum())
        tests[metric] = {"n": int(among.sum()), "baseline_only": baseline_only, "run_only": run_only,
                         "p_value": mcnemar_exact(baseline_only, run_only)}
    return tests


def comparison_markdown(table: pd.DataFrame, runs: dict[str, str], baseline: str, replicates: int, seed: int,
                        threshold: float | None) -> str:
    """compare.md: what was compared with what, a table per run (a row per group: each metric's difference from the
    baseline with its 95% interval, and p raw / Holm), and how to read it. `runs` maps a name to where it came from."""
    overall = table[table["group"] == "overall"].iloc[0]
    decisions = ("each run's own calls (its `prediction` column; p(abnormal) > 0.5 where it has none)"
                 if threshold is None else f"p(abnormal) > {threshold:g} for every run")
    lines = [
        "# Paired comparison of runs on the same studies",
        "",
        f"Baseline: **{baseline}** (`{runs[baseline]}`).",
        "",
        *(f"- {name}: `{source}`" for name, source in runs.items() if name != baseline),
        "",
        f"{overall['studies']} studies of {overall['patients']} patients; decisions: {decisions}.",
        "",
    ]
    for name, rows in table.groupby("run", sort=False):
        lines += [f"## {name} - {baseline}", "", *family_tables(rows)]
    lines += [
        f"Differences are run - baseline. 95% intervals: percentile paired bootstrap over patients ({replicates:,} "
        f"replicates, seed {seed}; both runs' studies of a patient drawn together, each body part resampling its own "
        "patients; replicates where a difference is undefined are dropped, `replicates` in compare.csv counts the "
        "rest). Tests: kappa, the paired bootstrap's p-value (2 min(P*(d <= 0), P*(d >= 0)), inverting the percentile "
        "interval); AUROC, DeLong's test (Sun & Xu's algorithm; it takes studies as independent, the interval beside "
        "it does not); sensitivity and specificity, McNemar's exact test on the abnormal (normal) studies that one "
        "run alone called right (counts in compare.csv). p: raw / Holm-adjusted over all "
        f"{int(table.loc[table['family'] == 'main', 'p_value'].notna().sum())} tests of the body parts and overall "
        "(the studies by number of views are a family of their own, adjusted apart); * marks Holm p < "
        f"{SIGNIFICANCE}. "
        "Per-body-part rows on few studies have wide intervals: a difference that is not significant is not shown "
        "to be absent. `compare.png` draws every difference with its interval.",
    ]
    return "\n".join(lines) + "\n"


def family_tables(rows: pd.DataFrame) -> list[str]:
    """One run's differences as markdown lines: the body parts and overall, then the studies by number of views."""
    lines = [difference_table(rows[rows["family"].str.endswith("main")]).to_markdown(index=False, disable_numparse=True), ""]
    views = rows[rows["family"].str.endswith("views")]
    if not views.empty:
        table = difference_table(views).rename(columns={"body part": "studies of"})
        lines += ["By number of views (Holm within these rows):", "",
                  table.to_markdown(index=False, disable_numparse=True), ""]
    return lines


def difference_table(rows: pd.DataFrame) -> pd.DataFrame:
    """A row per group: studies, then per metric `difference (interval)` and `p raw / Holm`."""
    out = []
    for group, metrics in rows.groupby("group", sort=False):
        row = {"body part": group, "studies": str(metrics["studies"].iloc[0])}
        for metric in metrics.itertuples():
            name = METRIC_NAMES[metric.metric]
            row[f"Δ {name} (95% CI)"] = (f"{signed(metric.difference)} "
                                         f"({_interval(metric.ci_low, metric.ci_high)})")
            star = " *" if metric.p_holm < SIGNIFICANCE else ""
            row[f"p {name}"] = f"{p_text(metric.p_value)} / {p_text(metric.p_holm)}{star}"
        out.append(row)
    return pd.DataFrame(out)


def signed(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:+.3f}"


def _interval(low: float, high: float) -> str:
    return format_interval(None if np.isnan(low) else low, None if np.isnan(high) else high)


def p_text(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3g}"


def plot_forest(table: pd.DataFrame, path: Path) -> None:
    """compare.png: a panel per metric, a row per body part and overall (last, below a line), each run's difference
    from the baseline with its 95% interval, the zero line; a filled marker where Holm's p < SIGNIFICANCE. The
    subgroups by number of views are in compare.md and compare.csv."""
    table = table[table["family"].str.endswith("main")]
    groups = list(dict.fromkeys(table["group"]))
    names = list(dict.fromkeys(table["run"]))
    spacing = 0.8 / len(names)  # the runs of a group share its row, offset around its centre
    figure = Figure(figsize=(3.4 * len(METRICS), 0.35 * len(groups) * max(len(names), 2) + 1.6), layout="constrained")
    axes = figure.subplots(1, len(METRICS), sharey=True, squeeze=False)[0]
    positions = {group: -index for index, group in enumerate(groups)}
    for axis, metric in zip(axes, METRICS, strict=True):
        for index, name in enumerate(names):
            rows = table[(table["metric"] == metric) & (table["run"] == name)]
            y = rows["group"].map(positions).to_numpy() - (index - (len(names) - 1) / 2) * spacing
            difference = rows["difference"].to_numpy(dtype=np.float64)
            # No interval (undefined): the point alone, no bar of zero width that would read as certainty.
            below = np.nan_to_num(difference - rows["ci_low"].to_numpy(dtype=np.float64), nan=0.0)
            above = np.nan_to_num(rows["ci_high"].to_numpy(dtype=np.float64) - difference, nan=0.0)
            color = f"C{index % 10}"
            axis.errorbar(difference, y, xerr=[below, above], fmt="none", ecolor=color, elinewidth=1.2, capsize=2)
            significant = rows["p_holm"].to_numpy(dtype=np.float64) < SIGNIFICANCE
            axis.scatter(difference, y, s=28, zorder=3, edgecolors=color,
                         facecolors=[color if flag else "white" for flag in significant])
        axis.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
        if len(groups) > 1:
            axis.axhline(positions["overall"] + 0.5, color="0.8", linewidth=0.8)
        axis.set_title(f"Δ {METRIC_NAMES[metric]}", fontsize=10)
        axis.set_xlabel("run - baseline", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0].set_yticks(list(positions.values()), list(positions))
    axes[0].set_ylim(min(positions.values()) - 0.6, 0.6)
    baseline = table["baseline"].iloc[0]
    handles = [Line2D([], [], color=f"C{index % 10}", marker="o", label=name) for index, name in enumerate(names)]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(names), 4), fontsize=8, frameon=False)
    figure.suptitle(f"Differences from {baseline} (95% paired bootstrap intervals; filled: Holm p < {SIGNIFICANCE})",
                    fontsize=10)
    figure.savefig(path, dpi=100)
