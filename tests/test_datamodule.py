from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from mura.data.datamodule import MuraDataModule
from mura.data.index import BODY_PARTS, MuraDataError
from mura.data.split import check_no_leak


def make_datamodule(root: Path | None, **overrides) -> MuraDataModule:
    settings = dict(root=None if root is None else str(root), image_size=48, recipe="paper", channels=3, batch_size=4, num_workers=0,
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


def test_an_image_broken_after_the_check_is_an_error_or_a_counted_skip(writable_root: Path):
    """A file that breaks during a run (after setup checked it) is still named, or counted and skipped."""
    datamodule = make_datamodule(writable_root)
    datamodule.setup("fit")
    skipping = make_datamodule(writable_root, on_bad_image="skip")
    skipping.setup("fit")
    victim = datamodule.split_frame("val")["path"].iloc[0]
    (writable_root / victim).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(Exception, match=victim):
        next(iter(datamodule.dataloader("val", shuffle=False)))
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
    synthetic = dict(dir=str(root), seed=1, train_patients_per_part=2, valid_patients_per_part=1, image_size=64, max_views=2,
                     workers=1, edge_cases=False)
    datamodule = make_datamodule(None, synthetic=synthetic, val_fraction=0.3)
    datamodule.prepare_data()
    assert (root / "train_image_paths.csv").is_file()
    datamodule.setup("fit")
    assert datamodule.has_split("test")


def test_prepare_data_fails_fast_on_a_wrong_root(tmp_path: Path):
    (tmp_path / "train_image_paths.csv").write_text("")
    with pytest.raises(MuraDataError, match="train_labeled_studies.csv: missing"):
        make_datamodule(tmp_path).prepare_data()


def test_a_patients_split_does_not_depend_on_the_body_parts_selected(synthetic_root: Path):
    """Drawn over every body part first: a wrist run's validation patients are the all-parts run's wrist patients,
    so one run's training patients never land in another's validation split."""
    everything = make_datamodule(synthetic_root, val_fraction=0.3, split_seed=5)
    wrist = make_datamodule(synthetic_root, val_fraction=0.3, split_seed=5, body_parts=["XR_WRIST"])
    for module in (everything, wrist):
        module.setup("validate")
    all_parts = everything.splits
    for split in ("train", "val"):
        expected = set(all_parts.loc[(all_parts["split"] == split) & (all_parts["body_part"] == "XR_WRIST"), "path"])
        assert set(wrist.split_frame(split)["path"]) == expected
    assert wrist.split_definition == everything.split_definition  # one split, whatever the parts
    assert wrist.state_dict()["split"]["body_parts"] == ["XR_WRIST"]


def test_setup_refuses_a_patient_in_two_splits(writable_root: Path):
    """The leak check runs in setup on the user's data, not only in the tests."""
    from mura.data.split import SplitLeakError

    train_line = (writable_root / "train_image_paths.csv").read_text().splitlines()[0]
    patient = train_line.split("/")[3]
    studies = (writable_root / "valid_labeled_studies.csv").read_text().splitlines()
    moved_from = studies[0].split("/")[3]
    # Rename a valid patient's folder and CSV rows to a train patient's id.
    for name in ("valid_image_paths.csv", "valid_labeled_studies.csv"):
        path = writable_root / name
        path.write_text(path.read_text().replace(f"/{moved_from}/", f"/{patient}/"))
    part = studies[0].split("/")[2]
    (writable_root / "valid" / part / moved_from).rename(writable_root / "valid" / part / patient)
    with pytest.raises(SplitLeakError, match=f"1 patient.*{patient} \\(test, "):
        make_datamodule(writable_root).setup("fit")


def test_resuming_with_another_split_is_refused(synthetic_root: Path):
    trained = make_datamodule(synthetic_root, split_seed=1)
    trained.setup("validate")
    state = trained.state_dict()
    same, other = make_datamodule(synthetic_root, split_seed=1), make_datamodule(synthetic_root, split_seed=2)
    for module in (same, other):
        module.setup("validate")
    same.load_state_dict(state)
    with pytest.raises(MuraDataError, match="cannot resume.*its validation split"):
        other.load_state_dict(state)
    wrist = make_datamodule(synthetic_root, split_seed=1, body_parts=["XR_WRIST"])
    wrist.setup("validate")
    with pytest.raises(MuraDataError, match="cannot resume.*body parts"):
        wrist.load_state_dict(state)


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("damage", [b"", b"not an image", "truncated"])
def test_an_unreadable_listed_image_stops_setup_naming_it(writable_root: Path, tmp_path: Path, cache: bool, damage):
    """Before any training step, whether or not the decode-once cache is on; the test split is checked too."""
    module = make_datamodule(writable_root, cache=cache, cache_dir=str(tmp_path / "cache"))
    listed = (writable_root / "valid_image_paths.csv").read_text().splitlines()
    victim = "/".join(listed[2].split("/")[1:])
    data = (writable_root / victim).read_bytes()
    (writable_root / victim).write_bytes(data[: len(data) // 2] if damage == "truncated" else damage)
    with pytest.raises(MuraDataError, match=f"1 unreadable image.*{victim}.*data.on_bad_image=skip"):
        module.setup("fit")


def test_with_skip_the_unreadable_images_are_listed_before_training(writable_root: Path, tmp_path: Path):
    listed = (writable_root / "train_image_paths.csv").read_text().splitlines()
    victims = sorted("/".join(line.split("/")[1:]) for line in listed[3:5])
    for victim in victims:
        (writable_root / victim).write_bytes(b"")
    module = make_datamodule(writable_root, on_bad_image="skip", splits_dir=str(tmp_path))
    module.setup("fit")
    assert (tmp_path / "skipped_images.txt").read_text().splitlines() == victims
    assert not set(victims) & set(module.splits["path"])
    assert sorted(module.skipped) == victims
    assert module.splits["image_idx"].tolist() == list(range(len(module.splits)))
    assert len(pd.read_csv(tmp_path / "splits.csv")) == len(module.splits)


def test_with_skip_a_missing_file_is_listed_and_the_split_stays_the_same(writable_root: Path, tmp_path: Path):
    reference = make_datamodule(writable_root, val_fraction=0.3)
    reference.setup("fit")
    victim = reference.split_frame("train")["path"].iloc[2]
    (writable_root / victim).unlink()
    module = make_datamodule(writable_root, on_bad_image="skip", val_fraction=0.3, splits_dir=str(tmp_path))
    module.setup("fit")
    assert module.skipped == {victim: "file not found"}
    assert (tmp_path / "skipped_images.txt").read_text().splitlines() == [victim]
    assert module.split_definition == reference.split_definition  # which patients validate does not move
