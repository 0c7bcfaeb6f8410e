"""One table for many runs: the jobs of a sweep, the members of an ensemble, the wrist and all-parts experiments.

A run is a folder that `mura.train` or `mura.evaluate` wrote: `metrics.json` (test, or the evaluated split),
`.hydra/overrides.yaml` (what the command line set) and, for training, `selection.json` (the selection rule,
the selected epoch and its score) and `history.json` (one row per epoch). Rows are sorted by the runs' own
selection rule (`selection.metric` and `selection.mode`, the rule that chose each run's best.ckpt), never by
test: choose on validation, report test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from mura.app.errors import ConfigError
from mura.app.run_start import HYDRA_RECORD
from mura.evaluation.metrics import format_interval, format_metric


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders among `paths`; a sweep folder (holding job folders 0, 1, ...) stands for its jobs."""
    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ConfigError(f"runs: {path} is not a folder; pass run folders, sweep folders or quoted glob patterns")
        if (path / HYDRA_RECORD).is_dir() or (path / "metrics.json").is_file():
            runs.append(path)
            continue
        jobs = sorted((child for child in path.iterdir() if (child / HYDRA_RECORD).is_dir()), key=_job_order)
        if not jobs:
            raise ConfigError(f"runs: {path} is neither a run folder (.hydra/, metrics.json) nor a sweep folder (0/, 1/, ...)")
        runs.extend(jobs)
    return runs


