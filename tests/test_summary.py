"""mura.summarize: one table for many runs, sorted on validation, with what could not be read reported."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from mura.data.split import SPLITS_CSV_COLUMNS, assign_fold, assign_splits
from mura.summarize import summarize


def copy_run(run_dir: Path, destination: Path, overrides: list[str]) -> Path:
    """A training run folder as a sweep job: the trained files plus the record mura.train writes beside them
    (.hydra/: the command line, and the config it composes). A cross-validation fold gets the splits.csv of its fold."""
    shutil.copytree(run_dir, destination, ignore=shutil.ignore_patterns("checkpoints", "gradcam", "*.png", "*.html"))
    (destination / ".hydra").mkdir()
    (destination / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    config = compose_config(overrides)
    (destination / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    if config.data.cv_fold is not None:
        write_splits(destination, assign_fold(release(run_dir), config.data.cv_folds, config.data.cv_fold, config.data.split_seed))
    return destination


def release(run_dir: Path) -> pd.DataFrame:
    """The trained run's images as the release lists them (official train and valid), to split again."""
    splits = pd.read_csv(run_dir / "splits.csv")
    return splits.assign(split=np.where(splits["split"] == "test", "valid", "train"))


def write_splits(run: Path, splits: pd.DataFrame) -> None:
    splits[SPLITS_CSV_COLUMNS].to_csv(run / "splits.csv", index=False)


def select(run: Path, score: float | None = None, kappa: float | None = None, auroc: float | None = None,
           finished: float | None = None) -> None:
    """Make epoch 0 the selected one (by val/loss), with these validation numbers; `finished`: selection.json's time."""
    history = json.loads((run / "history.json").read_text())
    history[0].update({"val/study/kappa": kappa, "val/study/auroc": auroc, **({"val/loss": score} if score is not None else {})})
    (run / "history.json").write_text(json.dumps(history))
    (run / "selection.json").write_text(json.dumps({"metric": "val/loss", "mode": "min", "checkpoint": None, "epoch": 0,
                                                    "score": history[0]["val/loss"]}))
    if finished is not None:
        os.utime(run / "selection.json", (finished, finished))


def test_a_sweep_is_one_table_sorted_by_validation_with_unfinished_jobs_reported(trained_run, tmp_path: Path):
    run_dir, _ = trained_run
    sweep = tmp_path / "sweep"
    copy_run(run_dir, sweep / "0", ["experiment=demo", "model.optimizer.lr=0.0003"])
    better = copy_run(run_dir, sweep / "1", ["experiment=demo", "model.optimizer.lr=0.001"])
    history = json.loads((better / "history.json").read_text())
    history[-1]["val/loss"] = 0.01  # job 1's last epoch is now its selected one, and the best of the sweep
    (better / "history.json").write_text(json.dumps(history))
    (better / "selection.json").write_text(json.dumps(
        {"metric": "val/loss", "mode": "min", "checkpoint": "best.ckpt", "epoch": len(history) - 1, "score": 0.01}))
    (sweep / "2" / ".hydra").mkdir(parents=True)  # a job still running: no metrics.json yet
    evaluation = tmp_path / "evaluation"  # a mura.evaluate folder: metrics, no history
    evaluation.mkdir()
    evaluated = json.loads((run_dir / "metrics.json").read_text())
    evaluated["study"]["overall"]["kappa_ci95"] = [-0.12, 0.21]  # a small split's interval crosses zero
    (evaluation / "metrics.json").write_text(json.dumps(evaluated))

    sweep_only = summarize(compose_config([f"runs={sweep}", f"paths.output_dir={tmp_path / 'sweep_summary'}"],
                                          config_name="summarize"))
    assert "Shared settings: `experiment=demo`" in sweep_only
    table = pd.read_csv(tmp_path / "sweep_summary" / "summary.csv")
    assert table["run"].tolist() == [str(sweep / "1"), str(sweep / "0")]
    assert table["settings"].tolist() == ["model.optimizer.lr=0.001", "model.optimizer.lr=0.0003"]
    assert table.loc[0, "best_epoch"] == len(history) - 1 and table.loc[0, "val_loss"] == 0.01
    assert table["selection"].tolist() == ["val/loss min"] * 2
    assert "sorted by their selection rule at the selected epoch, every score alike: val/loss min over" in sweep_only
    assert f"not summarised: {sweep / '2'}: neither metrics.json nor selection.json" in sweep_only

    markdown = summarize(compose_config([f"runs=[{sweep},{evaluation}]", f"paths.output_dir={tmp_path / 'out'}"],
                                        config_name="summarize"))
    table = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert table["run"].tolist() == [str(sweep / "1"), str(sweep / "0"), str(evaluation)]  # no validation: last
    assert table["settings"].fillna("").tolist() == ["experiment=demo model.optimizer.lr=0.001",
                                                     "experiment=demo model.optimizer.lr=0.0003", ""]
    assert pd.isna(table.loc[2, "epochs"])
    test_kappa = json.loads((run_dir / "metrics.json").read_text())["study"]["overall"]["kappa"]
    assert table["study_kappa"].tolist() == [test_kappa] * 3
    assert {f"kappa_{part}" for part in ("XR_WRIST", "XR_HAND")} <= set(table.columns)
    assert (tmp_path / "out" / "summary.md").read_text() == markdown
    # "-0.120-0.210" would read as a range of negatives
    evaluation_row = next(line for line in markdown.splitlines() if line.startswith(f"| {evaluation} "))
    assert f"{test_kappa:.3f} (-0.120 to 0.210)" in evaluation_row


