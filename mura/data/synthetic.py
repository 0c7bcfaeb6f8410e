"""Write a MURA-v1.1-shaped tree of synthetic radiographs: the embedded default dataset.

The tree, file names and CSVs follow the official release exactly, so every code path that reads real
MURA runs on it. Images look like radiographs: dark background, soft-tissue haze, bright bones shaped per
body part, a side marker. Abnormal studies carry a visible finding (a fracture line, bright hardware, a
lesion) in at least one view, so a small CNN can learn the task; a share of study labels is flipped as
label noise. Optional edge cases mirror the real archive's: AppleDouble sidecars, an inverted image, a
near-blank image and the same image in two studies.

Everything is deterministic for a seed: the plan is drawn from one generator, and each image from its own.

The generator deletes or overwrites only a tree it made itself: every tree it writes holds `synthetic.json`
(its settings, and the generator's name), written before the first image. Pointed at a folder without that
marker (a user's real MURA release, say), it stops with an error naming the folder and touches nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from mura.data.index import BODY_PARTS, MuraDataError

log = logging.getLogger(__name__)

FINDINGS = ("fracture", "hardware", "lesion")
APPLEDOUBLE_HEADER = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "
MARKER_FILE = "synthetic.json"  # inside the tree: what made it, and with which settings
MANIFEST_FILE = "synthetic_manifest.json"
GENERATOR = "mura.data.synthetic"


class NotASyntheticTreeError(MuraDataError):
    """A folder the generator would have to delete or overwrite, which it did not make."""


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    train_patients_per_part: int = 40
    valid_patients_per_part: int = 12
    image_size: int = 512  # longest side, as in MURA
    max_views: int = 5
    abnormal_fraction: float = 0.4
    label_noise: float = 0.02
    rgb_fraction: float = 0.45
    multi_part_patients: float = 0.1  # share of train patients with a second study in another body part
    edge_cases: bool = True
    workers: int = 2


@dataclass(frozen=True)
class ImageSpec:
    relative_path: str
    body_part: str
    abnormal_content: bool  # what the pixels show, before label noise
    finding: str | None
    seed: tuple[int, ...]
    rgb: bool


# ---------------------------------------------------------------------------------------------------------
# Drawing


def _rod(draw: ImageDraw.ImageDraw, p0, p1, width: float, brightness: int) -> None:
    """A long bone: bright cortex, darker medulla, rounded ends."""
    draw.line([p0, p1], fill=brightness, width=max(1, int(width)))
    inner = max(1, int(width * 0.45))
    draw.line([p0, p1], fill=int(brightness * 0.8), width=inner)
    for x, y in (p0, p1):
        r = width * 0.65
        draw.ellipse([x - r, y - r, x + r, y + r], fill=brightness)


def _bones(body_part: str, size: int, rng: np.random.Generator) -> list[tuple[tuple[float, float], tuple[float, float], float]]:
    """Rods (start, end, width) in a size x size frame, shaped per body part."""
    s = size

    def j(scale: float = 0.02) -> float:
        """A small random jitter of a position, as a fraction of the frame."""
        return float(rng.normal(0, scale * s))

    rods = []
    if body_part == "XR_HUMERUS":
        rods.append(((0.5 * s + j(), 0.08 * s), (0.5 * s + j(), 0.92 * s), 0.11 * s))
    elif body_part == "XR_FOREARM":
        rods.append(((0.42 * s + j(), 0.06 * s), (0.40 * s + j(), 0.94 * s), 0.07 * s))
        rods.append(((0.58 * s + j(), 0.06 * s), (0.60 * s + j(), 0.94 * s), 0.06 * s))
    elif body_part == "XR_ELBOW":
        joint = (0.5 * s + j(), 0.5 * s + j())
        rods.append(((0.5 * s + j(), 0.02 * s), joint, 0.11 * s))
        angle = math.radians(rng.uniform(10, 50))
        for offset, width in ((-0.05, 0.07), (0.05, 0.06)):
            start = (joint[0] + offset * s, joint[1] + 0.04 * s)
            rods.append((start, (start[0] + math.sin(angle) * 0.45 * s, start[1] + math.cos(angle) * 0.45 * s), width * s))
    elif body_part == "XR_SHOULDER":
        rods.append(((0.55 * s + j(), 0.35 * s), (0.6 * s + j(), 0.98 * s), 0.12 * s))
        rods.append(((0.1 * s, 0.15 * s + j()), (0.75 * s, 0.2 * s + j()), 0.05 * s))  # clavicle
    elif body_part == "XR_FINGER":
        x = 0.5 * s + j()
        bounds = [0.04, 0.3, 0.55, 0.75, 0.96]
        for top, bottom in zip(bounds[:-1], bounds[1:], strict=True):
            rods.append(((x + j(0.01), (top + 0.02) * s), (x + j(0.01), (bottom - 0.02) * s), 0.09 * s))
    elif body_part in ("XR_HAND", "XR_WRIST"):
        base_y = 0.62 if body_part == "XR_HAND" else 0.45
        if body_part == "XR_WRIST":
            rods.append(((0.42 * s + j(), 0.98 * s), (0.43 * s, 0.66 * s), 0.09 * s))
            rods.append(((0.60 * s + j(), 0.98 * s), (0.59 * s, 0.68 * s), 0.07 * s))
        for ray in range(5):
            spread = (ray - 2) * 0.09
            x0 = (0.5 + spread * 0.6) * s
            x1 = (0.5 + spread * 1.2) * s
            length = 0.25 if body_part == "XR_HAND" else 0.3
            rods.append(((x0, base_y * s), (x1 + j(0.01), (base_y - length) * s), 0.045 * s))
            if body_part == "XR_HAND":
                rods.append(((x1, (base_y - length - 0.03) * s), (x1 * 1.0 + spread * 0.2 * s, (base_y - length - 0.22) * s), 0.035 * s))
    return rods


def _carpals(draw: ImageDraw.ImageDraw, body_part: str, size: int, brightness: int, rng: np.random.Generator) -> None:
    if body_part not in ("XR_HAND", "XR_WRIST"):
        return
    centre_y = 0.72 if body_part == "XR_HAND" else 0.56
    for row in range(2):
        for column in range(4):
            x = (0.38 + column * 0.08 + rng.normal(0, 0.005)) * size
            y = (centre_y + row * 0.07 + rng.normal(0, 0.005)) * size
            r = 0.035 * size
            draw.ellipse([x - r, y - r * 0.8, x + r, y + r * 0.8], fill=brightness)


def _shoulder_head(draw: ImageDraw.ImageDraw, body_part: str, size: int, brightness: int) -> None:
    if body_part == "XR_SHOULDER":
        r = 0.17 * size
        x, y = 0.55 * size, 0.35 * size
        draw.ellipse([x - r, y - r, x + r, y + r], fill=brightness)
    if body_part == "XR_HUMERUS":
        r = 0.09 * size
        draw.ellipse([0.5 * size - r, 0.08 * size - r, 0.5 * size + r, 0.08 * size + r], fill=brightness)


def _draw_finding(
    bone: ImageDraw.ImageDraw,
    overlay: ImageDraw.ImageDraw,
    finding: str,
    rods: list,
    size: int,
    rng: np.random.Generator,
) -> None:
    (x0, y0), (x1, y1), width = rods[int(rng.integers(len(rods)))]
    t = rng.uniform(0.3, 0.7)
    cx, cy = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    ux, uy = (x1 - x0) / length, (y1 - y0) / length  # along the bone
    nx, ny = -uy, ux  # across it
    if finding == "fracture":
        half = width * 0.9
        tilt = rng.uniform(-0.4, 0.4)
        gap = max(2, int(0.022 * size))
        start = (cx - nx * half + ux * tilt * half, cy - ny * half + uy * tilt * half)
        end = (cx + nx * half - ux * tilt * half, cy + ny * half - uy * tilt * half)
        bone.line([start, end], fill=0, width=gap)
    elif finding == "hardware":
        half_length, half_width = 0.14 * size, 0.022 * size
        corners = [
            (cx + sx * ux * half_length + sy * nx * half_width, cy + sx * uy * half_length + sy * ny * half_width)
            for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
        ]
        overlay.polygon(corners, fill=255)
        for k in np.linspace(-0.8, 0.8, 4):
            sx, sy = cx + ux * k * half_length, cy + uy * k * half_length
            overlay.line([(sx - nx * width, sy - ny * width), (sx + nx * width, sy + ny * width)], fill=245, width=max(1, int(0.01 * size)))
    else:  # lesion: a lytic hole with a sclerotic rim
        r = rng.uniform(0.045, 0.07) * size
        bone.ellipse([cx - r * 1.25, cy - r * 1.25, cx + r * 1.25, cy + r * 1.25], fill=250)
        bone.ellipse([cx - r, cy - r, cx + r, cy + r], fill=40)


def render_image(spec: ImageSpec, image_size: int) -> Image.Image:
    """One synthetic radiograph for `spec` (pure function of the spec)."""
    rng = np.random.default_rng(spec.seed)
    frame = int(image_size * 1.25)  # drawn larger, then rotated and cropped
    tissue = Image.new("L", (frame, frame), 0)
    bone = Image.new("L", (frame, frame), 0)
    overlay = Image.new("L", (frame, frame), 0)
    tissue_draw, bone_draw, overlay_draw = ImageDraw.Draw(tissue), ImageDraw.Draw(bone), ImageDraw.Draw(overlay)

    rods = _bones(spec.body_part, frame, rng)
    for (a, b, width) in rods:
        pad = width * 1.6
        tissue_draw.line([a, b], fill=int(rng.uniform(45, 75)), width=int(width + 2 * pad))
    brightness = int(rng.uniform(165, 215))
    for (a, b, width) in rods:
        _rod(bone_draw, a, b, width, brightness)
    _carpals(bone_draw, spec.body_part, frame, brightness, rng)
    _shoulder_head(bone_draw, spec.body_part, frame, brightness)
    if spec.abnormal_content and spec.finding:
        _draw_finding(bone_draw, overlay_draw, spec.finding, rods, frame, rng)

    tissue = tissue.filter(ImageFilter.GaussianBlur(frame * 0.04))
    bone = bone.filter(ImageFilter.GaussianBlur(max(0.6, frame * 0.003)))
    pixels = np.asarray(tissue, dtype=np.float32) * 0.9
    bone_pixels = np.asarray(bone, dtype=np.float32)
    pixels = np.maximum(pixels, bone_pixels)
    pixels = np.maximum(pixels, np.asarray(overlay, dtype=np.float32))
    pixels += rng.uniform(5, 25)  # background exposure
    pixels += rng.normal(0, 4, size=pixels.shape)
    composed = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    composed = composed.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, fillcolor=int(rng.uniform(5, 20)))
    if rng.random() < 0.5:
        composed = composed.transpose(Image.FLIP_LEFT_RIGHT)
    height = image_size
    width = int(image_size * rng.uniform(0.6, 1.0))
    left = (frame - width) // 2 + int(rng.integers(-frame // 20, frame // 20 + 1))
    top = (frame - height) // 2 + int(rng.integers(-frame // 20, frame // 20 + 1))
    composed = composed.crop((left, top, left + width, top + height))
    if rng.random() < 0.3:  # landscape exports exist too
        composed = composed.transpose(Image.ROTATE_90)

    marker = ImageDraw.Draw(composed)
    m = max(8, image_size // 20)
    mx, my = (4, 4) if rng.random() < 0.5 else (composed.width - m - 4, 4)
    marker.rectangle([mx, my, mx + m, my + m], fill=235)
    marker.text((mx + m // 4, my + m // 6), "L" if rng.random() < 0.5 else "R", fill=20)
    return composed.convert("RGB") if spec.rgb else composed


def _render_to_disk(job: tuple[ImageSpec, int, str]) -> None:
    spec, image_size, root = job
    target = Path(root) / spec.relative_path
    target.parent.mkdir(parents=True, exist_ok=True)
    render_image(spec, image_size).save(target, compress_level=3)


# ---------------------------------------------------------------------------------------------------------
# Planning the tree


def plan_release(config: SyntheticConfig) -> tuple[list[ImageSpec], dict[str, dict[str, int]]]:
    """Every image to draw and every study's label, deterministically from `config.seed`."""
    rng = np.random.default_rng(config.seed)
    images: list[ImageSpec] = []
    study_labels: dict[str, dict[str, int]] = {"train": {}, "valid": {}}
    patient_number = 0
    image_counter = 0
    for split, n_per_part in (("train", config.train_patients_per_part), ("valid", config.valid_patients_per_part)):
        for body_part in BODY_PARTS:
            for _ in range(n_per_part):
                patient_number += 1
                patient = f"patient{patient_number:05d}"
                parts = [body_part]
                if split == "train" and rng.random() < config.multi_part_patients:
                    parts.append(str(rng.choice([p for p in BODY_PARTS if p != body_part])))
                study_numbers: dict[str, int] = {}
                for study_part in parts:
                    n_studies = 1 + int(rng.random() < 0.15)
                    for _ in range(n_studies):
                        # Numbering restarts per body part, as in MURA: patientN/study1 exists in several parts.
                        study_numbers[study_part] = study_numbers.get(study_part, 0) + 1
                        abnormal = bool(rng.random() < config.abnormal_fraction)
                        label = int(abnormal) ^ int(rng.random() < config.label_noise)
                        finding = str(rng.choice(FINDINGS)) if abnormal else None
                        suffix = "positive" if label else "negative"
                        study = f"{split}/{study_part}/{patient}/study{study_numbers[study_part]}_{suffix}"
                        study_labels[split][study] = label
                        n_views = int(rng.integers(1, config.max_views + 1))
                        shows = rng.random(n_views) < 0.75
                        shows[int(rng.integers(n_views))] = True  # at least one view shows the finding
                        rgb = bool(rng.random() < config.rgb_fraction)
                        for view in range(n_views):
                            image_counter += 1
                            images.append(
                                ImageSpec(
                                    relative_path=f"{study}/image{view + 1}.png",
                                    body_part=study_part,
                                    abnormal_content=abnormal and bool(shows[view]),
                                    finding=finding,
                                    seed=(config.seed, image_counter),
                                    rgb=rgb,
                                )
                            )
    return images, study_labels


