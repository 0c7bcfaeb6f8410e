"""One table for many runs: the jobs of a sweep, the members of an ensemble, the wrist and all-parts experiments.

A run is a folder that `mura.train` or `mura.evaluate` wrote: `metrics.json` (test, or the evaluated split),
`.hydra/overrides.yaml` (what the command line set), `.hydra/config.yaml` and, for training, `selection.json` (the
selection rule, the selected epoch and its score), `history.json` (one row per epoch) and `splits.csv` (every image's
split). Runs are ranked by their own selection rule (`selection.metric` and `selection.mode`, the rule that chose
each run's best.ckpt), never by test: choose on validation, report test. Only runs whose selected scores compare are
ranked together: the same rule, computed on the same images, and for a loss the same loss (`ranking_basis`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from mura.app.errors import ConfigError
from mura.app.run_start import HYDRA_RECORD
from mura.data.audit import paper_loss_weights
from mura.data.index import BODY_PARTS
from mura.evaluation.metrics import format_interval, format_metric

# Overrides that leave the trained model and its validation numbers as they are: where the run's files go, how it
# is tracked, shown, checkpointed for resuming and explained, and how fast its images are read. A fold resumed with
# ckpt_path=last (a resume goes on exactly where the run stopped), or run again with other loader workers (order and
# augmentation are drawn per sample, mura.data.sampling), is the same fold of the same setting: these never split a
# cross-validation setting (the main table still shows them). Left out on purpose, because they do change the model:
# trainer.devices (data.batch_size is per process: two processes double the global batch), trainer.accelerator,
# trainer.precision and trainer.benchmark (other arithmetic), data.augment_on_device (other augmentation draws),
# data.root and data.on_bad_image (other images), callbacks.model_checkpoint and callbacks.early_stopping (another
# selected epoch). A key matches itself and everything under it (`hydra` matches hydra.run.dir and hydra/launcher).
MODEL_NEUTRAL_OVERRIDES = (
    "ckpt_path",
    "hydra",
    "paths",
    "task_name",
    "logger",
    "tags",
    "test",  # whether the selected checkpoint is tested after training: not which one is selected
    "cpu_threads",  # how many math threads: the same model, its sums in another order (last digits only)
    "data.num_workers",
    "data.persistent_workers",
    "data.pin_memory",
    "data.cache",  # the decode-once cache holds exactly the resize step's output
    "data.cache_dir",
    "data.splits_dir",
    "data.eval_batch_size",  # every image is scored once, whatever the batch (BatchNorm is in eval mode)
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.profiler",
    "callbacks.gradcam",
    "callbacks.learning_curves",
    "callbacks.lr_monitor",
    "callbacks.timings",
    "callbacks.on_exception",
    "callbacks.last_checkpoint",
    "callbacks.cpu_share",
)


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

    The table has a row per finished run: `settings` (the overrides that differ between runs), `model_settings`
    (those of them that change the trained model, sorted: `MODEL_NEUTRAL_OVERRIDES`), epochs, the selection rule and
    the selected epoch's score (the checkpoint best.ckpt holds and the test scored), the validation loss and study
    kappa there, when the run finished, its validation images (count and digest, from splits.csv), then the split
    metrics.json scored (`scored_on`: test, or what a mura.evaluate was asked for), its study-level kappa (95% CI),
    AUROC and study count, and the study kappa per body part. Ranked by `rank_runs`. Folders of other commands are
    skipped.
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
        config = _recorded(run, "config.yaml")
        settings = config or OmegaConf.create()  # without a config: no fold, nothing scored in part, test scored
        scored_on = _scored_split(settings) if study else None  # test=false: nothing scored
        validation = _validation(run)
        splits = _splits(run)
        basis, not_ranked = (ranking_basis(validation["selection"], splits, config) if validation["selection"]
                             else (None, "no selection rule: not a training run"))
        rows.append({"run": str(run), **_fold(settings), **validation, "finished": _finished(run),
                     **_validation_images(splits), "val_scored_in_part": _partial_scoring(settings, "val"),
                     "ranked_on": basis, "not_ranked": not_ranked, "scored_on": scored_on, **_test(study)})
    common = sorted(set.intersection(*(set(value) for value in overrides.values()))) if overrides else []
    table = pd.DataFrame(rows)
    if not table.empty:
        differing = {run: [item for item in items if item not in common] for run, items in overrides.items()}
        table.insert(1, "settings", [" ".join(differing[run]) for run in table["run"]])
        table.insert(2, "model_settings", [" ".join(sorted(item for item in differing[run] if not model_neutral(item)))
                                           for run in table["run"]])
        table = rank_runs(table)
    return table, common, skipped


def model_neutral(override: str) -> bool:
    """Whether a command-line override (`ckpt_path=last`, `+trainer.profiler=simple`, `hydra/launcher=slurm`) leaves
    the trained model as it is (`MODEL_NEUTRAL_OVERRIDES`)."""
    key = _override_key(override)
    return any(key == name or key.startswith((f"{name}.", f"{name}/")) for name in MODEL_NEUTRAL_OVERRIDES)


def _override_key(override: str) -> str:
    return override.lstrip("~+").split("=", 1)[0]


_SPLIT_NAMES = {"val": "validation", "train": "training"}


def ranking_basis(selection: str, splits: pd.DataFrame | None, config: DictConfig | None) -> tuple[str | None, str | None]:
    """What a run's selected score (`selection`: "val/loss min") was computed on, as a description that two runs
    share exactly when their scores compare: the rule, the images it scores (their count and a digest of their
    paths and labels, from the run's splits.csv) and, for a loss, the loss itself (plain BCE, or the paper's
    weighted BCE with its weights, which come from the training split's counts). Returns (description, None), or
    (None, why the score compares with no other run's)."""
    stage, *rest = selection.rsplit(" ", 1)[0].split("/")  # val/loss, val/study/kappa, val/study/XR_WRIST/kappa, train/...
    partial = _partial_scoring(config or OmegaConf.create(), stage)
    if partial:
        return None, f"scored only part of its {stage} split ({partial}): its score is no split's"
    if splits is None:
        return None, "no splits.csv: the images its score was computed on are unknown"
    part = next((name for name in rest if name in BODY_PARTS), None)
    rows = splits[splits["split"] == stage]
    rows = rows[rows["body_part"] == part] if part else rows
    images = f"{part} {_SPLIT_NAMES[stage]}" if part else _SPLIT_NAMES[stage]
    basis = f"{selection} over {len(rows)} {images} images ({_rows_digest(rows)})"
    if rest != ["loss"]:
        return basis, None
    if config is None:
        return None, f"no {HYDRA_RECORD}/config.yaml: its loss (model.loss_weighted) is unknown"
    # True where the config predates the setting: the weighted loss was then the only one
    if not OmegaConf.select(config, "model.loss_weighted", default=True):
        return f"{basis}, plain BCE", None
    return f"{basis}, weighted BCE ({_loss_weights_digest(splits, sorted(rows['body_part'].unique()))})", None


def _partial_scoring(config: DictConfig, stage: str) -> str | None:
    """The trainer setting with which the run scored only some of `stage`'s images each epoch (debug=limit,
    debug=overfit, debug=fdr), or None."""
    limit = OmegaConf.select(config, f"trainer.limit_{stage}_batches", default=None)
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):  # an int is a number of batches
        return f"trainer.limit_{stage}_batches={limit}"
    for key in ("trainer.overfit_batches", "trainer.fast_dev_run"):
        value = OmegaConf.select(config, key, default=None)
        if value:
            return f"{key}={value}"
    return None


def _loss_weights_digest(splits: pd.DataFrame, body_parts: list[str]) -> str:
    """The paper's loss weights of `body_parts`, as MuraClassifier sets them from the training split's image counts
    (splits.csv lists the images the run kept), in a short digest."""
    train = splits[splits["split"] == "train"]
    weights = {part: paper_loss_weights(int(((train["body_part"] == part) & (train["label"] == 0)).sum()),
                                        int(((train["body_part"] == part) & (train["label"] == 1)).sum()))
               for part in body_parts}
    return "weights " + _digest(json.dumps(weights, sort_keys=True))


def _splits(run: Path) -> pd.DataFrame | None:
    path = run / "splits.csv"
    return pd.read_csv(path, usecols=["path", "split", "body_part", "label"]) if path.is_file() else None


def _rows_digest(rows: pd.DataFrame) -> str:
    """A digest of the images (paths relative to data.root, and labels), whatever their order."""
    return _digest("\n".join(sorted(rows["path"] + "," + rows["label"].astype(str))))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _validation_images(splits: pd.DataFrame | None) -> dict:
    """The run's validation images: their count and `_rows_digest`, None for both without splits.csv."""
    if splits is None:
        return {"val_images": None, "val_images_digest": None}
    rows = splits[splits["split"] == "val"]
    return {"val_images": len(rows), "val_images_digest": _rows_digest(rows)}


def _finished(run: Path) -> str:
    """When the run finished: mura.train writes selection.json last (an earlier version wrote none: history.json,
    or a mura.evaluate's metrics.json), from that file's modification time, as an ISO time in UTC (so that the strings
    sort as the times do)."""
    path = next(path for path in (run / "selection.json", run / "history.json", run / "metrics.json") if path.is_file())
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).isoformat(timespec="microseconds")


