from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mura.callbacks import timing
from mura.callbacks.curves import curves_figure, draw_curves, overfitting_onset
from mura.callbacks.gradcam import choose_gallery_studies
from mura.callbacks.timing import RunTimings, process_start_time
from mura.data.index import BODY_PARTS
from mura.inference.explain import gradcam_maps
from mura.models.backbones import build_backbone


def test_overfitting_onset_is_the_best_epoch_once_the_gap_opens():
    train = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3]
    val = [1.0, 0.85, 0.7, 0.75, 0.8, 0.9]
    assert overfitting_onset(train, val) == 2
    assert overfitting_onset(train, [1.0, 0.8, 0.7, 0.6, 0.55, 0.5]) is None  # still improving
    assert overfitting_onset(train, [1.0, 0.8, 0.7, 0.701, 0.702, 0.701]) is None  # a plateau is not overfitting


def test_curves_png_is_drawn_and_marks_the_onset(tmp_path: Path):
    history = [{"epoch": e, "train/loss": t, "val/loss": v, "train/study/kappa": 0.1 * e, "val/study/kappa": 0.05 * e}
               for e, (t, v) in enumerate(zip([1.0, 0.8, 0.6, 0.5, 0.4, 0.3], [1.0, 0.85, 0.7, 0.75, 0.8, 0.9], strict=True))]
    path = tmp_path / "curves.png"
    assert draw_curves(history, path) == 2
    with Image.open(path) as image:
        assert image.size[0] > image.size[1] > 100
    figure, onset = curves_figure(history)  # what draw_curves saved
    assert onset == 2
    for axis in figure.axes:  # the onset is marked on every panel
        marks = [line for line in axis.get_lines() if line.get_label() == "overfitting starts"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]
    improving, none = curves_figure(history[:3])
    assert none is None
    assert [line for axis in improving.axes for line in axis.get_lines() if line.get_label() == "overfitting starts"] == []


@pytest.mark.parametrize("train_mode", [True, False])
def test_gradcam_works_inside_inference_mode_and_restores_the_mode(train_mode: bool):
    torch.manual_seed(0)
    network = build_backbone("densenet_small", in_channels=1, image_size=64)
    network.train(train_mode)
    images = torch.randn(3, 1, 64, 64)
    with torch.inference_mode():  # as in Lightning's validation loop
        maps, probabilities = gradcam_maps(network, images)
    assert network.training is train_mode
    assert maps.shape == (3, 64, 64) and np.all((maps >= 0) & (maps <= 1))
    assert probabilities.shape == (3,) and np.all((probabilities > 0) & (probabilities < 1))
    assert maps.reshape(3, -1).std(axis=1).min() > 0  # a real map, not a constant


STUDY_TITLE = "XR_SHOULDER patient11184: truth abnormal, study p(abnormal) = 0.53 (best.ckpt, epoch 17) " * 2
WIDE_TITLE = "WWWWMMMM" * 25  # a user's folder name of wide glyphs and no spaces


