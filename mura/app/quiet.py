"""Messages that are noise to a researcher, silenced by their exact text and origin, and only those: every other
warning, Lightning's and PyTorch's included, still shows. Applied by the commands (`mura.app.run_start.start_run`),
and by the one call that makes wandb's link notices (`without_wandb_link_notices`), never on import."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr

log = logging.getLogger(__name__)

# (message regex, category, module regex): the module is the one Python attributes the warning to.
NOISE_WARNINGS = (
    # Lightning calls torch's deprecated LeafSpec itself, at every fit, validation and test: not ours to fix.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
    # MuraClassifier moves and normalises batches in on_before/on_after_batch_transfer on purpose (the device path,
    # mura/data/device_augment.py); Lightning says so whenever a LightningDataModule is passed as well.
    (r"You have overridden `on_(before|after)_batch_transfer` in `LightningModule` but have passed in a "
     r"`LightningDataModule`", UserWarning, r"pytorch_lightning\.trainer\.connectors\.data_connector"),
    # Lightning's PossibleUserWarning on an epoch shorter than trainer.log_every_n_steps (small data, debug=limit).
    # Nothing is lost here: the interval counts optimizer steps across epochs, so train/loss_step still gets a point
    # every log_every_n_steps steps, and every epoch metric (train/loss, the study kappas) is logged at the epoch's end.
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning,
     r"pytorch_lightning\.loops\.fit_loop"),
)
# Lightning's adverts for its cloud services (litlogger, litmodels), logged at INFO by its rank-zero logger.
ADVERT_LOGGER = "pytorch_lightning.utilities.rank_zero"
ADVERT = re.compile(r"💡 Tip: For seamless cloud (logging|uploads)")
# wandb's notice after each `run.save` that links a file into its run folder, printed on stderr (wandb.termwarn: no
# warning, no log record). mura.train saves each run file once, finished, so "call wandb.save again" never applies;
# it came once per file (13 lines) at the end of every logger=wandb run.
WANDB_LINK_NOTICE = re.compile(
    r"wandb: WARNING (Symlinked|Linked) \d+ files? into the W&B run directory( \(hardlinks\))?; "
    r"call wandb\.save again to sync new files\.\n?")
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # wandb colours its prefix on a terminal


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not ADVERT.match(record.getMessage())


def quiet_known_noise() -> None:
    """Silence NOISE_WARNINGS, Lightning's adverts, and on every process but rank zero mura's INFO lines;
    idempotent (a multirun calls it once per job).

    DDP (trainer.devices=2, trainer=ddp) and SLURM tasks run the command once per process, and each process would
    print every INFO line again. The other ranks keep mura's warnings and errors: those can be their own (an
    unreadable image in their shard of the data)."""
    for message, category, module in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    advert_logger = logging.getLogger(ADVERT_LOGGER)
    if not any(isinstance(existing, _DropAdverts) for existing in advert_logger.filters):
        advert_logger.addFilter(_DropAdverts())
    if not rank_zero():
        # `python -m mura.train` runs its module as __main__: the command's own lines log under that name
        for name in ("mura", "__main__"):
            logging.getLogger(name).setLevel(logging.WARNING)


def rank_zero() -> bool:
    """As Lightning's rank_zero_only decides it, without importing Lightning (a process launched for another rank has
    its variable set before its command starts): the first rank variable set."""
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(variable) is not None:
            return os.environ[variable] == "0"
    return True


class _StderrWithout:
    """sys.stderr, less the writes that are `pattern` whole (once unstyled)."""

    def __init__(self, stream, pattern: re.Pattern) -> None:
        self._stream, self._pattern = stream, pattern

    def write(self, text: str) -> int:
        if self._pattern.fullmatch(ANSI_STYLE.sub("", text)):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextmanager
def without_wandb_link_notices() -> Iterator[None]:
    """Around a wandb `run.save`: its WANDB_LINK_NOTICE is dropped, anything else it prints shows."""
    with redirect_stderr(_StderrWithout(sys.stderr, WANDB_LINK_NOTICE)):
        yield
