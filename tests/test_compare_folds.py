"""mura.compare on cross-validated settings: each setting's folds pooled (every training study once), the paired
tests on the pool, the fold-by-fold tests against scipy, seed groups, and the refusals; on fold run folders as
mura.train writes them (a real command-line sweep, which mura.summarize and an ensemble read too) and on fabricated
ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, ttest_rel
from scipy.stats import t as t_distribution
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from test_compare import PREDICTION_COLUMNS, fabricated_studies, perturbed, write_run

from command_process import run_command
from conftest import compose_config
from mura.app.errors import ConfigError
from mura.compare import compare
from mura.evaluate import evaluate
from mura.evaluation.comparison import compare_runs, holm
from mura.evaluation.out_of_fold import corrected_t_test, paired_t_test, sign_test
from mura.summarize import summarize

FOLDS = 4


def fold_of(studies: pd.DataFrame, folds: int = FOLDS) -> np.ndarray:
    """Patient-grouped folds: a patient's studies validate in one fold."""
    return studies["patient"].str[-5:].astype(int).to_numpy() % folds


def write_fold_runs(sweep: Path, studies: pd.DataFrame, overrides: list[str] = (), seed: int = 12345,
                    folds: int = FOLDS, assignment: np.ndarray | None = None) -> Path:
    """A sweep folder as `mura.train -m ... data.cv_fold=0,...` leaves one: a job folder per fold with Hydra's record,
    selection.json, splits.csv and val_predictions.csv (the fold's studies)."""
    assignment = fold_of(studies, folds) if assignment is None else assignment
    for fold in range(folds):
        job = sweep / str(fold)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(f"seed: {seed}\ndata:\n  cv_fold: {fold}\n  cv_folds: {folds}\n")
        (job / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {item}\n" for item in ["experiment=cv_small", f"data.cv_fold={fold}", *overrides]))
        (job / "selection.json").write_text(json.dumps({"metric": "val/loss", "mode": "min", "epoch": 3, "score": 0.4}))
        splits = pd.DataFrame({"path": studies["study"] + "/image1.png", "study": studies["study"],
                               "split": np.where(assignment == fold, "val", "train"), "body_part": studies["body_part"],
                               "label": studies["label"], "patient": studies["patient"]})
        splits.to_csv(job / "splits.csv", index=False)
        studies.loc[assignment == fold, PREDICTION_COLUMNS].to_csv(job / "val_predictions.csv", index=False)
    return sweep


def run_compare(tmp_path: Path, *overrides: str) -> pd.DataFrame:
    return compare(compose_config([*overrides, f"paths.output_dir={tmp_path / 'out'}"], config_name="compare"))


def test_the_paired_t_test_and_the_sign_test_against_scipy():
    rng = np.random.default_rng(3)
    for n in (3, 5, 10):
        baseline, run = rng.normal(0.5, 0.1, n), rng.normal(0.55, 0.1, n)
        statistic, p_value = paired_t_test(run - baseline)
        expected = ttest_rel(run, baseline)
        assert statistic == pytest.approx(expected.statistic, rel=1e-10)
        assert p_value == pytest.approx(expected.pvalue, rel=1e-10)
    assert paired_t_test(np.zeros(5)) == (pytest.approx(np.nan, nan_ok=True), 1.0)  # no difference at all
    for differences in ([0.1, 0.2, 0.05, 0.3, 0.1], [0.1, -0.2, 0.05, 0.0, -0.1], [-0.1] * 7):
        above, below, p_value = sign_test(np.array(differences))
        assert (above, below) == (sum(d > 0 for d in differences), sum(d < 0 for d in differences))
        assert p_value == pytest.approx(binomtest(above, above + below, 0.5).pvalue, rel=1e-9)
    assert sign_test(np.ones(5))[2] == pytest.approx(0.0625)  # 5 of 5 folds: the best a sign test on 5 folds can say
    # Nadeau & Bengio's correction, by hand: the variance times 1/k + n_test/n_train instead of 1/k.
    differences = np.array([0.04, 0.01, 0.06, -0.01, 0.03])
    statistic, p_value = corrected_t_test(differences, 0.25)
    expected = differences.mean() / np.sqrt((1 / 5 + 0.25) * differences.var(ddof=1))
    assert statistic == pytest.approx(expected) and p_value == pytest.approx(2 * t_distribution.sf(expected, 4))
    assert p_value > paired_t_test(differences)[1]  # the plain test, blind to the folds' overlap, claims more
    assert corrected_t_test(differences, 0.0) == pytest.approx(paired_t_test(differences))


def test_settings_are_compared_on_every_training_study_once_and_fold_by_fold(tmp_path: Path):
    studies = fabricated_studies(patients=160)
    better = perturbed(studies, 0.15, seed=4)
    write_fold_runs(tmp_path / "a", studies)
    write_fold_runs(tmp_path / "b", better, ["model/scheduler=warmup_cosine"])
    table = run_compare(tmp_path, f"runs=[{tmp_path / 'a'},{tmp_path / 'b'}]", "bootstrap=400")
    # The pool: every training study once, compared as two runs on those studies would be.
    expected = compare_runs({"a": studies, "b": better}, "a", replicates=400)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_exact=False, rtol=1e-12)
    assert table.loc[table["group"] == "overall", "studies"].iloc[0] == len(studies)
    # Fold by fold: each fold's kappa and AUROC from its own studies, then the tests over the folds.
    folds = pd.read_csv(tmp_path / "out" / "compare_folds.csv")
    assignment = fold_of(studies)
    for fold in range(FOLDS):
        ours, theirs = studies[assignment == fold], better[assignment == fold]
        row = folds[(folds["fold"] == fold) & (folds["metric"] == "kappa")].iloc[0]
        assert row["baseline_value"] == pytest.approx(cohen_kappa_score(ours["label"], ours["prediction"]))
        assert row["run_value"] == pytest.approx(cohen_kappa_score(theirs["label"], theirs["prediction"]))
        auroc = folds[(folds["fold"] == fold) & (folds["metric"] == "auroc")].iloc[0]
        assert auroc["difference"] == pytest.approx(roc_auc_score(theirs["label"], theirs["probability"])
                                                    - roc_auc_score(ours["label"], ours["probability"]))
    kappa = folds[folds["metric"] == "kappa"].sort_values("fold")
    assert kappa["p_t"].iloc[0] == pytest.approx(ttest_rel(kappa["run_value"], kappa["baseline_value"]).pvalue)
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "pooled out-of-fold" in markdown and "| a |" in markdown and "`model/scheduler=warmup_cosine`" in markdown
    assert "No two settings differ only in `seed`" in markdown
    assert (tmp_path / "out" / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_the_pool_refuses_a_missing_or_doubled_fold_other_folds_and_other_runs(tmp_path: Path):
    studies = fabricated_studies(patients=80)
    a = write_fold_runs(tmp_path / "a", studies)
    b = write_fold_runs(tmp_path / "b", perturbed(studies, 0.1), ["seed=1"])
    shutil.rmtree(b / "2")
    with pytest.raises(ConfigError, match=r"fold\(s\) 2 of 4 missing"):
        run_compare(tmp_path, f"runs=[{a},{b}]", "bootstrap=0")
    shutil.copytree(a / "1", b / "2")  # fold 1 of a, run again beside b's folds
    (b / "2" / ".hydra" / "overrides.yaml").write_text("- experiment=cv_small\n- data.cv_fold=1\n- seed=1\n")
    with pytest.raises(ConfigError, match="fold 1 was run 2 times"):
        run_compare(tmp_path, f"runs=[{a},{b}]", "bootstrap=0")
    # Other folds (another split seed): the same studies pooled, but fold f is not fold f.
    shifted = write_fold_runs(tmp_path / "shifted", studies, ["data.split_seed=7"], assignment=(fold_of(studies) + 1) % FOLDS)
    with pytest.raises(ConfigError, match="fold 0 .* validated on other studies than the baseline a's fold 0"):
        run_compare(tmp_path, f"runs=[{a},{shifted}]", "bootstrap=0")
    # Another release: the same study names, other labels.
    relabelled = write_fold_runs(tmp_path / "relabelled", studies.assign(label=1 - studies["label"]), ["data.root=/other"])
    with pytest.raises(ConfigError, match="the label differs"):
        run_compare(tmp_path, f"runs=[{a},{relabelled}]", "bootstrap=0")
    # A fold that scored only part of its validation studies leaves training studies out of the pool.
    partial = write_fold_runs(tmp_path / "partial", studies, ["trainer.limit_val_batches=1"])
    predictions = pd.read_csv(partial / "3" / "val_predictions.csv")
    predictions.iloc[1:].to_csv(partial / "3" / "val_predictions.csv", index=False)
    with pytest.raises(ConfigError, match="are in no fold's predictions"):
        run_compare(tmp_path, f"runs=[{a},{partial}]", "bootstrap=0")
    single = write_run(tmp_path / "single", studies)
    with pytest.raises(ConfigError, match="mix cross-validation folds"):
        run_compare(tmp_path, f"runs=[{a},{single}]", "bootstrap=0")
    with pytest.raises(ConfigError, match="is not a cross-validation sweep"):
        run_compare(tmp_path, f"runs=[{a},{b}]", f"baseline={single}", "bootstrap=0")


def test_settings_that_differ_only_in_seed_measure_the_noise(tmp_path: Path):
    studies = fabricated_studies(patients=120)
    sweeps = [write_fold_runs(tmp_path / "paper", studies),
              write_fold_runs(tmp_path / "paper_seed1", perturbed(studies, 0.05, seed=11), ["seed=1"], seed=1),
              write_fold_runs(tmp_path / "paper_seed2", perturbed(studies, 0.05, seed=12), ["seed=2"], seed=2),
              write_fold_runs(tmp_path / "warmup", perturbed(studies, 0.3, seed=13), ["model/scheduler=warmup_cosine"])]
    table = run_compare(tmp_path, f"runs=[{','.join(map(str, sweeps))}]", "bootstrap=0", f"baseline={sweeps[0]}")
    seeds = pd.read_csv(tmp_path / "out" / "compare_seeds.csv").set_index("metric")
    assert seeds.loc["kappa", "seeds"] == "12345 1 2"
    pooled = {name: cohen_kappa_score(frame["label"], frame["prediction"]) for name, frame in
              (("paper", studies), ("1", perturbed(studies, 0.05, seed=11)), ("2", perturbed(studies, 0.05, seed=12)))}
    assert seeds.loc["kappa", "sd"] == pytest.approx(np.std(list(pooled.values()), ddof=1))
    assert seeds.loc["kappa", "largest_seed_difference"] == pytest.approx(max(pooled.values()) - min(pooled.values()))
    assert set(table["run"]) == {"paper_seed1", "paper_seed2", "warmup"}
    # The baseline recipe's other seeds are noise rows, Holm-adjusted apart: the real setting's adjustment is its own.
    families = table.groupby("run")["family"].unique()
    assert set(families["paper_seed1"]) == {"seed main", "seed views"} and set(families["warmup"]) == {"main", "views"}
    warmup_main = table[table["family"] == "main"]
    np.testing.assert_allclose(warmup_main["p_holm"], holm(warmup_main["p_value"]))
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "| paper_seed1 |" in markdown and "(the baseline recipe, seed 1)" in markdown
    warmup = table[(table["run"] == "warmup") & (table["group"] == "overall")].set_index("metric")["difference"]
    beyond = abs(warmup["kappa"]) > seeds.loc["kappa", "largest_seed_difference"]
    assert f"| warmup | {warmup['kappa']:+.3f} |" in markdown
    # The summary: a row per setting, the baseline's pooled kappa first, each setting's with its difference.
    summary = markdown.split("## Summary")[1].split("## Pooled")[0]
    assert f"| paper       | {pooled['paper']:.3f}" in summary and f"{warmup['kappa']:+.3f} (" in summary
    assert ("yes: kappa" in markdown.split("| warmup |")[-1].splitlines()[0]) == beyond


@pytest.mark.slow
def test_a_real_cross_validation_sweep_is_summarised_ensembled_and_pooled(synthetic_root: Path, tmp_path: Path):
    """Two folds trained by `mura.train -m` (the command line, the basic launcher, one job per fold), then every reader
    of a sweep on it: one summary table (mean and sd per setting), the folds' models as one ensemble, and mura.compare
    pooling the folds, with the same sweep given other predictions as a second seed. One sweep for all: each costs
    a Python start-up and two trainings."""
    trained = tmp_path / "cv"
    result = run_command("mura.train", [
        "-m", "experiment=demo", f"data.root={synthetic_root}", "data.num_workers=0", "data.image_size=32",
        "trainer.max_epochs=1", "callbacks.gradcam.every_n_epochs=0", "callbacks.gradcam.studies_per_class=1", "data.cv_folds=2",
        "data.cv_fold=0,1",
        f"hydra.sweep.dir={trained}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert f"data.cv_fold={job}" in (trained / job / ".hydra" / "overrides.yaml").read_text()
        assert (trained / job / "metrics.json").is_file() and (trained / job / "selection.json").is_file()
    markdown = summarize(compose_config([f"runs={trained}", f"paths.output_dir={tmp_path / 'summary'}"], config_name="summarize"))
    folds = pd.read_csv(tmp_path / "summary" / "summary.csv")
    assert sorted(folds["cv_fold"]) == [0, 1] and sorted(folds["settings"]) == ["data.cv_fold=0", "data.cv_fold=1"]
    assert "2 run(s)" in markdown and "`experiment=demo`" in markdown and "`data.cv_folds=2`" in markdown
    cross = pd.read_csv(tmp_path / "summary" / "summary_cv.csv")
    assert cross["folds"].tolist() == [2]
    assert cross.loc[0, "val_kappa_mean"] == pytest.approx(folds["val_study_kappa"].mean())
    assert cross.loc[0, "val_auroc_sd"] == pytest.approx(folds["val_study_auroc"].std())
    assert "Cross-validation" in markdown and "+-" in markdown
    # The folds' models as one ensemble on the test split.
    report = evaluate(compose_config([f"ckpt_path='{trained}/*/checkpoints/best.ckpt'", f"data.root={synthetic_root}",
                                      "data.num_workers=0", f"paths.output_dir={tmp_path / 'ensemble'}"], config_name="evaluate"))
    assert "ensemble of 2" in (tmp_path / "ensemble" / "report.md").read_text() and report["study"]["overall"]["n"] > 0
    # mura.compare: the files it reads, as training writes them
    sweep = tmp_path / "sweep"
    shutil.copytree(trained, sweep)
    pooled = pd.concat([pd.read_csv(sweep / fold / "val_predictions.csv") for fold in ("0", "1")])
    splits = pd.read_csv(sweep / "0" / "splits.csv")
    assert sorted(pooled["study"]) == sorted(splits.loc[splits["split"] != "test", "study"].unique())
    other = tmp_path / "other_seed"
    shutil.copytree(sweep, other)
    for fold in ("0", "1"):
        record = other / fold / ".hydra" / "overrides.yaml"
        record.write_text(record.read_text() + "- seed=3\n")
        config = other / fold / ".hydra" / "config.yaml"
        config.write_text(config.read_text().replace("\nseed: 12345\n", "\nseed: 3\n"))
        predictions = pd.read_csv(other / fold / "val_predictions.csv")
        perturbed(predictions, 0.2, seed=int(fold)).to_csv(other / fold / "val_predictions.csv", index=False)
    table = run_compare(tmp_path, f"runs=[{sweep},{other}]", "bootstrap=200")
    assert table.loc[table["group"] == "overall", "studies"].iloc[0] == len(pooled)
    assert set(table["run"]) == {"other_seed"} and set(table["baseline"]) == {"sweep"}
    assert len(pd.read_csv(tmp_path / "out" / "compare_folds.csv")) == 2 * 2  # two folds, kappa and AUROC
    assert pd.read_csv(tmp_path / "out" / "compare_seeds.csv").loc[0, "seeds"] == "12345 3"
