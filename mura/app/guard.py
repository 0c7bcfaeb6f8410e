"""A Hydra callback that refuses, before Hydra creates a run or sweep folder, any output inside the dataset.

Hydra creates the run folder (and opens the command's log in it) before a command runs, so the commands' own
checks would come too late for a run folder inside `data.root` (a command started from inside the dataset, with
the default `outputs/...`, say). Registered for every command in conf/hydra/default.yaml.
"""

from __future__ import annotations

import logging
import os
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mura.data.index import MuraDataError, refuse_a_release_as_data_dir, refuse_writes_inside

log = logging.getLogger("mura")


def dataset_of(config: DictConfig) -> str | None:
    """The dataset a command reads: data.root (train, evaluate, audit), data_root (bench), or MURA_ROOT for the
    commands that name none (predict, summarize)."""
    for key in ("data.root", "data_root"):
        value = OmegaConf.select(config, key, default=None)
        if value:
            return str(value)
    return os.environ.get("MURA_ROOT") or None


def check_outputs(config: DictConfig, folder_setting: str) -> None:
    """Refuse the run (or sweep) folder, paths.data_dir and data.cache_dir inside the dataset, and a data_dir that
    is a MURA release; exits 2 with the reason before anything is written."""
    outputs = {folder_setting: OmegaConf.select(config, folder_setting, default=None),
               "paths.data_dir (MURA_DATA_DIR)": OmegaConf.select(config, "paths.data_dir", default=None),
               "data.cache_dir": OmegaConf.select(config, "data.cache_dir", default=None)}
    try:
        refuse_writes_inside(dataset_of(config), outputs)
        refuse_a_release_as_data_dir(outputs["paths.data_dir (MURA_DATA_DIR)"])
    except MuraDataError as error:
        log.error("%s", error)  # Hydra's own logging is up at this point: one line on stderr
        sys.exit(2)


class DataRootGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_outputs(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_outputs(config, "hydra.sweep.dir")
