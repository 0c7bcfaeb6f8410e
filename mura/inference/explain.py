"""Grad-CAM heat maps for a MURA model (library code: used by the gallery callback and `mura.predict`).

pytorch-grad-cam does the CAM; this module makes it safe under Lightning: gradients are switched back on
even inside `torch.inference_mode` (where Lightning runs validation), and the network is returned to the
train/eval mode it was found in (the library leaves it in eval mode).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from mura.models.backbones import gradcam_layer

PANEL_INCHES = 3.0  # width and height of one view, its gap included
PANEL_GAP_INCHES = 0.05  # on each side of a view
PANEL_TITLE_POINTS = 9
PANEL_TITLE_INCHES = 0.3  # a view's own title (its probability) above it
MIN_WIDTH_INCHES = 4.5  # a one-view figure still holds a readable title
TITLE_POINTS = 10
TITLE_LINE_INCHES = 0.2  # one line of the figure's title at TITLE_POINTS
TITLE_FILL = 0.95  # of the figure's width a title line may take
MARGIN_INCHES = 0.1  # above the title and below the views


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


def overlay_figure(
    radiographs: list[np.ndarray], maps: np.ndarray, probabilities: np.ndarray, title: str
) -> Figure:
    """The views of one study side by side, heat map over the radiograph (jet at alpha 0.4, as the seed).

    A bare `Figure`: it needs no backend and leaves no pyplot state behind (safe in a headless training run); save it
    with `save_figure`, hand it to TensorBoard's `add_figure`, or `display` it in a notebook. The title is wrapped to
    the figure's width, so it is whole for any number of views. The panels sit at fixed places, computed here: a
    layout engine would draw every figure twice (a gallery is 14 of them, drawn during training)."""
    count = len(radiographs)
    width = max(PANEL_INCHES * count, MIN_WIDTH_INCHES)
    lines = wrap_to_width(title, width * TITLE_FILL, TITLE_POINTS)
    title_inches = TITLE_LINE_INCHES * len(lines) + MARGIN_INCHES
    height = MARGIN_INCHES + PANEL_INCHES + PANEL_TITLE_INCHES + title_inches
    figure = Figure(figsize=(width, height))
    left = (width - PANEL_INCHES * count) / 2  # centred when the title makes the figure wider than its panels
    side = PANEL_INCHES - 2 * PANEL_GAP_INCHES
    for index, (radiograph, heat, probability) in enumerate(zip(radiographs, maps, probabilities, strict=True)):
        axis = figure.add_axes(((left + index * PANEL_INCHES + PANEL_GAP_INCHES) / width, MARGIN_INCHES / height,
                                side / width, side / height))
        axis.imshow(radiograph, cmap="gray", vmin=0, vmax=255)
        axis.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        axis.set_title(f"p(abnormal) = {probability:.2f}", fontsize=PANEL_TITLE_POINTS)
        axis.set_axis_off()
    figure.suptitle("\n".join(lines), fontsize=TITLE_POINTS, y=1 - MARGIN_INCHES / 2 / height, va="top")
    return figure


def study_heatmap_figure(
    network: nn.Module, inputs: torch.Tensor, radiographs: list[np.ndarray], title: str
) -> tuple[Figure, np.ndarray]:
    """Grad-CAM of every view of one study over its radiograph (resized to the network's input), and the views'
    probabilities. `title` may hold `{probability}`: the study's probability (mean of its views)."""
    maps, probabilities = gradcam_maps(network, inputs)
    height, width = inputs.shape[-2:]
    shown = [np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR)) for pixels in radiographs]
    return overlay_figure(shown, maps, probabilities, title.format(probability=probabilities.mean())), probabilities


def save_figure(figure: Figure, path: Path) -> None:
    """Write the figure as an image (a bare `Figure` holds no pyplot state: there is nothing to close)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
