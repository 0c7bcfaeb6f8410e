from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from mura.data.device_augment import DeviceAugmentation, affine_matrices
from mura.data.transforms import IMAGENET_STD, build_transforms

torch.manual_seed(0)
IMAGE = torch.randint(0, 256, (1, 90, 60), dtype=torch.uint8)


def test_paper_eval_pipeline_is_deterministic_imagenet_normalised():
    transform = build_transforms("paper", 64, channels=3, train=False)
    out = transform(IMAGE)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, transform(IMAGE))
    # channel 0 = (x - 0.485) / 0.229 of the resized grayscale
    plain = build_transforms("paper", 64, channels=1, train=False)(IMAGE)
    grey = plain[0] * (0.229 + 0.224 + 0.225) / 3 + (0.485 + 0.456 + 0.406) / 3
    assert torch.allclose(out[0], (grey - 0.485) / 0.229, atol=1e-5)


def test_paper_train_pipeline_is_random():
    transform = build_transforms("paper", 64, channels=3, train=True)
    outputs = [transform(IMAGE) for _ in range(4)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_seed_recipe_standardises_each_image():
    out = build_transforms("seed", 128, channels=1, train=False)(IMAGE)
    assert out.shape == (1, 128, 128)
    assert abs(out.mean().item()) < 1e-5 and abs(out.std(unbiased=False).item() - 1) < 1e-3


def test_unknown_recipe():
    with pytest.raises(ValueError, match="data.recipe"):
        build_transforms("keras", 64, 1, train=False)


# The CPU path (build_transforms on PIL images) and the device path (mura.data.device_augment) must train on the
# same pixels: for one fixed warp they agree up to rounding, and NEAREST on the CPU side would not.
#
# Conventions, found by comparing the two (and relied on below):
# - angle: the device angle turns counter-clockwise on screen, as torchvision's `rotate` (the paper recipe's
#   RandomRotation) does, but torchvision's `affine` (the seed recipe's RandomAffine) turns clockwise: a seed
#   warp of angle a on the CPU is a device angle of -a. All rotations are about the image centre;
# - scale: both > 1 zooms in, about the centre;
# - shift: torchvision's translate is in pixels (RandomAffine draws whole pixels, round(U(-0.1 W, 0.1 W))), the
#   device path's in fractions of the side: fraction = pixels / SIZE, the same direction;
# - order: the device path warps as rotate + zoom, then flip, then shift. The seed pipeline does the affine
#   (rotate + zoom, then translate) and then the flips, so a flipped axis flips the device shift too; the paper
#   pipeline flips and then rotates, and flip then rotate(a) = rotate(-a) then flip, so a flipped paper image
#   has the opposite device angle.
# The angles are drawn symmetric about 0 and independent of the flips, so either sign and either order trains
# the same distribution; the two paths do the same kind of warp.
# PIL truncates its bilinear results to uint8 where grid_sample keeps floats: the CPU pixels are on average
# ~0.45 grey levels darker (at most 1), which sets the tolerances.
SIZE = 64
MEAN_TOLERANCE = 0.6  # grey levels, 0-255
MAX_TOLERANCE = 2.0


def smooth_image() -> torch.Tensor:
    """uint8 (1, SIZE, SIZE): a smooth random relief that fades to 0 towards the edges, so that PIL's edge handling
    and grid_sample's zero padding give the same pixels and only interpolation and geometry are compared."""
    coarse = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    relief = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    index = torch.arange(SIZE, dtype=torch.float32)
    ramp = ((index.minimum(SIZE - 1 - index) - 2) / 8).clamp(0, 1)
    return (20 + 220 * relief).mul(ramp[:, None] * ramp[None, :]).round().to(torch.uint8)


def cpu_warp(recipe: str, image: torch.Tensor, geometry: dict, flip_x: bool, flip_y: bool,
             interpolation: v2.InterpolationMode | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """build_transforms(recipe, train=True)'s own steps, in its order, with each random step replaced by the same
    functional op at `geometry` and the given flips, with the step's own interpolation (or `interpolation`) and
    fill. Returns (the warped uint8 image, the pipeline's output)."""
    warped = out = image
    for step in build_transforms(recipe, SIZE, channels=1, train=True, resize=False).transforms:
        if isinstance(step, v2.RandomRotation | v2.RandomAffine):
            assert step.fill == 0 and step.center is None  # grid_sample's zero padding, about the centre
            warp = v2.functional.rotate if isinstance(step, v2.RandomRotation) else v2.functional.affine
            out = warp(out, **geometry, interpolation=interpolation or step.interpolation, fill=step.fill)
        elif isinstance(step, v2.RandomHorizontalFlip):
            out = v2.functional.horizontal_flip(out) if flip_x else out
        elif isinstance(step, v2.RandomVerticalFlip):
            out = v2.functional.vertical_flip(out) if flip_y else out
        else:
            out = step(out)
        if isinstance(step, v2.PILToTensor):
            warped = out
    return warped, out


WARPS = {
    # recipe, CPU geometry, CPU flips (x, y), device row [angle, scale, shift x, shift y, flip x, flip y]
    "paper": ("paper", {"angle": 17.0}, (False, False), [17.0, 1.0, 0.0, 0.0, 1.0, 1.0]),
    "paper-flipped": ("paper", {"angle": 17.0}, (True, False), [-17.0, 1.0, 0.0, 0.0, -1.0, 1.0]),
    "seed": ("seed", {"angle": 4.0, "translate": [5, -3], "scale": 1.08, "shear": [0.0, 0.0]}, (False, False),
             [-4.0, 1.08, 5 / SIZE, -3 / SIZE, 1.0, 1.0]),
    "seed-flipped-x": ("seed", {"angle": -3.0, "translate": [-4, 6], "scale": 0.93, "shear": [0.0, 0.0]},
                       (True, False), [3.0, 0.93, 4 / SIZE, 6 / SIZE, -1.0, 1.0]),
    "seed-flipped-xy": ("seed", {"angle": 4.0, "translate": [5, -3], "scale": 1.08, "shear": [0.0, 0.0]},
                        (True, True), [-4.0, 1.08, -5 / SIZE, 3 / SIZE, -1.0, -1.0]),
}


def grey_level_difference(recipe: str, warped: torch.Tensor, cpu: torch.Tensor, device: torch.Tensor) -> torch.Tensor:
    """|cpu - device| of two normalised images, back in grey levels (the CPU image's own scale for seed)."""
    std = warped.float().std(unbiased=False) if recipe == "seed" else 255 * sum(IMAGENET_STD) / 3
    border = 2
    return ((cpu - device) * std).abs()[..., border:-border, border:-border]


@pytest.mark.parametrize("warp", WARPS, ids=list(WARPS))
def test_cpu_and_device_augmentation_warp_alike(warp: str):
    recipe, geometry, (flip_x, flip_y), row = WARPS[warp]
    image = smooth_image()
    device = DeviceAugmentation(recipe, 1)(image[None], affine_matrices(torch.tensor([row])))[0]
    warped, cpu = cpu_warp(recipe, image, geometry, flip_x, flip_y)
    difference = grey_level_difference(recipe, warped, cpu, device)
    assert difference.mean() < MEAN_TOLERANCE and difference.max() < MAX_TOLERANCE, (
        difference.mean().item(), difference.max().item())
    # The pipeline is configured bilinear, and the comparison tells it from NEAREST (the old configuration).
    steps = build_transforms(recipe, SIZE, channels=1, train=True).transforms
    warps = [step for step in steps if isinstance(step, v2.RandomRotation | v2.RandomAffine)]
    assert [step.interpolation for step in warps] == [v2.InterpolationMode.BILINEAR]
    nearest = cpu_warp(recipe, image, geometry, flip_x, flip_y, interpolation=v2.InterpolationMode.NEAREST)
    nearest_difference = grey_level_difference(recipe, *nearest, device)
    assert nearest_difference.mean() > 2 * MEAN_TOLERANCE and nearest_difference.max() > 2 * MAX_TOLERANCE, (
        nearest_difference.mean().item(), nearest_difference.max().item())
