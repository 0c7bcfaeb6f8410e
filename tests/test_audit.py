from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from command_process import run_command
from mura.data.audit import audit_release, paper_loss_weights
from mura.data.images import load_grayscale
from mura.data.index import BODY_PARTS, build_index
from mura.data.synthetic import MANIFEST_FILE

REPO = Path(__file__).resolve().parents[1]


def problems_of(audit: dict, kind: str) -> set[str]:
    return {problem["path"] for problem in audit["problems"] if problem["kind"] == kind}


def test_audit_finds_every_planted_edge_case(synthetic_root: Path):
    audit = audit_release(synthetic_root, workers=1, progress=False)
    manifest = json.loads((synthetic_root / MANIFEST_FILE).read_text())
    assert problems_of(audit, "sidecar_file") == set(manifest["sidecar"])
    assert problems_of(audit, "inverted_image") == set(manifest["inverted"])
    assert problems_of(audit, "near_blank_image") == set(manifest["near_blank"])
    assert problems_of(audit, "duplicate_image") == set(manifest["duplicate"])
    assert audit["summary"]["sidecar_file"] == 2


def test_audit_counts_equal_the_index(synthetic_root: Path):
    audit = audit_release(synthetic_root, check_pixels=False, progress=False)
    table = build_index(synthetic_root)
    train = table[table["split"] == "train"]
    assert audit["counts"]["train"]["all"]["images"] == len(train)
    assert audit["counts"]["train"]["all"]["studies"] == train["study"].nunique()
    wrist = train[train["body_part"] == "XR_WRIST"]
    assert audit["counts"]["train"]["XR_WRIST"]["abnormal_images"] == wrist["label"].sum()
    weights = audit["loss_weights"]["XR_WRIST"]
    assert weights["w_abnormal"] == pytest.approx((wrist["label"] == 0).mean())


def test_paper_loss_weights_match_the_paper():
    # REFERENCE.md section 2: wrist 5765 normal / 3987 abnormal images -> .5912 / .4088
    weights = paper_loss_weights(5765, 3987)
    assert weights["w_abnormal"] == pytest.approx(0.5912, abs=1e-4)
    assert weights["w_normal"] == pytest.approx(0.4088, abs=1e-4)


def test_audit_reports_broken_files_and_mismatches(writable_root: Path):
    table = build_index(writable_root)
    broken, missing = table["path"].iloc[0], table["path"].iloc[1]
    (writable_root / broken).write_bytes(b"")
    (writable_root / missing).unlink()
    studies = writable_root / "train_labeled_studies.csv"
    lines = studies.read_text().splitlines()
    path, label = lines[0].split(",")
    lines[0] = f"{path},{1 - int(label)}"
    studies.write_text("\n".join(lines) + "\n")
    # Cut inside IEND's checksum: every pixel decodes, but a training run's up-front check refuses the copy.
    cut = table["path"].iloc[2]
    (writable_root / cut).write_bytes((writable_root / cut).read_bytes()[:-2])
    audit = audit_release(writable_root, workers=1, progress=False)
    assert problems_of(audit, "unreadable_image") == {broken, cut}
    (cut_problem,) = [problem for problem in audit["problems"] if problem["path"] == cut]
    assert "truncated" in cut_problem["detail"]
    assert problems_of(audit, "missing_file") == {missing}
    assert len(problems_of(audit, "label_mismatch")) == 1


