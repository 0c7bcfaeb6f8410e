"""Writing results: metrics.json, prediction tables, report.md with the paper comparison, ROC and confusion plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import auc, confusion_matrix, roc_curve  # noqa: E402

from mura.evaluation.metrics import aggregate_studies, format_metric  # noqa: E402
from mura.evaluation.reference import PAPER_KAPPA, PAPER_SOURCE  # noqa: E402


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
    """One row per body part (overall last): n, kappa with its 95% CI, AUROC, accuracy, sensitivity, specificity."""
    rows = []
    for name in _groups(report, level):
        metrics = report[level][name]
        rows.append(
            {
                level: name,
                "n": metrics["n"],
                "kappa": format_metric(metrics["kappa"]),
                "kappa 95% CI": _fmt_ci(metrics.get("kappa_ci95")),
                **({"kappa 95% CI (bootstrap)": _fmt_ci(metrics["kappa_ci95_bootstrap"])} if "kappa_ci95_bootstrap" in metrics else {}),
                "AUROC": format_metric(metrics["auroc"]),
                **({"AUROC 95% CI (bootstrap)": _fmt_ci(metrics["auroc_ci95_bootstrap"])} if "auroc_ci95_bootstrap" in metrics else {}),
                "accuracy": format_metric(metrics["accuracy"]),
                "sensitivity": format_metric(metrics["sensitivity"]),
                "specificity": format_metric(metrics["specificity"]),
            }
        )
    return pd.DataFrame(rows)


def comparison_table(report: dict) -> pd.DataFrame:
    """This model's study-level kappa (95% CI) beside the paper's model and its three radiologists."""
    rows = []
    for name in _groups(report, "study"):
        metrics = report["study"][name]
        rad1, rad2, rad3, paper_model, paper_ci = PAPER_KAPPA[name]
        rows.append(
            {
                "study type": name,
                "studies": metrics["n"],
                "this model": f"{format_metric(metrics['kappa'])} ({_fmt_ci(metrics['kappa_ci95'])})",
                "paper model": f"{paper_model:.3f}" + (f" ({paper_ci[0]:.3f}-{paper_ci[1]:.3f})" if paper_ci else ""),
                "radiologist 1": f"{rad1:.3f}",
                "radiologist 2": f"{rad2:.3f}",
                "radiologist 3": f"{rad3:.3f}",
            }
        )
    return pd.DataFrame(rows)


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
        "the threshold. CIs: kappa +- 1.96 standard errors.",
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
    """Study-level ROC curves, one per body part plus overall, AUROC in the legend."""
    figure, axis = plt.subplots(figsize=(6, 6))
    groups = [*studies.groupby("body_part", sort=True), ("overall", studies)]
    for name, frame in groups:
        if frame["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(frame["label"], frame["probability"])
        style = {"color": "black", "linewidth": 2.5} if name == "overall" else {"linewidth": 1.2}
        axis.plot(fpr, tpr, label=f"{name} (AUROC {auc(fpr, tpr):.3f}, n={len(frame)})", **style)
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title("Study-level ROC")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusion(studies: pd.DataFrame, threshold: float, path: Path) -> None:
    """Study-level confusion matrices, overall and per body part."""
    groups = [("overall", studies), *studies.groupby("body_part", sort=True)]
    columns = 4
    rows = int(np.ceil(len(groups) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for axis in axes.ravel()[len(groups):]:
        axis.axis("off")
    for axis, (name, frame) in zip(axes.ravel(), groups, strict=False):
        matrix = confusion_matrix(frame["label"], (frame["probability"] > threshold).astype(int), labels=[0, 1])
        axis.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", color="black")
        axis.set_xticks([0, 1], ["normal", "abnormal"])
        axis.set_yticks([0, 1], ["normal", "abnormal"])
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(name, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def predictions_tables(
    images: pd.DataFrame, studies_meta: pd.DataFrame, paths: pd.Series, threshold: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
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
    """Everything a results folder holds: metrics.json, predictions(.csv, _images.csv), report.md, roc.png, confusion.png."""
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
