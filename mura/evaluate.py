"""python -m mura.evaluate ckpt_path=...: study-level results of one checkpoint or an ensemble on any split."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from mura.app.errors import ConfigError, exit_on_user_error
from mura.app.paths import expand_paths
from mura.app.run_start import start_run
from mura.data.index import parse_body_parts, refuse_writes_inside
from mura.data.split import split_mismatch
from mura.evaluation.metrics import metrics_report
from mura.evaluation.report import STUDY_MODEL_NOTE, metrics_table, write_run_outputs
from mura.inference.predictor import average_ensemble, pick_device, predict_images
from mura.models.checkpoint import load_classifier, training_split

log = logging.getLogger(__name__)

# The splits carved out of the official train split: scoring them needs the training run's own split.
CARVED_SPLITS = ("train", "val")
SPLIT_SETTINGS = {"split_seed": 0, "val_fraction": 0.1, "cv_folds": None, "cv_fold": None}  # defaults without a record


def evaluate(cfg: DictConfig) -> dict:
    """Predict with every checkpoint (each with its own preprocessing), average, score; returns the report."""
    checkpoints = expand_paths(cfg.ckpt_path, "ckpt_path")
    device = pick_device(cfg.eval.device)
    split = cfg.eval.split
    data_settings = split_settings(cfg.data, [training_split(path) for path in checkpoints], checkpoints, split)
    with open_dict(cfg):
        cfg.data.update(data_settings["data"])
        cfg.data.splits_dir = None
    predictions, threshold, datamodule, study_models = [], None, None, []
    datamodules = {}  # one per preprocessing: an ensemble of one recipe reads the index once
    for path in checkpoints:
        model = load_classifier(path, device)
        # A study model reads batches of studies, a view model batches of images: an ensemble may mix them (their
        # views' rows carry each model's study probability or view probability; the study means average those).
        pooling = "study" if model.is_study_model else "mean"
        if model.is_study_model:
            study_models.append(model.hparams.study_pooling)
        preprocessing = (model.hparams.image_size, model.hparams.recipe, model.hparams.in_channels, model.hparams.resize,
                         pooling)
        if preprocessing not in datamodules:
            with open_dict(cfg):
                (cfg.data.image_size, cfg.data.recipe, cfg.data.channels, cfg.data.resize,
                 cfg.data.study_pooling) = (*preprocessing[:4], model.hparams.study_pooling)
            datamodules[preprocessing] = instantiate(cfg.data)
            refuse_writes_inside(datamodules[preprocessing].root, {"paths.output_dir": cfg.paths.output_dir})
            datamodules[preprocessing].setup(splits=(split,))
            check_same_split(datamodules[preprocessing].split_definition, data_settings["trained"], split)
        datamodule = datamodules[preprocessing]
        loader = datamodule.dataloader(split, shuffle=False, train_transforms=False)
        images, skipped = predict_images(model, loader, tta_flip=cfg.eval.tta, bf16=cfg.eval.bf16)
        if skipped:
            log.warning("%s: %d unreadable image(s) skipped: %s", path, len(skipped), skipped[:10])
        predictions.append(images)
        threshold = model.hparams.threshold if threshold is None else threshold
    threshold = cfg.eval.threshold if cfg.eval.threshold is not None else threshold
    images = average_ensemble(predictions)
    # The bootstrap's default seed, as in training's test table: one checkpoint, one set of intervals.
    report = metrics_report(images, threshold=threshold, bootstrap=cfg.eval.bootstrap)
    output_dir = Path(cfg.paths.output_dir)
    what = "ensemble of " + str(len(checkpoints)) if len(checkpoints) > 1 else "one model"
    write_run_outputs(
        output_dir, report, images, datamodule.studies, datamodule.splits["path"], threshold,
        title=f"Evaluation ({what}{', flip TTA' if cfg.eval.tta else ''})",
        split_description=f"the {split} split of {datamodule.root}, body parts {', '.join(datamodule.body_parts)}"
        + "".join(f"; {STUDY_MODEL_NOTE.format(pooling=pooling)}" for pooling in sorted(set(study_models))),
        checkpoints=checkpoints,
    )
    print(f"\n{split} split ({datamodule.root}), study level:\n{metrics_table(report, 'study').to_markdown(index=False)}"
          f"\n\nwritten to {output_dir}")
    return report


def split_settings(requested: DictConfig, trained: list[dict | None], checkpoints: list[str], split: str) -> dict:
    """The data settings an evaluation uses: `data.body_parts`, `data.split_seed` and `data.val_fraction` as the
    training run had them unless the command line says otherwise; on the train and validation splits, which the
    run carved out of the official train split, a setting that differs from the run's is refused.

    Returns {"data": settings to apply, "trained": the members' common split record or None}.
    """
    recorded = [record for record in trained if record is not None]
    if len(recorded) < len(trained) and split in CARVED_SPLITS:
        missing = [path for path, record in zip(checkpoints, trained, strict=True) if record is None]
        raise ConfigError(f"{missing[0]} records no training split (an older mura wrote it): its {split} split cannot be "
                          "rebuilt; evaluate it on the test split (eval.split=test)")
    digests = {record["val_patients_digest"] for record in recorded}
    if len(digests) > 1 and split in CARVED_SPLITS:
        raise ConfigError(f"the checkpoints were trained with different validation splits ({len(digests)} of them): an "
                          f"ensemble's {split} split would hold some members' training patients; evaluate them one by one")
    reference = recorded[0] if recorded else None
    settings = {}
    body_parts = requested.get("body_parts")
    if body_parts is None:
        trained_parts = {tuple(record["body_parts"]) for record in recorded}
        if len(trained_parts) > 1:
            raise ConfigError("the checkpoints were trained on different body parts "
                              f"({' / '.join(','.join(parts) for parts in sorted(trained_parts))}): pass data.body_parts")
        settings["body_parts"] = list(trained_parts.pop()) if trained_parts else "all"
    else:
        settings["body_parts"] = parse_body_parts(body_parts)
    for key, default in SPLIT_SETTINGS.items():
        value, trained_value = requested.get(key), reference.get(key, default) if reference else default
        if reference is not None and value is not None and value != trained_value and split in CARVED_SPLITS:
            raise ConfigError(
                f"data.{key}={value} differs from the training run's {trained_value}: its {split} split would not be "
                f"the one it trained with (other patients, some of them trained on); leave data.{key} out to use the run's"
            )
        # Without a record the split settings matter only to carved splits, refused above: the defaults will do.
        settings[key] = value if value is not None else trained_value
    return {"data": settings, "trained": reference}


def check_same_split(rebuilt: dict, trained: dict | None, split: str) -> None:
    """The validation patients rebuilt from data.root must be the run's: same settings, same release."""
    mismatch = split_mismatch(trained, rebuilt) if trained is not None and split in CARVED_SPLITS else None
    if mismatch:
        raise ConfigError(f"the training run's {split} split cannot be rebuilt from this data.root: {mismatch}; the data "
                          "differ from what it trained on")


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    start_run(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