def test_audit_command_writes_json_and_markdown(synthetic_root: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_command("mura.audit", [f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", "workers=1"], tmp_path)
    assert result.returncode == 0, result.stderr
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["summary"]["duplicate_image"] == 2
    markdown = (run_dir / "audit.md").read_text()
    assert "## Problems" in markdown
    # Whose counts the loss weights come from, beside the ones a training run uses.
    assert "of the whole official train split" in markdown and "minus its validation patients" in markdown
    assert audit["loss_weights_from"].startswith("image counts of the whole official train split")
    assert "inverted_image" in result.stdout
    # audit.md lists every problem (it listed 5 of each kind); the printed summary 3 of each and how many more, where
    assert [problem for problem in audit["problems"] if f"- `{problem['path']}`: {problem['detail']}" not in markdown] == []
    many = {kind: count for kind, count in audit["summary"].items() if count > 5}
    assert many, "the tiny tree must have a kind of problem with more than 5 cases"
    for kind, count in audit["summary"].items():
        shown = result.stdout.split(f"### {kind}\n")[1].split("\n\n")[0].splitlines()
        assert shown[3:] == ([f"- and {count - 3} more, all in audit.md"] if count > 3 else []), kind
    assert f"written to {run_dir / 'audit.md'}" in result.stdout
    # The `all` row has no loss weights of its own (they are per body part): blank, not nan
    assert "nan" not in markdown and "nan" not in result.stdout
    all_row = next(line for line in markdown.splitlines() if line.startswith("| all "))
    assert all_row.replace(" ", "").endswith("||")


def test_audit_command_without_root_fails_clearly(tmp_path: Path):
    result = run_command("mura.audit", [f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, env={**os.environ, "MURA_ROOT": ""})
    assert result.returncode == 2
    assert "data.root is not set" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


REAL_ROOT = os.environ.get("MURA_REAL_ROOT")


COUNTED = ("images", "studies", "patients", "abnormal_studies", "abnormal_images")


def counts_from_the_csvs(root: Path, split: str) -> dict[str, int]:
    """A split's counts read straight from the official CSVs, by other code than the audit's."""
    with open(root / f"{split}_image_paths.csv", newline="") as handle:
        images = [row[0] for row in csv.reader(handle) if row]
    with open(root / f"{split}_labeled_studies.csv", newline="") as handle:
        studies = {row[0].rstrip("/"): int(row[1]) for row in csv.reader(handle) if row}
    abnormal = {study for study, label in studies.items() if label == 1}
    return {"images": len(images), "studies": len(studies), "patients": len({study.split("/")[3] for study in studies}),
            "abnormal_studies": len(abnormal), "abnormal_images": sum(image.rsplit("/", 1)[0] in abnormal for image in images)}


@pytest.mark.skipif(not REAL_ROOT, reason="MURA_REAL_ROOT is not set (a real MURA-v1.1 folder)")
def test_a_real_release_counts_as_its_csvs_say_and_decodes():
    """Any real release or part of one: CI runs it on the humerus train sample (../shared/data)."""
    root = Path(REAL_ROOT)
    audit = audit_release(root, check_pixels=False, progress=False)
    for split in ("train", "valid"):
        assert {key: audit["counts"][split]["all"][key] for key in COUNTED} == counts_from_the_csvs(root, split), split
    humerus_only = {part for part in BODY_PARTS if audit["counts"]["train"][part]["images"]} == {"XR_HUMERUS"}
    if humerus_only and audit["counts"]["valid"]["all"]["images"] == 0:
        # the humerus train sample CI uses: its published counts (REFERENCE.md section 1, shared/data/README.md)
        assert {key: audit["counts"]["train"]["XR_HUMERUS"][key] for key in COUNTED} == {
            "images": 1272, "studies": 592, "patients": 587, "abnormal_studies": 271, "abnormal_images": 599}
    table = build_index(root)
    for path in table["path"]:
        pixels = load_grayscale(root / path)
        assert pixels.ndim == 2 and max(pixels.shape) <= 512  # MURA's images are at most 512 px a side
    assert len(table) == sum(audit["counts"][split]["all"]["images"] for split in ("train", "valid"))


def test_a_jpeg_with_a_png_name_is_flagged_but_readable(writable_root: Path):
    from PIL import Image

    table = build_index(writable_root)
    target = table["path"].iloc[2]
    with Image.open(writable_root / target) as image:
        image.convert("RGB").save(writable_root / target, format="JPEG")
    assert load_grayscale(writable_root / target).ndim == 2
    audit = audit_release(writable_root, workers=1, progress=False)
    assert problems_of(audit, "not_png") == {target}
