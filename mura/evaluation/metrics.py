"""Study-level and image-level metrics, overall and per body part.

A study's probability is the arithmetic mean of its images' probabilities (the paper); it is abnormal when
the probability exceeds the threshold (0.5). Kappa and AUROC come from scikit-learn; kappa's 95% CI by the
standard-error method (as the paper) and, on request, by a bootstrap over studies.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

Z_95 = 1.959963984540054
IMAGE_COLUMNS = ["image_idx", "study_idx", "body_part", "label", "logit", "probability"]


def aggregate_studies(images: pd.DataFrame) -> pd.DataFrame:
    """A row per study: study_idx, body_part, label, n_views, probability (mean of its images)."""
    return (
        images.groupby("study_idx", sort=True)
        .agg(body_part=("body_part", "first"), label=("label", "first"), n_views=("probability", "size"),
             probability=("probability", "mean"))
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


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    """M = {n, kappa, kappa_ci95, auroc, accuracy, sensitivity, specificity}; undefined values are None."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = (probabilities > threshold).astype(int)
    n = len(labels)
    if n == 0:
        return {"n": 0, "kappa": None, "kappa_ci95": None, "auroc": None, "accuracy": None,
                "sensitivity": None, "specificity": None}
    tn, fp, fn, tp = confusion_matrix(labels, predictions, labels=[0, 1]).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # kappa is 0/0 when both raters are constant
        kappa = cohen_kappa_score(labels, predictions) if len(np.unique(np.r_[labels, predictions])) > 1 else float("nan")
    auroc = roc_auc_score(labels, probabilities) if len(np.unique(labels)) == 2 else float("nan")
    return {
        "n": int(n),
        "kappa": _undefined_to_none(kappa),
        "kappa_ci95": kappa_ci_standard_error(labels, predictions),
        "auroc": _undefined_to_none(auroc),
        "accuracy": float((tp + tn) / n),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
    }


def bootstrap_intervals(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, replicates: int, seed: int = 0
) -> dict[str, list[float] | None]:
    """Percentile 95% intervals of kappa and AUROC over `replicates` resamples of the rows (studies)."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = (probabilities > threshold).astype(int)
    n = len(labels)
    if n < 2 or replicates <= 0:
        return {"kappa": None, "auroc": None}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(replicates, n))
    y, p = labels[draws], predictions[draws]
    # Kappa for every replicate at once from its confusion counts.
    po = (y == p).mean(axis=1)
    y_rate, p_rate = y.mean(axis=1), p.mean(axis=1)
    pe = y_rate * p_rate + (1 - y_rate) * (1 - p_rate)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappas = np.where(pe < 1, (po - pe) / (1 - pe), np.nan)
    aurocs = [roc_auc_score(y[row], probabilities[draws[row]]) for row in range(replicates) if 0 < y_rate[row] < 1]

    def percentile_interval(values) -> list[float] | None:
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else None

    return {"kappa": percentile_interval(kappas), "auroc": percentile_interval(aurocs)}


def metrics_report(
    images: pd.DataFrame, threshold: float = 0.5, bootstrap: int = 0, seed: int = 0
) -> dict[str, dict[str, dict]]:
    """{"study": {"overall": M, "XR_WRIST": M, ...}, "image": {...}} from an image table (IMAGE_COLUMNS).

    With `bootstrap` > 0 each M also holds kappa_ci95_bootstrap and auroc_ci95_bootstrap.
    """
    report: dict[str, dict[str, dict]] = {}
    for level, table in (("study", aggregate_studies(images)), ("image", images)):
        groups = [("overall", table), *((part, frame) for part, frame in table.groupby("body_part", sort=True))]
        level_report = {}
        for name, frame in groups:
            labels, probabilities = frame["label"].to_numpy(), frame["probability"].to_numpy()
            metrics = binary_metrics(labels, probabilities, threshold)
            if bootstrap:
                intervals = bootstrap_intervals(labels, probabilities, threshold, bootstrap, seed)
                metrics["kappa_ci95_bootstrap"] = intervals["kappa"]
                metrics["auroc_ci95_bootstrap"] = intervals["auroc"]
            level_report[name] = metrics
        report[level] = level_report
    return report


def format_metric(value: float | None) -> str:
    """Three decimals, or n/a for an undefined metric (None)."""
    return "n/a" if value is None else f"{value:.3f}"


def flatten_for_logging(report: dict, prefix: str) -> dict[str, float]:
    """{"val/study/kappa": ..., "val/study/XR_WRIST/kappa": ...}: the scalar, defined entries of a report."""
    flat = {}
    for level, groups in report.items():
        for group, metrics in groups.items():
            scope = f"{prefix}/{level}" if group == "overall" else f"{prefix}/{level}/{group}"
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and name != "n" and value is not None:
                    flat[f"{scope}/{name}"] = float(value)
    return flat
