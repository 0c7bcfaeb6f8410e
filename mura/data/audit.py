"""Data audit: counts per split and body part, the paper's loss weights, and every problem found, by kind.

The seed found "inconsistent data and edge cases" by looking at pictures; this finds them by rule:
file-level problems come from `scan_release`, pixel-level ones (unreadable, duplicate pixels, near-blank,
inverted, unusual size, not a PNG) from decoding every listed image once.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mura.data.images import ImageDecodeError, image_format
from mura.data.index import BODY_PARTS, OFFICIAL_SPLITS, Problem, scan_release
from mura.data.verify import load_checked_grayscale

AUDIT_MARKDOWN = "audit.md"  # the audit's full listing, in the run folder
NEAR_BLANK_STD = 4.0  # grey levels; real radiographs sit far above
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 64, 2048, 4.0


def paper_loss_weights(normal_images: int, abnormal_images: int) -> dict[str, float]:
    """w_abnormal = N / (A + N), w_normal = A / (A + N); 0.5 each for a body part with no images."""
    total = normal_images + abnormal_images
    if total == 0:
        return {"w_abnormal": 0.5, "w_normal": 0.5}
    return {"w_abnormal": normal_images / total, "w_normal": abnormal_images / total}


def count_table(table: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """counts[split][body_part] = images, studies, patients, abnormal_studies, abnormal_images (plus `all`)."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for split in OFFICIAL_SPLITS:
        frame = table[table["split"] == split]
        per_part = {}
        for body_part, part in [*((bp, frame[frame["body_part"] == bp]) for bp in BODY_PARTS), ("all", frame)]:
            studies = part.drop_duplicates("study")
            per_part[body_part] = {
                "images": len(part),
                "studies": len(studies),
                "patients": int(part["patient"].nunique()),
                "abnormal_studies": int(studies["label"].sum()),
                "abnormal_images": int(part["label"].sum()),
            }
        counts[split] = per_part
    return counts


def _inspect_image(path: str) -> dict:
    """Check and decode one file and measure what the pixel rules need (runs in worker processes)."""
    # Training's check first: the audit must name every file a run would refuse. For a PNG it reads no pixels; a
    # file of another format (flagged below) is decoded twice, once by the check.
    try:
        pixels = load_checked_grayscale(path)
    except ImageDecodeError as error:
        return {"error": error.reason}
    height, width = pixels.shape
    border = max(1, min(height, width) // 20)
    edge = np.concatenate([pixels[:border].ravel(), pixels[-border:].ravel(), pixels[:, :border].ravel(), pixels[:, -border:].ravel()])
    centre = pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4]
    return {
        "format": image_format(path),
        "height": height,
        "width": width,
        "std": float(pixels.std()),
        "edge_mean": float(edge.mean()),
        "centre_mean": float(centre.mean()),
        "digest": hashlib.blake2b(pixels.tobytes() + bytes(str(pixels.shape), "ascii"), digest_size=16).hexdigest(),
    }


def pixel_problems(root: Path, paths: list[str], workers: int = 2, progress: bool = True) -> list[Problem]:
    problems: list[Problem] = []
    absolute = [str(root / path) for path in paths]
    bar_options = {"total": len(paths), "desc": "audit: decoding", "unit": "img", "disable": not progress}
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(_inspect_image, absolute, chunksize=32), **bar_options))
    else:
        results = [_inspect_image(path) for path in tqdm(absolute, **bar_options)]
    by_digest: dict[str, list[str]] = {}
    for path, info in zip(paths, results, strict=True):
        if "error" in info:
            problems.append(Problem("unreadable_image", path, info["error"]))
            continue
        if info["format"] != "PNG":
            problems.append(Problem("not_png", path, f"a {info['format']} file with a .png name"))
        by_digest.setdefault(info["digest"], []).append(path)
        if info["std"] < NEAR_BLANK_STD:
            problems.append(Problem("near_blank_image", path, f"pixel std {info['std']:.1f} < {NEAR_BLANK_STD}"))
        elif info["edge_mean"] > 128 and info["edge_mean"] > info["centre_mean"]:
            # Radiographs have a dark surround; a bright surround brighter than the centre is an inverted export.
            problems.append(
                Problem("inverted_image", path, f"border mean {info['edge_mean']:.0f} > centre mean {info['centre_mean']:.0f}")
            )
        height, width = info["height"], info["width"]
        if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE or max(height, width) / min(height, width) > MAX_ASPECT:
            problems.append(Problem("unusual_size", path, f"{width}x{height} pixels"))
    for group in by_digest.values():
        if len(group) > 1:
            for path in group:
                others = [other for other in group if other != path]
                problems.append(Problem("duplicate_image", path, f"same pixels as {', '.join(others[:3])}"))
    return problems


