"""mura.summarize: one table for many runs, sorted on validation, with what could not be read reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import compose_config
from mura.summarize import summarize


def copy_run(run_dir: Path, destination: Path, overrides: list[str]) -> Path:
    """A training run folder as a sweep job: the trained files plus what Hydra writes beside them."""
    shutil.copytree(run_dir, destination, ignore=shutil.ignore_patterns("checkpoints", "gradcam", "*.png"))
    (destination / ".hydra").mkdir()
    (destination / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    return destination


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
    assert "sorted by their selection rule, val/loss min" in sweep_only
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
    assert "not ranked: the runs were selected by different rules" in markdown


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
