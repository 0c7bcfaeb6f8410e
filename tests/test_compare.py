"""mura.compare: paired differences between runs on the same studies, each statistic against an independent
reference (loops written out, scipy, a hand computation), and the command on run folders as the commands write them."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, norm, rankdata
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from conftest import compose_config
from mura.app.errors import ConfigError
from mura.compare import compare
from mura.evaluation.comparison import (
    METRICS,
    bootstrap_weight_blocks,
    compare_runs,
    delong_test,
    holm,
    mcnemar_exact,
    midranks,
)

PREDICTION_COLUMNS = ["study", "patient", "body_part", "n_views", "label", "probability", "prediction"]


def fabricated_studies(seed: int = 0, patients: int = 60) -> pd.DataFrame:
    """A study table as predictions.csv holds one: two body parts, some patients with two or three studies."""
    rng = np.random.default_rng(seed)
    patient = np.r_[np.arange(patients), rng.integers(0, patients, patients // 2)]
    body_part = np.where(np.arange(patients) % 2, "XR_WRIST", "XR_HAND")[patient]
    label = rng.random(len(patient)) < 0.45
    probability = 1 / (1 + np.exp(-(1.2 * (2 * label - 1) + rng.normal(0, 1.0, len(patient)))))
    return pd.DataFrame({
        "study": [f"valid/{part}/patient{number:05d}/study{index}" for index, (part, number)
                  in enumerate(zip(body_part, patient, strict=True))],
        "patient": [f"patient{number:05d}" for number in patient], "body_part": body_part,
        "n_views": rng.integers(1, 4, len(patient)), "label": label.astype(int), "probability": probability,
        "prediction": (probability > 0.5).astype(int),
    })


def perturbed(studies: pd.DataFrame, scale: float, seed: int = 1) -> pd.DataFrame:
    """Another run on the same studies: the probabilities moved by `scale` times a fixed noise."""
    noise = np.random.default_rng(seed).normal(0, 1, len(studies))
    probability = np.clip(studies["probability"] + scale * noise, 0.0, 1.0)
    return studies.assign(probability=probability, prediction=(probability > 0.5).astype(int))


def write_run(folder: Path, studies: pd.DataFrame) -> Path:
    """A run folder as mura.evaluate leaves one: Hydra's record and predictions.csv."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("[]\n")
    studies[PREDICTION_COLUMNS].to_csv(folder / "predictions.csv", index=False)
    return folder


def run_compare(tmp_path: Path, *overrides: str) -> pd.DataFrame:
    return compare(compose_config([*overrides, f"paths.output_dir={tmp_path / 'out'}"], config_name="compare"))


def test_delong_variance_equals_the_structural_components_written_out():
    """DeLong et al. (1988): V10 and V01 from every (positive, negative) pair, their covariances by sums."""
    rng = np.random.default_rng(5)
    labels = rng.random(41) < 0.4
    scores = np.round(rng.random((2, 41)) + 0.3 * labels, 1)  # rounded: ties within and across the classes
    baseline, run = scores
    positives, negatives = np.flatnonzero(labels), np.flatnonzero(~labels)
    m, n = len(positives), len(negatives)

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = [[sum(psi(s[i], s[j]) for j in negatives) / n for i in positives] for s in (run, baseline)]
    v01 = [[sum(psi(s[i], s[j]) for i in positives) / m for j in negatives] for s in (run, baseline)]
    auc = [sum(row) / m for row in v10]

    def covariance(a: list[float], b: list[float]) -> float:
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        return sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b, strict=True)) / (len(a) - 1)

    s10 = [[covariance(a, b) for b in v10] for a in v10]
    s01 = [[covariance(a, b) for b in v01] for a in v01]
    variance = (s10[0][0] + s10[1][1] - 2 * s10[0][1]) / m + (s01[0][0] + s01[1][1] - 2 * s01[0][1]) / n

    difference, delong_variance, p_value = delong_test(labels, baseline, run)
    assert difference == pytest.approx(auc[0] - auc[1], abs=1e-12)
    assert difference == pytest.approx(roc_auc_score(labels, run) - roc_auc_score(labels, baseline), abs=1e-12)
    assert delong_variance == pytest.approx(variance, rel=1e-10)
    assert p_value == pytest.approx(2 * norm.sf(abs(difference) / math.sqrt(variance)), rel=1e-10)
    np.testing.assert_allclose(midranks(scores), np.vstack([rankdata(row) for row in scores]))


def test_mcnemar_exact_equals_a_binomial_test_of_the_discordant_studies():
    for baseline_only, run_only in [(3, 9), (10, 10), (7, 3), (0, 25), (1, 0), (120, 150), (400, 451)]:
        expected = binomtest(run_only, baseline_only + run_only, 0.5, alternative="two-sided").pvalue
        assert mcnemar_exact(baseline_only, run_only) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact(0, 0) == 1.0  # no discordant study: nothing tells the runs apart


