"""Writes the three notebooks from the cells below, without outputs: `python notebooks/make_notebooks.py`.

Notebooks are thin: every step is a call into the package. They read their inputs from environment variables
(MURA_ROOT, MURA_RUN_DIR, MURA_EVAL_DIR) or fall back to the newest run under outputs/.

A cell that draws starts with FIGURE (`# figure`): tests/test_notebooks.py checks that each such cell shows an image
when the notebook runs in a Jupyter kernel. The package draws on bare matplotlib `Figure`s (no backend, no pyplot);
the notebooks `display` them, which needs the inline backend (`%matplotlib inline`).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
FIGURE = "# figure\n"  # the first line of every cell that draws

SETUP = '''%matplotlib inline
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
'''

NEWEST_RUN = '''

def newest_run(task: str) -> Path | None:
    """The newest run folder of a task under outputs/ that finished (it has metrics.json)."""
    runs = sorted(Path("../outputs").glob(f"{task}/*/metrics.json"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None
'''

NOTEBOOKS = {
    "01_data.ipynb": [
        new_markdown_cell("# MURA data: splits, examples, edge cases\n\nSet `MURA_ROOT` to a MURA-v1.1 folder "
                          "(default: the synthetic tree that `make demo` generates)."),
        new_code_cell(SETUP + '''
from mura.data.audit import audit_release
from mura.data.images import load_grayscale
from mura.data.index import build_index
from mura.data.split import assign_splits, split_table

root = Path(os.environ.get("MURA_ROOT", "../data/synthetic/MURA-v1.1"))
table = build_index(root)
splits = assign_splits(table, val_fraction=0.1, seed=12345)
split_table(splits)'''),
        new_markdown_cell("## Normal and abnormal examples per body part"),
        new_code_cell(FIGURE + '''parts = sorted(splits["body_part"].unique())
figure, axes = plt.subplots(2, len(parts), figsize=(2.2 * len(parts), 5), squeeze=False)
for column, part in enumerate(parts):
    for row, label in enumerate((0, 1)):
        candidates = splits[(splits["body_part"] == part) & (splits["label"] == label)]
        axis = axes[row][column]
        axis.axis("off")
        if len(candidates):
            axis.imshow(load_grayscale(root / candidates["path"].iloc[0]), cmap="gray", vmin=0, vmax=255)
            axis.set_title(f"{part[3:].lower()} {'abnormal' if label else 'normal'}", fontsize=8)
figure.tight_layout()'''),
        new_markdown_cell("## The audit: inconsistent data and edge cases, found by rule"),
        new_code_cell(FIGURE + '''audit = audit_release(root, progress=False)
problems = pd.DataFrame(audit["problems"])
display(pd.Series(audit["summary"], name="count").to_frame())
examples = problems[problems["kind"].isin(["inverted_image", "near_blank_image", "duplicate_image"])].drop_duplicates("kind")
figure, axes = plt.subplots(1, max(1, len(examples)), figsize=(3 * max(1, len(examples)), 3), squeeze=False)
for axis, (_, problem) in zip(axes[0], examples.iterrows(), strict=False):
    axis.imshow(load_grayscale(root / problem["path"]), cmap="gray", vmin=0, vmax=255)  # as it is: no contrast stretch
    axis.set_title(problem["kind"], fontsize=9)
    axis.axis("off")'''),
    ],
    "02_results.ipynb": [
        new_markdown_cell("# Results: learning curves, overfitting, comparison with Stanford's model and radiologists\n\n"
                          "`MURA_RUN_DIR`: a training run folder (default: the newest under outputs/). `MURA_EVAL_DIR`: an "
                          "evaluation folder, e.g. the wrist model on all body parts (optional)."),
        new_code_cell('''%matplotlib inline
import json
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from mura.callbacks.curves import curves_figure
from mura.evaluation.report import comparison_table, metrics_table
''' + NEWEST_RUN + '''
run_dir = Path(os.environ.get("MURA_RUN_DIR") or newest_run("demo") or newest_run("train"))
print("run folder:", run_dir.resolve())
hydra_dir = run_dir / ".hydra"  # what `python -m mura.train` recorded about the run
if (hydra_dir / "hydra.yaml").is_file():
    # Hydra's own record of the run: the config group choices it composed (experiment among them) and the overrides
    recorded = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
    task = OmegaConf.load(hydra_dir / "config.yaml").get("task_name")
    experiment = recorded.runtime.choices.get("experiment")
    overrides = " ".join(recorded.overrides.task) or "-"
    print(f"task: {task}, experiment: {experiment or '- (none)'}, overrides: {overrides}")
else:
    print("no .hydra/hydra.yaml in it: its task and experiment were not recorded")
history = json.loads((run_dir / "history.json").read_text())
pd.DataFrame(history).set_index("epoch").round(3)'''),
        new_markdown_cell("## Learning curves and the train-validation gap"),
        new_code_cell(FIGURE + '''figure, onset = curves_figure(history)  # as the run's curves.png, drawn from its history.json
print("overfitting starts after epoch", onset if onset is not None else "- (not seen)")
display(figure)'''),
        new_markdown_cell("## Study-level kappa beside the paper (its numbers are on the hidden test set)"),
        new_code_cell('''report = json.loads((run_dir / "metrics.json").read_text())
comparison_table(report)'''),
        new_code_cell('''metrics_table(report, "image")  # image level: what the seed notebook reported (as accuracy)'''),
        new_markdown_cell("## A model evaluated on other body parts (the seed's 'wrist model on every body part')"),
        new_code_cell('''eval_dir = os.environ.get("MURA_EVAL_DIR")
if eval_dir:
    display(metrics_table(json.loads((Path(eval_dir) / "metrics.json").read_text()), "study"))
else:
    print("set MURA_EVAL_DIR to a `python -m mura.evaluate ... data.body_parts=all` run folder")'''),
    ],
    "03_explainability.ipynb": [
        new_markdown_cell("# Explainability: Grad-CAM over validation studies\n\n`MURA_RUN_DIR`: a training run folder; "
                          "`MURA_ROOT`: its data root."),
        new_code_cell('''%matplotlib inline
import os
from pathlib import Path

import pandas as pd

from mura.data.images import load_grayscale
from mura.inference.explain import study_heatmap_figure
from mura.models.checkpoint import load_classifier
''' + NEWEST_RUN + '''
run_dir = Path(os.environ.get("MURA_RUN_DIR") or newest_run("demo") or newest_run("train"))
root = Path(os.environ.get("MURA_ROOT", "../data/synthetic/MURA-v1.1"))
model = load_classifier(run_dir / "checkpoints" / "best.ckpt")
splits = pd.read_csv(run_dir / "splits.csv")'''),
        new_markdown_cell("Each map is drawn over the radiograph in its own proportions, whichever resize mode (squash or "
                          "pad) the checkpoint was trained with. Colours are scaled within each view: 1 marks where "
                          "that view's evidence for abnormal is strongest, however low its p(abnormal)."),
        new_code_cell(FIGURE + '''val = splits[splits["split"] == "val"]
studies = [val[val["label"] == label]["study"].iloc[0] for label in (0, 1) if (val["label"] == label).any()]
for study in studies:
    views = val[val["study"] == study].head(4)
    raw = [load_grayscale(root / path) for path in views["path"]]
    truth = "abnormal" if views["label"].iloc[0] else "normal"
    # The checkpoint's own preprocessing and resize mode make the network's input (as in the gallery and mura.predict)
    figure, _ = study_heatmap_figure(model, raw, f"{study} (truth: {truth}), p(abnormal) = {{probability:.2f}}")
    display(figure)'''),
    ],
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        nbformat.write(notebook, HERE / name)


if __name__ == "__main__":
    main()
