from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from mura.data.datamodule import MuraDataModule
from mura.data.index import BODY_PARTS, MuraDataError
from mura.data.split import check_no_leak


def make_datamodule(root: Path, **overrides) -> MuraDataModule:
    settings = dict(root=str(root), image_size=48, recipe="paper", channels=3, batch_size=4, num_workers=0,
                    val_fraction=0.2, seed=0)
    settings.update(overrides)
    return MuraDataModule(**settings)


def test_setup_builds_splits_and_writes_them(synthetic_root: Path, tmp_path: Path):
    datamodule = make_datamodule(synthetic_root, splits_dir=str(tmp_path))
    datamodule.setup("fit")
    check_no_leak(datamodule.splits)
    written = pd.read_csv(tmp_path / "splits.csv")
    assert list(written.columns) == ["path", "split", "body_part", "patient", "study", "label"]
    assert len(written) == len(datamodule.splits)
    assert set(written["split"]) == {"train", "val", "test"}
    assert "| split" in (tmp_path / "split_table.md").read_text()
    studies = datamodule.studies
    assert studies["n_views"].sum() == len(written)
    assert studies.index.tolist() == list(range(len(studies)))


def test_split_seed_fixes_validation_while_seed_changes_order_and_augmentation(synthetic_root: Path):
    def val_patients_and_first_batch(**seeds):
        datamodule = make_datamodule(synthetic_root, **seeds)
        datamodule.setup("fit")
        first = next(iter(datamodule.train_dataloader()))
        return set(datamodule.split_frame("val")["patient"]), first["path"], first["augment_seed"].tolist()

    ensemble_a = val_patients_and_first_batch(seed=1, split_seed=7)
    ensemble_b = val_patients_and_first_batch(seed=2, split_seed=7)
    assert ensemble_a[0] == ensemble_b[0]  # one validation split
    assert ensemble_a[1] != ensemble_b[1] and ensemble_a[2] != ensemble_b[2]  # other order, other augmentation
    assert val_patients_and_first_batch(seed=7)[0] == ensemble_a[0]  # split_seed None: the split follows seed
    assert val_patients_and_first_batch(seed=1)[0] != ensemble_a[0]


def test_samples_are_dicts_that_carry_ids(synthetic_root: Path):
    datamodule = make_datamodule(synthetic_root)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48)
    assert batch["label"].dtype == torch.float32
    val = datamodule.split_frame("val")
    for path, study_idx, label, part in zip(batch["path"], batch["study_idx"], batch["label"], batch["body_part_idx"], strict=True):
        row = val[val["path"] == path].iloc[0]
        assert row["study_idx"] == study_idx and row["label"] == label
        assert BODY_PARTS[part] == row["body_part"]
    assert batch["skipped"] == []


def test_train_image_counts_match_the_training_split(synthetic_root: Path):
    datamodule = make_datamodule(synthetic_root, body_parts=["XR_WRIST", "XR_HAND"])
    datamodule.setup("fit")
    counts = datamodule.train_image_counts()
    train = datamodule.split_frame("train")
    assert counts["XR_WRIST"]["abnormal"] == int(train[train["body_part"] == "XR_WRIST"]["label"].sum())
    assert counts["XR_ELBOW"] == {"normal": 0, "abnormal": 0}
    assert sum(c["normal"] + c["abnormal"] for c in counts.values()) == len(train)


def test_bad_image_is_an_error_or_a_counted_skip(writable_root: Path):
    datamodule = make_datamodule(writable_root)
    datamodule.setup("fit")
    victim = datamodule.split_frame("val")["path"].iloc[0]
    (writable_root / victim).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(Exception, match=victim):
        next(iter(datamodule.dataloader("val", shuffle=False)))
    skipping = make_datamodule(writable_root, on_bad_image="skip")
    skipping.setup("fit")
    batch = next(iter(skipping.dataloader("val", shuffle=False)))
    assert batch["skipped"] == [victim]
    assert len(batch["path"]) == 3


def test_empty_test_split_says_there_is_nothing_to_test(writable_root: Path):
    (writable_root / "valid_image_paths.csv").write_text("")
    (writable_root / "valid_labeled_studies.csv").write_text("")
    datamodule = make_datamodule(writable_root)
    datamodule.setup("fit")
    assert not datamodule.has_split("test")
    with pytest.raises(MuraDataError, match="nothing to test on"):
        datamodule.test_dataloader()


def test_synthetic_settings_generate_on_first_use(tmp_path: Path):
    root = tmp_path / "synthetic" / "MURA-v1.1"
    synthetic = dict(seed=1, train_patients_per_part=2, valid_patients_per_part=1, image_size=64, max_views=2,
                     workers=1, edge_cases=False)
    datamodule = make_datamodule(root, synthetic=synthetic, val_fraction=0.3)
    datamodule.prepare_data()
    assert (root / "train_image_paths.csv").is_file()
    datamodule.setup("fit")
    assert datamodule.has_split("test")


def test_prepare_data_fails_fast_on_a_wrong_root(tmp_path: Path):
    (tmp_path / "train_image_paths.csv").write_text("")
    with pytest.raises(MuraDataError, match="train_labeled_studies.csv: missing"):
        make_datamodule(tmp_path).prepare_data()