def _write_csvs(root: Path, prefix: str, images: list[ImageSpec], study_labels: dict[str, dict[str, int]]) -> None:
    for split in ("train", "valid"):
        split_images = [spec.relative_path for spec in images if spec.relative_path.startswith(split + "/")]
        (root / f"{split}_image_paths.csv").write_text("".join(f"{prefix}/{path}\n" for path in split_images))
        (root / f"{split}_labeled_studies.csv").write_text(
            "".join(f"{prefix}/{study}/,{label}\n" for study, label in study_labels[split].items())
        )


def _plant_edge_cases(root: Path, images: list[ImageSpec], seed: int) -> dict[str, list[str]]:
    """Real-archive oddities, planted in the train split; returns where each went (for tests and the audit)."""
    rng = np.random.default_rng([seed, 7])
    train = [spec.relative_path for spec in images if spec.relative_path.startswith("train/")]
    chosen = [train[i] for i in rng.choice(len(train), size=6, replace=False)]
    sidecars = []
    for path in chosen[:2]:
        sidecar = Path(path).parent / ("._" + Path(path).name)
        (root / sidecar).write_bytes(APPLEDOUBLE_HEADER + bytes(48))
        sidecars.append(sidecar.as_posix())
    inverted = chosen[2]
    pixels = np.asarray(Image.open(root / inverted))
    Image.fromarray(255 - pixels).save(root / inverted)
    blank = chosen[3]
    with Image.open(root / blank) as image:
        width, height = image.size
    flat = np.full((height, width), 118, dtype=np.uint8) + rng.integers(0, 3, size=(height, width), dtype=np.uint8)
    Image.fromarray(flat).save(root / blank)
    source, copy = chosen[4], chosen[5]
    shutil.copyfile(root / source, root / copy)
    return {"sidecar": sidecars, "inverted": [inverted], "near_blank": [blank], "duplicate": [source, copy]}