def _job_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def summarize_runs(runs: list[Path]) -> tuple[pd.DataFrame, list[str], list[tuple[str, str]]]:
    """(table, settings every run shares, runs not summarised with the reason).

    The table has a row per finished run: `settings` (the overrides that differ between runs), epochs, the
    selection rule and the selected epoch's score (the checkpoint best.ckpt holds and the test scored), the
    validation loss and study kappa there, then the split metrics.json scored (`scored_on`: test, or what a
    mura.evaluate was asked for), its study-level kappa (95% CI), AUROC and study count, and the study kappa per body
    part. Sorted by the selection rule when every run has the same one. Folders of other commands are skipped.
    """
    rows, skipped, overrides = [], [], {}
    for run in runs:
        metrics_path = run / "metrics.json"
        command = _command(run)
        if command in OTHER_COMMANDS:  # a glob such as outputs/*/* also meets audits, exports...
            skipped.append((str(run), f"a mura.{command} folder, not a training or evaluation run"))
            continue
        if not metrics_path.is_file() and not (run / "selection.json").is_file():
            skipped.append((str(run), "neither metrics.json nor selection.json: still running, or stopped"))
            continue
        study = {}
        if metrics_path.is_file():  # a training run without a test split (test=false, no valid images) has none
            try:
                study = json.loads(metrics_path.read_text())["study"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                skipped.append((str(metrics_path), f"not a mura metrics file ({error!r})"))
                continue
        overrides[str(run)] = [str(item) for item in _recorded(run, "overrides.yaml") or []]
        config = _recorded(run, "config.yaml") or OmegaConf.create()
        scored_on = _scored_split(config) if study else None  # test=false: nothing scored
        rows.append({"run": str(run), **_fold(config), **_validation(run), "scored_on": scored_on, **_test(study)})
    common = sorted(set.intersection(*(set(value) for value in overrides.values()))) if overrides else []
    table = pd.DataFrame(rows)
    if not table.empty:
        table.insert(1, "settings", [" ".join(o for o in overrides[run] if o not in common) for run in table["run"]])
        table = sort_by_selection(table)
    return table, common, skipped


def selection_rules(table: pd.DataFrame) -> list[str]:
    """The distinct selection rules (`val/loss min`) of the runs that have one."""
    return sorted(table["selection"].dropna().unique()) if "selection" in table else []


def sort_by_selection(table: pd.DataFrame) -> pd.DataFrame:
    """Best selected score first when the runs share one rule (runs without a selection last); else by name."""
    rules = selection_rules(table)
    if len(rules) != 1:
        return table.sort_values("run", kind="stable").reset_index(drop=True)
    ascending = rules[0].endswith(" min")
    return table.sort_values(["selection_score", "run"], ascending=[ascending, True], na_position="last",
                             kind="stable").reset_index(drop=True)


# The commands whose folders hold no scores (a job renamed with hydra.job.name=... is still taken for a run)
OTHER_COMMANDS = ("audit", "bench", "export", "predict", "summarize", "synth")


def _recorded(run: Path, name: str) -> DictConfig | ListConfig | None:
    """One file of the run's .hydra/ (config.yaml, hydra.yaml, overrides.yaml), None where the run has none."""
    path = run / HYDRA_RECORD / name
    return OmegaConf.load(path) if path.is_file() else None


def _command(run: Path) -> str | None:
    """The mura command that wrote the folder (Hydra's job name: train, evaluate, audit...), None if not recorded."""
    return OmegaConf.select(_recorded(run, "hydra.yaml") or OmegaConf.create(), "hydra.job.name", default=None)


def _scored_split(config: DictConfig) -> str:
    """The split metrics.json scored, from the run's config: a training run's test split, or the split a
    mura.evaluate was asked for (eval.split: test, val or train)."""
    return str(OmegaConf.select(config, "eval.split", default="test"))


def _fold(config: DictConfig) -> dict:
    """The cross-validation fold the run validated on and the number of folds (data.cv_fold, data.cv_folds of its
    config), or None for each."""
    return {"cv_fold": OmegaConf.select(config, "data.cv_fold", default=None),
            "cv_folds": OmegaConf.select(config, "data.cv_folds", default=None)}


def cross_validation_table(table: pd.DataFrame) -> pd.DataFrame:
    """For cross-validated runs: a row per setting (the settings but the fold), with the number of folds and the
    mean and standard deviation over folds of the selected epoch's validation study kappa and AUROC. Sorted by
    the mean validation study kappa (validation, never test)."""
    folds = table[table["cv_fold"].notna()] if "cv_fold" in table else table.iloc[0:0]
    if folds.empty:
        return pd.DataFrame()
    setting = folds["settings"].str.replace(r"(^| )\+{0,2}data\.cv_fold=\S+", "", regex=True).str.strip()
    grouped = folds.assign(setting=setting).groupby("setting", sort=False)
    result = grouped.agg(folds=("cv_fold", "nunique"), of=("cv_folds", "max"), runs=("cv_fold", "size"),
                         val_kappa_mean=("val_study_kappa", "mean"),
                         val_kappa_sd=("val_study_kappa", "std"), val_auroc_mean=("val_study_auroc", "mean"),
                         val_auroc_sd=("val_study_auroc", "std"), epochs=("epochs", "mean")).reset_index()
    return result.sort_values("val_kappa_mean", ascending=False, kind="stable").reset_index(drop=True)


def _validation(run: Path) -> dict:
    """Epochs run, the selection rule, the selected epoch and its score (selection.json, written by mura.train), and
    that epoch's validation loss and study kappa (history.json)."""
    history_path, selection_path = run / "history.json", run / "selection.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    row = {"epochs": len(history) or None, "selection": None, "best_epoch": None, "selection_score": None,
           "val_loss": None, "val_study_kappa": None, "val_study_auroc": None}
    scored = [entry for entry in history if entry.get("val/loss") is not None]
    if selection_path.is_file():
        selection = json.loads(selection_path.read_text())
    elif scored:  # a run of an earlier version, which had one rule: the lowest validation loss
        best = min(scored, key=lambda entry: entry["val/loss"])
        selection = {"metric": "val/loss", "mode": "min", "epoch": best["epoch"], "score": best["val/loss"]}
    else:
        return row
    epoch_row = next((entry for entry in history if entry.get("epoch") == selection["epoch"]), {})
    return {**row, "selection": f"{selection['metric']} {selection['mode']}", "best_epoch": selection["epoch"],
            "selection_score": selection["score"], "val_loss": epoch_row.get("val/loss"),
            "val_study_kappa": epoch_row.get("val/study/kappa"), "val_study_auroc": epoch_row.get("val/study/auroc")}


