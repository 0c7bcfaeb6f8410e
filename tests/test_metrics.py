from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mura.data.index import BODY_PARTS
from mura.evaluation.metrics import (
    aggregate_studies,
    binary_metrics,
    bootstrap_intervals,
    kappa_ci_standard_error,
    metrics_report,
)
from mura.evaluation.store import PredictionStore, predictions_frame


def random_images(n_studies: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    image_idx = 0
    for study in range(n_studies):
        label = int(rng.random() < 0.4)
        part = BODY_PARTS[study % 3]
        for _ in range(int(rng.integers(1, 5))):
            logit = rng.normal(1.5 if label else -1.0, 1.5)
            rows.append((image_idx, study, part, label, logit, 1 / (1 + math.exp(-logit))))
            image_idx += 1
    return pd.DataFrame(rows, columns=["image_idx", "study_idx", "body_part", "label", "logit", "probability"])


def test_store_dedupes_padding_and_aggregation_equals_pandas_groupby():
    images = random_images()
    store = PredictionStore()
    # Shuffled, in uneven batches, with the first images repeated as a DistributedSampler pads.
    order = np.r_[np.random.default_rng(1).permutation(len(images)), [0, 1, 2]]
    for chunk in np.array_split(order, 7):
        rows = images.iloc[chunk]
        store.update(
            torch.tensor(rows["image_idx"].to_numpy()), torch.tensor(rows["study_idx"].to_numpy()),
            torch.tensor([BODY_PARTS.index(p) for p in rows["body_part"]]),
            torch.tensor(rows["label"].to_numpy(), dtype=torch.float32), torch.tensor(rows["logit"].to_numpy(), dtype=torch.float32),
        )
    frame = predictions_frame(store.compute())
    assert len(frame) == len(images)
    studies = aggregate_studies(frame).set_index("study_idx")
    reference = images.groupby("study_idx").agg(probability=("probability", "mean"), label=("label", "first"), n=("image_idx", "size"))
    assert np.allclose(studies["probability"], reference["probability"], atol=1e-6)
    assert (studies["label"] == reference["label"]).all() and (studies["n_views"] == reference["n"]).all()


def test_metrics_equal_scikit_learn_per_body_part():
    images = random_images(60)
    report = metrics_report(images)
    studies = aggregate_studies(images)
    for name, frame in [("overall", studies), *studies.groupby("body_part")]:
        predictions = (frame["probability"] > 0.5).astype(int)
        assert report["study"][name]["kappa"] == pytest.approx(cohen_kappa_score(frame["label"], predictions))
        assert report["study"][name]["auroc"] == pytest.approx(roc_auc_score(frame["label"], frame["probability"]))
        assert report["study"][name]["n"] == len(frame)
    assert report["image"]["overall"]["n"] == len(images)
    assert report["image"]["overall"]["auroc"] == pytest.approx(roc_auc_score(images["label"], images["probability"]))


def test_kappa_ci_matches_a_hand_computation():
    # 10 studies: 4 true positives, 1 false negative, 1 false positive, 4 true negatives.
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    predictions = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0])
    po, pe = 0.8, 0.5
    kappa = (po - pe) / (1 - pe)  # 0.6
    se = math.sqrt(po * (1 - po) / (10 * (1 - pe) ** 2))  # 0.25298
    low, high = kappa_ci_standard_error(labels, predictions)
    assert low == pytest.approx(kappa - 1.959964 * se, abs=1e-6)
    assert high == pytest.approx(min(1.0, kappa + 1.959964 * se), abs=1e-6)
    metrics = binary_metrics(labels, predictions.astype(float))
    assert metrics["kappa"] == pytest.approx(0.6)
    assert metrics["sensitivity"] == pytest.approx(0.8) and metrics["specificity"] == pytest.approx(0.8)


def test_bootstrap_interval_brackets_the_estimate():
    images = random_images(80)
    studies = aggregate_studies(images)
    intervals = bootstrap_intervals(studies["label"].to_numpy(), studies["probability"].to_numpy(), 0.5, 300, seed=0)
    kappa = metrics_report(images)["study"]["overall"]["kappa"]
    assert intervals["kappa"][0] < kappa < intervals["kappa"][1]
    assert intervals == bootstrap_intervals(studies["label"].to_numpy(), studies["probability"].to_numpy(), 0.5, 300, seed=0)


def test_undefined_metrics_are_none():
    metrics = binary_metrics(np.array([1, 1, 1]), np.array([0.9, 0.8, 0.7]))
    assert metrics["auroc"] is None and metrics["specificity"] is None and metrics["kappa"] is None
    assert metrics["accuracy"] == 1.0