def audit_release(root: str | os.PathLike, check_pixels: bool = True, workers: int = 2, progress: bool = True) -> dict:
    """The audit as a plain dict: root, counts, loss_weights, problems, summary."""
    root = Path(root)
    scan = scan_release(root)
    table = scan.table
    problems = list(scan.problems)
    patient_splits = table.groupby("patient")["split"].nunique()
    for patient in patient_splits[patient_splits > 1].index:
        problems.append(Problem("patient_in_both_splits", patient, "has studies in train and valid"))
    if check_pixels:
        present = table.loc[~table["missing"], "path"].tolist()
        problems.extend(pixel_problems(root, present, workers=workers, progress=progress))
    counts = count_table(table)
    loss_weights = {
        body_part: paper_loss_weights(
            counts["train"][body_part]["images"] - counts["train"][body_part]["abnormal_images"],
            counts["train"][body_part]["abnormal_images"],
        )
        for body_part in BODY_PARTS
    }
    return {
        "root": str(root),
        "counts": counts,
        "loss_weights": loss_weights,
        "loss_weights_from": "image counts of the whole official train split (a training run uses its own train split: "
                             "the official train split minus its validation patients)",
        "problems": [asdict(problem) for problem in problems],
        "summary": dict(sorted(Counter(problem.kind for problem in problems).items())),
        "pixels_checked": check_pixels,
    }


def audit_markdown(audit: dict, max_examples: int | None = None) -> str:
    """A human-readable audit: every problem listed, or `max_examples` of each kind and how many more (the
    summary a command prints; audit.md has them all)."""
    lines = [f"# Data audit of `{audit['root']}`", ""]
    for split, per_part in audit["counts"].items():
        lines += [f"## Counts: {split}", ""]
        frame = pd.DataFrame.from_dict(per_part, orient="index")
        if split == "train":
            # Per body part only: the `all` row's weights cell stays blank (the paper weighs each study type on its own)
            weights = pd.DataFrame.from_dict(audit["loss_weights"], orient="index").round(4)
            frame = frame.join(weights)
            frame = frame.astype(object).where(frame.notna(), None)
        lines += [frame.to_markdown(missingval=""), ""]
        if split == "train":
            lines += ["`w_abnormal`, `w_normal`: the paper's loss weights from the image counts of the whole official "
                      "train split, per body part. A training run computes its own from its train split (the official "
                      "train split minus its validation patients) and logs them when it starts.", ""]
    lines += ["## Problems", ""]
    if not audit["summary"]:
        lines.append("None found.")
    else:
        lines += [pd.DataFrame({"count": audit["summary"]}).to_markdown(), ""]
        for kind in audit["summary"]:
            problems = [problem for problem in audit["problems"] if problem["kind"] == kind]
            shown = problems if max_examples is None else problems[:max_examples]
            lines.append(f"### {kind}")
            lines += [f"- `{problem['path']}`: {problem['detail']}" for problem in shown]
            if len(shown) < len(problems):
                lines.append(f"- and {len(problems) - len(shown)} more, all in {AUDIT_MARKDOWN}")
            lines.append("")
    if not audit["pixels_checked"]:
        lines.append("Pixel checks were skipped (audit.check_pixels=false).")
    return "\n".join(lines) + "\n"
