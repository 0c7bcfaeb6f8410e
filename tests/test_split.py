from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mura.data.index import build_index
from mura.data.split import SplitLeakError, assign_splits, check_no_leak, split_table


@pytest.fixture(scope="module")
def index(synthetic_root: Path) -> pd.DataFrame:
    return build_index(synthetic_root)


def test_official_valid_is_test_and_val_comes_from_train_by_patient(index: pd.DataFrame):
    splits = assign_splits(index, val_fraction=0.2, seed=1)
    assert (splits.loc[index["split"] == "valid", "split"] == "test").all()
    assert set(splits.loc[index["split"] == "train", "split"]) == {"train", "val"}
    check_no_leak(splits)


def test_val_fraction_and_stratification(index: pd.DataFrame):
    splits = assign_splits(index, val_fraction=0.25, seed=0)
    official_train = splits[index["split"] == "train"]
    share = (official_train["split"] == "val").mean()
    assert 0.15 < share < 0.45
    # every body part is represented in validation
    assert set(official_train.loc[official_train["split"] == "val", "body_part"]) == set(official_train["body_part"])


def test_split_is_deterministic_per_seed(index: pd.DataFrame):
    first = assign_splits(index, 0.2, seed=5)["split"]
    assert first.equals(assign_splits(index, 0.2, seed=5)["split"])
    assert not first.equals(assign_splits(index, 0.2, seed=6)["split"])


def test_leak_check_catches_a_shared_patient(index: pd.DataFrame):
    splits = assign_splits(index, 0.2, seed=0)
    val_patient = splits.loc[splits["split"] == "val", "patient"].iloc[0]
    extra = splits[splits["patient"] == val_patient].iloc[[0]].assign(split="train", study="other")
    with pytest.raises(SplitLeakError, match="patient"):
        check_no_leak(pd.concat([splits, extra]))


def test_split_table_counts(index: pd.DataFrame):
    splits = assign_splits(index, 0.2, seed=0)
    table = split_table(splits).set_index(["split", "body_part"])
    for split in ("train", "val", "test"):
        part = splits[splits["split"] == split]
        row = table.loc[(split, "all")]
        assert row["images"] == len(part)
        assert row["studies"] == part["study"].nunique()
        assert row["patients"] == part["patient"].nunique()
        assert row["abnormal_studies_pct"] == round(100 * part.drop_duplicates("study")["label"].mean(), 1)


def test_tiny_selection_still_gets_a_validation_patient(index: pd.DataFrame):
    one_part = index[index["body_part"] == "XR_WRIST"]
    splits = assign_splits(one_part, val_fraction=0.01, seed=0)
    assert splits.loc[splits["split"] == "val", "patient"].nunique() == 1
    check_no_leak(splits)
