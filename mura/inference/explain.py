"""Grad-CAM heat maps for a MURA model (library code: the gallery callback, `mura.predict` and notebook 03 all draw
through `study_heatmap_figure`).

pytorch-grad-cam does the CAM; this module makes it safe under Lightning: gradients are switched back on
even inside `torch.inference_mode` (where Lightning runs validation), and the network is returned to the
train/eval mode it was found in (the library leaves it in eval mode). The map is computed on the network's square
input and drawn over the radiograph in its own proportions (`maps_on_radiographs`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn
from torch.nn import functional
from torchvision.transforms.v2.functional import resize as resize_image

from mura.data.transforms import RESIZE_MODES, fitted_size
from mura.models.backbones import gradcam_layer

if TYPE_CHECKING:
    from mura.models.classifier import MuraClassifier

PANEL_INCHES = 3.0  # width and height of one view, its gap included
PANEL_GAP_INCHES = 0.05  # on each side of a view
PANEL_TITLE_POINTS = 9
PANEL_TITLE_INCHES = 0.3  # a view's own title (its probability) above it
MIN_WIDTH_INCHES = 4.5  # a one-view figure still holds a readable title
TITLE_POINTS = 10
TITLE_LINE_INCHES = 0.2  # one line of the figure's title at TITLE_POINTS
TITLE_FILL = 0.95  # of the figure's width a title line may take
MARGIN_INCHES = 0.1  # above the title and below the views
COLORBAR_INCHES = 0.7  # right of the views: the bar, its ticks and its label
COLORBAR_BAR_INCHES = 0.12
NOTE_POINTS = 8
NOTE_LINE_INCHES = 0.16  # one line of the scale note under the views at NOTE_POINTS
# pytorch-grad-cam scales every view's map to its own range, so colours compare places within one view only. That is
# what the figures say rather than hide: a raw Grad-CAM has no unit (it moves with the network, the epoch, the
# logit's gradient), so a scale shared across views or studies would look comparable and not be. The colours answer
# "where", p(abnormal) above each view answers "how sure": a normal view at p = 0.05 still has a hottest place.
SCALE_NOTE = ("Colour: Grad-CAM for 'abnormal', scaled within each view: 1 marks where that view's evidence for "
              "abnormal is strongest, however low its p(abnormal), 0 where it is weakest. It shows where the model "
              "looked, not how abnormal the view is: p(abnormal) says that.")
COLORBAR_LABEL = "Grad-CAM, relative to the view's maximum"


@contextlib.contextmanager
def _gradients_on(network: nn.Module):
    was_training = network.training
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        network.train(was_training)


def _token_map(network: nn.Module):
    """For a vision transformer (timm's ViTs: `num_prefix_tokens`), a function turning its tokens, B x (prefix +
    H*W) x C, into the B x C x H x W map Grad-CAM weighs; None for convolutional networks, whose layers give maps."""
    prefix = getattr(network, "num_prefix_tokens", None)
    if prefix is None:
        return None

    def to_map(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        side = math.isqrt(patches.shape[1])
        return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)

    return to_map


@contextlib.contextmanager
def _no_autotuning():
    """cuDNN's autotuning off for the block, every other cuDNN setting as it was."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def gradcam_maps(network: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N x H x W in [0, 1]) of the abnormal logit, and the abnormal probabilities (N)."""
    device = next(network.parameters()).device
    # No cuDNN autotuning: each gallery study is a new batch shape (1-5 views, fp32, with weight gradients), and
    # autotuning every one of them made the first gallery of a run take 57 s on an H100.
    with _gradients_on(network), _no_autotuning():
        # A fresh tensor: inference-mode tensors cannot take part in autograd.
        batch = images.detach().clone().to(device).requires_grad_(False)
        with GradCAM(model=network, target_layers=[gradcam_layer(network)], reshape_transform=_token_map(network)) as cam:
            maps = cam(input_tensor=batch, targets=[BinaryClassifierOutputTarget(1)] * len(batch))
            probabilities = torch.sigmoid(cam.outputs.detach().float().squeeze(1)).cpu().numpy()
    return maps, probabilities


