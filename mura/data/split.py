"""Patient-grouped train/val/test splits and the split table.

The official `valid` split is the test set. Validation is carved out of the official `train` split by
patient, so no patient (and so no study) is in two splits: the seed shuffled images and leaked patients.
Patients are stratified by their main (body part, label) stratum and taken, in a seeded random order, while
that brings each stratum's share of validation images closer to `val_fraction`. scikit-learn's StratifiedGroupKFold only gives fractions of the
form 1/k, hence this small greedy assignment.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from mura.data.index import MuraDataError

log = logging.getLogger(__name__)

SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")
SPLITS_CSV_COLUMNS: list[str] = ["path", "split", "body_part", "patient", "study", "label"]


def assign_splits(table: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """A copy of the index table whose `split` column is train / val / test."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), not {val_fraction}")
    result = table.copy()
    result["split"] = np.where(table["split"] == "valid", "test", "train")
    train = result[result["split"] == "train"]
    if val_fraction == 0.0 or train.empty:
        return result

    # A patient's stratum is the (body part, label) holding most of their images.
    per_patient = (
        train.groupby(["patient", "body_part", "label"], sort=True).size().rename("images").reset_index()
        .sort_values(["patient", "images", "body_part", "label"], ascending=[True, False, True, True])
    )
    patient_images = per_patient.groupby("patient")["images"].sum()
    primary = per_patient.drop_duplicates("patient").set_index("patient")
    primary["stratum"] = primary["body_part"] + "/" + primary["label"].astype(str)
    primary["images"] = patient_images

    rng = np.random.default_rng(seed)
    val_patients: list[str] = []
    for _, stratum in primary.groupby("stratum", sort=True):
        order = rng.permutation(len(stratum))
        target = val_fraction * stratum["images"].sum()
        taken = 0
        for position in order:
            images = stratum["images"].iloc[position]
            # Take a patient when that brings the stratum's validation images no further from the target.
            if abs(taken + images - target) <= abs(taken - target):
                val_patients.append(stratum.index[position])
                taken += images
    if not val_patients:
        # Too few patients for any stratum to reach its share: still validate on one patient, not on none.
        val_patients.append(primary.index[int(rng.integers(len(primary)))])
    is_val = (result["split"] == "train") & result["patient"].isin(val_patients)
    result.loc[is_val, "split"] = "val"
    return result


def split_table(splits: pd.DataFrame) -> pd.DataFrame:
    """Images, studies, patients and % abnormal studies per split and body part (with an `all` row each)."""
    rows = []
    for split in SPLIT_ORDER:
        part_of_split = splits[splits["split"] == split]
        if part_of_split.empty:
            continue
        groups = [(body_part, frame) for body_part, frame in part_of_split.groupby("body_part", sort=True)]
        groups.append(("all", part_of_split))
        for body_part, frame in groups:
            studies = frame.drop_duplicates("study")
            rows.append(
                {
                    "split": split,
                    "body_part": body_part,
                    "images": len(frame),
                    "studies": len(studies),
                    "patients": frame["patient"].nunique(),
                    "abnormal_studies_pct": round(100.0 * studies["label"].mean(), 1),
                }
            )
    return pd.DataFrame(rows, columns=["split", "body_part", "images", "studies", "patients", "abnormal_studies_pct"])


class SplitLeakError(MuraDataError):
    """A patient or a study in two splits: validation or test numbers would be inflated."""


def check_no_leak(splits: pd.DataFrame) -> None:
    """Raise `SplitLeakError` if a patient or a study appears in two splits."""
    for key in ("patient", "study"):
        n_splits = splits.groupby(key)["split"].nunique()
        leaked = n_splits[n_splits > 1]
        if len(leaked):
            example = leaked.index[0]
            where = ", ".join(sorted(splits.loc[splits[key] == example, "split"].unique()))
            raise SplitLeakError(
                f"{len(leaked)} {key}(s) appear in more than one split, e.g. {example} ({where}); the official train and "
                "valid CSVs must not share patients: `python -m mura.audit` lists them (patient_in_both_splits)"
            )


def split_mismatch(recorded: dict, current: dict) -> str | None:
    """Why two split records (`split_definition`, plus body parts where both have them) are not one split, or None."""
    if recorded["val_patients_digest"] != current["val_patients_digest"]:
        return (f"its validation split (split_seed {recorded['split_seed']}, val_fraction {recorded['val_fraction']}: "
                f"{recorded['val_patients']} patients, digest {recorded['val_patients_digest']}) is not this one "
                f"(split_seed {current['split_seed']}, val_fraction {current['val_fraction']}: {current['val_patients']} "
                f"patients, digest {current['val_patients_digest']})")
    if "body_parts" in recorded and "body_parts" in current and list(recorded["body_parts"]) != list(current["body_parts"]):
        return f"it trained on body parts {list(recorded['body_parts'])}, not {list(current['body_parts'])}"
    return None


def split_definition(splits: pd.DataFrame, split_seed: int, val_fraction: float, cv_folds: int | None = None,
                     cv_fold: int | None = None) -> dict:
    """What decides the validation split, for checkpoints: a run's validation patients are a function of the
    release and these settings alone (drawn over every body part, before any is selected), so an evaluation can
    rebuild them and prove it did with the digest."""
    val_patients = sorted(splits.loc[splits["split"] == "val", "patient"].unique())
    digest = hashlib.sha256("\n".join(val_patients).encode()).hexdigest()[:16]
    return {"split_seed": int(split_seed), "val_fraction": float(val_fraction), "cv_folds": cv_folds, "cv_fold": cv_fold,
            "val_patients": len(val_patients), "val_patients_digest": digest}


def check_folds(cv_folds: int | None, cv_fold: int | None) -> tuple[int | None, int | None]:
    """data.cv_folds and data.cv_fold: both unset, or K >= 2 folds and a fold index 0..K-1."""
    if cv_folds is None and cv_fold is None:
        return None, None
    if cv_folds is None or cv_fold is None or cv_folds < 2 or not 0 <= cv_fold < cv_folds:
        raise MuraDataError(f"data.cv_folds={cv_folds} data.cv_fold={cv_fold}: give both, K >= 2 folds and a fold 0..K-1 "
                            "(a sweep: data.cv_fold=0,1,2,3,4 with data.cv_folds=5)")
    return int(cv_folds), int(cv_fold)


def assign_fold(table: pd.DataFrame, cv_folds: int, cv_fold: int, seed: int) -> pd.DataFrame:
    """A copy of the index table whose `split` is train / val / test, validation being fold `cv_fold` of `cv_folds`
    patient-grouped folds of the official train split: no patient in two folds (so no study split), each fold
    stratified by body part and label as far as the patients allow (scikit-learn's StratifiedGroupKFold over the
    images, grouped by patient), deterministic for `seed`."""
    from sklearn.model_selection import StratifiedGroupKFold

    result = table.copy()
    result["split"] = np.where(table["split"] == "valid", "test", "train")
    train = result[result["split"] == "train"]
    if train["patient"].nunique() < cv_folds:
        raise MuraDataError(f"{train['patient'].nunique()} training patients cannot make {cv_folds} folds")
    strata = train["body_part"] + "/" + train["label"].astype(str)
    folds = StratifiedGroupKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    _, val_rows = list(folds.split(train, strata, groups=train["patient"]))[cv_fold]
    result.loc[train.index[val_rows], "split"] = "val"
    return result
