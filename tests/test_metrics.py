from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import brier_score_loss, cohen_kappa_score, roc_auc_score
from torchmetrics.classification import BinaryCalibrationError

from mura.data.index import BODY_PARTS
from mura.evaluation.metrics import (
    BOOTSTRAP_REPLICATES,
    CALIBRATION_BINS,
    LOGGED_METRICS,
    aggregate_studies,
    binary_metrics,
    flatten_for_logging,
    kappa_ci_standard_error,
    metrics_report,
    patient_bootstrap_intervals,
    patient_bootstrap_weights,
    reliability_bins,
    weighted_auroc,
    weighted_kappa,
)
from mura.evaluation.store import PredictionStore, predictions_frame

M_KEYS = {"n", "kappa", "kappa_ci95", "kappa_ci95_se", "auroc", "auroc_ci95", "accuracy", "sensitivity",
          "specificity", "bootstrap_replicates", "ece", "ece_bins", "brier"}


def random_images(n_studies: int = 40, seed: int = 0, n_patients: int | None = None) -> pd.DataFrame:
    """Studies of 1-4 images, spread over `n_patients` patients (default: two studies a patient)."""
    rng = np.random.default_rng(seed)
    n_patients = n_patients or max(n_studies // 2, 1)
    patients = np.r_[np.arange(n_patients), rng.integers(0, n_patients, max(n_studies - n_patients, 0))][:n_studies]
    rows = []
    image_idx = 0
    for study in range(n_studies):
        label = int(rng.random() < 0.4)
        part = BODY_PARTS[study % 3]
        for _ in range(int(rng.integers(1, 5))):
            logit = rng.normal(1.5 if label else -1.0, 1.5)
            rows.append((image_idx, study, int(patients[study]), part, label, logit, 1 / (1 + math.exp(-logit))))
            image_idx += 1
    return pd.DataFrame(rows, columns=["image_idx", "study_idx", "patient", "body_part", "label", "logit", "probability"])


def test_store_dedupes_padding_and_aggregation_equals_pandas_groupby():
    images = random_images()
    store = PredictionStore()
    # Shuffled, in uneven batches, with the first images repeated as a DistributedSampler pads.
    order = np.r_[np.random.default_rng(1).permutation(len(images)), [0, 1, 2]]
    for chunk in np.array_split(order, 7):
        rows = images.iloc[chunk]
        store.update(
            torch.tensor(rows["image_idx"].to_numpy()), torch.tensor(rows["study_idx"].to_numpy()),
            torch.tensor(rows["patient"].to_numpy()), torch.tensor([BODY_PARTS.index(p) for p in rows["body_part"]]),
            torch.tensor(rows["label"].to_numpy(), dtype=torch.float32), torch.tensor(rows["logit"].to_numpy(), dtype=torch.float32),
        )
    frame = predictions_frame(store.compute())
    assert len(frame) == len(images)
    studies = aggregate_studies(frame).set_index("study_idx")
    reference = images.groupby("study_idx").agg(probability=("probability", "mean"), label=("label", "first"), n=("image_idx", "size"))
    assert np.allclose(studies["probability"], reference["probability"], atol=1e-6)
    assert (studies["label"] == reference["label"]).all() and (studies["n_views"] == reference["n"]).all()
    assert (studies["patient"] == images.groupby("study_idx")["patient"].first()).all()


def test_a_split_of_one_image_gives_a_one_row_table():
    """torchmetrics' compute squeezes one-element states to 0-d tensors (a validation split of one image crashed)."""
    store = PredictionStore()
    store.update(*(torch.tensor([value]) for value in (0, 0, 0, 0)), torch.tensor([1.0]), torch.tensor([0.3]))
    frame = predictions_frame(store.compute())
    assert len(frame) == 1 and frame.loc[0, "label"] == 1 and frame.loc[0, "logit"] == pytest.approx(0.3)


def test_study_table_carries_the_patient():
    images = random_images(30)
    studies = aggregate_studies(images).set_index("study_idx")
    assert (studies["patient"] == images.groupby("study_idx")["patient"].first()).all()


def test_metrics_equal_scikit_learn_per_body_part():
    images = random_images(60)
    report = metrics_report(images)
    studies = aggregate_studies(images)
    for name, frame in [("overall", studies), *studies.groupby("body_part")]:
        predictions = (frame["probability"] > 0.5).astype(int)
        metrics = report["study"][name]
        assert set(metrics) == M_KEYS
        assert metrics["kappa"] == pytest.approx(cohen_kappa_score(frame["label"], predictions))
        assert metrics["auroc"] == pytest.approx(roc_auc_score(frame["label"], frame["probability"]))
        assert metrics["n"] == len(frame)
        assert metrics["bootstrap_replicates"] == BOOTSTRAP_REPLICATES == 1000
        assert metrics["kappa_ci95_se"] == kappa_ci_standard_error(frame["label"].to_numpy(), predictions.to_numpy())
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
    assert metrics["kappa_ci95_se"] == [low, high] and metrics["kappa_ci95"] is None  # no bootstrap asked for
    assert metrics["sensitivity"] == pytest.approx(0.8) and metrics["specificity"] == pytest.approx(0.8)


def tied_table(n: int = 150, n_patients: int = 60, seed: int = 0):
    """Labels, probabilities rounded to 0.05 (many ties, across classes too) and patients."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    probabilities = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1) * 20) / 20
    patients = rng.integers(0, n_patients, n)
    return labels, probabilities, patients


def test_vectorised_kappa_and_auroc_equal_scikit_learns_weighted_ones():
    labels, probabilities, patients = tied_table()
    predictions = (probabilities > 0.5).astype(int)
    weights = patient_bootstrap_weights(patients, 12, np.random.default_rng(4))
    assert weights.shape == (12, len(labels))
    # Every row's weight is its patient's draw count: one weight per patient, summing to the number of patients.
    for replicate in weights:
        per_patient = pd.Series(replicate).groupby(patients).agg(["min", "max"])
        assert (per_patient["min"] == per_patient["max"]).all()
        assert per_patient["min"].sum() == len(np.unique(patients))
    fractional = np.random.default_rng(5).random((3, len(labels)))  # the float path
    large = weights[:3].astype(np.int64) * 1000  # totals over 2^15: the int64 path
    for batch in (weights, fractional, large):
        kappas, aurocs = weighted_kappa(labels, predictions, batch), weighted_auroc(labels, probabilities, batch)
        for row, kappa, auroc in zip(batch, kappas, aurocs, strict=True):
            assert kappa == pytest.approx(cohen_kappa_score(labels, predictions, sample_weight=row), abs=1e-12)
            assert auroc == pytest.approx(roc_auc_score(labels, probabilities, sample_weight=row), abs=1e-12)


def test_undefined_replicates_are_nan():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([0.1, 0.2, 0.3, 0.9])
    weights = np.array([[1, 1, 0, 0],   # negatives only: AUROC and kappa (all-negative labels and predictions) undefined
                        [0, 0, 1, 0],   # one positive predicted negative: AUROC undefined, kappa 0
                        [1, 1, 1, 1]])
    kappas = weighted_kappa(labels, (probabilities > 0.5).astype(int), weights)
    aurocs = weighted_auroc(labels, probabilities, weights)
    assert np.isnan(kappas[0]) and kappas[1] == 0.0 and kappas[2] == pytest.approx(cohen_kappa_score(labels, probabilities > 0.5))
    assert np.isnan(aurocs[0]) and np.isnan(aurocs[1]) and aurocs[2] == 1.0


def test_patient_bootstrap_interval_contains_the_estimate():
    # 200 studies over 120 patients, probabilities correlated with the labels.
    images = random_images(200, seed=2, n_patients=120)
    assert aggregate_studies(images)["patient"].nunique() == 120
    report = metrics_report(images, seed=0)
    for level in ("study", "image"):
        metrics = report[level]["overall"]
        for name in ("kappa", "auroc"):
            low, high = metrics[f"{name}_ci95"]
            assert low < metrics[name] < high
            assert high - low < 0.5
    assert metrics_report(images, seed=0) == report  # seeded
    assert metrics_report(images, seed=1)["study"]["overall"]["kappa_ci95"] != report["study"]["overall"]["kappa_ci95"]


def test_resampling_patients_is_wider_than_resampling_studies_when_a_patients_studies_agree():
    # 40 patients with 5 identical studies each: 40 independent observations, not 200.
    rng = np.random.default_rng(0)
    patient_labels = (rng.random(40) < 0.5).astype(int)
    patient_probabilities = np.clip(rng.normal(0.3 + 0.4 * patient_labels, 0.2), 0.01, 0.99)
    labels, probabilities = np.repeat(patient_labels, 5), np.repeat(patient_probabilities, 5)
    patients = np.repeat(np.arange(40), 5)
    by_patient = patient_bootstrap_intervals(labels, probabilities, patients, 0.5, 1000, seed=0)
    by_study = patient_bootstrap_intervals(labels, probabilities, np.arange(len(labels)), 0.5, 1000, seed=0)
    for name in ("kappa", "auroc"):
        patient_width = by_patient[name][1] - by_patient[name][0]
        study_width = by_study[name][1] - by_study[name][0]
        assert patient_width > 1.6 * study_width  # about sqrt(5) = 2.2 times
    # Resampling the 40 patients of 5 identical studies is resampling 40 single studies: the same intervals.
    single = patient_bootstrap_intervals(patient_labels, patient_probabilities, np.arange(40), 0.5, 1000, seed=0)
    for name in ("kappa", "auroc"):
        assert single[name] == pytest.approx(by_patient[name], abs=1e-12)


def test_metrics_report_needs_a_patient_column():
    images = random_images(20)
    with pytest.raises(ValueError, match="`patient` column"):
        metrics_report(images.drop(columns="patient"))
    with pytest.raises(ValueError, match="patient id"):
        metrics_report(images.assign(patient=images["patient"].where(images.index > 0)))
    mixed = images.copy()
    study = mixed["study_idx"].value_counts().idxmax()  # a study of several images, one of them another patient's
    mixed.loc[mixed.index[mixed["study_idx"] == study][0], "patient"] = -1
    with pytest.raises(ValueError, match="more than one patient"):
        metrics_report(mixed)


def test_bootstrap_off_gives_no_intervals_and_logging_stays_scalar():
    images = random_images(40)
    report = metrics_report(images, bootstrap=0)
    for groups in report.values():
        for metrics in groups.values():
            assert set(metrics) == M_KEYS
            assert metrics["kappa_ci95"] is None and metrics["auroc_ci95"] is None and metrics["bootstrap_replicates"] == 0
            assert metrics["kappa_ci95_se"] is not None
    flat = flatten_for_logging(metrics_report(images, bootstrap=50), "val")
    assert flat["val/study/kappa"] == report["study"]["overall"]["kappa"]
    assert all(isinstance(value, float) for value in flat.values())
    assert not any(key.endswith(("ci95", "ci95_se", "/n", "bootstrap_replicates")) for key in flat)


def test_intervals_need_two_patients_and_a_perfect_score_gives_a_zero_width_interval():
    labels, probabilities = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])
    assert patient_bootstrap_intervals(labels, probabilities, ["p"] * 4) == {"kappa": None, "auroc": None}
    assert patient_bootstrap_intervals(labels, probabilities, [1, 2, 3, 4], replicates=0) == {"kappa": None, "auroc": None}
    metrics = binary_metrics(labels, probabilities, patients=[1, 2, 3, 4], bootstrap=200)
    assert metrics["kappa"] == 1.0 and metrics["kappa_ci95"] == [1.0, 1.0] and metrics["auroc_ci95"] == [1.0, 1.0]
    assert metrics["kappa_ci95_se"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="patients"):
        binary_metrics(labels, probabilities, bootstrap=10)


def test_undefined_metrics_are_none():
    metrics = binary_metrics(np.array([1, 1, 1]), np.array([0.9, 0.8, 0.7]), patients=["a", "b", "c"], bootstrap=100)
    assert metrics["auroc"] is None and metrics["specificity"] is None and metrics["kappa"] is None
    assert metrics["kappa_ci95"] is None and metrics["auroc_ci95"] is None  # every replicate undefined: dropped
    assert metrics["accuracy"] == 1.0


def test_calibration_is_torchmetrics_ece_over_15_equal_width_bins_and_the_brier_score():
    images = random_images(80, seed=4)
    report = metrics_report(images, bootstrap=0)
    studies = aggregate_studies(images)
    for level, table in (("study", studies), ("image", images)):
        for name, frame in [("overall", table), *table.groupby("body_part")]:
            metrics = report[level][name]
            probabilities = torch.tensor(frame["probability"].to_numpy())
            ece = BinaryCalibrationError(n_bins=15, norm="l1")(probabilities, torch.tensor(frame["label"].to_numpy()))
            assert metrics["ece"] == pytest.approx(float(ece), abs=1e-12)
            assert metrics["brier"] == pytest.approx(brier_score_loss(frame["label"], frame["probability"]), abs=1e-12)
            assert metrics["ece_bins"] == CALIBRATION_BINS == 15
    # By hand: 0.25 x2 (both normal), 0.55 (abnormal), 0.75 x2 (both abnormal) fall in three different bins.
    labels, probabilities = np.array([0, 0, 1, 1, 1]), np.array([0.25, 0.25, 0.55, 0.75, 0.75])
    metrics = binary_metrics(labels, probabilities)
    assert metrics["ece"] == pytest.approx(2 / 5 * 0.25 + 1 / 5 * 0.45 + 2 / 5 * 0.25)
    assert metrics["brier"] == pytest.approx((2 * 0.25**2 + 0.45**2 + 2 * 0.25**2) / 5)


def test_a_calibrated_model_has_no_calibration_error_but_a_brier_score():
    # Always 0.3, and 30% of the studies abnormal: honest probabilities, however useless for ranking.
    labels, probabilities = np.r_[np.ones(30), np.zeros(70)].astype(int), np.full(100, 0.3)
    metrics = binary_metrics(labels, probabilities)
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-12) and metrics["brier"] == pytest.approx(0.21)
    overconfident = binary_metrics(labels, np.where(labels == 1, 0.99, 0.01)[::-1].copy())  # confident and wrong
    assert overconfident["ece"] > 0.5 and overconfident["brier"] > 0.5
    one_class = binary_metrics(np.ones(4, dtype=int), np.array([0.9, 0.8, 0.6, 0.7]))
    assert one_class["auroc"] is None and one_class["ece"] == pytest.approx(0.25) and one_class["brier"] is not None
    empty = binary_metrics(np.array([], dtype=int), np.array([]))
    assert empty["ece"] is None and empty["brier"] is None and empty["ece_bins"] == 15


def test_reliability_bins_are_the_ece_bins():
    rng = np.random.default_rng(3)
    labels = (rng.random(500) < 0.4).astype(int)
    probabilities = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0.001, 0.999)
    bins = reliability_bins(labels, probabilities)
    assert len(bins) == 15 and bins["count"].sum() == 500
    assert np.allclose(bins["high"] - bins["low"], 1 / 15)  # equal widths over [0, 1]
    assert bins["low"].iloc[0] == 0.0 and bins["high"].iloc[-1] == 1.0
    filled = bins[bins["count"] > 0]
    ece = (filled["count"] * (filled["fraction_abnormal"] - filled["mean_probability"]).abs()).sum() / 500
    assert ece == pytest.approx(binary_metrics(labels, probabilities)["ece"], abs=1e-12)
    assert ((filled["mean_probability"] >= filled["low"]) & (filled["mean_probability"] < filled["high"])).all()
    edges = reliability_bins(np.array([0, 1, 1]), np.array([0.0, 2 / 15, 1.0]))  # a left edge opens its bin; 1.0: the last
    assert list(edges["count"].iloc[[0, 2, 14]]) == [1, 1, 1] and edges["count"].sum() == 3


def test_calibration_is_flattened_for_logging_with_the_other_metrics():
    """What the LightningModule logs every epoch (the logged columns: tests/test_train.py's run folder)."""
    assert {"ece", "brier"} <= set(LOGGED_METRICS)
    report = metrics_report(random_images(40), bootstrap=0)
    flat = flatten_for_logging(report, "val")
    assert flat["val/study/brier"] == report["study"]["overall"]["brier"]
    assert flat["val/image/XR_ELBOW/ece"] == report["image"]["XR_ELBOW"]["ece"]
    assert not any(key.endswith("ece_bins") for key in flat)


def test_the_reports_intervals_resample_patients_not_rows():
    """A patient's studies (and a study's images) go into a bootstrap replicate together; resampling rows would
    treat them as independent and give intervals too narrow."""
    images = random_images(60, seed=5, n_patients=12)  # about five studies a patient
    report = metrics_report(images, bootstrap=300, seed=0)
    for level, table in (("study", aggregate_studies(images)), ("image", images)):
        scores = (table["label"].to_numpy(), table["probability"].to_numpy())
        by_patient = patient_bootstrap_intervals(*scores, table["patient"].to_numpy(), 0.5, 300, seed=0)
        by_row = patient_bootstrap_intervals(*scores, np.arange(len(table)), 0.5, 300, seed=0)
        assert by_patient != by_row  # this data tells the two apart
        assert report[level]["overall"]["kappa_ci95"] == pytest.approx(by_patient["kappa"], abs=1e-12)
        assert report[level]["overall"]["auroc_ci95"] == pytest.approx(by_patient["auroc"], abs=1e-12)


def test_the_report_breaks_study_results_down_by_number_of_views():
    """metrics.json's `views`: studies of 1, 2, 3 and 4+ views (random_images: 1-4 a study), each group's metrics those
    of its own studies with their own patient bootstrap, overall the study level's; not logged every epoch."""
    images = random_images(n_studies=120, seed=4)
    report = metrics_report(images, bootstrap=200)
    studies = aggregate_studies(images)
    assert list(report["views"]) == ["overall", "1", "2", "3", "4+"]
    assert sum(report["views"][group]["n"] for group in ("1", "2", "3", "4+")) == report["study"]["overall"]["n"]
    assert report["views"]["overall"] == report["study"]["overall"]
    single = studies[studies["n_views"] == 1]
    expected = binary_metrics(single["label"].to_numpy(), single["probability"].to_numpy(), 0.5, single["patient"].to_numpy(),
                              200, 0)
    assert report["views"]["1"] == expected
    assert not any("/views" in key for key in flatten_for_logging(report, "test"))
