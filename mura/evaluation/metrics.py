"""Study-level and image-level metrics, overall and per body part.

A study's probability is the arithmetic mean of its images' probabilities (the paper); it is abnormal when
the probability exceeds the threshold (0.5). Kappa comes from the confusion counts and AUROC is the Mann-Whitney
statistic (ties count half), both equal to scikit-learn's (tests/test_metrics.py). Their 95% CIs are percentile
intervals of a bootstrap over patients: a MURA patient often has several studies, which are not independent, so a
replicate draws patients with replacement and takes all of their rows (studies or images). The bootstrap is
vectorised: a replicate x row weight matrix ("how many times was this row's patient drawn") gives every replicate's
weighted confusion counts (kappa) and weighted Mann-Whitney statistic (AUROC) at once; the point estimates are the
same computation with every row weighted once.
Kappa's standard-error interval (the paper's method) is kept beside it as `kappa_ci95_se`.

Calibration (clinicians read the probabilities, not only the 0/1 calls): `ece` is the expected calibration error of
p(abnormal), torchmetrics' binary calibration error with the L1 norm over `CALIBRATION_BINS` equal-width bins of
[0, 1]: the bin-size-weighted mean of |fraction abnormal - mean p(abnormal)| over the bins; `brier` is the mean
squared difference between p(abnormal) and the 0/1 label (0 is perfect; always saying 0.5 scores 0.25).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
import torch

Z_95 = 1.959963984540054
BOOTSTRAP_REPLICATES = 1000
CALIBRATION_BINS = 15  # equal-width bins of p(abnormal) over [0, 1] (torchmetrics' default)
# The scalar metrics training logs every epoch. ECE and Brier cost a pass over the probabilities each; Brier, a proper
# scoring rule, is a sound selection metric (mode min) and both show a model growing overconfident as it overfits.
LOGGED_METRICS = ("kappa", "auroc", "accuracy", "sensitivity", "specificity", "ece", "brier")
IMAGE_COLUMNS = ["image_idx", "study_idx", "patient", "body_part", "label", "logit", "probability"]


def aggregate_studies(images: pd.DataFrame) -> pd.DataFrame:
    """A row per study: study_idx, (patient, when the images carry it), body_part, label, n_views, probability
    (mean of its images)."""
    patient = {"patient": ("patient", "first")} if "patient" in images.columns else {}
    return (
        images.groupby("study_idx", sort=True)
        .agg(**patient, body_part=("body_part", "first"), label=("label", "first"),
             n_views=("probability", "size"), probability=("probability", "mean"))
        .reset_index()
    )


def _undefined_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def kappa_ci_standard_error(labels: np.ndarray, predictions: np.ndarray) -> list[float] | None:
    """kappa +- 1.96 * sqrt(po (1 - po) / (n (1 - pe)^2)), clipped to [-1, 1]."""
    n = len(labels)
    if n == 0:
        return None
    po = float(np.mean(labels == predictions))
    p_label, p_pred = float(np.mean(labels)), float(np.mean(predictions))
    pe = p_label * p_pred + (1 - p_label) * (1 - p_pred)
    if pe >= 1.0:
        return None
    kappa = (po - pe) / (1 - pe)
    half_width = Z_95 * math.sqrt(po * (1 - po) / (n * (1 - pe) ** 2))
    return [max(-1.0, kappa - half_width), min(1.0, kappa + half_width)]


def _patient_codes(patients: Sequence[Hashable]) -> tuple[np.ndarray, int]:
    """A code per row (0 .. number of patients - 1) and the number of distinct patients."""
    codes, uniques = pd.factorize(pd.Series(list(patients), dtype=object))
    if (codes < 0).any():
        raise ValueError("patient ids must not be missing (None/NaN): the bootstrap resamples patients")
    return codes, len(uniques)


def patient_bootstrap_weights(patients: Sequence[Hashable], replicates: int, rng: np.random.Generator) -> np.ndarray:
    """A (replicates, rows) integer matrix: how many times each row's patient was drawn in each replicate.

    Each replicate draws as many patients as there are, uniformly with replacement, and takes all their rows.
    """
    codes, n_patients = _patient_codes(patients)
    draws = rng.integers(0, n_patients, size=(replicates, n_patients))
    offsets = (np.arange(replicates) * n_patients)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=replicates * n_patients)
    return counts.reshape(replicates, n_patients).astype(np.int32)[:, codes]


def _accumulator(weights: np.ndarray) -> tuple[np.ndarray, type]:
    """The weights and the dtype to sum them in: int32 while no product or sum of weighted_auroc can overflow it
    (every replicate's total weight under 2^15; twice as fast as int64), else int64; float64 for fractional weights."""
    weights = np.atleast_2d(np.asarray(weights))
    if weights.dtype.kind in "biu":
        if weights.size and (weights.min() < 0 or weights.sum(axis=1, dtype=np.int64).max() >= 2**15):
            return weights.astype(np.int64), np.int64
        return weights.astype(np.int32, copy=False), np.int32
    return weights.astype(np.float64, copy=False), np.float64


def weighted_kappa(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa of binary labels and predictions for every row of `weights` (replicates x rows) at once.

    From the weighted confusion counts: 2 (tp tn - fn fp) / ((tp + fp)(fp + tn) + (tp + fn)(fn + tn)); NaN where
    undefined (labels and predictions all of one and the same class), as scikit-learn's 0/0.
    """
    labels, predictions = np.asarray(labels).astype(bool), np.asarray(predictions).astype(bool)
    weights, _ = _accumulator(weights)
    cells = (labels & predictions, ~labels & predictions, labels & ~predictions, ~labels & ~predictions)
    sum_dtype = np.float64 if weights.dtype == np.float64 else np.int64
    tp, fp, fn, tn = (weights[:, cell].sum(axis=1, dtype=sum_dtype).astype(np.float64) for cell in cells)
    denominator = (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * (tp * tn - fn * fp) / denominator, np.nan)


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for every row of `weights` (replicates x rows) at once: the weighted Mann-Whitney statistic.

    P(score of a positive > score of a negative) + 1/2 P(tie), each pair weighted by the product of its rows'
    weights. With the negatives sorted by score and their weights summed cumulatively, a positive beats the
    negatives below its score and ties those at it: 2 x wins = sum over positives of weight x (negatives below +
    negatives at or below). NaN where a replicate has no positive or no negative weight.
    """
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    weights, dtype = _accumulator(weights)
    positives, negatives = np.flatnonzero(labels), np.flatnonzero(~labels)
    negatives = negatives[np.argsort(scores[negatives], kind="stable")]
    below = np.searchsorted(scores[negatives], scores[positives], side="left")
    at_or_below = np.searchsorted(scores[negatives], scores[positives], side="right")
    cumulative = np.zeros((len(weights), len(negatives) + 1), dtype=dtype)  # column k: weight of the k lowest negatives
    np.cumsum(weights[:, negatives], axis=1, dtype=dtype, out=cumulative[:, 1:])
    positive = weights[:, positives]
    sum_dtype = np.float64 if dtype == np.float64 else np.int64
    twice_wins = (positive * (cumulative[:, below] + cumulative[:, at_or_below])).sum(axis=1, dtype=sum_dtype)
    pairs = positive.sum(axis=1, dtype=sum_dtype).astype(np.float64) * cumulative[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, twice_wins / (2 * pairs), np.nan)


def percentile_interval(values: np.ndarray) -> list[float] | None:
    """[2.5th, 97.5th] percentile of the defined (non-NaN) values; None if there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) else None


def patient_bootstrap_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    patients: Sequence[Hashable],
    threshold: float = 0.5,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """{"kappa": [low, high], "auroc": [low, high]}: percentile 95% intervals over `replicates` patient resamples.

    Replicates where a metric is undefined (one class) are dropped; an interval is None when none are left, when
    there are fewer than 2 patients, or when `replicates` is 0.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    codes, n_patients = _patient_codes(patients)
    if len(codes) != len(labels):
        raise ValueError(f"{len(codes)} patient ids for {len(labels)} rows")
    if replicates <= 0 or n_patients < 2:
        return {"kappa": None, "auroc": None}
    weights = patient_bootstrap_weights(patients, replicates, np.random.default_rng(seed))
    predictions = (probabilities > threshold).astype(int)
    return {
        "kappa": percentile_interval(weighted_kappa(labels, predictions, weights)),
        "auroc": percentile_interval(weighted_auroc(labels, probabilities, weights)),
    }


def calibration_metrics(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, float | None]:
    """{"ece": expected calibration error (torchmetrics, L1 norm, `bins` equal-width bins), "brier": mean squared
    error of the probabilities against the 0/1 labels}; both None for no rows. Defined for one-class groups too."""
    # Imported here, not at the top: torchmetrics imports matplotlib.pyplot (global state) on import, and the report
    # module, which notebooks import, must leave matplotlib alone (tests/test_report.py).
    from torchmetrics.functional.classification import binary_calibration_error

    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(labels) == 0:
        return {"ece": None, "brier": None}
    ece = binary_calibration_error(torch.tensor(probabilities), torch.tensor(labels), n_bins=bins, norm="l1")
    return {"ece": float(ece), "brier": float(np.mean((probabilities - labels) ** 2))}


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """A row per equal-width bin of p(abnormal) over [0, 1] (the ECE's bins): low, high, count, mean_probability and
    fraction_abnormal (NaN in an empty bin). The ECE is sum(count x |fraction_abnormal - mean_probability|) / n.

    A probability of exactly 1.0 counts in the last bin here; torchmetrics' ECE gives it a bin of its own, which
    changes the ECE only where a probability saturates at 1.0.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # As torch.bucketize(right=True): bin k holds [edges[k], edges[k + 1]).
    index = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_probability = np.bincount(index, weights=probabilities, minlength=bins) / count
        fraction_abnormal = np.bincount(index, weights=labels, minlength=bins) / count
    return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "count": count, "mean_probability": mean_probability,
                         "fraction_abnormal": fraction_abnormal})


def binary_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float = 0.5,
    patients: Sequence[Hashable] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """M = {n, kappa, kappa_ci95, kappa_ci95_se, auroc, auroc_ci95, accuracy, sensitivity, specificity,
    bootstrap_replicates, ece, ece_bins, brier}; undefined values are None.

    kappa_ci95 and auroc_ci95 are patient-bootstrap percentile intervals (`bootstrap` replicates over `patients`,
    a patient id per row; None when `bootstrap` is 0); kappa_ci95_se is kappa +- 1.96 standard errors. ece and brier
    are `calibration_metrics` (ece over ece_bins equal-width bins).
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = (probabilities > threshold).astype(int)
    n = len(labels)
    if bootstrap and patients is None:
        raise ValueError("the bootstrap resamples patients: pass `patients`, a patient id per row")
    intervals = (patient_bootstrap_intervals(labels, probabilities, patients, threshold, bootstrap, seed)
                 if bootstrap and n else {"kappa": None, "auroc": None})
    calibration = {**calibration_metrics(labels, probabilities), "ece_bins": CALIBRATION_BINS}
    if n == 0:
        return {"n": 0, "kappa": None, "kappa_ci95": None, "kappa_ci95_se": None, "auroc": None, "auroc_ci95": None,
                "accuracy": None, "sensitivity": None, "specificity": None, "bootstrap_replicates": max(int(bootstrap), 0),
                **calibration}
    tp = int(np.sum((labels == 1) & (predictions == 1)))
    fp = int(np.sum((labels == 0) & (predictions == 1)))
    fn = int(np.sum((labels == 1) & (predictions == 0)))
    tn = n - tp - fp - fn
    # The bootstrap's own formulas with every row weighted once: the point estimate and its replicates are one
    # computation, and a report's hundred-odd groups cost milliseconds rather than scikit-learn's second of input checks
    # (tests/test_metrics.py holds them to cohen_kappa_score and roc_auc_score).
    unit = np.ones((1, n), dtype=np.int32)
    kappa = float(weighted_kappa(labels, predictions, unit)[0])
    auroc = float(weighted_auroc(labels, probabilities, unit)[0])
    return {
        "n": int(n),
        "kappa": _undefined_to_none(kappa),
        "kappa_ci95": intervals["kappa"],
        "kappa_ci95_se": kappa_ci_standard_error(labels, predictions),
        "auroc": _undefined_to_none(auroc),
        "auroc_ci95": intervals["auroc"],
        "accuracy": float((tp + tn) / n),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "bootstrap_replicates": max(int(bootstrap), 0),
        **calibration,
    }


def metrics_report(
    images: pd.DataFrame, threshold: float = 0.5, bootstrap: int = BOOTSTRAP_REPLICATES, seed: int = 0
) -> dict[str, dict[str, dict]]:
    """{"study": {"overall": M, "XR_WRIST": M, ...}, "image": {...}} from an image table (IMAGE_COLUMNS).

    `images` needs a `patient` column (a patient id per image). Per level and group, the 95% CIs come from
    `bootstrap` resamples of that group's patients (0: no bootstrap, the intervals are None). `views` holds the study
    metrics by number of views per study (VIEW_GROUPS), overall included.
    """
    if "patient" not in images.columns:
        raise ValueError(
            "metrics_report needs a `patient` column in `images` (a patient id per image): the 95% CIs come from a "
            "bootstrap over patients, whose studies are resampled together"
        )
    if images["patient"].isna().any():
        raise ValueError("metrics_report: `images` has images without a patient id (missing `patient` values)")
    if len(images) and images.groupby("study_idx")["patient"].nunique().max() > 1:
        raise ValueError("metrics_report: a study's images carry more than one patient id")
    report: dict[str, dict[str, dict]] = {}
    studies = aggregate_studies(images)
    views = studies["n_views"].map(views_group)
    for level, table, by in (("study", studies, studies["body_part"]), ("image", images, images["body_part"]),
                             ("views", studies, views)):
        groups = [("overall", table), *((name, table[by == name]) for name in sorted(by.unique()) if (by == name).any())]
        report[level] = {
            name: binary_metrics(frame["label"].to_numpy(), frame["probability"].to_numpy(), threshold,
                                 frame["patient"].to_numpy(), bootstrap, seed)
            for name, frame in groups
        }
    return report


VIEW_GROUPS = ("1", "2", "3", "4+")  # views in a study: MURA's studies hold 1 to 11, most of them 2 to 4


def views_group(n_views: int) -> str:
    """The subgroup of a study by its number of views (report["views"]): a model that fails on single-view studies
    is seen failing there, whatever its overall numbers."""
    return VIEW_GROUPS[min(int(n_views), 4) - 1]


def format_metric(value: float | None) -> str:
    """Three decimals, or n/a for an undefined metric (None)."""
    return "n/a" if value is None else f"{value:.3f}"


def format_interval(low: float | None, high: float | None) -> str:
    """"0.482 to 0.748", or n/a when either end is undefined. "to", not a hyphen: "-0.258-0.674" reads as a range
    of negatives, and kappa's intervals cross zero on small splits."""
    return "n/a" if low is None or high is None else f"{low:.3f} to {high:.3f}"


def flatten_for_logging(report: dict, prefix: str) -> dict[str, float]:
    """{"val/study/kappa": ..., "val/study/XR_WRIST/kappa": ...}: the `LOGGED_METRICS` of every group. An undefined
    one (AUROC of a one-class split, say) is logged as NaN rather than left out, so a checkpoint or early-stopping
    rule that monitors it sees "undefined this epoch", not a missing key."""
    flat = {}
    # Study and image level: the views breakdown is for reports and metrics.json, not every epoch's log
    for level, groups in ((level, report[level]) for level in ("study", "image")):
        for group, metrics in groups.items():
            scope = f"{prefix}/{level}" if group == "overall" else f"{prefix}/{level}/{group}"
            for name in LOGGED_METRICS:
                value = metrics[name]
                flat[f"{scope}/{name}"] = float("nan") if value is None else float(value)
    return flat
