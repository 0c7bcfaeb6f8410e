"""report.html: a run's results in one self-contained file that opens in any browser, without a server or the run
folder: the tables, the figures as base64 data URIs, the CSS inline, no JavaScript and no external resources.

The tables and notes come in as plain arguments (`ReportContent`); the figures are whatever the run folder holds
when it is written: roc.png, confusion.png, calibration.png, and for a training run curves.png, split_table.csv and
the final Grad-CAM gallery (gradcam/final/*.png).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

import pandas as pd

REPORT_HTML = "report.html"
SPLIT_TABLE = "split_table.csv"
GALLERY_DIR = Path("gradcam") / "final"


@dataclass(frozen=True)
class ReportContent:
    """What a report says, built by `mura.evaluation.report`: its identity, tables and the sentences beside them."""

    title: str
    split_description: str
    checkpoints: list[str]
    threshold: float
    comparison: pd.DataFrame
    comparison_note: str
    interval_note: str
    study_table: pd.DataFrame
    image_table: pd.DataFrame
    views_table: pd.DataFrame  # study metrics by number of views (empty for a report of an earlier version)
    calibration_table: pd.DataFrame
    calibration_note: str


@dataclass(frozen=True)
class RunFigure:
    """A PNG of the run folder and what it shows."""

    file: str
    caption: str


STUDY_FIGURES = (
    RunFigure("roc.png", "Study-level ROC curves per body part and overall (AUROC and number of studies in the legend)."),
    RunFigure("confusion.png", "Study-level confusion matrices at the decision threshold, overall and per body part."),
)
CALIBRATION_FIGURE = RunFigure(
    "calibration.png",
    "Study-level reliability diagrams: fraction of abnormal studies against mean p(abnormal) per bin (points on the "
    "dotted diagonal are perfectly calibrated); the bars underneath count the studies in each bin.",
)
CURVES_FIGURE = RunFigure(
    "curves.png",
    "Learning curves, training against validation, per epoch (the overfitting onset is marked when there is one).",
)

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1f2328;
       margin: 0; background: #f6f8fa; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.4em; }
h2 { font-size: 1.3em; margin-top: 2em; padding-bottom: 0.25em; border-bottom: 1px solid #d0d7de; }
dl.identity { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0 0 1em; }
dl.identity dt { font-weight: 600; color: #57606a; }
dl.identity dd { margin: 0; overflow-wrap: anywhere; }
nav { font-size: 0.92em; margin: 0.5em 0 1em; }
nav a { margin-right: 1em; color: #0969da; text-decoration: none; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em;
       background: #f0f2f4; padding: 1px 4px; border-radius: 4px; }
p.note { color: #424a53; font-size: 0.92em; max-width: 72em; }
div.table { overflow-x: auto; margin: 0.6em 0; }
table { border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #d8dee4; white-space: nowrap; }
th { background: #f0f2f4; text-align: right; font-weight: 600; }
td { text-align: right; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f8f9fa; }
tbody tr:last-child td { font-weight: 600; }
table.split tbody tr:last-child td { font-weight: normal; }
table.split td:nth-child(2), table.split th:nth-child(2) { text-align: left; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
figure { margin: 1.2em 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { font-size: 0.88em; color: #57606a; margin-top: 0.3em; max-width: 72em; }
figure.gallery { margin: 0.6em 0 1.4em; }
figure.gallery figcaption { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.8em; }
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$tab</title>
<style>$style</style>
</head>
<body>
<main>
<h1>$title</h1>
$identity
$nav
$sections
</main>
</body>
</html>
""")


def png_data_uri(path: Path) -> str:
    """The PNG's bytes as a `data:image/png;base64,...` URI: the page carries the image itself."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def text_html(text: str) -> str:
    """Escaped text, with `backticked` names set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def table_html(frame: pd.DataFrame, css_class: str = "metrics") -> str:
    return f'<div class="table">{frame.to_html(escape=True, index=False, border=0, classes=css_class, na_rep="n/a")}</div>'


def figure_html(path: Path, caption: str, css_class: str = "") -> str:
    """The PNG embedded, at most its own size and never wider than the page, with its caption."""
    alt = html.escape(caption, quote=True)
    class_attribute = f' class="{css_class}"' if css_class else ""
    return (f'<figure{class_attribute}><img src="{png_data_uri(path)}" alt="{alt}">'
            f"<figcaption>{text_html(caption)}</figcaption></figure>")


@dataclass(frozen=True)
class Section:
    anchor: str
    label: str  # in the contents line
    heading: str
    body: list[str]

    def html(self) -> str:
        return (f'<section id="{self.anchor}">\n<h2>{html.escape(self.heading)}</h2>\n' + "\n".join(self.body)
                + "\n</section>")