def rank_runs(table: pd.DataFrame) -> pd.DataFrame:
    """The table sorted, with `rank_group` (A, B, ...: the runs of one `ranked_on`, largest group first) and `rank`
    within it (best selected score first, highest for `max`; an undefined score has none, and is last in its group),
    then the runs that compare with no other (`not_ranked`), by name."""
    score = pd.to_numeric(table["selection_score"], errors="coerce")
    maximised = table["selection"].fillna("").str.endswith(" max")
    table = pd.concat([table, _ranks_within_groups(table["ranked_on"], score.where(~maximised, -score))], axis=1)
    table.loc[table["rank_group"].notna() & table["rank"].isna(), "not_ranked"] = "its selected score is undefined"
    return (table.sort_values(["group_position", "rank", "run"], na_position="last", kind="stable")
            .drop(columns="group_position").reset_index(drop=True))


def _ranks_within_groups(bases: pd.Series, scores: pd.Series) -> pd.DataFrame:
    """For rows that compare when their `bases` are equal: `rank_group` (A, B, ...; the largest group first, then by
    basis), `rank` within it (the lowest score first, ties alike; none for a missing score or basis) and
    `group_position`, to sort by."""
    sizes = bases.value_counts()
    order = sorted(sizes.index, key=lambda basis: (-sizes[basis], basis))
    position = bases.map({basis: number for number, basis in enumerate(order)})
    return pd.DataFrame({"rank_group": bases.map({basis: _group_name(number) for number, basis in enumerate(order)}),
                         "rank": scores.groupby(position).rank(method="min").astype("Int64"),
                         "group_position": position})


