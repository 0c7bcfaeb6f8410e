"""Read a MURA-v1.1 release into one tidy table, a row per image.

The four official CSVs are the source of truth: `*_image_paths.csv` lists images, `*_labeled_studies.csv`
labels studies. Paths in them look like ``MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png``;
only the last components matter, so a renamed root folder still works.

`scan_release` reports every data problem it meets as a `Problem` (the audit lists them all);
`build_index` applies the training policy: structural faults raise `MuraDataError`, benign ones are
counted and logged.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

BODY_PARTS: tuple[str, ...] = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)
OFFICIAL_SPLITS: tuple[str, ...] = ("train", "valid")
INDEX_COLUMNS: list[str] = ["path", "split", "body_part", "patient", "study", "label", "view"]

_PATIENT = re.compile(r"^patient\d+$")
_STUDY = re.compile(r"^study\d+_(positive|negative)$")
_IMAGE = re.compile(r"^[^./][^/]*\.png$", re.IGNORECASE)

MURA_SOURCE_HINT = (
    "MURA-v1.1 is licence-gated: request it from the Stanford ML Group (stanfordmlgroup.github.io/competitions/mura), "
    "unpack it and pass data.root=/path/to/MURA-v1.1; or run with data=synthetic, which needs no download"
)


class MuraDataError(ValueError):
    """A problem with the data on disk, stated with the file, the line and the fix."""


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str
    detail: str


@dataclass
class ReleaseScan:
    """What `scan_release` found: the image table and every problem met on the way."""

    table: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(problem.kind == kind for problem in self.problems)


def parse_body_parts(body_parts: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """`all` (or None) means every body part; names may omit the `XR_` prefix and any case."""
    if body_parts is None or (isinstance(body_parts, str) and body_parts.lower() == "all"):
        return list(BODY_PARTS)
    if isinstance(body_parts, str):
        body_parts = [part for part in body_parts.split(",") if part.strip()]
    chosen = []
    for name in body_parts:
        canonical = str(name).strip().upper()
        if not canonical.startswith("XR_"):
            canonical = "XR_" + canonical
        if canonical not in BODY_PARTS:
            raise MuraDataError(
                f"unknown body part {name!r} in data.body_parts: choose from {', '.join(BODY_PARTS)} or 'all'"
            )
        if canonical not in chosen:
            chosen.append(canonical)
    if not chosen:
        raise MuraDataError("data.body_parts is empty: name at least one body part, or 'all'")
    return chosen


def check_root(root: str | os.PathLike | None) -> Path:
    if root is None or str(root) in ("", "???"):
        raise MuraDataError(f"data.root is not set. {MURA_SOURCE_HINT}")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise MuraDataError(f"data.root {str(root_path)!r} is not a folder. {MURA_SOURCE_HINT}")
    return root_path


def refuse_writes_inside(root: str | os.PathLike | None, outputs: dict[str, str | os.PathLike | None]) -> None:
    """A user's dataset is never written to: refuse any output folder (named by its setting) inside `root`.
    No root yet (unset, or synthetic data still to be generated): nothing to protect here."""
    if root in (None, ""):
        return
    data = Path(root).expanduser().resolve()
    for setting, folder in outputs.items():
        if folder in (None, ""):
            continue
        target = Path(folder).expanduser().resolve()
        if target.is_relative_to(data):
            raise MuraDataError(
                f"{setting} {str(target)!r} is inside data.root {str(data)!r}: no command writes inside the dataset; "
                "choose a folder outside it (run the command from outside the dataset, or set hydra.run.dir)"
            )


def refuse_a_release_as_data_dir(data_dir: str | os.PathLike | None) -> None:
    """paths.data_dir (MURA_DATA_DIR) is where mura keeps caches and synthetic data: a folder that holds a MURA
    release is somebody's dataset (MURA_ROOT or data.root names that), and nothing is written there."""
    if data_dir in (None, ""):
        return
    folder = Path(data_dir).expanduser()
    if any((folder / f"{split}_image_paths.csv").is_file() for split in OFFICIAL_SPLITS):
        raise MuraDataError(
            f"paths.data_dir (MURA_DATA_DIR) {str(folder.resolve())!r} holds a MURA release: it is where mura writes caches "
            "and synthetic data. Name your dataset with data.root (or MURA_ROOT) and point MURA_DATA_DIR elsewhere"
        )


def _csv_rows(csv_path: Path, n_columns: int) -> list[tuple[int, list[str]]]:
    """Rows of a headerless MURA CSV as (line number, fields); blank lines and one header row are skipped."""
    if not csv_path.is_file():
        raise MuraDataError(
            f"{csv_path}: missing. A MURA-v1.1 folder holds train/valid _image_paths.csv and _labeled_studies.csv; "
            f"check that data.root points at the unpacked MURA-v1.1 folder itself"
        )
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise MuraDataError(f"{csv_path}: not a UTF-8 text file ({error}); restore it from the MURA archive") from None
    rows = []
    # newline="" semantics: csv handles CRLF and LF alike.
    for line_number, fields in enumerate(csv.reader(text.splitlines()), start=1):
        fields = [value.strip() for value in fields]
        while fields and fields[-1] == "" and len(fields) > n_columns:
            fields.pop()
        if not fields or fields == [""]:
            continue
        if line_number == 1 and _looks_like_header(fields):
            continue
        if len(fields) != n_columns:
            raise MuraDataError(
                f"{csv_path} line {line_number}: expected {n_columns} column(s), found {len(fields)}: "
                f"{','.join(fields)!r}; fix or delete that line"
            )
        rows.append((line_number, fields))
    return rows


