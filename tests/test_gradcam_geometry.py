"""Grad-CAM is drawn where the network looked, over the radiograph in its own proportions, in both resize modes and
through every caller that draws it (the gallery, mura.predict; notebook 03 runs in tests/test_notebooks.py).

The network here is built so that its Grad-CAM is the marker of the picture: whatever the geometry code does with
the map, its hot place must land on the marker in the saved PNG."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from mura.callbacks.gradcam import GradCamGallery
from mura.data.transforms import fitted_size, resize_square
from mura.inference.explain import maps_on_radiographs, save_figure, study_heatmap_figure
from mura.inference.study_files import predict_study
from mura.models.classifier import MuraClassifier

IMAGE_SIZE = 64
BODY, MARKER = 60, 255  # grey levels: below and above the normalisation's mean (0.449 of 255)
# (height, width, marker rows, marker columns): a tall view marked top right, a wide one bottom left.
VIEWS = {"tall": (200, 80, slice(0, 25), slice(60, 80)), "wide": (80, 200, slice(55, 80), slice(0, 25))}


class MarkerNetwork(nn.Module):
    """A network whose Grad-CAM is the bright part of its input: a weight-1 1x1 convolution and a ReLU (the layer
    Grad-CAM explains, named as timm's feature information names it), global average pooling, a weight-1 logit. The
    logit's gradient is the same positive number everywhere, so the map is ReLU(input): the marker, and nothing where
    the normalised input is negative (the body, the black padding)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU())
        self.head = nn.Linear(1, 1)
        for parameter, value in ((self.features[0].weight, 1.0), (self.head.weight, 1.0), (self.head.bias, 0.0)):
            nn.init.constant_(parameter, value)
        self.feature_info = [{"module": "features"}]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


def marker_model(resize: str) -> MuraClassifier:
    model = MuraClassifier(backbone="densenet_small", in_channels=1, image_size=IMAGE_SIZE, recipe="paper", resize=resize)
    model.network = MarkerNetwork()
    return model.eval()


def radiograph(view: str) -> np.ndarray:
    height, width, rows, columns = VIEWS[view]
    pixels = np.full((height, width), BODY, dtype=np.uint8)
    pixels[rows, columns] = MARKER
    return pixels


def marker_box(view: str) -> tuple[float, float, float, float]:
    """The marker as fractions of the radiograph: top, bottom, left, right."""
    height, width, rows, columns = VIEWS[view]
    return rows.start / height, rows.stop / height, columns.start / width, columns.stop / width


def drawn_views(figure: Figure, png: Path) -> list[np.ndarray]:
    """Each view as the PNG shows it: its pixels (RGB in [0, 1]) inside the axes that hold its images."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=float) / 255
    height, width = pixels.shape[:2]
    crops = []
    for axis in figure.axes:
        if axis.images:  # a view, not the colour bar
            box = axis.get_window_extent().transformed(figure.transFigure.inverted())
            crops.append(pixels[round((1 - box.y1) * height):round((1 - box.y0) * height),
                                round(box.x0 * width):round(box.x1 * width)])
    return crops


def assert_heat_on_marker(figure: Figure, png: Path, views: list[str]) -> None:
    """In the saved picture, each view has its radiograph's proportions and its red (the map's hot place) lies on
    the marker, and covers its middle."""
    tolerance = 0.06  # a pixel of the network's input on the short side of a 26 x 64 view is 0.04 of it
    for view, drawn in zip(views, drawn_views(figure, png), strict=True):
        height, width = VIEWS[view][:2]
        assert drawn.shape[0] / drawn.shape[1] == pytest.approx(height / width, rel=0.05), view
        rows, columns = np.nonzero(drawn[..., 0] - drawn[..., 2] > 0.1)  # jet's upper half: red over blue
        assert rows.size, f"{view}: no hot place drawn"
        top, bottom, left, right = marker_box(view)
        hot = rows.min() / drawn.shape[0], (rows.max() + 1) / drawn.shape[0], columns.min() / drawn.shape[1], \
            (columns.max() + 1) / drawn.shape[1]
        assert top - tolerance <= hot[0] and hot[1] <= bottom + tolerance, (view, hot, marker_box(view))
        assert left - tolerance <= hot[2] and hot[3] <= right + tolerance, (view, hot, marker_box(view))
        middle = drawn[round((top + bottom) / 2 * drawn.shape[0]), round((left + right) / 2 * drawn.shape[1])]
        assert middle[0] - middle[2] > 0.1, (view, middle)


@pytest.mark.parametrize("shape", [(200, 80), (80, 200), (201, 80), (7, 300), (420, 512), (64, 64)])
def test_a_pad_map_is_cut_to_where_resize_square_put_the_radiograph(shape: tuple[int, int]):
    """The map of the padded square, cut to the radiograph, is all radiograph and all of it: the place a map of ones
    over the radiograph (and zeros over the padding) gives back is ones only, at the radiograph's shown size."""
    where = resize_square(torch.full((1, *shape), 255, dtype=torch.uint8), IMAGE_SIZE, "pad")[0].numpy() / 255
    cut = maps_on_radiographs(where[None], [shape], "pad")[0]
    assert cut.shape == fitted_size(*shape, IMAGE_SIZE)
    assert np.all(cut == 1) and cut.sum() == where.sum()