def test_holm_against_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 (4 defined) -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    adjusted = holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1


def test_a_run_compared_with_itself_differs_by_nothing():
    studies = fabricated_studies()
    table = compare_runs({"A": studies, "A again": studies.sample(frac=1, random_state=0)}, "A", replicates=300)
    assert len(table[table["family"] == "main"]) == 3 * len(METRICS)  # two body parts and overall
    assert (table["difference"] == 0).all()
    assert (table["ci_low"] == 0).all() and (table["ci_high"] == 0).all()
    assert (table["p_value"] == 1).all() and (table["p_holm"] == 1).all()
    overall = table[table["group"] == "overall"].set_index("metric")
    assert overall.loc["kappa", "baseline_value"] == pytest.approx(
        cohen_kappa_score(studies["label"], studies["prediction"]))
    assert overall.loc["auroc", "baseline_value"] == pytest.approx(roc_auc_score(studies["label"], studies["probability"]))


def test_the_paired_interval_holds_the_difference_and_narrows_as_the_runs_agree_more():
    studies = fabricated_studies(patients=200)
    widths = []
    for scale in (0.4, 0.2, 0.1, 0.05, 0.0):
        table = compare_runs({"A": studies, "B": perturbed(studies, scale)}, "A", replicates=1000)
        rows = table[(table["group"] == "overall") & table["metric"].isin(["kappa", "auroc"])]
        assert ((rows["ci_low"] <= rows["difference"]) & (rows["difference"] <= rows["ci_high"])).all()
        widths.append((rows["ci_high"] - rows["ci_low"]).to_numpy())
    widths = np.array(widths)
    assert (np.diff(widths, axis=0) < 0).all(), widths  # kappa's and AUROC's both shrink at every step
    assert (widths[-1] == 0).all()


def test_a_patients_studies_move_together():
    studies = fabricated_studies()
    patients = studies["patient"].to_numpy()
    blocks = list(bootstrap_weight_blocks(patients, 700, seed=3))
    assert sum(len(block) for block in blocks) == 700
    for block in blocks:
        for patient in np.unique(patients):
            columns = block[:, patients == patient]
            assert (columns == columns[:, :1]).all()
    assert (np.vstack(blocks) == np.vstack(list(bootstrap_weight_blocks(patients, 700, seed=3)))).all()

    # Run B swaps run A's calls and probabilities between two abnormal studies: with one patient they are drawn
    # together, so every replicate's kappa and AUROC are A's; with two patients they are not.
    repeated = patients[pd.Series(patients).duplicated(keep=False).to_numpy()][0]
    first, second = np.flatnonzero(patients == repeated)[:2]
    studies.loc[[first, second], ["label", "probability", "prediction"]] = [[1, 0.9, 1], [1, 0.2, 0]]
    swapped = studies.copy()
    swapped.loc[[first, second], ["probability", "prediction"]] = [[0.2, 0], [0.9, 1]]
    for same_patient in (True, False):
        if not same_patient:
            for table in (studies, swapped):
                table.loc[second, "patient"] = "patient99999"
        rows = compare_runs({"A": studies, "B": swapped}, "A", replicates=400).set_index(["group", "metric"])
        width = rows.loc[("overall", "kappa"), "ci_high"] - rows.loc[("overall", "kappa"), "ci_low"]
        auroc_width = rows.loc[("overall", "auroc"), "ci_high"] - rows.loc[("overall", "auroc"), "ci_low"]
        assert rows.loc[("overall", "kappa"), "difference"] == 0
        assert (width == 0 and auroc_width == 0) == same_patient


def test_runs_on_other_studies_are_refused_naming_the_runs_and_the_difference(tmp_path: Path):
    studies = fabricated_studies()
    baseline = write_run(tmp_path / "A", studies)
    fewer = write_run(tmp_path / "B", studies.iloc[1:])
    relabelled = write_run(tmp_path / "C", studies.assign(label=lambda table: np.where(table.index == 4, 1 - table["label"],
                                                                                        table["label"])))
    with pytest.raises(ConfigError, match=rf"runs A and B were not scored on the same studies.*B lacks 1 of A's "
                                          rf"{len(studies)} studies \(e\.g\. {studies['study'].iloc[0]}\)"):
        run_compare(tmp_path, f"runs=[{baseline},{fewer}]")
    with pytest.raises(ConfigError, match=r"runs A and C .*the label differs on 1 studies \(e\.g\. .*: [01] in A, [01] in C\)"):
        run_compare(tmp_path, f"runs=[{relabelled},{baseline}]", f"baseline={baseline}")
    with pytest.raises(ConfigError, match="listed more than once"):
        compare_runs({"A": studies, "B": pd.concat([studies, studies.iloc[:1]])}, "A")
    with pytest.raises(ConfigError, match="nothing to compare with the baseline A"):
        compare_runs({"A": studies}, "A")
    with pytest.raises(ConfigError, match="is listed twice"):
        run_compare(tmp_path, f"runs=[{baseline},{baseline}]")