def _group_name(position: int) -> str:
    return chr(ord("A") + position) if position < 26 else f"G{position + 1}"


# The commands whose folders hold no scores (a job renamed with hydra.job.name=... is still taken for a run)
OTHER_COMMANDS = ("audit", "bench", "compare", "export", "predict", "summarize", "synth")


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
    """For cross-validated training runs: a row per setting (the model settings but the fold: a resumed fold, or one
    run with other loader workers, is no setting of its own) with its distinct folds, the missing ones, and the mean
    and standard deviation over folds of the selected epoch's validation study kappa and AUROC, each over the folds
    where it is defined. A fold run more than once counts once: its latest finished run (`finished`), whatever its
    scores. Settings are ranked by the mean kappa (validation, never test) only within groups validated on the same
    folds of the same images (`compared_on`); `notes` says what is missing, repeated or undefined."""
    is_fold = table["cv_fold"].notna() & table["selection"].notna() if "cv_fold" in table else None
    if is_fold is None or not is_fold.any():
        return pd.DataFrame()
    folds = table[is_fold].assign(setting=lambda frame: frame["model_settings"].map(_without_fold))
    rows = [_cross_validation_row(setting, int(of), runs)
            for (setting, of), runs in folds.groupby(["setting", "cv_folds"], sort=False)]
    result = pd.DataFrame(rows)
    result = pd.concat([result, _ranks_within_groups(result["compared_on"], -result["val_kappa_mean"])], axis=1)
    return (result.sort_values(["group_position", "rank", "setting"], na_position="last", kind="stable")
            .drop(columns="group_position").reset_index(drop=True))


