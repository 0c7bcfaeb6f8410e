"""Grad-CAM heat maps for a MURA model (library code: used by the gallery callback and `mura.predict`).

pytorch-grad-cam does the CAM; this module makes it safe under Lightning: gradients are switched back on
even inside `torch.inference_mode` (where Lightning runs validation), and the network is returned to the
train/eval mode it was found in (the library leaves it in eval mode).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget  # noqa: E402
from torch import nn  # noqa: E402

from mura.models.backbones import gradcam_layer  # noqa: E402


@contextlib.contextmanager
def _gradients_on(network: nn.Module):
    was_training = network.training
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        network.train(was_training)


def gradcam_maps(network: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N x H x W in [0, 1]) of the abnormal logit, and the abnormal probabilities (N)."""
    device = next(network.parameters()).device
    with _gradients_on(network):
        # A fresh tensor: inference-mode tensors cannot take part in autograd.
        batch = images.detach().clone().to(device).requires_grad_(False)
        with GradCAM(model=network, target_layers=[gradcam_layer(network)]) as cam:
            maps = cam(input_tensor=batch, targets=[BinaryClassifierOutputTarget(1)] * len(batch))
            probabilities = torch.sigmoid(cam.outputs.detach().float().squeeze(1)).cpu().numpy()
    return maps, probabilities


def overlay_figure(
    radiographs: list[np.ndarray], maps: np.ndarray, probabilities: np.ndarray, title: str
) -> plt.Figure:
    """The views of one study side by side, heat map over the radiograph (jet at alpha 0.4, as the seed)."""
    figure, axes = plt.subplots(1, len(radiographs), figsize=(3 * len(radiographs), 3.4), squeeze=False)
    for axis, radiograph, heat, probability in zip(axes[0], radiographs, maps, probabilities, strict=True):
        axis.imshow(radiograph, cmap="gray", vmin=0, vmax=255)
        axis.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        axis.set_title(f"p(abnormal) = {probability:.2f}", fontsize=9)
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def study_heatmap_figure(
    network: nn.Module, inputs: torch.Tensor, radiographs: list[np.ndarray], title: str
) -> tuple[plt.Figure, np.ndarray]:
    """Grad-CAM of every view of one study over its radiograph (resized to the network's input), and the views'
    probabilities. `title` may hold `{probability}`: the study's probability (mean of its views)."""
    maps, probabilities = gradcam_maps(network, inputs)
    height, width = inputs.shape[-2:]
    shown = [np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR)) for pixels in radiographs]
    return overlay_figure(shown, maps, probabilities, title.format(probability=probabilities.mean())), probabilities


def save_figure(figure: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
