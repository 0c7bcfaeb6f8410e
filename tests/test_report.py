from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from mura.data.index import build_index
from mura.evaluation.metrics import aggregate_studies, metrics_report, reliability_bins
from mura.evaluation.report import (
    calibration_table,
    comparison_table,
    metrics_table,
    official_study_path,
    plot_calibration,
    plot_confusion,
    plot_roc,
    report_content,
    report_markdown,
    submission_study_path,
    write_official_predictions,
    write_run_outputs,
)

PARTS = ("XR_ELBOW", "XR_FINGER", "XR_WRIST")


def images_table(n_studies: int = 90, seed: int = 0, perfect: tuple[str, ...] = ()) -> pd.DataFrame:
    """Studies of 1-3 images over n_studies // 2 patients; the body parts in `perfect` are scored perfectly."""
    rng = np.random.default_rng(seed)
    rows = []
    for study in range(n_studies):
        label, part = int(rng.random() < 0.45), PARTS[study % len(PARTS)]
        for _ in range(int(rng.integers(1, 4))):
            if part in perfect:
                probability = 0.9 if label else 0.1
            else:
                probability = float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0.01, 0.99))
            rows.append((len(rows), study, study // 2, part, label, 0.0, probability))
    return pd.DataFrame(rows, columns=["image_idx", "study_idx", "patient", "body_part", "label", "logit", "probability"])


def interval(values) -> str:
    return f"{values[0]:.3f} to {values[1]:.3f}"


def test_tables_show_the_bootstrap_interval():
    report = metrics_report(images_table(), bootstrap=200)
    overall = report["study"]["overall"]
    assert overall["kappa_ci95"] != overall["kappa_ci95_se"]
    table = metrics_table(report, "study")
    assert list(table.columns) == ["study", "n", "kappa", "kappa 95% CI", "AUROC", "AUROC 95% CI", "accuracy",
                                   "sensitivity", "specificity"]
    assert list(table["study"]) == [*PARTS, "overall"]
    last = table.iloc[-1]
    assert last["kappa 95% CI"] == interval(overall["kappa_ci95"]) != interval(overall["kappa_ci95_se"])
    assert last["AUROC 95% CI"] == interval(overall["auroc_ci95"])
    comparison = comparison_table(report).set_index("study type")
    assert comparison.loc["overall", "this model"] == f"{overall['kappa']:.3f} ({interval(overall['kappa_ci95'])})"
    without = metrics_table(metrics_report(images_table(), bootstrap=0), "image")
    assert set(without["kappa 95% CI"]) == {"n/a"} and set(without["AUROC 95% CI"]) == {"n/a"}


def test_report_markdown_names_the_method_and_flags_zero_width_intervals():
    report = metrics_report(images_table(perfect=("XR_FINGER",)), bootstrap=300)
    assert report["study"]["XR_FINGER"]["kappa_ci95"] == [1.0, 1.0]
    markdown = report_markdown(report_content(report, "Evaluation", "the validation split", ["best.ckpt"], threshold=0.5))
    assert "95% CIs: percentile bootstrap over patients (300 replicates; a patient's studies are resampled together" in markdown
    assert "kappa ± 1.96 SE as `kappa_ci95_se`" in markdown
    assert "no disagreement to resample" in markdown and "not certainty" in markdown
    assert "Zero-width intervals in this report: study XR_FINGER kappa, study XR_FINGER AUROC" in markdown
    assert "study XR_WRIST" not in markdown and "| kappa 95% CI" in markdown
    plain = report_markdown(report_content(metrics_report(images_table(), bootstrap=0), "Evaluation", "val", ["best.ckpt"], threshold=0.5))
    assert "none computed" in plain and "percentile bootstrap" not in plain and "Zero-width" not in plain


def test_write_run_outputs_writes_the_folder_with_patients(tmp_path):
    images = images_table(30)
    report = metrics_report(images, bootstrap=100)
    studies_meta = pd.DataFrame({"study": [f"study{i}" for i in range(30)],
                                 "patient": [f"patient{i // 2:05d}" for i in range(30)]})
    paths = pd.Series([f"img{i}.png" for i in range(len(images))])
    write_run_outputs(tmp_path, report, images, studies_meta, paths, 0.5, "Evaluation", "val", ["best.ckpt"])
    for name in ("metrics.json", "predictions.csv", "predictions_images.csv", "predictions_official.csv", "report.md",
                 "report.html", "roc.png", "confusion.png", "calibration.png"):
        assert (tmp_path / name).stat().st_size > 0
    studies = pd.read_csv(tmp_path / "predictions.csv")
    assert list(studies["patient"]) == [f"patient{i // 2:05d}" for i in range(30)]  # MURA's ids, not the index
    assert "percentile bootstrap over patients (100 replicates" in (tmp_path / "report.md").read_text()


def test_importing_the_report_leaves_matplotlib_alone():
    # matplotlib.use() in library code would switch Jupyter's inline backend off; pyplot holds global state.
    code = ("import sys, matplotlib; import mura.evaluation.report; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], env={"MPLBACKEND": "svg", "PATH": ""}, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_confusion_counts_are_white_on_dark_cells(tmp_path, saved_figures):
    labels = np.r_[np.zeros(52), np.ones(48)].astype(int)
    probabilities = np.r_[np.full(50, 0.1), np.full(2, 0.9), np.full(3, 0.1), np.full(45, 0.9)]
    studies = pd.DataFrame({"body_part": "XR_WRIST", "label": labels, "probability": probabilities})
    plot_confusion(studies, 0.5, tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 0
    overall = saved_figures[0].axes[0]
    colours = {text.get_text(): text.get_color() for text in overall.texts}
    assert colours == {"50": "white", "45": "white", "2": "black", "3": "black"}
    assert overall.images[0].get_clim() == (0, 50)


@pytest.mark.parametrize(("parts", "panels", "grid"), [(1, 2, (1, 2)), (7, 8, (2, 4))])
def test_confusion_figure_is_laid_out_for_its_panels(tmp_path, saved_figures, parts: int, panels: int, grid):
    """Overall and one panel per body part, at most four a row: one body part is two panels side by side, with no
    empty half of the canvas beside them."""
    names = ["XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST"][:parts]
    studies = pd.DataFrame({"body_part": np.repeat(names, 4), "label": np.tile([0, 0, 1, 1], parts),
                            "probability": np.tile([0.1, 0.7, 0.3, 0.9], parts)})
    plot_confusion(studies, 0.5, tmp_path / "confusion.png")
    figure = saved_figures[0]
    assert [axis.get_title() for axis in figure.axes] == ["overall", *names]  # every axis a panel: none left blank
    assert tuple(figure.get_size_inches()) == (3 * grid[1], 3 * grid[0])
    columns = sorted({round(axis.get_position().x0, 3) for axis in figure.axes})
    assert len(columns) == grid[1] and len(figure.axes) == panels


def test_roc_curves_that_coincide_stay_distinguishable(tmp_path, saved_figures):
    studies = pd.DataFrame({
        "body_part": np.repeat(["XR_ELBOW", "XR_HAND", "XR_WRIST"], 6),
        "label": np.tile([0, 0, 0, 1, 1, 1], 3),
        "probability": np.tile([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], 3),  # AUROC 1.0 for every part: the same curve
    })
    plot_roc(studies, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 0
    lines = [line for line in saved_figures[0].axes[0].get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label().split(" ")[0] for line in lines] == ["XR_ELBOW", "XR_HAND", "XR_WRIST", "overall"]
    parts, overall = lines[:-1], lines[-1]
    assert len({(line.get_color(), str(line.get_linestyle())) for line in parts}) == 3
    widths = [line.get_linewidth() for line in lines]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 4  # each wider than what is drawn on it
    assert overall.get_color() == "black" and overall.get_zorder() > max(line.get_zorder() for line in parts)


def test_intervals_with_negative_ends_read_as_ranges():
    report = metrics_report(images_table(), bootstrap=0)
    report["study"]["overall"]["kappa_ci95"] = [-0.258, 0.674]
    assert metrics_table(report, "study").iloc[-1]["kappa 95% CI"] == "-0.258 to 0.674"  # not "-0.258-0.674"


def test_calibration_section_in_the_markdown_report():
    report = metrics_report(images_table(), bootstrap=0)
    table = calibration_table(report)
    assert list(table.columns) == ["body part", "studies", "study ECE", "study Brier", "images", "image ECE", "image Brier"]
    assert list(table["body part"]) == [*PARTS, "overall"]
    overall = table.set_index("body part").loc["overall"]
    assert overall["study ECE"] == f"{report['study']['overall']['ece']:.3f}"
    assert overall["image Brier"] == f"{report['image']['overall']['brier']:.3f}"
    assert overall["images"] == report["image"]["overall"]["n"]
    markdown = report_markdown(report_content(report, "Evaluation", "val", ["best.ckpt"], threshold=0.5))
    assert "## Calibration" in markdown and "| study ECE" in markdown
    assert "15 equal-width bins" in markdown and "BinaryCalibrationError, L1 norm" in markdown and "Brier" in markdown


def test_reliability_diagram_per_body_part_with_bin_counts(tmp_path, saved_figures):
    studies = aggregate_studies(images_table(120, seed=3))
    report = metrics_report(images_table(120, seed=3), bootstrap=0)
    plot_calibration(studies, report["study"], tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").stat().st_size > 0
    axes = saved_figures[0].axes
    assert len(axes) == 2 * (1 + len(PARTS))  # a reliability panel and a histogram for overall and each part
    groups = [("overall", studies), *studies.groupby("body_part")]
    for (name, frame), reliability, counts in zip(groups, axes[0::2], axes[1::2], strict=True):
        assert reliability.get_title() == f"{name} (n={len(frame)}, ECE {report['study'][name]['ece']:.3f})"  # metrics.json's
        bins = reliability_bins(frame["label"].to_numpy(), frame["probability"].to_numpy())
        diagonal, model = reliability.get_lines()
        assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
        filled = bins[bins["count"] > 0]
        assert np.allclose(model.get_xdata(), filled["mean_probability"]) and np.allclose(model.get_ydata(), filled["fraction_abnormal"])
        assert [patch.get_height() for patch in counts.patches] == list(bins["count"])
        assert sum(int(text.get_text()) for text in counts.texts if text.get_text()) == len(frame)  # counts written


def synthetic_valid_images(root: Path, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """The image table, study table and paths of the official valid split of a (synthetic) release, scored by chance."""
    index = build_index(root)
    valid = index[index["split"] == "valid"].reset_index(drop=True)
    valid["study_idx"] = pd.factorize(valid["study"])[0]
    rng = np.random.default_rng(seed)
    probability = np.clip(rng.normal(0.35 + 0.3 * valid["label"], 0.25), 0.01, 0.99)
    images = pd.DataFrame({"image_idx": valid.index, "study_idx": valid["study_idx"], "patient": valid["patient"],
                           "body_part": valid["body_part"], "label": valid["label"], "logit": 0.0, "probability": probability})
    studies_meta = valid.groupby("study_idx").agg(study=("study", "first"), patient=("patient", "first"))
    return images, studies_meta, valid["path"]


def test_official_predictions_scored_against_the_official_labels_give_our_kappa(synthetic_root, tmp_path):
    images, studies_meta, paths = synthetic_valid_images(synthetic_root)
    report = metrics_report(images, bootstrap=0)
    write_run_outputs(tmp_path, report, images, studies_meta, paths, 0.5, "Evaluation", "valid", ["best.ckpt"])
    lines = (tmp_path / "predictions_official.csv").read_text().splitlines()
    assert len(lines) == len(studies_meta) and all(line.split(",")[0].endswith("/") for line in lines)
    assert all(line.startswith("MURA-v1.1/valid/XR_") and line[-2:] in (",0", ",1") for line in lines)  # no header
    # What Stanford's evaluation does: join the submission with valid_labeled_studies.csv on the study path.
    submitted = pd.read_csv(tmp_path / "predictions_official.csv", header=None, names=["study", "prediction"])
    official = pd.read_csv(synthetic_root / "valid_labeled_studies.csv", header=None, names=["study", "label"])
    joined = official.merge(submitted, on="study", how="inner", validate="one_to_one")
    assert len(joined) == len(official) == len(submitted)  # every labelled study, spelled as the official CSV does
    kappa = json.loads((tmp_path / "metrics.json").read_text())["study"]["overall"]["kappa"]
    assert cohen_kappa_score(joined["label"], joined["prediction"]) == pytest.approx(kappa, abs=1e-12)
    assert joined["prediction"].nunique() == 2  # a kappa of two raters who both vary, not a degenerate 0


def test_write_official_predictions_holds_decisions_only(tmp_path):
    studies = pd.DataFrame({"study": ["valid/XR_HAND/patient1/study1_negative"], "prediction": [0.4]})
    with pytest.raises(ValueError, match="0 or 1"):
        write_official_predictions(tmp_path / "p.csv", studies)
    given = pd.DataFrame({"study": ["scans/a,b", "/abs/case2/"], "prediction": [1, 0]})
    write_official_predictions(tmp_path / "p.csv", given, root_name=None)
    assert list(csv.reader((tmp_path / "p.csv").open())) == [["scans/a,b/", "1"], ["/abs/case2/", "0"]]
    assert official_study_path("valid/XR_WRIST/patient11185/study1_positive") == (
        "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/")


def test_submission_paths_of_predicted_folders(tmp_path):
    release = tmp_path / "MURA-v1.1" / "valid" / "XR_WRIST" / "patient11185" / "study1_positive"
    scans = tmp_path / "scans" / "case1"
    for folder in (release, scans):
        folder.mkdir(parents=True)
        (folder / "image1.png").write_bytes(b"")
    # Inside a MURA-shaped tree: spelled as the official CSVs do, whatever the input was.
    for given in (tmp_path / "MURA-v1.1", tmp_path / "MURA-v1.1" / "valid", release, release / "image1.png"):
        study = release / "image1.png" if given.is_file() else release
        assert submission_study_path(study, given) == "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/"
    # Elsewhere: relative to the folder holding the input; an image stands for its folder.
    assert submission_study_path(scans, tmp_path / "scans") == "scans/case1/"
    assert submission_study_path(scans, scans) == "case1/"
    assert submission_study_path(scans / "image1.png", scans / "image1.png") == "case1/"
    assert submission_study_path(scans, "/elsewhere/input") == f"{scans.as_posix()}/"  # not under the input: as given