def _without_fold(model_settings: str) -> str:
    return " ".join(item for item in model_settings.split(" ") if item and _override_key(item) != "data.cv_fold")


def _cross_validation_row(setting: str, of: int, runs: pd.DataFrame) -> dict:
    """One setting's folds: the latest finished run of each fold, what is missing, repeated or undefined."""
    used = runs.sort_values(["finished", "run"], kind="stable").groupby("cv_fold").tail(1).sort_values("cv_fold")
    fold_numbers = used["cv_fold"].astype(int).tolist()
    notes = []
    missing = [fold for fold in range(of) if fold not in fold_numbers]
    if missing:
        notes.append(f"missing fold(s) {_listed(missing)}")
    repeats = runs["cv_fold"].astype(int).value_counts().sort_index()
    repeated = [fold for fold, count in repeats.items() if count > 1]
    for fold in repeated:
        chosen = used.loc[used["cv_fold"] == fold, "run"].iloc[0]
        notes.append(f"fold {fold} run {repeats[fold]} times: {chosen} counted (the latest finished)")
    summary = {}
    for metric, name, column in (("kappa", "kappa", "val_study_kappa"), ("auroc", "AUROC", "val_study_auroc")):
        values = pd.to_numeric(used[column], errors="coerce")
        undefined = [fold for fold, value in zip(fold_numbers, values, strict=True) if pd.isna(value)]
        if undefined:
            notes.append(f"{name} undefined in fold(s) {_listed(undefined)}: its mean is over {values.notna().sum()} fold(s)")
        summary |= {f"val_{metric}_mean": values.mean(), f"val_{metric}_sd": values.std(),
                    f"val_{metric}_folds": int(values.notna().sum())}
    compared_on, why_not = _compared_on(used, fold_numbers, of)
    if why_not:
        notes.append(f"not ranked: {why_not}")
    return {"setting": setting, "of": of, "folds": len(fold_numbers), "runs": len(runs), "missing_folds": _listed(missing),
            "repeated_folds": _listed(repeated), **summary, "epochs": pd.to_numeric(used["epochs"]).mean(),
            "used_runs": " ".join(used["run"]), "compared_on": compared_on, "notes": "; ".join(notes)}


def _compared_on(used: pd.DataFrame, fold_numbers: list[int], of: int) -> tuple[str | None, str | None]:
    """The folds and their validation images (a digest over the folds' splits.csv digests): two settings' means
    compare when these are the same. (None, why) where a fold's images are unknown or were only partly scored."""
    for fold, run, digest, partial in zip(fold_numbers, used["run"], used["val_images_digest"],
                                          used["val_scored_in_part"], strict=True):
        if pd.isna(digest):
            return None, f"fold {fold} ({run}) has no splits.csv: its validation images are unknown"
        if isinstance(partial, str):
            return None, f"fold {fold} ({run}) scored only part of its validation split ({partial})"
    digest = _digest(" ".join(f"{fold}:{digest}" for fold, digest in zip(fold_numbers, used["val_images_digest"], strict=True)))
    return f"folds {_listed(fold_numbers)} of {of}, validation images {digest}", None