def test_a_maximised_rule_sorts_highest_first_and_mixed_rules_are_not_ranked(trained_run, tmp_path: Path):
    run_dir, _ = trained_run
    runs = []
    for name, metric, mode, score in (("a", "val/study/kappa", "max", 0.2), ("b", "val/study/kappa", "max", 0.6)):
        run = copy_run(run_dir, tmp_path / name, [f"seed={len(runs)}"])
        (run / "selection.json").write_text(json.dumps({"metric": metric, "mode": mode, "checkpoint": None, "epoch": 0,
                                                        "score": score}))
        runs.append(run)
    summarize(compose_config([f"runs=[{runs[0]},{runs[1]}]", f"paths.output_dir={tmp_path / 's1'}"], config_name="summarize"))
    assert pd.read_csv(tmp_path / "s1" / "summary.csv")["run"].tolist() == [str(runs[1]), str(runs[0])]
    (runs[0] / "selection.json").write_text(json.dumps({"metric": "val/loss", "mode": "min", "checkpoint": None, "epoch": 0,
                                                        "score": 0.1}))
    markdown = summarize(compose_config([f"runs=[{runs[1]},{runs[0]}]", f"paths.output_dir={tmp_path / 's2'}"],
                                        config_name="summarize"))
    table = pd.read_csv(tmp_path / "s2" / "summary.csv")
    assert "ranked only within groups whose selected scores compare" in markdown
    assert table["rank_group"].nunique() == 2 and table["rank"].tolist() == [1, 1]


