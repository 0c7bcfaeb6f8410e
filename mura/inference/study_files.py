"""Predict studies from files: an image, a study folder, or a folder of studies (library code for mura.predict).

Each folder that directly holds files is a study; its images are its views. A file that cannot be used
(not an image, unreadable, too large) is reported with its reason and the rest goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mura.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_grayscale
from mura.data.index import BODY_PARTS
from mura.inference.explain import save_figure, study_heatmap_figure
from mura.models.classifier import MuraClassifier


@dataclass
class StudyPrediction:
    study: str
    body_part: str | None
    views: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    probability: float | None = None
    abnormal: bool | None = None
    threshold: float = 0.5
    error: str | None = None
    cam: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if value not in (None, []) or key in ("views",)}


# Files that sit beside studies and are never views: a release's CSVs, notes, our own outputs.
NOT_VIEWS = frozenset({".csv", ".json", ".jsonl", ".md", ".txt", ".yaml", ".yml"})


def may_be_view(path: Path) -> bool:
    """Whether a file is worth trying as an image: not hidden (macOS `._` sidecars), not a data file (NOT_VIEWS)."""
    return not path.name.startswith(".") and path.suffix.lower() not in NOT_VIEWS


def find_studies(input_path: str | Path) -> list[tuple[Path, list[Path]]]:
    """(study folder or image, its files) for an image, a study folder or a tree of study folders (a MURA-v1.1
    folder included). Raises FileNotFoundError if `input_path` is not there.

    Hidden files (such as macOS `._` sidecars) and data files (NOT_VIEWS: a release's CSVs) are not views and are
    left out, even when given on their own; any other file is tried as an image, and one that is not is reported with
    its study."""
    path = Path(input_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(path)
    if path.is_file():
        return [(path, [path] if may_be_view(path) else [])]
    studies = []
    for folder in sorted([path, *(p for p in path.rglob("*") if p.is_dir())]):
        entries = list(folder.iterdir())
        files = sorted(p for p in entries if p.is_file() and may_be_view(p))
        if files or not any(p.is_dir() for p in entries):  # an empty leaf folder is reported, not dropped
            studies.append((folder, files))
    return studies or [(path, [])]


def body_part_from_path(path: Path) -> str | None:
    for part in path.parts:
        if part.upper() in BODY_PARTS:
            return part.upper()
    return None


def _slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(path.parts[-3:])).strip("_")


def predict_study(
    model: MuraClassifier,
    study: Path,
    files: list[Path],
    cam_dir: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> StudyPrediction:
    hparams = model.hparams
    result = StudyPrediction(study=str(study), body_part=body_part_from_path(study), threshold=hparams.threshold)
    if not study.exists():
        result.error = "no such file or folder"
        return result
    if not files:
        result.error = "no files to read"
        return result
    transform = model.eval_transform()
    good, pixels = [], []
    for file in files:
        try:
            pixels.append(load_grayscale(file, max_pixels=max_pixels))
            good.append(file)
        except ImageDecodeError as error:
            result.skipped.append({"path": str(file), "reason": error.reason})
    if not good:
        result.error = "no readable image"
        return result
    device = next(model.parameters()).device
    batch = torch.stack([transform(torch.from_numpy(p).unsqueeze(0)) for p in pixels]).to(device)
    result.probability, probabilities, weights = model.score_study(batch)
    result.views = [{"path": str(file), "probability": float(p)} for file, p in zip(good, probabilities, strict=True)]
    if model.is_study_model:  # each view's probability on its own, and its weight in the study's pooled probability
        for view, weight in zip(result.views, weights, strict=True):
            view["weight"] = float(weight)
    result.abnormal = bool(result.probability > hparams.threshold)
    if cam_dir is not None:
        verdict = "abnormal" if result.abnormal else "normal"
        # Named as the gallery names a study (body part, patient), where the path says them; the study's own name last
        patient = next((part for part in study.parts if re.fullmatch(r"patient\d+", part, re.IGNORECASE)), None)
        heading = " ".join(dict.fromkeys(name for name in (result.body_part, patient, study.name) if name))
        figure, _ = study_heatmap_figure(model, pixels, f"{heading}: p(abnormal) = {{probability:.2f}} ({verdict})")
        target = cam_dir / f"{_slug(study)}.png"
        save_figure(figure, target)
        result.cam.append(str(target))
    return result
