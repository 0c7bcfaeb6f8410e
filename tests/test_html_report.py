"""report.html: one self-contained file, every figure embedded, every table present, nothing fetched."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mura.evaluation.html_report import report_html
from mura.evaluation.metrics import metrics_report
from mura.evaluation.report import report_content, write_run_outputs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARTS = ("XR_ELBOW", "XR_HAND")


class Page(HTMLParser):
    """What a browser would load or link: every tag with its attributes, the tables' cells, the text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def attributes(self, name: str) -> list[str]:
        return [attrs[name] for _, attrs in self.tags if attrs.get(name) is not None]

    def images(self) -> list[bytes]:
        decoded = []
        for tag, attrs in self.tags:
            if tag == "img":
                prefix, _, payload = attrs["src"].partition(",")
                assert prefix == "data:image/png;base64", prefix[:40]
                decoded.append(base64.b64decode(payload, validate=True))
        return decoded

    def table_with_header(self, first_column: str) -> list[list[str]]:
        return next(table for table in self.tables if table[0][0] == first_column)


def images_table(n_studies: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for study in range(n_studies):
        label, part = int(rng.random() < 0.45), PARTS[study % len(PARTS)]
        for _ in range(int(rng.integers(1, 4))):
            probability = float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0.01, 0.99))
            rows.append((len(rows), study, study // 2, part, label, 0.0, probability))
    return pd.DataFrame(rows, columns=["image_idx", "study_idx", "patient", "body_part", "label", "logit", "probability"])


def save_png(path: Path, text: str) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(2, 1))
    figure.text(0.5, 0.5, text)
    figure.savefig(path, dpi=50)
    return path.read_bytes()


def write_outputs(run_dir: Path, title: str = "Test results after training", bootstrap: int = 100) -> dict:
    images = images_table()
    report = metrics_report(images, bootstrap=bootstrap)
    studies_meta = pd.DataFrame({"study": [f"valid/{PARTS[i % 2]}/patient{i // 2:05d}/study1_positive" for i in range(40)],
                                 "patient": [f"patient{i // 2:05d}" for i in range(40)]})
    paths = pd.Series([f"img{i}.png" for i in range(len(images))])
    write_run_outputs(run_dir, report, images, studies_meta, paths, 0.5, title, "the test split (official valid) of /data",
                      ["/runs/a/checkpoints/best.ckpt (epoch 3)", "/runs/b/checkpoints/best.ckpt"])
    return report


@pytest.fixture
def training_run(tmp_path) -> tuple[Path, dict, dict[str, bytes]]:
    """A training run's folder as mura.train leaves it when the test outputs are written: learning curves, the split
    table and the final Grad-CAM gallery are already there."""
    pictures = {
        "curves.png": save_png(tmp_path / "curves.png", "curves"),
        "gradcam/final/XR_ELBOW_patient00001_study1_negative.png": save_png(
            tmp_path / "gradcam/final/XR_ELBOW_patient00001_study1_negative.png", "normal elbow"),
        "gradcam/final/XR_HAND_patient00002_study1_positive.png": save_png(
            tmp_path / "gradcam/final/XR_HAND_patient00002_study1_positive.png", "abnormal hand"),
    }
    save_png(tmp_path / "gradcam/epoch_000/XR_HAND_patient00002_study1_positive.png", "an earlier epoch")
    pd.DataFrame({"split": ["train", "train", "test"], "body_part": ["XR_ELBOW", "all", "all"], "images": [10, 20, 5],
                  "studies": [4, 8, 2], "patients": [3, 6, 2], "abnormal_studies_pct": [25.0, 37.5, 50.0]}
                 ).to_csv(tmp_path / "split_table.csv", index=False)
    report = write_outputs(tmp_path)
    for name in ("roc.png", "confusion.png", "calibration.png"):
        pictures[name] = (tmp_path / name).read_bytes()
    return tmp_path, report, pictures


def test_every_figure_of_the_run_is_embedded_as_a_png(training_run):
    run_dir, _, pictures = training_run
    page = Page((run_dir / "report.html").read_text(encoding="utf-8"))
    embedded = page.images()
    assert all(image.startswith(PNG_SIGNATURE) for image in embedded)
    # Each figure of the folder exactly once (the gallery: the final one only, not earlier epochs').
    assert sorted(embedded) == sorted(pictures.values())
    alts = page.attributes("alt")
    assert "XR_HAND_patient00002_study1_positive.png" in alts and len(alts) == len(embedded)


def test_nothing_is_fetched_from_a_file_or_the_network(training_run):
    run_dir, _, _ = training_run
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert not {"script", "link", "iframe", "object", "embed", "base"} & {tag for tag, _ in page.tags}
    assert all(src.startswith("data:image/png;base64,") for src in page.attributes("src"))
    ids = set(page.attributes("id"))
    hrefs = page.attributes("href")
    assert hrefs and all(href.startswith("#") and href[1:] in ids for href in hrefs)  # in-page contents links only
    assert not re.search(r"url\(|@import|https?://", text)  # the inline CSS loads nothing either
    assert not page.attributes("srcset") and not page.attributes("poster")


def test_every_table_and_the_run_identity_are_there(training_run):
    run_dir, report, _ = training_run
    page = Page((run_dir / "report.html").read_text(encoding="utf-8"))
    comparison = page.table_with_header("study type")
    assert comparison[0] == ["study type", "studies", "this model", "paper model", "radiologist 1", "radiologist 2",
                             "radiologist 3"]
    overall = report["study"]["overall"]
    low, high = overall["kappa_ci95"]
    assert comparison[-1][:4] == ["overall", str(overall["n"]), f"{overall['kappa']:.3f} ({low:.3f} to {high:.3f})",
                                  "0.705 (0.700 to 0.710)"]
    for level in ("study", "image"):
        table = page.table_with_header(level)
        assert [row[0] for row in table[1:]] == [*PARTS, "overall"]
        assert table[-1][1] == str(report[level]["overall"]["n"]) and table[0][3] == "kappa 95% CI"
    calibration = page.table_with_header("body part")
    assert calibration[-1] == ["overall", str(overall["n"]), f"{overall['ece']:.3f}", f"{overall['brier']:.3f}",
                               str(report["image"]["overall"]["n"]), f"{report['image']['overall']['ece']:.3f}",
                               f"{report['image']['overall']['brier']:.3f}"]
    split = page.table_with_header("split")
    assert split[0] == ["split", "body part", "images", "studies", "patients", "abnormal studies pct"]
    assert split[1:] == [["train", "XR_ELBOW", "10", "4", "3", "25.0"], ["train", "all", "20", "8", "6", "37.5"],
                         ["test", "all", "5", "2", "2", "50.0"]]
    views = page.table_with_header("views")
    assert views[0][:3] == ["views", "n", "kappa"] and views[-1][0] == "overall"
    assert sum(int(row[1]) for row in views[1:-1]) == overall["n"]  # every study in one views group
    assert len(page.tables) == 6
    text = " ".join(" ".join(page.text).split())
    assert "Test results after training" in text and "the test split (official valid) of /data" in text
    assert "/runs/a/checkpoints/best.ckpt (epoch 3)" in text and "/runs/b/checkpoints/best.ckpt" in text
    assert "percentile bootstrap over patients (100 replicates" in text  # the CI method, as in report.md
    assert "15 equal-width bins" in text


def test_the_title_is_shown_once_and_the_tab_names_the_run(tmp_path):
    """The heading shows the title; the browser's tab, the run folder (every training run's title is the same)."""
    run_dir = tmp_path / "train" / "2025-01-02_03-04-05"
    content = report_content(metrics_report(images_table(), bootstrap=0), "Test results after training", "the test split",
                             ["best.ckpt"], 0.5)
    text = report_html(content, run_dir)
    words = " ".join(" ".join(Page(text).text).split())
    assert words.count("Test results after training") == 1
    assert re.search(r"<h1>(.*?)</h1>", text).group(1) == "Test results after training"
    assert re.search(r"<title>(.*?)</title>", text).group(1) == "train/2025-01-02_03-04-05: MURA report"


def test_an_evaluation_folder_shows_what_it_has_and_text_is_escaped(tmp_path):
    write_outputs(tmp_path, title="Evaluation <script>alert(1)</script> & co", bootstrap=0)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert "script" not in {tag for tag, _ in page.tags}
    assert "Evaluation <script>alert(1)</script> & co" in " ".join(page.text)  # shown as text, not run
    assert len(page.images()) == 3  # roc, confusion, calibration: no curves, no gallery in an evaluation folder
    assert {"comparison", "study", "views", "calibration", "image"} == set(page.attributes("id"))
    assert len(page.tables) == 5 and "none computed" in " ".join(page.text)