def _test(study: dict) -> dict:
    overall = study.get("overall", {})
    # An earlier version's kappa_ci95 was the standard-error interval (it wrote no kappa_ci95_se): not shown beside
    # bootstrap intervals, in a column that would then hold two kinds of interval.
    low, high = (overall.get("kappa_ci95") or (None, None)) if "kappa_ci95_se" in overall else (None, None)
    result = {"study_kappa": overall.get("kappa"), "kappa_ci_low": low, "kappa_ci_high": high,
              "study_auroc": overall.get("auroc"), "studies": overall.get("n")}
    result.update({f"kappa_{part}": metrics.get("kappa") for part, metrics in study.items() if part != "overall"})
    return result


def summary_markdown(table: pd.DataFrame, cross_validation: pd.DataFrame, common: list[str],
                     skipped: list[tuple[str, str]]) -> str:
    """The table for people: kappa with its CI in one cell, three decimals, n/a where undefined; then the
    `cross_validation_table(table)`, if any run was a fold."""
    rules = selection_rules(table)
    if len(rules) == 1:
        order = f"sorted by their selection rule, {rules[0]}, at the selected epoch"
    elif rules:
        order = f"not ranked: the runs were selected by different rules ({', '.join(rules)}); listed by name"
    else:
        order = "listed by name (no run records a selection)"
    lines = [f"{len(table)} run(s), {order} (choose on validation, report test)."]
    if common:
        lines.append("Shared settings: " + " ".join(f"`{item}`" for item in common))
    if not table.empty:
        shown = pd.DataFrame({
            "run": table["run"], "settings": table["settings"], "epochs": table["epochs"].map(_count),
            "selected epoch": table["best_epoch"].map(_count),
            "selection": table["selection"].fillna(""), "selected score": table["selection_score"].map(_number),
            "val loss": table["val_loss"].map(_number), "val study kappa": table["val_study_kappa"].map(_number),
            "scored on": table["scored_on"].fillna(""),
            "study kappa (95% CI)": [f"{format_metric(_value(k))} ({format_interval(_value(lo), _value(hi))})"
                                     for k, lo, hi in zip(table["study_kappa"], table["kappa_ci_low"], table["kappa_ci_high"], strict=True)],
            "study AUROC": table["study_auroc"].map(_number), "studies": table["studies"].map(_count),
        })
        for column in [name for name in table.columns if name.startswith("kappa_XR_")]:
            shown[column.removeprefix("kappa_")] = table[column].map(_number)
        lines += ["", shown.to_markdown(index=False)]
    if not cross_validation.empty:
        lines += ["", "Cross-validation: each setting's folds (validation study kappa and AUROC at each fold's selected "
                  "epoch, mean +- sd over folds; sorted by the mean kappa, never by test):", "",
                  pd.DataFrame({
                      "setting": cross_validation["setting"].replace("", "(shared settings)"),
                      # "3 of 5": a sweep still running, or a fold that failed; "5 of 5 (6 runs)": a fold run twice
                      "folds": [f"{done} of {int(of)}" + (f" ({runs} runs)" if runs != done else "")
                                for done, of, runs in zip(cross_validation["folds"], cross_validation["of"],
                                                          cross_validation["runs"], strict=True)],
                      "val study kappa": [f"{_number(m)} +- {_number(sd)}" for m, sd in
                                          zip(cross_validation["val_kappa_mean"], cross_validation["val_kappa_sd"], strict=True)],
                      "val study AUROC": [f"{_number(m)} +- {_number(sd)}" for m, sd in
                                          zip(cross_validation["val_auroc_mean"], cross_validation["val_auroc_sd"], strict=True)],
                      "epochs": cross_validation["epochs"].map(_count),
                  }).to_markdown(index=False)]
    for run, reason in skipped:
        lines.append(f"\nnot summarised: {run}: {reason}")
    return "\n".join(lines) + "\n"


def _value(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _number(value) -> str:
    return format_metric(_value(value))


def _count(value) -> str:
    return "" if _value(value) is None else str(int(value))
