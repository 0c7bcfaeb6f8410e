"""Writing results: metrics.json, prediction tables, report.md with the paper comparison, ROC and confusion plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import auc, confusion_matrix, roc_curve

from mura.evaluation.metrics import aggregate_studies, format_metric
from mura.evaluation.reference import PAPER_KAPPA, PAPER_SOURCE

# Per-body-part ROC curves: distinct line styles, widest first, so curves that coincide (several parts at AUROC 1.0)
# still show as stripes of their colours under one another; the overall curve is drawn last, thin, on top.
ROC_LINESTYLES = ["-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)), (0, (3, 2)), (0, (6, 2, 1, 2))]


def write_metrics_json(report: dict, path: str | Path) -> Path:
    """The `metrics.json` schema: {"study": {"overall": M, "XR_...": M}, "image": {...}}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: undefined values are already None, and a NaN would make invalid JSON.
    path.write_text(json.dumps(report, indent=2, allow_nan=False))
    return path


def _groups(report: dict, level: str) -> list[str]:
    return [name for name in report[level] if name != "overall"] + ["overall"]


def metrics_table(report: dict, level: str = "study") -> pd.DataFrame:
    """One row per body part (overall last): n, kappa and AUROC with their 95% CIs (percentile bootstrap over
    patients; n/a without a bootstrap), accuracy, sensitivity, specificity."""
    rows = []
    for name in _groups(report, level):
        metrics = report[level][name]
        rows.append(
            {
                level: name,
                "n": metrics["n"],
                "kappa": format_metric(metrics["kappa"]),
                "kappa 95% CI": _fmt_ci(metrics.get("kappa_ci95")),
                "AUROC": format_metric(metrics["auroc"]),
                "AUROC 95% CI": _fmt_ci(metrics.get("auroc_ci95")),
                "accuracy": format_metric(metrics["accuracy"]),
                "sensitivity": format_metric(metrics["sensitivity"]),
                "specificity": format_metric(metrics["specificity"]),
            }
        )
    return pd.DataFrame(rows)


def comparison_table(report: dict) -> pd.DataFrame:
    """This model's study-level kappa (95% CI: patient bootstrap) beside the paper's model and its three radiologists."""
    rows = []
    for name in _groups(report, "study"):
        metrics = report["study"][name]
        rad1, rad2, rad3, paper_model, paper_ci = PAPER_KAPPA[name]
        rows.append(
            {
                "study type": name,
                "studies": metrics["n"],
                "this model": f"{format_metric(metrics['kappa'])} ({_fmt_ci(metrics.get('kappa_ci95'))})",
                "paper model": f"{paper_model:.3f}" + (f" ({paper_ci[0]:.3f}-{paper_ci[1]:.3f})" if paper_ci else ""),
                "radiologist 1": f"{rad1:.3f}",
                "radiologist 2": f"{rad2:.3f}",
                "radiologist 3": f"{rad3:.3f}",
            }
        )
    return pd.DataFrame(rows)


def interval_note(report: dict) -> str:
    """What the 95% CIs are: the bootstrap's method and replicate count, the standard-error interval beside it in
    metrics.json, and which intervals have zero width (no disagreement to resample, not certainty)."""
    replicates = sorted({metrics.get("bootstrap_replicates") or 0 for groups in report.values() for metrics in groups.values()} - {0})
    if not replicates:
        return ("95% CIs: none computed (bootstrap off: `bootstrap=0`); metrics.json holds kappa ± 1.96 SE as "
                "`kappa_ci95_se`.")
    counts = " / ".join(f"{count:,}" for count in replicates)
    note = (
        f"95% CIs: percentile bootstrap over patients ({counts} replicates; a patient's studies are resampled "
        "together, and at image level all of a patient's images; each body part resamples its own patients, and "
        "replicates in which a metric is undefined are dropped); metrics.json also holds kappa ± 1.96 SE as "
        "`kappa_ci95_se`. An interval of zero width means every replicate gave the same value: there was no "
        "disagreement to resample (e.g. a perfect score), not certainty."
    )
    degenerate = [
        f"{level} {group} {name}"
        for level, groups in report.items()
        for group, metrics in groups.items()
        for name, key in (("kappa", "kappa_ci95"), ("AUROC", "auroc_ci95"))
        if metrics.get(key) and metrics[key][0] == metrics[key][1]
    ]
    if degenerate:
        note += " Zero-width intervals in this report: " + ", ".join(degenerate) + "."
    return note


def report_markdown(report: dict, title: str, split_description: str, checkpoints: list[str]) -> str:
    lines = [
        f"# {title}",
        "",
        f"Evaluated on: {split_description}.",
        "Checkpoint(s): " + ", ".join(f"`{path}`" for path in checkpoints),
        "",
        "## Study-level Cohen's kappa against the labels, beside Stanford's model and radiologists",
        "",
        comparison_table(report).to_markdown(index=False, disable_numparse=True),
        "",
        f"The paper's numbers ({PAPER_SOURCE}) are kappa against a radiologist majority gold standard on the hidden "
        f"test set; this model's are against the MURA labels on the split named above. They are comparable in kind "
        "(study-level kappa), not in data. A study is abnormal when the mean of its images' probabilities exceeds "
        "the threshold. The paper model's CIs are as published.",
        "",
        interval_note(report),
        "",
        "## Study level",
        "",
        metrics_table(report, "study").to_markdown(index=False),
        "",
        "## Image level (for comparison with image-level numbers such as the seed notebook's accuracy)",
        "",
        metrics_table(report, "image").to_markdown(index=False),
        "",
        "Plots: `roc.png` (study-level ROC per body part), `confusion.png` (study-level confusion matrices).",
    ]
    return "\n".join(lines) + "\n"


