from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mura.evaluation.metrics import metrics_report
from mura.evaluation.report import (
    comparison_table,
    metrics_table,
    plot_confusion,
    plot_roc,
    report_markdown,
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
    return f"{values[0]:.3f}-{values[1]:.3f}"


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
    markdown = report_markdown(report, "Evaluation", "the validation split", ["best.ckpt"])
    assert "95% CIs: percentile bootstrap over patients (300 replicates; a patient's studies are resampled together" in markdown
    assert "kappa ± 1.96 SE as `kappa_ci95_se`" in markdown
    assert "no disagreement to resample" in markdown and "not certainty" in markdown
    assert "Zero-width intervals in this report: study XR_FINGER kappa, study XR_FINGER AUROC" in markdown
    assert "study XR_WRIST" not in markdown and "| kappa 95% CI" in markdown
    plain = report_markdown(metrics_report(images_table(), bootstrap=0), "Evaluation", "val", ["best.ckpt"])
    assert "none computed" in plain and "percentile bootstrap" not in plain and "Zero-width" not in plain


def test_write_run_outputs_writes_the_folder_with_patients(tmp_path):
    images = images_table(30)
    report = metrics_report(images, bootstrap=100)
    studies_meta = pd.DataFrame({"study": [f"study{i}" for i in range(30)],
                                 "patient": [f"patient{i // 2:05d}" for i in range(30)]})
    paths = pd.Series([f"img{i}.png" for i in range(len(images))])
    write_run_outputs(tmp_path, report, images, studies_meta, paths, 0.5, "Evaluation", "val", ["best.ckpt"])
    for name in ("metrics.json", "predictions.csv", "predictions_images.csv", "report.md", "roc.png", "confusion.png"):
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


@pytest.fixture
def saved_figures(monkeypatch) -> list[Figure]:
    figures, save = [], Figure.savefig

    def capture(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figures


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