def wrap_to_width(text: str, inches: float, points: float) -> list[str]:
    """`text` in lines no wider than `inches` in matplotlib's default font at `points`, measured glyph by glyph (a
    study's title holds user folder names, whose glyphs may be any width); a word wider than a line is broken."""
    measure, font, limit = TextToPath(), FontProperties(size=points), inches * 72  # text widths come in points

    def fits(line: str) -> bool:
        return measure.get_text_width_height_descent(line, font, ismath=False)[0] <= limit

    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if fits(candidate):
            line = candidate
            continue
        if line:
            lines.append(line)
        while not fits(word):
            # The longest prefix that fits (one glyph at least), by bisection: a prefix-by-prefix search measured a
            # long folder name hundreds of times (1.0 s for 300 narrow glyphs at 2.5 in, 0.04 s by bisection)
            low, high = 1, len(word) - 1
            while low < high:
                middle = (low + high + 1) // 2
                low, high = (middle, high) if fits(word[:middle]) else (low, middle - 1)
            lines.append(word[:low])
            word = word[low:]
        line = word
    return [*lines, line]  # an empty title is one empty line


@functools.lru_cache(maxsize=8)
def _scale_note_lines(inches: float) -> tuple[str, ...]:
    """SCALE_NOTE wrapped to `inches`: a figure is one of a few widths (1-5 views), and measuring the note anew took
    37 ms of every figure of a gallery."""
    return tuple(wrap_to_width(SCALE_NOTE, inches, NOTE_POINTS))


def overlay_figure(
    radiographs: Sequence[np.ndarray], maps: Sequence[np.ndarray], probabilities: np.ndarray, title: str,
    weights: np.ndarray | None = None,
) -> Figure:
    """The views of one study side by side, each heat map over its radiograph (the same shape: jet at alpha 0.4, as
    the seed), with a colour bar and a note saying what the colours mean (`SCALE_NOTE`).

    A bare `Figure`: it needs no backend and leaves no pyplot state behind (safe in a headless training run); save it
    with `save_figure`, hand it to TensorBoard's `add_figure`, or `display` it in a notebook. The title and the note
    are wrapped to the figure's width, so they are whole for any number of views. A view keeps its proportions inside
    its square panel. The panels sit at fixed places, computed here: a layout engine would draw every figure twice (a
    gallery is 14 of them, drawn during training). `weights`: a study model's weight of each view in the study,
    shown beside the view's own probability."""
    count = len(radiographs)
    width = max(PANEL_INCHES * count, MIN_WIDTH_INCHES) + COLORBAR_INCHES
    lines = wrap_to_width(title, width * TITLE_FILL, TITLE_POINTS)
    note = _scale_note_lines(width * TITLE_FILL)
    title_inches = TITLE_LINE_INCHES * len(lines) + MARGIN_INCHES
    bottom = MARGIN_INCHES + NOTE_LINE_INCHES * len(note) + MARGIN_INCHES  # of the panels, above the note
    height = bottom + PANEL_INCHES + PANEL_TITLE_INCHES + title_inches
    figure = Figure(figsize=(width, height))
    # Centred (with the colour bar) when the title makes the figure wider than its panels.
    left = (width - COLORBAR_INCHES - PANEL_INCHES * count) / 2
    side = PANEL_INCHES - 2 * PANEL_GAP_INCHES
    for index, (radiograph, heat, probability) in enumerate(zip(radiographs, maps, probabilities, strict=True)):
        axis = figure.add_axes(((left + index * PANEL_INCHES + PANEL_GAP_INCHES) / width, bottom / height,
                                side / width, side / height))
        axis.imshow(radiograph, cmap="gray", vmin=0, vmax=255)
        heat_image = axis.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        caption = f"p(abnormal) = {probability:.2f}"
        if weights is not None:  # a study model: the view's own probability, and its share of the study's
            caption = f"view p = {probability:.2f}, weight {weights[index]:.2f}"
        axis.set_title(caption, fontsize=PANEL_TITLE_POINTS)
        axis.set_anchor("N")  # a wide view at the top of its panel: the views' titles on one line
        axis.set_axis_off()
    bar = figure.add_axes(((left + count * PANEL_INCHES + PANEL_GAP_INCHES) / width, bottom / height,
                           COLORBAR_BAR_INCHES / width, side / height))
    colorbar = figure.colorbar(heat_image, cax=bar, ticks=[0, 0.5, 1])  # every view has the same 0-1 scale
    colorbar.set_label(COLORBAR_LABEL, fontsize=NOTE_POINTS)
    colorbar.ax.tick_params(labelsize=NOTE_POINTS)
    figure.suptitle("\n".join(lines), fontsize=TITLE_POINTS, y=1 - MARGIN_INCHES / 2 / height, va="top")
    figure.text(0.5, MARGIN_INCHES / height, "\n".join(note), fontsize=NOTE_POINTS, ha="center", va="bottom")
    return figure