def plot_roc(studies: pd.DataFrame, path: Path) -> None:
    """Study-level ROC curves, one per body part plus overall, AUROC in the legend.

    Curves that coincide (e.g. several parts with AUROC 1.0) stay visible: each part has its own colour and line
    style and the earlier ones are wider, so later curves stripe on top of them; the overall curve comes last.
    """
    figure = Figure(figsize=(6, 6), layout="tight")
    axis = figure.subplots()
    parts = [(name, frame) for name, frame in studies.groupby("body_part", sort=True) if frame["label"].nunique() == 2]
    widths = np.linspace(4.0, 1.5, max(len(parts), 2))
    for index, (name, frame) in enumerate(parts):
        fpr, tpr, _ = roc_curve(frame["label"], frame["probability"])
        axis.plot(fpr, tpr, label=f"{name} (AUROC {auc(fpr, tpr):.3f}, n={len(frame)})", color=f"C{index % 10}",
                  linestyle=ROC_LINESTYLES[index % len(ROC_LINESTYLES)], linewidth=widths[index], alpha=0.85)
    if studies["label"].nunique() == 2:
        fpr, tpr, _ = roc_curve(studies["label"], studies["probability"])
        axis.plot(fpr, tpr, label=f"overall (AUROC {auc(fpr, tpr):.3f}, n={len(studies)})", color="black",
                  linewidth=1.0, zorder=3)
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=0.8)
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title("Study-level ROC")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="lower right")
    figure.savefig(path, dpi=100)


def plot_confusion(studies: pd.DataFrame, threshold: float, path: Path) -> None:
    """Study-level confusion matrices, overall and per body part; counts in white on the dark cells."""
    groups = [("overall", studies), *studies.groupby("body_part", sort=True)]
    columns = 4
    rows = int(np.ceil(len(groups) / columns))
    figure = Figure(figsize=(3 * columns, 3 * rows), layout="tight")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel()[len(groups):]:
        axis.axis("off")
    for axis, (name, frame) in zip(axes.ravel(), groups, strict=False):
        matrix = confusion_matrix(frame["label"], (frame["probability"] > threshold).astype(int), labels=[0, 1])
        top = max(int(matrix.max()), 1)
        axis.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
        axis.set_xticks([0, 1], ["normal", "abnormal"])
        axis.set_yticks([0, 1], ["normal", "abnormal"])
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(name, fontsize=9)
    figure.savefig(path, dpi=100)


def predictions_tables(
    images: pd.DataFrame, studies_meta: pd.DataFrame, paths: pd.Series, threshold: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-study and per-image prediction tables with study names and paths (and patient ids, when `images`
    carries them).

    `studies_meta` is indexed by study_idx (column `study`); `paths` maps image_idx to the image path.
    """
    studies = aggregate_studies(images)
    studies.insert(1, "study", studies_meta.loc[studies["study_idx"], "study"].to_numpy())
    if "patient" in images.columns:  # the MURA patient id (patientNNNNN), not the index the bootstrap used
        studies["patient"] = studies_meta.loc[studies["study_idx"], "patient"].to_numpy()
    studies["prediction"] = (studies["probability"] > threshold).astype(int)
    image_rows = images.assign(path=paths.loc[images["image_idx"]].to_numpy())
    image_rows["study"] = studies_meta.loc[image_rows["study_idx"], "study"].to_numpy()
    if "patient" in images.columns:
        image_rows["patient"] = studies_meta.loc[image_rows["study_idx"], "patient"].to_numpy()
    image_rows["prediction"] = (image_rows["probability"] > threshold).astype(int)
    patient = ["patient"] if "patient" in images.columns else []
    study_columns = ["study", *patient, "body_part", "n_views", "label", "probability", "prediction"]
    image_columns = ["path", "study", *patient, "body_part", "label", "logit", "probability", "prediction"]
    return studies[study_columns], image_rows[image_columns]


def write_run_outputs(
    output_dir: Path,
    report: dict,
    images: pd.DataFrame,
    studies_meta: pd.DataFrame,
    paths: pd.Series,
    threshold: float,
    title: str,
    split_description: str,
    checkpoints: list[str],
) -> None:
    """Everything a results folder holds: metrics.json, predictions(.csv, _images.csv), report.md, roc.png, confusion.png.

    `images` is the image table metrics_report took (with its `patient` column).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_json(report, output_dir / "metrics.json")
    studies, image_rows = predictions_tables(images, studies_meta, paths, threshold)
    studies.to_csv(output_dir / "predictions.csv", index=False)
    image_rows.to_csv(output_dir / "predictions_images.csv", index=False)
    (output_dir / "report.md").write_text(report_markdown(report, title, split_description, checkpoints))
    plot_roc(studies, output_dir / "roc.png")
    plot_confusion(studies, threshold, output_dir / "confusion.png")


def _fmt_ci(interval: list[float] | None) -> str:
    return f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "n/a"
