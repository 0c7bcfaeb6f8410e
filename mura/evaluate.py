"""python -m mura.evaluate ckpt_path=...: study-level results of one checkpoint or an ensemble on any split."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from mura.errors import exit_on_user_error
from mura.evaluation.inference import average_ensemble, pick_device, predict_images
from mura.evaluation.metrics import metrics_report
from mura.evaluation.report import metrics_table, write_run_outputs
from mura.models.checkpoint import load_classifier
from mura.paths import expand_paths

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    """Predict with every checkpoint (each with its own preprocessing), average, score; returns the report."""
    checkpoints = expand_paths(cfg.ckpt_path, "ckpt_path")
    device = pick_device(cfg.eval.device)
    split = cfg.eval.split
    predictions, threshold, datamodule = [], None, None
    datamodules = {}  # one per preprocessing: an ensemble of one recipe reads the index once
    for path in checkpoints:
        model = load_classifier(path, device)
        preprocessing = (model.hparams.image_size, model.hparams.recipe, model.hparams.in_channels)
        if preprocessing not in datamodules:
            with open_dict(cfg):
                cfg.data.image_size, cfg.data.recipe, cfg.data.channels = preprocessing
                cfg.data.splits_dir = None
            datamodules[preprocessing] = instantiate(cfg.data)
            datamodules[preprocessing].setup("test")
        datamodule = datamodules[preprocessing]
        loader = datamodule.dataloader(split, shuffle=False, train_transforms=False)
        images, skipped = predict_images(model, loader, tta_flip=cfg.eval.tta, bf16=cfg.eval.bf16)
        if skipped:
            log.warning("%s: %d unreadable image(s) skipped: %s", path, len(skipped), skipped[:10])
        predictions.append(images)
        threshold = model.hparams.threshold if threshold is None else threshold
    threshold = cfg.eval.threshold if cfg.eval.threshold is not None else threshold
    images = average_ensemble(predictions)
    report = metrics_report(images, threshold=threshold, bootstrap=cfg.eval.bootstrap, seed=cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    what = "ensemble of " + str(len(checkpoints)) if len(checkpoints) > 1 else "one model"
    write_run_outputs(
        output_dir, report, images, datamodule.studies, datamodule.splits["path"], threshold,
        title=f"Evaluation ({what}{', flip TTA' if cfg.eval.tta else ''})",
        split_description=f"the {split} split of {datamodule.root}, body parts {', '.join(datamodule.body_parts)}",
        checkpoints=checkpoints,
    )
    print(f"\n{split} split ({datamodule.root}), study level:\n{metrics_table(report, 'study').to_markdown(index=False)}"
          f"\n\nwritten to {output_dir}")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