def maps_on_radiographs(maps: np.ndarray, shapes: Sequence[tuple[int, int]], resize_mode: str) -> list[np.ndarray]:
    """Heat maps of the network's square input (N x S x S) in the geometry of each view's radiograph (height, width
    in `shapes`), at `fitted_size`: in pad mode the map of the padded square is cut to where the radiograph lies in
    it (the padding is black the network saw, not anatomy); in squash mode the map of the stretched square is
    stretched back to the radiograph's proportions. A radiologist reads the radiograph as it was taken, so the map
    goes to it rather than the radiograph to the square."""
    image_size = maps.shape[-1]
    placed = []
    for heat, (height, width) in zip(maps, shapes, strict=True):
        shown_height, shown_width = fitted_size(height, width, image_size)
        if resize_mode == "pad":
            # resize_square centres the radiograph and puts an odd pixel of padding right and bottom
            top, left = (image_size - shown_height) // 2, (image_size - shown_width) // 2
            placed.append(heat[top:top + shown_height, left:left + shown_width])
        elif resize_mode == "squash":
            square = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
            stretched = functional.interpolate(square, size=(shown_height, shown_width), mode="bilinear",
                                               align_corners=False, antialias=True)[0, 0].numpy()
            placed.append(stretched.clip(0, 1))  # the filter's rounding steps a hair past 1 (1.0000001)
        else:
            raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {resize_mode!r}")
    return placed


def study_heatmap_figure(
    model: MuraClassifier, radiographs: list[np.ndarray], title: str
) -> tuple[Figure, np.ndarray]:
    """Grad-CAM of every view of one study (uint8 H x W radiographs, as `load_grayscale` gives them) over its
    radiograph, and the views' probabilities. The model's own preprocessing and resize mode (`eval_transform`,
    `hparams.resize`) make its input, so the map is drawn where the network saw what it weighs. `title` may hold
    `{probability}`: the study's probability (a view model's: the mean of its views'; a study model's: its pooled
    one, and each view's panel also shows the view's weight in it, so a reader sees which view decided)."""
    transform = model.eval_transform()
    inputs = torch.stack([transform(torch.from_numpy(pixels).unsqueeze(0)) for pixels in radiographs])
    maps, probabilities = gradcam_maps(model.network, inputs)
    study_probability, weights = probabilities.mean(), None
    if model.is_study_model:  # a second pass, through the pooling (the maps are of each view's own logit)
        with _no_autotuning():
            study_probability, _, weights = model.score_study(inputs.to(next(model.parameters()).device))
    image_size = inputs.shape[-1]
    # At the network's resolution: in pad mode exactly the pixels it saw, the padding left out.
    shown = [resize_image(torch.from_numpy(pixels)[None], list(fitted_size(*pixels.shape, image_size)),
                          antialias=True)[0].numpy() for pixels in radiographs]
    heat = maps_on_radiographs(maps, [pixels.shape for pixels in radiographs], model.hparams.resize)
    figure = overlay_figure(shown, heat, probabilities, title.format(probability=study_probability), weights)
    return figure, probabilities


def save_figure(figure: Figure, path: Path) -> None:
    """Write the figure as an image (a bare `Figure` holds no pyplot state: there is nothing to close)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
