"""What every command does first: silence known noise, show the resolved config as a tree (on stderr: stdout carries
results, so `mura.predict ... | jq` works), save it into the run folder as config.yaml beside Hydra's record of the
run (.hydra/), and say where data, caches and outputs go when a setting gives them relative to the working
directory. And what a command that fails before writing anything leaves: no run folder (RunFolderCleanup)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text
from rich.tree import Tree

from mura.app.cpu_share import fit_workers_to_cores, join_cpu_share
from mura.app.quiet import quiet_known_noise, rank_zero

log = logging.getLogger(__name__)

RESOLVED_CONFIG = "config.yaml"
# Path settings a command may have, and what they hold: reported when relative to the working directory.
PATH_SETTINGS = {
    "data.root": "data",
    "data_root": "data",
    "input": "data",
    "data.cache_dir": "caches",
    "cache_dir": "caches",
    "data.synthetic.dir": "synthetic data",
}


HYDRA_RECORD = ".hydra"


def start_run(cfg: DictConfig) -> None:
    """The start of every command's main(): recorded, quiet, right-sized, announced. mura.train refuses a new run
    over a run's checkpoints before this; its other refusals (settings, data) come after, as every other command's."""
    save_hydra_record(cfg)
    quiet_known_noise()
    share = join_cpu_share(cfg.get("cpu_threads", "auto"))
    fit_workers_to_cores(cfg, share.jobs_on_my_cores())
    announce_run(cfg, Path(cfg.paths.output_dir))


def save_hydra_record(cfg: DictConfig) -> None:
    """The run folder's .hydra/: config.yaml (the config as composed, interpolations kept), hydra.yaml (Hydra's own,
    the config group choices among it) and overrides.yaml (the command line), as Hydra writes them.

    Hydra would write them before the command starts (conf/hydra/default.yaml turns that off: output_subdir null), so
    mura.train, refusing a new run in a folder that holds a run's checkpoints, still overwrote that run's record, and
    mura.summarize then showed the run with the refused settings. Process rank zero only; nothing outside a Hydra
    command."""
    if not HydraConfig.initialized() or not rank_zero():
        return
    hydra = HydraConfig.instance().cfg
    folder = Path(hydra.hydra.runtime.output_dir) / HYDRA_RECORD
    folder.mkdir(parents=True, exist_ok=True)
    for name, record in (("config.yaml", cfg), ("hydra.yaml", hydra), ("overrides.yaml", hydra.hydra.overrides.task)):
        (folder / name).write_text(OmegaConf.to_yaml(record), encoding="utf-8")


def announce_run(cfg: DictConfig, output_dir: Path) -> None:
    """Print the resolved config as a tree on stderr, save it as `output_dir`/config.yaml (Hydra's own
    .hydra/config.yaml keeps the interpolations), and log the absolute place of every relative path setting.
    Process rank zero only: DDP and SLURM tasks start every command once per process."""
    if not rank_zero():
        return
    resolved = resolve_what_resolves(cfg)
    Console(stderr=True, soft_wrap=True).print(config_tree(resolved))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESOLVED_CONFIG).write_text(
        "# The config this run used, every interpolation resolved (.hydra/config.yaml has it as composed)\n"
        + OmegaConf.to_yaml(resolved)
    )
    relative = relative_paths(resolved)
    if relative:
        log.info("relative paths resolve against %s (where you ran the command):\n%s", Path.cwd(),
                 "\n".join(f"  {what:<14} {setting}={value} -> {absolute}" for what, setting, value, absolute in relative))


def resolve_what_resolves(cfg: DictConfig | ListConfig) -> Any:
    """The config as plain values with every interpolation resolved that can be; one that cannot yet (evaluate's
    `data.channels`, set later from the checkpoint) stays as written, a missing value stays `???`."""
    keys = list(cfg.keys()) if isinstance(cfg, DictConfig) else list(range(len(cfg)))
    values = {}
    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            values[key] = "???"
            continue
        try:
            value = cfg[key]
        except InterpolationResolutionError:
            value = cfg._get_node(key)._value()  # the interpolation as written
        values[key] = resolve_what_resolves(value) if isinstance(value, (DictConfig, ListConfig)) else value
    return values if isinstance(cfg, DictConfig) else [values[index] for index in keys]


def config_tree(resolved: dict) -> Tree:
    """One branch per top-level setting: single values first, then each group as YAML."""
    tree = Tree("config", guide_style="dim")
    groups = {key: value for key, value in resolved.items() if isinstance(value, (dict, list)) and value}
    for key, value in resolved.items():
        if key not in groups:
            tree.add(Text(OmegaConf.to_yaml({key: value}).strip()))  # Text: a value is never read as rich markup
    for key, value in groups.items():
        tree.add(Text(str(key))).add(Syntax(OmegaConf.to_yaml(value).rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    return tree


def relative_paths(resolved: dict) -> list[tuple[str, str, str, Path]]:
    """(what, setting, value, absolute path) for each path setting given relative to the working directory, the
    run folder included (hydra.run.dir or hydra.sweep.dir)."""
    found = []
    for setting, what in PATH_SETTINGS.items():
        if setting == "data.synthetic.dir" and _lookup(resolved, "data.root"):
            continue  # a data.root given: the synthetic tree goes unused
        value = _lookup(resolved, setting)
        if isinstance(value, str) and value and value != "???" and "${" not in value and not os.path.isabs(value):
            found.append((what, setting, value, Path(value).absolute()))
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        setting, folder = ("hydra.sweep.dir", hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else ("hydra.run.dir", hydra.run.dir)
        if folder and not os.path.isabs(folder):
            found.append(("outputs", setting, str(folder), Path(folder).absolute()))
    return found


def _lookup(resolved: dict, setting: str) -> Any:
    """`data.cache_dir` in the plain resolved config; None where a part of it is absent."""
    value: Any = resolved
    for part in setting.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def only_start_records(folder: Path, log_name: str) -> bool:
    """Whether `folder` holds no file but what a command writes as it starts: its log `log_name` (Hydra's), Hydra's
    record (.hydra/) and the resolved config.yaml. A run that got as far as its data (splits.csv), a logger or a
    checkpoint holds more."""
    for path in folder.rglob("*"):
        name = path.relative_to(folder)
        if path.is_file() and name.parts[0] != HYDRA_RECORD and name.as_posix() not in (RESOLVED_CONFIG, log_name):
            return False
    return True


class RunFolderCleanup(Callback):
    """A single run (not a -m sweep's jobs) that fails before it writes anything of its own, a run refused for its
    settings or its data say, leaves no run folder: Hydra made it, and the command's log and config records in it,
    before the command began; the error itself was printed. Only a folder this run made goes, and only with nothing
    but those start records in it (only_start_records), with the folders above it that the run made and nothing
    else has used since: a run that trained keeps its folder, whatever ends it, and a refused resume
    (hydra.run.dir=an earlier run) leaves that run's folder as it was.

    The check runs when the process exits: a user error ends a command with SystemExit (mura.app.errors), which
    Hydra lets through without calling any callback's end. A finished run cancels it. Registered in
    conf/hydra/default.yaml."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.folder = Path(str(config.hydra.run.dir)).absolute()
        self.log_name = f"{config.hydra.job.name}.log"
        if self.folder.exists():  # an earlier run's, or rank zero's (DDP's other ranks start after it)
            return
        self.made = self.folder  # and the folders above it Hydra makes with it (outputs/debug/ of a first debug run)
        while not self.made.parent.exists():
            self.made = self.made.parent
        atexit.register(self.remove_if_nothing_written)

    def on_run_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED:
            atexit.unregister(self.remove_if_nothing_written)

    def remove_if_nothing_written(self) -> None:
        if not self.folder.is_dir() or not only_start_records(self.folder, self.log_name):
            return
        root = logging.getLogger()
        for handler in list(root.handlers):  # the command's log file: closed first, so it can go on every system
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == self.folder:
                handler.close()
                root.removeHandler(handler)
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in self.folder.parents:
            if not parent.is_relative_to(self.made):
                break
            try:
                parent.rmdir()
            except OSError:  # another run's folder went there meanwhile
                break
