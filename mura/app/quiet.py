"""Messages that are noise to a researcher, silenced by their exact text and origin, and only those: every other
warning, Lightning's and PyTorch's included, still shows. Applied by the commands (`mura.app.run_start.start_run`),
never on import."""

from __future__ import annotations

import logging
import os
import re
import warnings

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# (message regex, category, module regex): the module is the one Python attributes the warning to.
NOISE_WARNINGS = (
    # Lightning calls torch's deprecated LeafSpec itself, at every fit, validation and test: not ours to fix.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
    # MuraClassifier moves and normalises batches in on_before/on_after_batch_transfer on purpose (the device path,
    # mura/data/device_augment.py); Lightning says so whenever a LightningDataModule is passed as well.
    (r"You have overridden `on_(before|after)_batch_transfer` in `LightningModule` but have passed in a "
     r"`LightningDataModule`", UserWarning, r"pytorch_lightning\.trainer\.connectors\.data_connector"),
)
# Lightning's adverts for its cloud services (litlogger, litmodels), logged at INFO by its rank-zero logger.
ADVERT_LOGGER = "pytorch_lightning.utilities.rank_zero"
ADVERT = re.compile(r"💡 Tip: For seamless cloud (logging|uploads)")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not ADVERT.match(record.getMessage())


def quiet_known_noise() -> None:
    """Silence NOISE_WARNINGS and Lightning's adverts; idempotent (a multirun calls it once per job)."""
    for message, category, module in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    advert_logger = logging.getLogger(ADVERT_LOGGER)
    if not any(isinstance(existing, _DropAdverts) for existing in advert_logger.filters):
        advert_logger.addFilter(_DropAdverts())


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, as SLURM or taskset set it), as torch's DataLoader counts."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fit_workers_to_cores(cfg: DictConfig) -> None:
    """More image-loading workers than cores only slows loading down (and makes the DataLoader warn at every
    stage): lower `data.num_workers` to the usable cores, and say so once."""
    workers = OmegaConf.select(cfg, "data.num_workers", default=None)
    cores = usable_cores()
    if isinstance(workers, int) and workers > cores:
        cfg.data.num_workers = cores
        log.info("data.num_workers=%d lowered to %d, the CPU cores this process may use", workers, cores)
