"""Writing results: metrics.json, predictions.csv, printed tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mura.evaluation.metrics import aggregate_studies


def write_metrics_json(report: dict, path: str | Path) -> Path:
    """The `metrics.json` schema: {"study": {"overall": M, "XR_...": M}, "image": {...}}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: undefined values are already None, and a NaN would make invalid JSON.
    path.write_text(json.dumps(report, indent=2, allow_nan=False))
    return path


def metrics_table(report: dict, level: str = "study") -> pd.DataFrame:
    """One row per body part (overall last): n, kappa with its 95% CI, AUROC, accuracy, sensitivity, specificity."""
    rows = []
    groups = [name for name in report[level] if name != "overall"] + ["overall"]
    for name in groups:
        metrics = report[level][name]
        ci = metrics.get("kappa_ci95")
        rows.append(
            {
                level: name,
                "n": metrics["n"],
                "kappa": _fmt(metrics["kappa"]),
                "kappa 95% CI": f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "n/a",
                "AUROC": _fmt(metrics["auroc"]),
                "accuracy": _fmt(metrics["accuracy"]),
                "sensitivity": _fmt(metrics["sensitivity"]),
                "specificity": _fmt(metrics["specificity"]),
            }
        )
    return pd.DataFrame(rows)


def predictions_tables(images: pd.DataFrame, studies_meta: pd.DataFrame, paths: pd.Series, threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-study and per-image prediction tables with study names and paths.

    `studies_meta` is indexed by study_idx (column `study`); `paths` maps image_idx to the image path.
    """
    studies = aggregate_studies(images)
    studies.insert(1, "study", studies_meta.loc[studies["study_idx"], "study"].to_numpy())
    studies["prediction"] = (studies["probability"] > threshold).astype(int)
    image_rows = images.assign(path=paths.loc[images["image_idx"]].to_numpy())
    image_rows["study"] = studies_meta.loc[image_rows["study_idx"], "study"].to_numpy()
    image_rows["prediction"] = (image_rows["probability"] > threshold).astype(int)
    study_columns = ["study", "body_part", "n_views", "label", "probability", "prediction"]
    image_columns = ["path", "study", "body_part", "label", "logit", "probability", "prediction"]
    return studies[study_columns], image_rows[image_columns]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