def test_a_squash_map_is_stretched_back_to_the_radiograph():
    square = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    square[:8, 48:] = 1  # top right of the stretched square
    stretched = maps_on_radiographs(square[None], [(200, 80)], "squash")[0]
    assert stretched.shape == (64, 26) and stretched.min() >= 0 and stretched.max() <= 1
    rows, columns = np.nonzero(stretched > 0.5)
    assert rows.max() < 9 and columns.min() >= 18  # still the top right quarter of the width, an eighth of the height
    with pytest.raises(ValueError, match="squash"):
        maps_on_radiographs(square[None], [(200, 80)], "crop")


@pytest.mark.parametrize("resize", ["squash", "pad"])
def test_the_heat_map_lands_on_the_marker_in_the_saved_figure(resize: str, tmp_path: Path):
    views = ["tall", "wide"]
    figure, probabilities = study_heatmap_figure(marker_model(resize), [radiograph(view) for view in views], "{probability:.2f}")
    save_figure(figure, tmp_path / "study.png")
    assert_heat_on_marker(figure, tmp_path / "study.png", views)
    # The arrays drawn agree too: the map's hot place is the radiograph's marker, pixel for pixel but for its edge.
    for axis in (axis for axis in figure.axes if axis.images):
        picture, heat = (np.asarray(image.get_array()) for image in axis.images)
        assert picture.shape == heat.shape
        marker, hot = picture > (BODY + MARKER) / 2, heat > 0.5
        assert (marker & hot).sum() / (marker | hot).sum() > 0.7
    assert probabilities.shape == (2,)


def test_the_gallery_draws_the_heat_map_on_the_marker(tmp_path: Path, saved_figures: list[Figure]):
    """GradCamGallery.render, as a training run calls it, with a model trained in pad mode."""
    root = tmp_path / "root"
    (root / "study").mkdir(parents=True)
    Image.fromarray(radiograph("tall")).save(root / "study" / "image1.png")
    gallery = GradCamGallery(str(tmp_path / "run" / "gradcam"))
    gallery.gallery = [pd.DataFrame([{"path": "study/image1.png", "study": "study", "view": 1, "label": 0,
                                      "body_part": "XR_HUMERUS", "patient": "patient00001"}])]
    trainer = SimpleNamespace(is_global_zero=True, datamodule=SimpleNamespace(root=str(root)), loggers=[], callbacks=[],
                              global_step=0, current_epoch=0)
    [png] = gallery.render(trainer, marker_model("pad"), "final", "test")
    assert_heat_on_marker(saved_figures[-1], png, ["tall"])


def test_predict_draws_the_heat_map_on_the_marker_under_a_title_naming_the_patient(tmp_path: Path,
                                                                                   saved_figures: list[Figure]):
    study = tmp_path / "MURA-v1.1" / "valid" / "XR_HUMERUS" / "patient11185" / "study1_positive"
    study.mkdir(parents=True)
    files = [study / "image1.png", study / "image2.png"]
    for file, view in zip(files, ("tall", "wide"), strict=True):
        Image.fromarray(radiograph(view)).save(file)
    result = predict_study(marker_model("pad"), study, files, cam_dir=tmp_path / "cam")
    [png] = result.cam
    figure = saved_figures[-1]
    assert_heat_on_marker(figure, Path(png), ["tall", "wide"])
    assert figure._suptitle.get_text().startswith("XR_HUMERUS patient11185 study1_positive: p(abnormal) = ")