def _looks_like_header(fields: list[str]) -> bool:
    return "/" not in fields[0] and not fields[0].lower().endswith(".png")


@dataclass(frozen=True)
class _Parsed:
    split: str
    body_part: str
    patient: str
    study_folder: str
    image: str | None


def _parse_path(raw: str, expected_split: str, csv_path: Path, line_number: int, is_image: bool) -> _Parsed:
    where = f"{csv_path} line {line_number}"
    normalised = raw.replace("\\", "/")
    parts = [part for part in normalised.split("/") if part not in ("", ".")]
    if normalised.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", normalised):
        raise MuraDataError(f"{where}: path {raw!r} escapes data.root; MURA paths are relative, fix that line")
    n_tail = 5 if is_image else 4
    if len(parts) < n_tail:
        raise MuraDataError(
            f"{where}: {raw!r} is not a MURA {'image' if is_image else 'study'} path "
            f"(expected .../{{train,valid}}/XR_PART/patientN/studyK_positive|negative{'/imageN.png' if is_image else '/'})"
        )
    split, body_part, patient, study_folder = parts[-n_tail : len(parts) - n_tail + 4]
    image = parts[-1] if is_image else None
    if split != expected_split:
        raise MuraDataError(f"{where}: {raw!r} is in split {split!r} but the file lists {expected_split!r} paths")
    if body_part not in BODY_PARTS:
        raise MuraDataError(f"{where}: unknown body part {body_part!r}; MURA has {', '.join(BODY_PARTS)}")
    if not _PATIENT.match(patient):
        raise MuraDataError(f"{where}: {patient!r} is not a patient folder (patientNNNNN)")
    if not _STUDY.match(study_folder):
        raise MuraDataError(f"{where}: {study_folder!r} is not a study folder (studyK_positive or studyK_negative)")
    if image is not None and not _IMAGE.match(image):
        raise MuraDataError(f"{where}: {image!r} is not a PNG image name (imageN.png)")
    return _Parsed(split, body_part, patient, study_folder, image)


def _files_on_disk(root: Path, split: str) -> set[str]:
    """Every file under root/split as a root-relative POSIX path (one directory walk, no per-file stat)."""
    found = set()
    split_dir = root / split
    if not split_dir.is_dir():
        return found
    prefix_length = len(str(root)) + 1
    for directory, _, files in os.walk(split_dir):
        relative_dir = directory[prefix_length:].replace(os.sep, "/")  # string slicing: 40k Path objects cost 0.5 s
        found.update(f"{relative_dir}/{name}" for name in files)
    return found


