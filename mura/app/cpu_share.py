"""Each job's share of the CPU cores: math threads sized by the mura jobs that run on the same cores.

torch gives every process one math thread per core, and idle OpenMP threads spin: two trainings side by side on two
cores (a `hydra/launcher=submitit_local` sweep, or a second experiment started while the first trains) ran each 6x
slower than alone, 3.2x worse than one after the other (issue #20). Every command joins a registry of the jobs on
this machine (a file per process, holding the cores it may use); a job's math threads are its share of its cores,
`cores // jobs on them`, checked again while it trains, so a job started later takes its share and one that ended
gives it back. One job alone keeps torch's default, one thread per core.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mura.app.errors import ConfigError

log = logging.getLogger(__name__)

REGISTRY = Path(tempfile.gettempdir()) / f"mura-jobs-{os.getuid()}"
# Set by a user or a launcher for the whole process tree: a cap that auto never goes above.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> set[int]:
    """The CPU cores this process may run on (its affinity, as SLURM or taskset set it)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that number: alive, and not ours to count, but harmless
        return True
    return True


class CpuShare:
    """This process's place in the registry and the math threads it takes.

    `setting`: "auto" (the share of the cores, capped by OMP_NUM_THREADS or MKL_NUM_THREADS when set) or a number of
    threads, used as given."""

    def __init__(self, setting: str | int = "auto", registry: Path = REGISTRY):
        if not (setting == "auto" or (isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1)):
            raise ConfigError(f"cpu_threads must be auto or a number of threads (1 or more), not {setting!r}")
        self.setting = setting
        self.registry = registry
        self.cores = usable_cores()
        self.entry = registry / str(os.getpid())
        self.threads: int | None = None  # what apply() last set

    def join(self) -> None:
        """Register this process (removed at exit; an entry left by a killed process is ignored and removed)."""
        with contextlib.suppress(OSError):  # a registry that cannot be written: this job counts only itself
            self.registry.mkdir(parents=True, exist_ok=True)
            self.entry.write_text(",".join(map(str, sorted(self.cores))))
            atexit.register(self.leave)

    def leave(self) -> None:
        with contextlib.suppress(OSError):
            self.entry.unlink()

    def jobs_on_my_cores(self) -> int:
        """The registered live processes whose cores overlap this one's, this one included."""
        count = 1
        with contextlib.suppress(OSError):
            for entry in self.registry.iterdir():
                if not entry.name.isdigit() or entry == self.entry:
                    continue
                if not _alive(int(entry.name)):
                    with contextlib.suppress(OSError):
                        entry.unlink()
                    continue
                with contextlib.suppress(OSError, ValueError):
                    cores = {int(core) for core in entry.read_text().split(",") if core}
                    count += bool(cores & self.cores)
        return count

    def wanted_threads(self) -> int:
        if self.setting != "auto":
            return int(self.setting)
        share = max(1, len(self.cores) // self.jobs_on_my_cores())
        caps = [int(os.environ[name]) for name in THREAD_VARIABLES if os.environ.get(name, "").isdigit()]
        return max(1, min([share, *caps]))

    def apply(self) -> int:
        """Set torch's math threads to this job's share now; logs a change after the first."""
        threads = self.wanted_threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if self.threads is not None and threads != self.threads:
            log.info("math threads %d -> %d: %d mura job(s) now share this process's %d core(s)", self.threads, threads,
                     self.jobs_on_my_cores(), len(self.cores))
        self.threads = threads
        return threads


def fit_workers_to_cores(cfg: DictConfig, jobs: int = 1) -> None:
    """More image-loading workers than this job's share of the cores only slows loading down (and makes the
    DataLoader warn at every stage): lower `data.num_workers` to the usable cores divided among the `jobs` on them
    (at least one worker where some were asked for), and say so once. Two demo jobs side by side on 2 cores finished
    in 50 s with a worker each against 53 s with two; one alone took 33 s either way."""
    workers = OmegaConf.select(cfg, "data.num_workers", default=None)
    cores = len(usable_cores())
    share = max(1, cores // max(1, jobs))
    if isinstance(workers, int) and workers > share:
        cfg.data.num_workers = share
        whose = "the CPU cores this process may use" if jobs <= 1 else f"this job's share of {cores} cores among {jobs} mura jobs"
        log.info("data.num_workers=%d lowered to %d, %s", workers, share, whose)


_current: CpuShare | None = None


def join_cpu_share(setting: str | int = "auto") -> CpuShare:
    """Join the registry and take this job's share of the cores (once per process: start_run of every command)."""
    global _current
    if _current is None:
        _current = CpuShare(setting)
        _current.join()
    threads = _current.apply()
    jobs = _current.jobs_on_my_cores()
    how = f"cpu_threads={setting}" if setting != "auto" else f"its share of {len(_current.cores)} core(s) among {jobs} mura job(s)"
    log.info("math threads: %d (%s)", threads, how)
    return _current


def current_cpu_share() -> CpuShare | None:
    """The share this process joined, None where no command started it (a notebook, a test calling train())."""
    return _current