@pytest.mark.parametrize(("views", "title"), [(1, STUDY_TITLE), (2, STUDY_TITLE), (5, STUDY_TITLE), (1, WIDE_TITLE)])
def test_a_study_figure_shows_every_view_whole_under_a_whole_title(views: int, title: str):
    """The fixed layout (no layout engine): the title, wrapped, and each view's title sit inside the figure, above
    the views; the views sit side by side inside the figure, none over another; the colour bar (its ticks and label)
    right of them and the scale note below them, inside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mura.inference.explain import overlay_figure

    radiographs = [np.full((64, 48), 100, dtype=np.uint8)] * views
    figure = overlay_figure(radiographs, np.zeros((views, 64, 48)), np.full(views, 0.5), title)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    canvas = figure.bbox
    suptitle = figure._suptitle.get_window_extent(renderer)
    assert len(figure._suptitle.get_text().splitlines()) >= (2 if views == 1 else 1)  # wrapped to the figure's width
    assert "".join(figure._suptitle.get_text().split()) == "".join(title.split())  # every character kept
    axes = sorted((axis for axis in figure.axes if axis.images), key=lambda axis: axis.get_position().x0)
    assert len(axes) == views
    [bar] = [axis for axis in figure.axes if not axis.images]
    [note] = [text for text in figure.texts if text is not figure._suptitle]
    bar_box, note_box = bar.get_tightbbox(renderer), note.get_window_extent(renderer)
    for box in (bar_box, note_box):
        assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1 and canvas.y0 <= box.y0 and box.y1 <= canvas.y1
    for axis in axes:
        panel, panel_title = axis.get_window_extent(renderer), axis.title.get_window_extent(renderer)
        for box in (panel, panel_title, suptitle):
            assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1 and canvas.y0 <= box.y0 and box.y1 <= canvas.y1
        assert panel.y1 <= panel_title.y0 and panel_title.y1 <= suptitle.y0  # views, their titles, the title: no overlap
        assert note_box.y1 <= panel.y0  # the note under the views
    for left, right in zip(axes, axes[1:], strict=False):  # neighbours
        assert left.get_window_extent(renderer).x1 <= right.get_window_extent(renderer).x0
    assert axes[-1].get_window_extent(renderer).x1 <= bar_box.x0


def test_every_heat_map_is_on_one_stated_scale():
    """Grad-CAM maps come scaled to each view's own maximum: the figure draws them all on 0-1, shows that scale in a
    colour bar, and says what 1 means (the strongest place of the view at any p(abnormal)), so red on a normal view
    at p = 0.47 reads for what it is."""
    from mura.inference.explain import overlay_figure

    maps = np.stack([np.linspace(0, 1, 64 * 48).reshape(64, 48), np.linspace(0, 0.3, 64 * 48).reshape(64, 48)])
    figure = overlay_figure([np.full((64, 48), 100, dtype=np.uint8)] * 2, maps, np.array([0.47, 0.2]), "study")
    heats = [axis.images[1] for axis in figure.axes if axis.images]
    assert len(heats) == 2 and all(heat.get_clim() == (0, 1) and heat.get_cmap().name == "jet" for heat in heats)
    [bar] = [heat.colorbar for heat in heats if heat.colorbar is not None]
    assert (bar.vmin, bar.vmax) == (0, 1) and bar.ax in figure.axes and "maximum" in bar.ax.get_ylabel()
    note = " ".join(" ".join(text.get_text() for text in figure.texts).split())
    assert "1 marks where that view's evidence for abnormal is strongest, however low its p(abnormal)" in note


@pytest.mark.parametrize("epochs", [1, 3])
def test_curves_count_whole_epochs(epochs: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    history = [{"epoch": e, "train/loss": 1 - 0.1 * e, "val/loss": 1 - 0.05 * e, "train/study/kappa": 0.1 * e,
                "val/study/kappa": 0.05 * e} for e in range(epochs)]
    figure, _ = curves_figure(history)
    FigureCanvasAgg(figure).draw()
    for axis in figure.axes:
        low, high = axis.get_xlim()
        shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
        assert shown and all(float(tick).is_integer() for tick in shown), (epochs, shown)


def validation_images(studies_per_label: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """Image rows of a validation split: per body part, (normal, abnormal) studies of two views each."""
    rows = []
    for part, counts in studies_per_label.items():
        for label, count in enumerate(counts):
            for number in range(count):
                study = f"MURA-v1.1/train/{part}/patient{label}{number:04d}/study1_{('negative', 'positive')[label]}/"
                rows += [{"path": f"{study}image{view}.png", "study": study, "view": view, "body_part": part,
                          "patient": f"patient{label}{number:04d}", "label": label} for view in (2, 1)]
    return pd.DataFrame(rows)


def studies_of(gallery: list[pd.DataFrame]) -> list[tuple[str, int, str]]:
    return [(study["body_part"].iloc[0], int(study["label"].iloc[0]), study["study"].iloc[0]) for study in gallery]


def test_gallery_shows_a_normal_and_an_abnormal_study_of_every_body_part():
    val = validation_images({part: (3, 2) for part in BODY_PARTS} | {"XR_HUMERUS": (2, 0)})
    gallery = choose_gallery_studies(val)
    chosen = studies_of(gallery)
    assert sorted((part, label) for part, label, _ in chosen) == sorted(
        [(part, 0) for part in BODY_PARTS] + [(part, 1) for part in BODY_PARTS if part != "XR_HUMERUS"])
    assert [label for _, label, _ in chosen] == sorted(label for _, label, _ in chosen)  # normal ones first
    assert all(study["view"].tolist() == [1, 2] for study in gallery)  # every view of the study, in order
    # The same studies whatever the order of the rows: the first of each part and class by study path.
    assert studies_of(choose_gallery_studies(val.sample(frac=1, random_state=0))) == chosen
    assert all(study == min(val.loc[(val["body_part"] == part) & (val["label"] == label), "study"])
               for part, label, study in chosen)


def test_gallery_takes_more_studies_per_part_and_caps_each_class_over_the_parts():
    val = validation_images({part: (3, 2) for part in BODY_PARTS})
    two_each = studies_of(choose_gallery_studies(val, studies_per_part=2))
    assert pd.Series([(part, label) for part, label, _ in two_each]).value_counts().eq(2).all()
    assert len(two_each) == 2 * 2 * len(BODY_PARTS)
    # A cap below the number of parts takes every part's first study, in body-part order, before any second.
    capped = studies_of(choose_gallery_studies(val, studies_per_part=2, studies_per_class=9))
    for label in (0, 1):
        parts = [part for part, chosen_label, _ in capped if chosen_label == label]
        assert parts == sorted(BODY_PARTS) + sorted(BODY_PARTS)[:2]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a child process made by fork (POSIX)")
def test_process_start_time_is_when_the_process_began_not_when_it_is_asked():
    """In a forked child (a new process without a new interpreter's start-up: the import is not what is measured),
    asked a second after it began."""
    reading, writing = os.pipe()
    launched = time.time()
    child = os.fork()
    if child == 0:  # the child: answer through the pipe, and leave without running the parent's clean-up
        time.sleep(1.0)
        os.write(writing, repr(process_start_time()).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as answer:
        started = float(answer.read())
    os.waitpid(child, 0)
    # /proc counts in 10 ms ticks; the second's sleep before the question must not count.
    assert launched - 0.05 < started < launched + 0.5


def test_the_first_run_counts_from_the_process_start_and_a_later_one_from_its_own(monkeypatch):
    monkeypatch.setattr(timing, "_process_start_claimed", False)  # as in a fresh process
    monkeypatch.setattr(timing, "_run_started", None)
    first = RunTimings()
    age = time.time() - timing.process_start_time()
    assert first.summary()["origin"] == "process start"
    assert first.origin_time == pytest.approx(time.perf_counter() - age, abs=0.05)
    before = time.perf_counter()
    timing.note_run_start()  # mura.train's train() begins: the data module and model are built after this
    time.sleep(0.05)
    second = RunTimings()
    assert second.summary()["origin"] == "run start"
    assert before <= second.origin_time <= second.created - 0.04  # from note_run_start, not from the callback