def scan_release(root: str | os.PathLike, check_files: bool = True) -> ReleaseScan:
    """Read the four CSVs under `root` (the MURA-v1.1 folder) into a table, collecting data problems.

    Raises `MuraDataError` only for faults that leave no table to build: a missing root or CSV, a malformed
    line, a path outside the release layout.
    """
    root = check_root(root)
    problems: list[Problem] = []
    frames = []
    for split in OFFICIAL_SPLITS:
        studies_csv = root / f"{split}_labeled_studies.csv"
        images_csv = root / f"{split}_image_paths.csv"
        study_labels: dict[str, int] = {}
        study_lines: dict[str, int] = {}
        for line_number, (raw_path, raw_label) in _csv_rows(studies_csv, 2):
            parsed = _parse_path(raw_path, split, studies_csv, line_number, is_image=False)
            key = f"{split}/{parsed.body_part}/{parsed.patient}/{parsed.study_folder}"
            if raw_label not in ("0", "1"):
                raise MuraDataError(
                    f"{studies_csv} line {line_number}: label {raw_label!r} is not 0 (normal) or 1 (abnormal)"
                )
            label = int(raw_label)
            if key in study_labels:
                if study_labels[key] != label:
                    raise MuraDataError(
                        f"{studies_csv} line {line_number}: study {key} is labelled {label} here and "
                        f"{study_labels[key]} on line {study_lines[key]}; keep one line"
                    )
                problems.append(Problem("duplicate_row", key, f"{studies_csv.name} line {line_number} repeats line {study_lines[key]}"))
                continue
            folder_label = int(parsed.study_folder.endswith("_positive"))
            if folder_label != label:
                problems.append(
                    Problem(
                        "label_mismatch",
                        key,
                        f"{studies_csv.name} line {line_number} labels it {label} but the folder name says {folder_label}",
                    )
                )
            study_labels[key] = label
            study_lines[key] = line_number

        records = []
        seen_images: dict[str, int] = {}
        for line_number, (raw_path,) in _csv_rows(images_csv, 1):
            parsed = _parse_path(raw_path, split, images_csv, line_number, is_image=True)
            study = f"{split}/{parsed.body_part}/{parsed.patient}/{parsed.study_folder}"
            path = f"{study}/{parsed.image}"
            if path in seen_images:
                problems.append(Problem("duplicate_row", path, f"{images_csv.name} line {line_number} repeats line {seen_images[path]}"))
                continue
            seen_images[path] = line_number
            if study not in study_labels:
                problems.append(
                    Problem("unlabelled_study", path, f"{images_csv.name} line {line_number}: its study is not in {studies_csv.name}")
                )
                continue
            view_match = re.search(r"(\d+)", parsed.image)
            records.append(
                (
                    path,
                    split,
                    parsed.body_part,
                    parsed.patient,
                    study,
                    study_labels[study],
                    int(view_match.group(1)) if view_match else 0,
                    line_number,
                )
            )
        studies_with_images = {record[4] for record in records}
        for study in study_labels.keys() - studies_with_images:
            problems.append(Problem("study_without_images", study, f"{studies_csv.name} line {study_lines[study]}"))

        frame = pd.DataFrame.from_records(records, columns=[*INDEX_COLUMNS, "csv_line"])
        if check_files:
            on_disk = _files_on_disk(root, split)
            listed = set(frame["path"])
            missing = ~frame["path"].isin(on_disk)
            for path, line_number in frame.loc[missing, ["path", "csv_line"]].itertuples(index=False):
                problems.append(Problem("missing_file", path, f"{images_csv.name} line {line_number}: listed but not on disk"))
            for path in sorted(on_disk - listed):
                name = path.rsplit("/", 1)[-1]
                if name.startswith("._"):
                    problems.append(Problem("sidecar_file", path, "macOS AppleDouble sidecar, not an image; ignored"))
                elif name.startswith("."):
                    problems.append(Problem("hidden_file", path, "hidden file; ignored"))
                else:
                    problems.append(Problem("unlisted_file", path, f"on disk but not in {images_csv.name}; ignored"))
            frame["missing"] = missing.to_numpy()
        else:
            frame["missing"] = False
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table["label"] = table["label"].astype("int64")
    return ReleaseScan(table=table, problems=problems)


def build_index(
    root: str | os.PathLike,
    body_parts: str | list[str] | None = "all",
    on_bad_image: str = "error",
    check_files: bool = True,
    keep_missing: bool = False,
) -> pd.DataFrame:
    """The image table used for training: one row per image, columns `INDEX_COLUMNS`.

    Policy: a label that disagrees with its folder, or a study listed in the image CSV without a label, is an
    error (training on it would be training on a wrong label). A listed image missing from disk is an error,
    or a counted skip with ``on_bad_image="skip"`` (``keep_missing`` keeps such rows, for a caller that checks
    every file itself and skips them later). Sidecars, unlisted files and repeated rows are counted and ignored.
    """
    if on_bad_image not in ("error", "skip"):
        raise MuraDataError(f"data.on_bad_image must be 'error' or 'skip', not {on_bad_image!r}")
    chosen_parts = parse_body_parts(body_parts)
    scan = scan_release(root, check_files=check_files)
    root = Path(root)
    for kind in ("label_mismatch", "unlabelled_study"):
        bad = [problem for problem in scan.problems if problem.kind == kind]
        if bad:
            first = bad[0]
            raise MuraDataError(
                f"{len(bad)} {kind.replace('_', ' ')} problem(s) in {root}; first: {first.path}: {first.detail}. "
                "Fix the CSV line (or run `python -m mura.audit data.root=...` to list them all)"
            )
    table = scan.table
    missing = table[table["missing"]]
    if len(missing):
        first = missing.iloc[0]
        message = (
            f"{len(missing)} image(s) listed in the CSVs are missing under {root}; first: "
            f"{first['split']}_image_paths.csv line {first['csv_line']}: {first['path']}"
        )
        if on_bad_image == "error":
            raise MuraDataError(message + ". Restore the files, or set data.on_bad_image=skip to train without them")
        log.warning("%s. Skipping them (data.on_bad_image=skip)", message)
        if not keep_missing:
            table = table[~table["missing"]]
    ignored = Counter(problem.kind for problem in scan.problems if problem.kind in ("sidecar_file", "hidden_file", "unlisted_file", "duplicate_row", "study_without_images"))
    if ignored:
        log.info("ignored while indexing %s: %s", root, dict(ignored))
    table = table[table["body_part"].isin(chosen_parts)].drop(columns=["missing", "csv_line"])
    if not (table["split"] == "train").any():
        raise MuraDataError(
            f"{root}: the train split has no images for body parts {chosen_parts}; "
            "check train_image_paths.csv and data.body_parts"
        )
    return table.reset_index(drop=True)
