"""Writing results: metrics.json, prediction tables (ours and the official submission format), report.md and
report.html with the paper comparison, ROC, confusion and calibration plots."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, confusion_matrix, roc_curve

from mura.data.index import BODY_PARTS
from mura.evaluation.figure_margins import set_margins
from mura.evaluation.html_report import ReportContent, write_report_html
from mura.evaluation.metrics import (
    CALIBRATION_BINS,
    aggregate_studies,
    format_interval,
    format_metric,
    reliability_bins,
)
from mura.evaluation.reference import PAPER_KAPPA, PAPER_SOURCE

OFFICIAL_ROOT_NAME = "MURA-v1.1"  # the folder the official CSVs' paths start with

# Per-body-part ROC curves: distinct line styles, widest first, so curves that coincide (several parts at AUROC 1.0)
# still show as stripes of their colours under one another; the overall curve is drawn last, thin, on top.
ROC_LINESTYLES = ["-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)), (0, (3, 2)), (0, (6, 2, 1, 2))]


# A study model scores studies; its image-level rows carry their study's probability (mura.models.classifier).
STUDY_MODEL_NOTE = ("a study model ({pooling} pooling): one probability per study, so its image-level numbers score "
                    "each view by its study's probability")


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
                "paper model": f"{paper_model:.3f}" + (f" ({format_interval(*paper_ci)})" if paper_ci else ""),
                "radiologist 1": f"{rad1:.3f}",
                "radiologist 2": f"{rad2:.3f}",
                "radiologist 3": f"{rad3:.3f}",
            }
        )
    return pd.DataFrame(rows)


def comparison_note() -> str:
    """What the comparison with the paper can and cannot say."""
    return (
        f"The paper's numbers ({PAPER_SOURCE}) are kappa against a radiologist majority gold standard on the hidden "
        "test set; this model's are against the MURA labels on the split named above. They are comparable in kind "
        "(study-level kappa), not in data. A study is abnormal when the mean of its images' probabilities exceeds "
        "the threshold. The paper model's CIs are as published."
    )


def calibration_table(report: dict) -> pd.DataFrame:
    """One row per body part (overall last): study-level and image-level expected calibration error and Brier score."""
    rows = []
    for name in _groups(report, "study"):
        study, image = report["study"][name], report["image"].get(name, {})
        rows.append(
            {
                "body part": name,
                "studies": study["n"],
                "study ECE": format_metric(study.get("ece")),
                "study Brier": format_metric(study.get("brier")),
                "images": image.get("n", 0),
                "image ECE": format_metric(image.get("ece")),
                "image Brier": format_metric(image.get("brier")),
            }
        )
    return pd.DataFrame(rows)


def calibration_note(report: dict) -> str:
    """What ECE and Brier measure, and the bins."""
    bins = next((metrics["ece_bins"] for metrics in report["study"].values() if metrics.get("ece_bins")), CALIBRATION_BINS)
    return (
        f"ECE (expected calibration error): p(abnormal) sorted into {bins} equal-width bins over [0, 1]; the "
        "bin-size-weighted mean of |fraction of abnormal studies (images) - mean p(abnormal)| per bin (torchmetrics' "
        "BinaryCalibrationError, L1 norm). Brier: the mean of (p(abnormal) - label)², 0 for perfect confident answers "
        "and 0.25 for always saying 0.5. Lower is better for both; with few studies per bin the ECE is noisy and "
        "biased upwards. `calibration.png` draws the study-level reliability diagram."
    )


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


def report_content(report: dict, title: str, split_description: str, checkpoints: list[str], threshold: float) -> ReportContent:
    """What report.md and report.html both say, built once."""
    return ReportContent(
        title=title, split_description=split_description, checkpoints=list(checkpoints), threshold=threshold,
        comparison=comparison_table(report), comparison_note=comparison_note(), interval_note=interval_note(report),
        study_table=metrics_table(report, "study"), image_table=metrics_table(report, "image"),
        views_table=metrics_table(report, "views") if "views" in report else pd.DataFrame(),
        calibration_table=calibration_table(report), calibration_note=calibration_note(report),
    )


def report_markdown(content: ReportContent) -> str:
    lines = [
        f"# {content.title}",
        "",
        f"Evaluated on: {content.split_description}.",
        "Checkpoint(s): " + ", ".join(f"`{path}`" for path in content.checkpoints),
        "",
        "## Study-level Cohen's kappa against the labels, beside Stanford's model and radiologists",
        "",
        content.comparison.to_markdown(index=False, disable_numparse=True),
        "",
        content.comparison_note,
        "",
        content.interval_note,
        "",
        "## Study level",
        "",
        content.study_table.to_markdown(index=False),
        "",
        "## Study level by number of views (a model that fails on single-view studies shows it here)",
        "",
        content.views_table.to_markdown(index=False) if not content.views_table.empty else "(not computed)",
        "",
        "## Image level (for comparison with image-level numbers such as the seed notebook's accuracy)",
        "",
        content.image_table.to_markdown(index=False),
        "",
        "## Calibration (are the probabilities honest?)",
        "",
        content.calibration_table.to_markdown(index=False, disable_numparse=True),
        "",
        content.calibration_note,
        "",
        "Plots: `roc.png` (study-level ROC per body part), `confusion.png` (study-level confusion matrices), "
        "`calibration.png` (study-level reliability diagrams). `report.html` holds all of this, the figures and the "
        "Grad-CAM gallery in one file; `predictions_official.csv` is the study predictions in the official submission "
        "format.",
    ]
    return "\n".join(lines) + "\n"


def plot_roc(studies: pd.DataFrame, path: Path) -> None:
    """Study-level ROC curves, one per body part plus overall, AUROC in the legend.

    Curves that coincide (e.g. several parts with AUROC 1.0) stay visible: each part has its own colour and line
    style and the earlier ones are wider, so later curves stripe on top of them; the overall curve comes last.
    """
    figure = Figure(figsize=(6, 6))
    set_margins(figure, left=0.7, right=0.15, bottom=0.6, top=0.36)
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
    columns = min(4, len(groups))  # one body part: overall and it, side by side, no empty panels beside them
    rows = int(np.ceil(len(groups) / columns))
    figure = Figure(figsize=(3 * columns, 3 * rows))
    set_margins(figure, left=1.15, right=0.15, bottom=0.55, top=0.32, wspace=0.65, hspace=0.35)
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


def plot_calibration(studies: pd.DataFrame, study_metrics: dict, path: Path) -> None:
    """Study-level reliability diagrams, overall and per body part: the fraction of abnormal studies against the mean
    p(abnormal) in each of the ECE's equal-width bins, the diagonal for perfect calibration, and under each the number
    of studies per bin (bars, counts written on them). `study_metrics` is the report's "study" level: each panel's
    title shows the ECE of metrics.json, over its `ece_bins`, not a second computation of it."""
    bins = study_metrics["overall"]["ece_bins"]
    groups = [("overall", studies), *studies.groupby("body_part", sort=True)]
    columns = min(4, len(groups))
    rows = int(np.ceil(len(groups) / columns))
    # Fixed margins rather than a layout engine: constrained layout over these 16 axes took 2 s of every run's end.
    height = 4.4 * rows
    figure = Figure(figsize=(3.2 * columns, height))
    outer = figure.add_gridspec(rows, columns, left=0.07, right=0.98, bottom=0.55 / height, top=1 - 0.55 / height,
                                wspace=0.3, hspace=0.3)
    width = 1.0 / bins
    for index, (name, frame) in enumerate(groups):
        row, column = divmod(index, columns)
        cell = outer[row, column].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
        reliability = figure.add_subplot(cell[0])
        counts = figure.add_subplot(cell[1], sharex=reliability)
        table = reliability_bins(frame["label"].to_numpy(), frame["probability"].to_numpy(), bins)
        filled = table[table["count"] > 0]
        ece = study_metrics[name]["ece"]
        reliability.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=0.8, label="perfectly calibrated")
        reliability.plot(filled["mean_probability"], filled["fraction_abnormal"], marker="o", markersize=4,
                         color="C0" if name != "overall" else "black", label="this model")
        reliability.set_xlim(0, 1)
        reliability.set_ylim(-0.02, 1.02)
        reliability.set_title(f"{name} (n={len(frame)}, ECE {format_metric(ece)})", fontsize=9)
        reliability.tick_params(labelbottom=False, labelsize=7)
        if column == 0:
            reliability.set_ylabel("fraction abnormal", fontsize=8)
            counts.set_ylabel("studies", fontsize=8)
        if index == 0:
            reliability.legend(fontsize=7, loc="upper left")
        bars = counts.bar(table["low"], table["count"], width=width, align="edge", color="0.6", edgecolor="white")
        counts.bar_label(bars, labels=[str(count) if count else "" for count in table["count"]], fontsize=6, padding=1)
        counts.set_ylim(0, max(int(table["count"].max()), 1) * 1.35)
        counts.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
        counts.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0", "0.25", "0.5", "0.75", "1"])
        counts.set_xlabel("p(abnormal)", fontsize=8)
        counts.tick_params(labelsize=7)
    figure.suptitle(f"Study-level calibration ({bins} equal-width bins)", fontsize=10)
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


def official_study_path(study: str, root_name: str | None = OFFICIAL_ROOT_NAME) -> str:
    """A study as the official CSVs spell it: `valid/XR_WRIST/patient11185/study1_positive` (a study key, relative
    to the release) becomes `MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/`; with root_name None the study is
    taken as already spelled in full and only gets its trailing slash."""
    return f"{root_name}/{str(study).strip('/')}/" if root_name else f"{str(study).rstrip('/')}/"


def write_official_predictions(path: str | Path, studies: pd.DataFrame, root_name: str | None = OFFICIAL_ROOT_NAME) -> Path:
    """`predictions_official.csv`: a row per study, `study path,prediction`, no header, the form Stanford's evaluation
    reads (as valid_labeled_studies.csv: `MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/,1`).

    `studies` has a `study` column (study keys relative to the release, spelled by `official_study_path` with
    `root_name`) and a 0/1 `prediction` column.
    """
    predictions = pd.to_numeric(studies["prediction"], errors="coerce")
    if not predictions.isin([0, 1]).all():
        raise ValueError("write_official_predictions: `prediction` must be 0 or 1 for every study (the official format "
                         "holds a decision, not a probability)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as sink:
        writer = csv.writer(sink, lineterminator="\n")  # quotes a path only if it holds a comma
        for study, prediction in zip(studies["study"], predictions.astype(int), strict=True):
            writer.writerow([official_study_path(study, root_name), prediction])
    return path


_STUDY_FOLDER = re.compile(r"^study\d+", re.IGNORECASE)
RELEASE_SPLIT_FOLDERS = ("train", "valid", "test")  # test: the hidden split, laid out as the others


def submission_study_path(study: str | Path, input_path: str | Path) -> str:
    """How `predictions_official.csv` spells a study `mura.predict` found under `input_path` (for
    `write_official_predictions(..., root_name=None)`).

    A study inside a MURA release (.../SPLIT/XR_PART/patientN/studyK, the release folder renamed or not) is spelled as
    the official CSVs spell it, whatever the release folder is called, so that Stanford's evaluation joins it with
    their rows: `MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/`. Any other folder is spelled relative to the
    folder that holds the input, so the input's own name comes first (`scans/case1/`), or as given when it is not
    under the input. A single image stands for its folder, as Stanford's own predictor groups images.
    """
    folder, given = PurePath(study), PurePath(input_path)
    if Path(study).is_file():
        folder = folder.parent
    if Path(input_path).is_file():
        given = given.parent
    parts = folder.parts
    if (len(parts) >= 4 and parts[-4].lower() in RELEASE_SPLIT_FOLDERS and parts[-3].upper() in BODY_PARTS
            and parts[-2].lower().startswith("patient") and _STUDY_FOLDER.match(parts[-1])):
        return official_study_path("/".join([parts[-4].lower(), parts[-3].upper(), *parts[-2:]]))
    try:
        relative = folder.relative_to(given.parent if given.name else given)
    except ValueError:
        relative = folder
    return official_study_path(relative.as_posix(), None)


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
    """Everything a results folder holds: metrics.json, predictions(.csv, _images.csv, _official.csv), report.md,
    roc.png, confusion.png, calibration.png, and report.html last, with what else the folder holds by then (a training
    run's curves.png, split_table.csv and Grad-CAM gallery/final/).

    `images` is the image table metrics_report took (with its `patient` column).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_json(report, output_dir / "metrics.json")
    studies, image_rows = predictions_tables(images, studies_meta, paths, threshold)
    studies.to_csv(output_dir / "predictions.csv", index=False)
    image_rows.to_csv(output_dir / "predictions_images.csv", index=False)
    write_official_predictions(output_dir / "predictions_official.csv", studies)
    content = report_content(report, title, split_description, checkpoints, threshold)
    (output_dir / "report.md").write_text(report_markdown(content))
    plot_roc(studies, output_dir / "roc.png")
    plot_confusion(studies, threshold, output_dir / "confusion.png")
    plot_calibration(studies, report["study"], output_dir / "calibration.png")
    write_report_html(output_dir, content)


def _fmt_ci(interval: list[float] | None) -> str:
    return format_interval(*interval) if interval else "n/a"