def _listed(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))


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
    """The table for people: kappa with its CI in one cell, three decimals, n/a where undefined, each run's rank
    within its group of comparable runs, the runs not ranked with the reason; then the
    `cross_validation_table(table)`, if any run was a fold."""
    lines = [_ranking_heading(table)]
    if common:
        lines.append("Shared settings: " + " ".join(f"`{item}`" for item in common))
    if not table.empty:
        several = table["rank_group"].nunique() > 1
        shown = pd.DataFrame({
            "run": table["run"], "rank": _ranks(table["rank_group"], table["rank"], several),
            "settings": table["settings"], "epochs": table["epochs"].map(_count),
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
        lines += [f"\nnot ranked: {run}: {reason}" for run, reason in zip(table["run"], table["not_ranked"], strict=True)
                  if isinstance(reason, str)]
    if not cross_validation.empty:
        lines += ["", _cross_validation_markdown(cross_validation)]
    for run, reason in skipped:
        lines.append(f"\nnot summarised: {run}: {reason}")
    return "\n".join(lines) + "\n"


def _ranking_heading(table: pd.DataFrame) -> str:
    groups = table.dropna(subset=["rank_group"]).groupby("rank_group", sort=True)["ranked_on"] if not table.empty else None
    if groups is None or groups.ngroups == 0:
        return f"{len(table)} run(s), listed by name (no run records a selection that can be ranked)."
    if groups.ngroups == 1:
        return (f"{len(table)} run(s), sorted by their selection rule at the selected epoch, every score alike: "
                f"{groups.first().iloc[0]} (choose on validation, report test).")
    described = "".join(f"\n- {name} ({len(basis)} run(s)): {basis.iloc[0]}" for name, basis in groups)
    return (f"{len(table)} run(s), ranked only within groups whose selected scores compare: the same selection rule "
            "over the same images (the digest of their paths and labels) and, for a loss, the same loss and weights. "
            f"Rank B2 is group B's second best (choose on validation, report test):{described}")


def _cross_validation_markdown(cross_validation: pd.DataFrame) -> str:
    several = cross_validation["rank_group"].nunique() > 1
    groups = cross_validation.dropna(subset=["rank_group"]).groupby("rank_group", sort=True)["compared_on"]
    grouping = ("; ranked only within groups of settings validated on the same folds of the same images:"
                + "".join(f"\n- {name}: {basis.iloc[0]}" for name, basis in groups)) if several else ""
    return "\n".join([
        "Cross-validation: each setting's folds (validation study kappa and AUROC at each fold's selected epoch, "
        "mean +- sd over distinct folds, a repeated fold counted once: its latest finished run; overrides that leave "
        "the model as it is, such as ckpt_path, logger or data.num_workers, are no setting of their own; sorted by the "
        f"mean kappa, never by test){grouping}", "",
        pd.DataFrame({
            "rank": _ranks(cross_validation["rank_group"], cross_validation["rank"], several),
            "setting": cross_validation["setting"].replace("", "(shared settings)"),
            "folds": [f"{done} of {of}" for done, of in zip(cross_validation["folds"], cross_validation["of"], strict=True)],
            "val study kappa": [f"{_number(m)} +- {_number(sd)}" for m, sd in
                                zip(cross_validation["val_kappa_mean"], cross_validation["val_kappa_sd"], strict=True)],
            "val study AUROC": [f"{_number(m)} +- {_number(sd)}" for m, sd in
                                zip(cross_validation["val_auroc_mean"], cross_validation["val_auroc_sd"], strict=True)],
            "epochs": cross_validation["epochs"].map(_count),
            "notes": cross_validation["notes"],
        }).to_markdown(index=False)])


def _ranks(groups: pd.Series, ranks: pd.Series, with_group: bool) -> list[str]:
    """"2" (or "B2" where there are several groups); empty where unranked."""
    return ["" if pd.isna(rank) else f"{group if with_group else ''}{int(rank)}" for group, rank in zip(groups, ranks, strict=True)]


def _value(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _number(value) -> str:
    return format_metric(_value(value))


def _count(value) -> str:
    return "" if _value(value) is None else str(int(value))