def test_a_sweep_of_fabricated_runs_against_its_first_job(tmp_path: Path):
    """Three runs in a sweep folder; the third's own calls were made at 0.3, which threshold=null keeps."""
    studies = fabricated_studies()
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", studies)
    write_run(sweep / "1", perturbed(studies, 0.1))
    lenient = perturbed(studies, 0.2, seed=2)
    write_run(sweep / "2", lenient.assign(prediction=(lenient["probability"] > 0.3).astype(int)))
    table = run_compare(tmp_path, f"runs={sweep}", "bootstrap=200")
    assert list(dict.fromkeys(table["run"])) == ["1", "2"] and set(table["baseline"]) == {"0"}
    assert list(dict.fromkeys(table["group"])) == ["XR_HAND", "XR_WRIST", "overall", "1 view", "2 views", "3 views"]
    sensitivity = table.set_index(["run", "group", "metric"]).loc[("2", "overall", "sensitivity")]
    abnormal = lenient["label"] == 1
    assert sensitivity["run_value"] == pytest.approx((lenient["probability"][abnormal] > 0.3).mean())
    assert sensitivity["n"] == abnormal.sum()
    # The studies of two views, on their own; Holm within each family: the views' rows leave the main tests' as they were.
    two = (studies["n_views"] == 2).to_numpy()
    kappa = table.set_index(["run", "group", "metric"]).loc[("1", "2 views", "kappa")]
    assert kappa["studies"] == two.sum() and kappa["run_value"] == pytest.approx(
        cohen_kappa_score(studies["label"][two], perturbed(studies, 0.1)["prediction"][two]))
    for family in ("main", "views"):
        rows = table[table["family"] == family]
        np.testing.assert_allclose(rows["p_holm"], holm(rows["p_value"]))
    at_half = compare(compose_config([f"runs={sweep}", "bootstrap=0", "threshold=0.5",
                                      f"paths.output_dir={tmp_path / 'half'}"], config_name="compare"))
    assert at_half.set_index(["run", "group", "metric"]).loc[("2", "overall", "sensitivity"), "run_value"] == \
        pytest.approx((lenient["probability"][abnormal] > 0.5).mean())
    assert at_half["ci_low"].isna().all()  # no bootstrap: no intervals, and kappa untested
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "## 1 - 0" in markdown and "## 2 - 0" in markdown and "McNemar" in markdown
    assert "By number of views (Holm within these rows)" in markdown


def test_the_command_reads_real_run_folders(trained_run, tmp_path: Path):
    run_dir, _ = trained_run
    other = tmp_path / "other"
    other.mkdir()
    studies = pd.read_csv(run_dir / "predictions.csv")
    assert list(studies.columns) == PREDICTION_COLUMNS  # what the comparison reads, as mura.train writes it
    write_run(other, perturbed(studies, 0.2))
    shutil.rmtree(other / ".hydra")  # as a training run called without Hydra: metrics.json marks the run
    shutil.copy(run_dir / "metrics.json", other / "metrics.json")
    table = run_compare(tmp_path, f"runs=[{other}]", f"baseline={run_dir}", "bootstrap=500")
    parts = sorted(studies["body_part"].unique())
    groups = [*parts, "overall"] if len(parts) > 1 else ["overall"]  # one part's rows would repeat overall's
    main = table[table["family"] == "main"]
    assert list(dict.fromkeys(main["group"])) == groups
    assert len(main) == len(groups) * len(METRICS)
    assert set(table["baseline"]) == {run_dir.name}
    written = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert len(written) == len(table) and "p_holm" in written.columns
    assert (tmp_path / "out" / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert f"Baseline: **{run_dir.name}**" in (tmp_path / "out" / "compare.md").read_text()


def test_delong_says_untestable_where_the_difference_has_no_spread():
    """A perfect run against a constant one on six studies: a difference of 0.5 and a variance of 0 is no p = 0."""
    labels = np.array([1, 1, 0, 0, 1, 0])
    difference, variance, p_value = delong_test(labels, labels.astype(float), np.full(6, 0.5))
    assert difference == -0.5 and variance == 0 and math.isnan(p_value)


def test_studies_of_one_body_part_are_compared_once_not_per_part_and_overall():
    """A humerus-only comparison: no XR_HUMERUS rows repeating overall's, so Holm counts each test once."""
    studies = fabricated_studies()
    wrists = studies[studies["body_part"] == "XR_WRIST"]
    table = compare_runs({"A": wrists, "B": perturbed(wrists, 0.2)}, "A", replicates=200)
    main = table[table["family"] == "main"]
    assert set(main["group"]) == {"overall"} and len(main) == len(METRICS)
    np.testing.assert_allclose(main["p_holm"], holm(main["p_value"]))
