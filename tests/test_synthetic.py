from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from conftest import TINY_SYNTHETIC
from mura.data.index import BODY_PARTS
from mura.data.synthetic import MANIFEST_FILE, SyntheticConfig, ensure_synthetic, generate, plan_release


def test_layout_and_csv_format_match_the_release(synthetic_root: Path):
    for split in ("train", "valid"):
        images = (synthetic_root / f"{split}_image_paths.csv").read_text().splitlines()
        studies = (synthetic_root / f"{split}_labeled_studies.csv").read_text().splitlines()
        assert all(line.startswith(f"MURA-v1.1/{split}/XR_") and line.endswith(".png") for line in images)
        assert all(line.rsplit(",", 1)[0].endswith("/") and line[-1] in "01" for line in studies)
        for line in images:
            assert (synthetic_root.parent / line).is_file()
    assert {p.name for p in (synthetic_root / "train").iterdir()} == set(BODY_PARTS)


def test_images_are_mixed_modes_and_sized(synthetic_root: Path):
    modes, longest = set(), set()
    for path in (synthetic_root / "train").rglob("image*.png"):
        with Image.open(path) as image:
            modes.add(image.mode)
            longest.add(max(image.size))
    assert modes == {"L", "RGB"}
    assert longest == {TINY_SYNTHETIC.image_size}


def test_views_and_patients(synthetic_root: Path):
    images, labels = plan_release(TINY_SYNTHETIC)
    views_per_study = {}
    for spec in images:
        study = spec.relative_path.rsplit("/", 1)[0]
        views_per_study[study] = views_per_study.get(study, 0) + 1
    assert set(views_per_study.values()) <= set(range(1, TINY_SYNTHETIC.max_views + 1))
    assert max(views_per_study.values()) > 1
    # every abnormal study without label noise shows its finding in at least one view
    for study, label in labels["train"].items():
        shown = [spec.abnormal_content for spec in images if spec.relative_path.startswith(study + "/")]
        if label == 1 and any(spec.finding for spec in images if spec.relative_path.startswith(study + "/")):
            assert any(shown)


def test_deterministic_for_a_seed(tmp_path: Path):
    config = SyntheticConfig(seed=11, train_patients_per_part=1, valid_patients_per_part=1, image_size=64, workers=1)
    first = generate(tmp_path / "a" / "MURA-v1.1", config, progress=False)
    second = generate(tmp_path / "b" / "MURA-v1.1", config, progress=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.png"))
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    other = generate(tmp_path / "c" / "MURA-v1.1", SyntheticConfig(**{**config.__dict__, "seed": 12}), progress=False)
    assert (first / "train_image_paths.csv").read_text() != (other / "train_image_paths.csv").read_text()


def test_edge_cases_are_planted_and_recorded(synthetic_root: Path):
    manifest = json.loads((synthetic_root / MANIFEST_FILE).read_text())
    assert set(manifest) == {"sidecar", "inverted", "near_blank", "duplicate"}
    for sidecar in manifest["sidecar"]:
        assert (synthetic_root / sidecar).read_bytes().startswith(b"\x00\x05\x16\x07")
    source, copy = manifest["duplicate"]
    assert (synthetic_root / source).read_bytes() == (synthetic_root / copy).read_bytes()


def test_ensure_reuses_and_regenerates_on_change(tmp_path: Path):
    root = tmp_path / "MURA-v1.1"
    config = SyntheticConfig(seed=2, train_patients_per_part=1, valid_patients_per_part=1, image_size=48, workers=1)
    ensure_synthetic(root, config, progress=False)
    marker = root / "train_image_paths.csv"
    stamp = marker.stat().st_mtime_ns
    ensure_synthetic(root, SyntheticConfig(**{**config.__dict__, "workers": 2}), progress=False)  # workers don't matter
    assert marker.stat().st_mtime_ns == stamp
    ensure_synthetic(root, SyntheticConfig(**{**config.__dict__, "image_size": 40}), progress=False)
    with Image.open(next(root.rglob("image1.png"))) as image:
        assert max(image.size) == 40
