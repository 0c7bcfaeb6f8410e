"""The two preprocessing recipes as torchvision.transforms.v2 pipelines over uint8 1 x H x W tensors.

- `paper` (Rajpurkar et al.): scale to image_size x image_size, random horizontal flip and rotation up to
  30 degrees, ImageNet normalisation.
- `seed` (the Keras notebook): 128 px grayscale, rotation 5 degrees, shift and zoom 0.1, horizontal and
  vertical flips, per-image standardisation.

Evaluation pipelines are the same minus every random step.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RECIPES = ("paper", "seed")
RESIZE_MODES = ("squash", "pad")
INTERPOLATION = v2.InterpolationMode.BILINEAR  # of the random rotation and affine warps, as on the device path


class RepeatChannels(nn.Module):
    """Grayscale to the channel count an ImageNet-style backbone expects."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.expand(self.channels, *image.shape[-2:]) if image.shape[-3] != self.channels else image


class PerImageStandardize(nn.Module):
    """(x - mean) / max(std, 1/sqrt(N)) per image, as tf.image.per_image_standardization (the seed's Keras step)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        floor = 1.0 / image[0].numel() ** 0.5
        return (image - image.mean()) / image.std(unbiased=False).clamp_min(floor)


def imagenet_normalize(channels: int) -> v2.Normalize:
    if channels == 3:
        return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    # One channel: the average of ImageNet's three, so grayscale inputs land in the same range.
    mean = sum(IMAGENET_MEAN) / 3
    std = sum(IMAGENET_STD) / 3
    return v2.Normalize([mean] * channels, [std] * channels)


def resize_square(image: torch.Tensor, image_size: int, mode: str = "squash") -> torch.Tensor:
    """The fixed first step of both recipes (the decode-once cache stores exactly its output): a square
    image_size x image_size image. `squash` (the paper) stretches the radiograph to the square; `pad` keeps its
    aspect ratio, scaling the longest side to image_size and padding the rest with black (humerus and forearm
    radiographs are tall and narrow: squashed, their bones widen by up to 2x)."""
    if mode == "squash":
        return v2.functional.resize(image, [image_size, image_size], antialias=True)
    if mode != "pad":
        raise ValueError(f"data.resize must be one of {RESIZE_MODES}, not {mode!r}")
    new_height, new_width = fitted_size(*image.shape[-2:], image_size)
    resized = v2.functional.resize(image, [new_height, new_width], antialias=True)
    # Centre cropping to a larger size pads with black, the extra pixel (odd margins) right and bottom.
    return v2.functional.center_crop(resized, [image_size, image_size])


def fitted_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """A height x width image's size with its longest side image_size, its proportions kept: where `resize_square`'s pad
    mode puts it in the square (centred, the odd pixel of padding right and bottom)."""
    scale = image_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class ResizeSquare(nn.Module):
    def __init__(self, image_size: int, mode: str = "squash"):
        super().__init__()
        self.image_size = image_size
        self.mode = mode

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return resize_square(image, self.image_size, self.mode)


def build_transforms(
    recipe: str, image_size: int, channels: int, train: bool, resize: bool = True, resize_mode: str = "squash"
) -> v2.Compose:
    """The pipeline for one recipe; `train=False` gives the deterministic evaluation pipeline.

    `resize=False` leaves out the first step, for images that come already resized from the cache;
    `resize_mode` is that step's squash or pad (`resize_square`).
    """
    if recipe not in RECIPES:
        raise ValueError(f"data.recipe must be one of {RECIPES}, not {recipe!r}")
    steps: list[nn.Module] = [ResizeSquare(image_size, resize_mode)] if resize else []
    if train:
        # Bilinear with zero fill, as the device path (mura.data.device_augment: grid_sample, bilinear, zero
        # padding): both paths must train on the same pixels (torchvision's default here would be NEAREST).
        if recipe == "paper":
            random_steps = [v2.RandomHorizontalFlip(), v2.RandomRotation(30, interpolation=INTERPOLATION, fill=0)]
        else:
            random_steps = [
                v2.RandomAffine(degrees=5, translate=(0.1, 0.1), scale=(0.9, 1.1), interpolation=INTERPOLATION, fill=0),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
            ]
        # The same transforms on a PIL image: PIL's C geometry on 8-bit images is ~5x faster per image than
        # torch's grid_sample (0.9 vs 4.9 ms at 320 px), which dominates once decoding is cached.
        steps += [v2.ToPILImage(), *random_steps, v2.PILToTensor()]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if recipe == "paper":
        steps += [RepeatChannels(channels), imagenet_normalize(channels)]
    else:
        steps += [PerImageStandardize(), RepeatChannels(channels)]
    return v2.Compose(steps)
