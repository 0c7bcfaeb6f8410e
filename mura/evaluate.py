"""python -m mura.evaluate ckpt_path=...: study-level results of one checkpoint or an ensemble on any split."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, open_dict

from mura.errors import ConfigError, exit_on_user_error
from mura.evaluation.inference import average_ensemble, pick_device, predict_images
from mura.evaluation.metrics import metrics_report
from mura.evaluation.report import metrics_table, write_run_outputs
from mura.models.checkpoint import load_classifier

log = logging.getLogger(__name__)


def checkpoint_list(ckpt_path) -> list[str]:
    paths = list(ckpt_path) if isinstance(ckpt_path, (list, tuple, ListConfig)) else [ckpt_path]
    if not paths:
        raise ConfigError("ckpt_path is empty: pass a checkpoint or a list [a.ckpt,b.ckpt]")
    return [str(path) for path in paths]


def evaluate(cfg: DictConfig) -> dict:
    """Predict with every checkpoint (each with its own preprocessing), average, score; returns the report."""
    checkpoints = checkpoint_list(cfg.ckpt_path)
    device = pick_device(cfg.eval.device)
    split = cfg.eval.split
    predictions, threshold, datamodule = [], None, None
    for path in checkpoints:
        model = load_classifier(path, device)
        with open_dict(cfg):
            cfg.data.image_size = model.hparams.image_size
            cfg.data.recipe = model.hparams.recipe
            cfg.data.channels = model.hparams.in_channels
            cfg.data.splits_dir = None
        datamodule = instantiate(cfg.data)
        datamodule.setup("test")
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