def test_a_folder_that_is_not_there_is_an_error_not_a_running_job(tmp_path: Path):
    """It used to exit 0 saying the folder was still running."""
    from mura.app.errors import ConfigError

    with pytest.raises(ConfigError, match="no/such/folder is not a folder"):
        summarize(compose_config([f"runs={tmp_path / 'no' / 'such' / 'folder'}", f"paths.output_dir={tmp_path / 'out'}"],
                                 config_name="summarize"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a run folder"):
        summarize(compose_config([f"runs={tmp_path / 'empty'}", f"paths.output_dir={tmp_path / 'out'}"], config_name="summarize"))


def test_a_glob_over_a_sweep_folder_skips_its_files(trained_run, tmp_path: Path):
    """A sweep's `*` also matches Hydra's multirun.yaml: that is no run, and no error either."""
    copy_run(trained_run[0], tmp_path / "sweep" / "0", ["seed=1"])
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    summarize(compose_config([f"runs='{tmp_path / 'sweep'}/*'", f"paths.output_dir={tmp_path / 'out'}"], config_name="summarize"))
    assert pd.read_csv(tmp_path / "out" / "summary.csv")["run"].tolist() == [str(tmp_path / "sweep" / "0")]


def test_each_row_says_which_split_it_scored_and_other_commands_folders_are_named(trained_run, tmp_path: Path):
    """An evaluation of the validation split is not a test result; an audit's folder is no run still going."""
    run_dir = trained_run[0]
    trained = copy_run(run_dir, tmp_path / "runs" / "trained", ["experiment=demo"])
    (trained / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: train\n")
    on_val = tmp_path / "runs" / "on_val"
    (on_val / ".hydra").mkdir(parents=True)
    shutil.copy(run_dir / "metrics.json", on_val / "metrics.json")
    (on_val / ".hydra" / "config.yaml").write_text("eval:\n  split: val\n")
    (on_val / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: evaluate\n")
    audit = tmp_path / "runs" / "audit"
    (audit / ".hydra").mkdir(parents=True)
    (audit / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: audit\n")
    markdown = summarize(compose_config([f"runs='{tmp_path / 'runs'}/*'", f"paths.output_dir={tmp_path / 'out'}"],
                                        config_name="summarize"))
    table = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("run")
    assert table.loc[str(trained), "scored_on"] == "test" and table.loc[str(on_val), "scored_on"] == "val"
    assert "| scored on " in markdown
    assert f"not summarised: {audit}: a mura.audit folder, not a training or evaluation run" in markdown


def test_a_resumed_fold_is_the_same_setting_and_settings_rank_only_on_the_same_folds(trained_run, tmp_path: Path):
    """Issue #19: a fold resumed with ckpt_path=last was a setting of its own ('2 of 3' plus 'ckpt_path=last 1 of 3');
    settings validated on other folds (another data.split_seed) were ranked beside them."""
    run_dir = trained_run[0]
    cv = ["experiment=cv_small", "data.cv_folds=3"]  # 3 folds: the tiny tree's smallest stratum has 3 patients
    paper = [0.8, 0.5, 0.7]
    for fold, kappa in enumerate(paper):
        resumed = ["ckpt_path=last", "data.num_workers=0"] if fold == 1 else []  # the interruption message's resume
        select(copy_run(run_dir, tmp_path / "paper" / str(fold), [*cv, f"data.cv_fold={fold}", *resumed]), kappa=kappa, auroc=0.8)
        select(copy_run(run_dir, tmp_path / "lr" / str(fold), [*cv, f"data.cv_fold={fold}", "model.optimizer.lr=0.01"]),
               kappa=kappa - 0.1, auroc=0.7)
        select(copy_run(run_dir, tmp_path / "seed7" / str(fold), [*cv, f"data.cv_fold={fold}", "data.split_seed=7"]),
               kappa=0.95, auroc=0.9)
    markdown = summarize(compose_config([f"runs=[{tmp_path / 'paper'},{tmp_path / 'lr'},{tmp_path / 'seed7'}]",
                                         f"paths.output_dir={tmp_path / 'out'}"], config_name="summarize"))
    table = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("run")
    assert "ckpt_path=last data.num_workers=0" in table.loc[str(tmp_path / "paper" / "1"), "settings"]  # still shown
    cv_table = pd.read_csv(tmp_path / "out" / "summary_cv.csv", keep_default_na=False).set_index("setting")
    assert sorted(cv_table.index) == ["", "data.split_seed=7", "model.optimizer.lr=0.01"]
    assert cv_table.loc["", "folds"] == 3 and cv_table.loc["", "missing_folds"] == ""
    assert cv_table.loc["", "val_kappa_mean"] == pytest.approx(np.mean(paper))
    assert cv_table.loc["", "val_kappa_sd"] == pytest.approx(np.std(paper, ddof=1))
    # the other partition's folds validated on other patients: its higher mean is no rank above the paper's
    assert cv_table.loc["", "rank_group"] == cv_table.loc["model.optimizer.lr=0.01", "rank_group"] != cv_table.loc["data.split_seed=7", "rank_group"]
    assert (cv_table.loc["", "rank"], cv_table.loc["model.optimizer.lr=0.01", "rank"]) == (1, 2)
    assert "ranked only within groups of settings validated on the same folds of the same images" in markdown
    assert "| (shared settings) " in markdown and "| 0.667 +- 0.153 " in markdown


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")  # 4 folds of the tiny tree's 3-patient stratum
def test_folds_are_counted_once_and_missing_repeated_and_undefined_ones_are_named(trained_run, tmp_path: Path):
    """Issue #19: the mean and sd were over runs ('3 of 3 (4 runs)' averaged folds 0, 2, 2), and a fold whose kappa
    is undefined was left out of the mean while the table still counted it."""
    run_dir, sweep = trained_run[0], tmp_path / "sweep"
    cv = ["experiment=cv_small", "data.cv_folds=4"]
    select(copy_run(run_dir, sweep / "0", [*cv, "data.cv_fold=0"]), kappa=0.6, auroc=0.8)
    select(copy_run(run_dir, sweep / "1", [*cv, "data.cv_fold=1"]), kappa=None, auroc=0.5)  # one class predicted
    # fold 2 twice: job 2 finished after job 5, its rerun, so job 2 is the run that counts (not the later name)
    select(copy_run(run_dir, sweep / "2", [*cv, "data.cv_fold=2"]), kappa=0.4, auroc=0.7, finished=2_000_000_000)
    select(copy_run(run_dir, sweep / "5", [*cv, "data.cv_fold=2"]), kappa=0.9, auroc=0.95, finished=1_900_000_000)
    # fold 3 never ran
    markdown = summarize(compose_config([f"runs={sweep}", f"paths.output_dir={tmp_path / 'out'}"], config_name="summarize"))
    row = pd.read_csv(tmp_path / "out" / "summary_cv.csv", dtype={"missing_folds": str, "repeated_folds": str}).iloc[0]
    assert row["val_kappa_mean"] == pytest.approx(0.5)  # folds 0 and 2 (job 2's 0.4, not its rerun's 0.9)
    assert (row["folds"], row["of"], row["runs"], row["missing_folds"], row["repeated_folds"]) == (3, 4, 4, "3", "2")
    assert row["val_kappa_folds"] == 2
    assert row["val_auroc_mean"] == pytest.approx(np.mean([0.8, 0.5, 0.7])) and row["val_auroc_folds"] == 3
    assert row["used_runs"] == f"{sweep / '0'} {sweep / '1'} {sweep / '2'}"
    assert f"missing fold(s) 3; fold 2 run 2 times: {sweep / '2'} counted (the latest finished); kappa undefined in " \
           "fold(s) 1: its mean is over 2 fold(s)" in markdown
    assert "| 3 of 4 " in markdown


def test_runs_are_ranked_only_where_their_selected_scores_compare(trained_run, tmp_path: Path):
    """Issue #19: a weighted-BCE run (val/loss 0.339) was sorted above a plain-BCE run (0.681): other losses, other
    numbers. Nor do losses compare over other validation images, with other loss weights, or over part of a split."""
    run_dir = trained_run[0]
    runs = {name: copy_run(run_dir, tmp_path / name, ["experiment=demo", *overrides]) for name, overrides in (
        ("weighted", []), ("plain_a", ["model.loss_weighted=false"]), ("plain_b", ["model.loss_weighted=false", "seed=2"]),
        ("other_split", ["model.loss_weighted=false", "data.split_seed=7"]), ("weighted_skip", ["data.on_bad_image=skip"]),
        ("limited", ["model.loss_weighted=false", "debug=limit"]))}
    write_splits(runs["other_split"], assign_splits(release(run_dir), 0.3, 7))
    splits = pd.read_csv(run_dir / "splits.csv")  # a training image skipped: other counts, so other loss weights
    write_splits(runs["weighted_skip"], splits.drop(index=splits.index[splits["split"] == "train"][0]))
    for name, score in (("weighted", 0.339), ("plain_a", 0.681), ("plain_b", 0.5), ("other_split", 0.2),
                        ("weighted_skip", 0.3), ("limited", 0.05)):
        select(runs[name], score=score)
    markdown = summarize(compose_config([f"runs='{tmp_path}/*'", f"paths.output_dir={tmp_path / 'out'}"], config_name="summarize"))
    table = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert table["run"].tolist()[:2] == [str(runs["plain_b"]), str(runs["plain_a"])]
    assert table["rank_group"].tolist()[:2] == ["A", "A"] and table["rank"].tolist()[:2] == [1, 2]
    by_run = table.set_index("run")
    groups = [by_run.loc[str(runs[name]), "rank_group"] for name in ("weighted", "weighted_skip", "other_split")]
    assert len(set(groups)) == 3 and "A" not in groups
    assert table["run"].iloc[-1] == str(runs["limited"]) and pd.isna(table["rank"].iloc[-1])
    assert by_run.loc[str(runs["limited"]), "not_ranked"] == \
        "scored only part of its val split (trainer.limit_val_batches=2): its score is no split's"
    weighted, skipped = (by_run.loc[str(runs[name]), "ranked_on"] for name in ("weighted", "weighted_skip"))
    assert weighted.split(", weighted BCE")[0] == skipped.split(", weighted BCE")[0] and weighted != skipped
    assert "ranked only within groups whose selected scores compare" in markdown
    assert "plain BCE" in by_run.loc[str(runs["plain_a"]), "ranked_on"]
    assert f"not ranked: {runs['limited']}: scored only part of its val split" in markdown


def test_only_overrides_that_leave_the_trained_model_as_it_is_are_model_neutral():
    from mura.evaluation.summary import model_neutral

    for override in ("ckpt_path=last", "hydra.run.dir=outputs/x", "hydra/launcher=slurm", "logger=tensorboard",
                     "tags=[a,b]", "data.num_workers=0", "+trainer.profiler=simple", "callbacks.gradcam.every_n_epochs=0"):
        assert model_neutral(override), override
    # a doubled global batch (batch size per process), other arithmetic, another selected epoch, other data
    for override in ("trainer.devices=2", "trainer=gpu", "trainer.precision=bf16-mixed", "callbacks.early_stopping.patience=3",
                     "callbacks=none", "data.root=/data/MURA-v1.1", "data.augment_on_device=true", "data.cv_fold=1",
                     "seed=2", "loggers=x"):
        assert not model_neutral(override), override