def _present_figures(run_dir: Path, figures: Sequence[RunFigure]) -> list[str]:
    """figure_html of each of `figures` whose file the folder holds; an evaluation has no curves, a run cut short no
    calibration figure."""
    return [figure_html(run_dir / figure.file, figure.caption) for figure in figures if (run_dir / figure.file).is_file()]


def _note(text: str) -> str:
    return f'<p class="note">{text_html(text)}</p>'


def report_sections(content: ReportContent, run_dir: Path) -> list[Section]:
    """The sections in reading order, results first; a figure or table the folder lacks is left out, and so is a
    section left empty."""
    run_dir = Path(run_dir)
    sections = [
        Section("comparison", "Kappa vs the paper", "Study-level Cohen's kappa beside Stanford's model and radiologists", [
            table_html(content.comparison), _note(content.comparison_note), _note(content.interval_note),
        ]),
        Section("study", "Study level", "Study level", [
            table_html(content.study_table),
            *_present_figures(run_dir, STUDY_FIGURES),
        ]),
        Section("calibration", "Calibration", "Calibration: are the probabilities honest?", [
            table_html(content.calibration_table), _note(content.calibration_note),
            *_present_figures(run_dir, [CALIBRATION_FIGURE]),
        ]),
        Section("image", "Image level", "Image level", [
            _note("For comparison with image-level numbers such as the seed notebook's accuracy."),
            table_html(content.image_table),
        ]),
    ]
    if not content.views_table.empty:  # after the study level (a report of an earlier version has none)
        sections.insert(2, Section("views", "By views", "Study level by number of views", [
            _note("A study is abnormal when any of its views shows it; a model that fails on single-view studies shows "
                  "it here, whatever its overall numbers."),
            table_html(content.views_table),
        ]))
    training = []
    if (run_dir / SPLIT_TABLE).is_file():
        split = pd.read_csv(run_dir / SPLIT_TABLE, keep_default_na=False)
        split.columns = [str(column).replace("_", " ") for column in split.columns]  # body_part -> body part
        training += ["<h3>Splits</h3>",
                     _note("Training and validation patients are carved out of the official train split; the test split "
                           "is the official valid split. One row per body part and an `all` row per split."),
                     table_html(split, "split")]
    curves = _present_figures(run_dir, [CURVES_FIGURE])
    if curves:
        training += ["<h3>Learning curves</h3>", *curves]
    if training:
        sections.append(Section("training", "Data and training", "Data and training", training))
    gallery = sorted((run_dir / GALLERY_DIR).glob("*.png"))
    if gallery:
        sections.append(Section("gradcam", "Grad-CAM", "Grad-CAM gallery of the tested weights", [
            _note(f"{len(gallery)} validation studies, normal and abnormal: each view with its Grad-CAM heat map, the "
                  f"true label and the predicted probabilities (files in `{GALLERY_DIR.as_posix()}/`). Each view's "
                  "colours are scaled to that view's own maximum: red marks where the model found most evidence for "
                  "abnormal in it, at any p(abnormal), so a normal study has red places too; p(abnormal) says how "
                  "sure the model is."),
            *(figure_html(path, path.name, "gallery") for path in gallery),
        ]))
    return sections


def report_html(content: ReportContent, run_dir: Path) -> str:
    """The whole page, as a string."""
    sections = report_sections(content, run_dir)
    checkpoints = "<br>".join(f"<code>{html.escape(path)}</code>" for path in content.checkpoints) or "none"
    identity = (
        '<dl class="identity">'
        f"<dt>Evaluated on</dt><dd>{text_html(content.split_description)}</dd>"
        f"<dt>Checkpoint{'s' if len(content.checkpoints) > 1 else ''}</dt><dd>{checkpoints}</dd>"
        f"<dt>Decision threshold</dt><dd>a study is abnormal when the mean of its images' p(abnormal) exceeds "
        f"{content.threshold:g}</dd>"
        "</dl>"
    )
    nav = "<nav>Contents: " + "".join(f'<a href="#{section.anchor}">{html.escape(section.label)}</a>'
                                      for section in sections) + "</nav>"
    # The page shows its title once, in the heading; the browser's tab names the run folder instead, which also tells
    # apart the tabs of several runs' reports (every training run's title is the same).
    tab = f"{'/'.join(Path(run_dir).resolve().parts[-2:])}: MURA report"
    return PAGE.substitute(title=html.escape(content.title), tab=html.escape(tab), style=STYLE, identity=identity,
                           nav=nav, sections="\n".join(section.html() for section in sections))


def write_report_html(run_dir: Path, content: ReportContent) -> Path:
    """`run_dir/report.html`, from `content` and the figures the folder holds now."""
    path = Path(run_dir) / REPORT_HTML
    path.write_text(report_html(content, run_dir), encoding="utf-8")
    return path
