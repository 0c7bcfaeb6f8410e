"""The recipes' augmentation and normalisation on whole batches, on the training device.

With `data.augment_on_device=true` the loader hands resized uint8 images (from the cache or the PNGs) and
this module does the rest on the GPU: one batched affine warp (flip, rotation, and for the seed recipe shift
and zoom), then scaling, normalisation and channel repetition. Per-image random parameters come from each
sample's own seed (mura.data.sampling), so batches stay reproducible and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mura.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RECIPES


def _random_parameters(recipe: str, seeds: list[int]) -> torch.Tensor:
    """(N, 6): angle (degrees), scale, shift x, shift y (fractions), flip x, flip y (+1 or -1), per sample."""
    rows = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        u = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
        if recipe == "paper":
            rows.append([(u[0] * 2 - 1) * 30, 1.0, 0.0, 0.0, -1.0 if u[4] < 0.5 else 1.0, 1.0])
        else:
            rows.append([(u[0] * 2 - 1) * 5, 0.9 + 0.2 * u[1], (u[2] * 2 - 1) * 0.1, (u[3] * 2 - 1) * 0.1,
                         -1.0 if u[4] < 0.5 else 1.0, -1.0 if u[5] < 0.5 else 1.0])
    return torch.tensor(rows, dtype=torch.float32)


def affine_matrices(parameters: torch.Tensor) -> torch.Tensor:
    """Output-to-input sampling matrices (N, 2, 3) in normalised coordinates for `F.affine_grid`."""
    angle = torch.deg2rad(parameters[:, 0])
    scale, shift_x, shift_y = parameters[:, 1], parameters[:, 2] * 2, parameters[:, 3] * 2
    flip_x, flip_y = parameters[:, 4], parameters[:, 5]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # input = (1/s) R(angle) diag(flip) (output - shift)
    a, b = cos * flip_x, -sin * flip_y
    c, d = sin * flip_x, cos * flip_y
    tx = -(a * shift_x + b * shift_y)
    ty = -(c * shift_x + d * shift_y)
    return torch.stack([torch.stack([a, b, tx], dim=1), torch.stack([c, d, ty], dim=1)], dim=1)


class DeviceAugmentation(torch.nn.Module):
    def __init__(self, recipe: str, channels: int):
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"data.recipe must be one of {RECIPES}, not {recipe!r}")
        self.recipe = recipe
        self.channels = channels
        if channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = [sum(IMAGENET_MEAN) / 3] * channels, [sum(IMAGENET_STD) / 3] * channels
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1), persistent=False)

    def matrices(self, seeds: list[int]) -> torch.Tensor:
        """The warp of each image, (N, 2, 3), from its seed; made on the host, before the batch moves to the device,
        so that nothing on the device path has to wait for a host read."""
        return affine_matrices(_random_parameters(self.recipe, seeds))

    def forward(self, images: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
        """uint8 (N, 1, S, S) -> float (N, channels, S, S); warped by `theta` (from `matrices`) when given."""
        images = images.float().div_(255.0)
        if theta is not None:
            theta = theta.to(images.device, non_blocking=True)
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self.normalize(images)

    def normalize(self, images: torch.Tensor, floor: float | None = None) -> torch.Tensor:
        """Float (N, 1, S, S) in [0, 1] -> the network's input (N, channels, S, S): ImageNet mean/std (paper) or
        per-image standardisation (seed), channels repeated. `floor`, the seed recipe's lowest std, is 1/sqrt(pixels)
        (tf.image.per_image_standardization's); an exported graph passes it as a constant."""
        if self.recipe == "seed":
            flat = images.flatten(1)
            floor = 1.0 / math.sqrt(flat.shape[1]) if floor is None else floor
            std = flat.std(dim=1, unbiased=False).clamp_min(floor)
            images = (images - flat.mean(dim=1).view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)
            return images.expand(-1, self.channels, -1, -1)
        images = images.expand(-1, self.channels, -1, -1)
        return (images - self.mean) / self.std