def is_synthetic_tree(folder: str | os.PathLike) -> bool:
    """True for a folder that this generator wrote: it holds the marker file with the generator's name, or it is
    a tree of mura 0.1's generator (its manifest inside, its settings beside it in the parent folder), which a
    `make demo` before this version left in data/synthetic/."""
    folder = Path(folder)
    try:
        if json.loads((folder / MARKER_FILE).read_text()).get("generator") == GENERATOR:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    try:
        legacy_settings = json.loads((folder.parent / MARKER_FILE).read_text())
        return (folder / MANIFEST_FILE).is_file() and set(legacy_settings) == set(asdict(SyntheticConfig()))
    except (OSError, ValueError, TypeError):
        return False


def _settings(config: SyntheticConfig) -> dict:
    """The settings that decide the tree's content (the number of processes does not)."""
    settings = asdict(config)
    settings.pop("workers")
    return settings


def _check_replaceable(folder: Path) -> None:
    """Only a missing folder, an empty one, or one this generator made may be replaced."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and (is_synthetic_tree(folder) or not any(folder.iterdir())):
        return
    raise NotASyntheticTreeError(
        f"{folder} exists and was not made by mura's synthetic generator (no {MARKER_FILE} inside): it writes only "
        "into a new or empty folder or a tree it made itself, and has touched nothing. To read this folder as MURA "
        "data, pass data.root=" + str(folder) + " without data=synthetic; to generate synthetic data, choose another "
        "folder (data.synthetic.dir)"
    )


def _remove(folder: Path) -> None:
    if folder.exists():
        _check_replaceable(folder)  # checked again right before deleting anything
        shutil.rmtree(folder)


def generate(root: str | os.PathLike, config: SyntheticConfig, progress: bool = True) -> Path:
    """Write the release under `root` (a folder named like MURA-v1.1); atomic: built aside, then renamed.

    `root` must be missing, empty, or a tree this generator made (it is then replaced); anything else is refused
    with `NotASyntheticTreeError` before a single file is touched.
    """
    root = Path(root)
    staging = root.with_name(root.name + ".partial")
    _check_replaceable(root)
    _check_replaceable(staging)
    _remove(staging)
    staging.mkdir(parents=True)
    # The marker first: a generation stopped half-way leaves a folder that is recognisably ours.
    (staging / MARKER_FILE).write_text(json.dumps({"generator": GENERATOR, "settings": _settings(config)}, indent=2, sort_keys=True))
    images, study_labels = plan_release(config)
    jobs = [(spec, config.image_size, str(staging)) for spec in images]
    bar = tqdm(total=len(jobs), desc="synthetic MURA", unit="img", disable=not progress)
    if config.workers > 1:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            for _ in pool.map(_render_to_disk, jobs, chunksize=16):
                bar.update()
    else:
        for job in jobs:
            _render_to_disk(job)
            bar.update()
    bar.close()
    # Prefix the CSV paths with the final folder name, as the official CSVs do.
    _write_csvs(staging, root.name, images, study_labels)
    manifest = _plant_edge_cases(staging, images, config.seed) if config.edge_cases else {}
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    _remove(root)
    staging.rename(root)
    log.info("wrote %d synthetic images under %s", len(images), root)
    return root


def choose_data_root(root: str | None, synthetic: dict | None) -> tuple[str | None, SyntheticConfig | None]:
    """(the folder to read, the synthetic settings to generate it with, or None).

    `data.root` given (on the command line, or MURA_ROOT with data=mura) always means real data, read and never
    written: the synthetic settings are then unused. Synthetic data only when asked (data=synthetic leaves
    data.root unset): generated into `synthetic["dir"]`, a folder of its own.
    """
    settings = dict(synthetic or {})
    synthetic_dir = settings.pop("dir", None)
    if root not in (None, ""):
        if synthetic:
            log.info("data.root is given: reading the data at %s; the data.synthetic settings are unused", root)
        return str(Path(root).expanduser()), None
    if not synthetic:
        return None, None
    if not synthetic_dir:
        raise MuraDataError("data.synthetic is set but data.synthetic.dir is not: say where to generate the synthetic data")
    return str(synthetic_dir), SyntheticConfig(**settings)


def ensure_synthetic(root: str | os.PathLike, config: SyntheticConfig, progress: bool = True) -> Path:
    """Generate the release at `root` unless one made with the same settings is already there."""
    root = Path(root)
    if is_synthetic_tree(root) and (root / "valid_labeled_studies.csv").is_file():
        marker = root / MARKER_FILE
        if marker.is_file() and json.loads(marker.read_text()).get("settings") == _settings(config):
            return root
        log.info("synthetic settings changed (or a tree of an older generator); regenerating %s", root)
    return generate(root, config, progress=progress)
