"""python -m mura.train: fit, then test the best checkpoint on the test split (see conf/train.yaml)."""

from __future__ import annotations

import logging
import math
import signal
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mura.errors import ConfigError, exit_on_user_error
from mura.evaluation.report import metrics_table, write_run_outputs

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Callbacks and loggers are dicts of configs: adding one needs no code change here."""
    return [instantiate(config) for config in (group or {}).values() if config is not None and "_target_" in config]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as `cfg` says; returns the final callback metrics as floats."""
    if cfg.get("seed") is not None:  # `is not None`: seed 0 is a seed
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=instantiate_group(cfg.get("logger")) or False
    )
    ckpt_path = cfg.get("ckpt_path")
    refuse_to_overwrite(output_dir / "checkpoints", ckpt_path)
    try:
        with warnings.catch_warnings():
            # With an on-exception checkpoint configured, Lightning reads fit(ckpt_path=None) as "resume from the
            # last checkpoint if there is one" and says so twice; refuse_to_overwrite has made sure there is none.
            warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
            warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
            # weights_only: resuming reads tensors and plain values, never pickled code.
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        log.error("stopped by SIGTERM; %s holds the state to resume from (ckpt_path=that file)", output_dir / "checkpoints")
        raise SystemExit(128 + signal.SIGTERM) from None
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}

    if cfg.get("test"):
        if not datamodule.has_split("test"):
            log.warning("no test split: %s lists no valid images for %s; skipping the test", datamodule.root, datamodule.body_parts)
        else:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
            if trainer.is_global_zero:
                write_test_outputs(model, datamodule, output_dir)
            metrics.update({key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")})
    report_skipped(model.all_skipped_images(), output_dir, trainer.is_global_zero)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Lightning leaves the process group up; tearing it down here keeps gloo's threads from aborting at exit.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return metrics


def refuse_to_overwrite(checkpoint_dir: Path, ckpt_path: str | None) -> None:
    """A new run in a folder that holds checkpoints would overwrite them (and Lightning would quietly resume from
    one): resuming is asked for by name, ckpt_path=last."""
    existing = sorted(path.name for path in checkpoint_dir.glob("*.ckpt"))
    if existing and ckpt_path is None:
        raise ConfigError(f"{checkpoint_dir} already holds {', '.join(existing)}: pass ckpt_path=last to resume that run, "
                          "or leave hydra.run.dir out (or name a new folder) to start a new one")


def report_skipped(skipped: list[str], output_dir: Path, write: bool) -> None:
    """Counted skips are reported at the end of the run and listed in skipped_images.txt, never silent."""
    if not skipped:
        return
    log.warning("%d unreadable image(s) were skipped (data.on_bad_image=skip), listed in %s: %s",
                len(skipped), output_dir / "skipped_images.txt", skipped[:5])
    if write:
        (output_dir / "skipped_images.txt").write_text("".join(path + "\n" for path in skipped))


def write_test_outputs(model, datamodule, output_dir: Path) -> None:
    report = model.reports["test"]
    write_run_outputs(
        output_dir, report, model.predictions["test"], datamodule.studies, datamodule.splits["path"],
        model.hparams.threshold, title="Test results after training",
        split_description=f"the test split (official valid) of {datamodule.root}, body parts {', '.join(datamodule.body_parts)}",
        checkpoints=[str(output_dir / "checkpoints" / "best.ckpt")],
    )
    table = metrics_table(report, "study").to_markdown(index=False)
    print(f"\nTest split ({datamodule.root}), study level:\n{table}\n\nwritten to {output_dir}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    return sweep_value(train(cfg), cfg.get("optimized_metric"))


def sweep_value(metrics: dict[str, float], name: str | None) -> float | None:
    """What a sweeper optimises. None, not NaN, when the metric is missing or undefined (kappa of a validation
    split that holds one class): the Optuna sweeper records such a trial as failed and goes on (with
    max_failure_rate 1.0, conf/hparams_search/optuna.yaml), while a NaN stops the whole search."""
    if name is None:
        return None
    value = metrics.get(name)
    if value is None or math.isnan(value):
        log.warning("optimized_metric %s is %s; this trial reports no value to the sweeper", name,
                    "not logged" if value is None else "undefined (NaN)")
        return None
    return value


if __name__ == "__main__":
    main()
