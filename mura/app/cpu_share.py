"""Each job's share of the CPU cores: math threads sized by the mura jobs that run on the same cores.

torch gives every process one math thread per core, and idle OpenMP threads spin: two trainings side by side on two
cores (a `hydra/launcher=submitit_local` sweep, or a second experiment started while the first trains) ran each 6x
slower than alone, 3.2x worse than one after the other (issue #20). Every command joins a registry of the jobs on
this machine (a file per process, holding the cores it may use); a job's math threads are its share of its cores,
`cores // jobs on them`, checked again while it trains, so a job started later takes its share and one that ended
gives it back. One job alone keeps torch's default, one thread per core.

A changed thread count adds float sums in another order (differences near 1e-4 in a convolution's output): with
`cpu_threads=auto`, a run's last digits can depend on the jobs that ran beside it. `cpu_threads=N` makes a run, and
its resume, bit-exact whatever runs beside it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import stat as stat_module
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mura.app.errors import ConfigError

log = logging.getLogger(__name__)

# Per user (os.getuid does not exist on Windows); MURA_JOBS_DIR names another (the tests use their own)
REGISTRY_ENV = "MURA_JOBS_DIR"
# Set by a user or a launcher for the whole process tree: a cap that auto never goes above.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> set[int]:
    """The CPU cores this process may run on (its affinity, as SLURM or taskset set it)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def default_registry() -> Path:
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    return Path(tempfile.gettempdir()) / f"mura-jobs-{getattr(os, 'getuid', lambda: 'user')()}"


def process_start(pid: int) -> str:
    """When process `pid` started, in the kernel's clock ticks (/proc/<pid>/stat's 22nd field; the process's name,
    in parentheses, may hold spaces), "" where /proc does not say: an entry names its process by pid and start, so a
    pid reused by another process after a job was killed is not taken for that job."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process that took its number
        return False
    return not started or process_start(pid) == started


def usable_registry(folder: Path) -> bool:
    """A folder of this user's own (not a link, not another user's: whoever could write into it could make every job
    here take one thread, or have it delete files), made private if new."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return False
    owner = getattr(os, "getuid", None)
    return stat_module.S_ISDIR(info.st_mode) and (owner is None or info.st_uid == owner())


class CpuShare:
    """This process's place in the registry and the math threads it takes.

    `setting`: "auto" (the share of the cores, capped by OMP_NUM_THREADS or MKL_NUM_THREADS when set) or a number of
    threads, used as given."""

    def __init__(self, setting: str | int = "auto", registry: Path | None = None):
        self.setting = check_setting(setting)
        self.registry = default_registry() if registry is None else registry
        self.cores = usable_cores()
        self.entry = self.registry / str(os.getpid())
        self.threads: int | None = None  # what apply() last set
        self._leaves_at_exit = False

    def join(self) -> None:
        """Register this process (removed at exit; an entry left by a killed process is ignored and removed). In a
        registry that cannot be used safely, this job counts only itself, and says so."""
        if not usable_registry(self.registry):
            log.warning("%s is not a private folder of this user's: each mura job takes every core it may use "
                        "(set %s to another folder, or cpu_threads=N)", self.registry, REGISTRY_ENV)
            return
        with contextlib.suppress(OSError):
            self.entry.write_text(f"{process_start(os.getpid())}\n{','.join(map(str, sorted(self.cores)))}")
            if not self._leaves_at_exit:
                atexit.register(self.leave)
                self._leaves_at_exit = True

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
                with contextlib.suppress(OSError, ValueError):
                    started, _, cores = entry.read_text().partition("\n")
                    if not _alive(int(entry.name), started):
                        entry.unlink()
                        continue
                    count += bool({int(core) for core in cores.split(",") if core} & self.cores)
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


def check_setting(setting: str | int) -> str | int:
    if not (setting == "auto" or (isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1)):
        raise ConfigError(f"cpu_threads must be auto or a number of threads (1 or more), not {setting!r}")
    return setting


def join_cpu_share(setting: str | int = "auto") -> CpuShare:
    """Join the registry (once per process) and take this job's share of the cores, by this job's own setting: the
    jobs of a sequential sweep run in one process, each with its cpu_threads (start_run of every command)."""
    global _current
    if _current is None:
        _current = CpuShare(setting)
        _current.join()
    _current.setting = check_setting(setting)
    threads = _current.apply()
    jobs = _current.jobs_on_my_cores()
    how = f"cpu_threads={setting}" if setting != "auto" else f"its share of {len(_current.cores)} core(s) among {jobs} mura job(s)"
    log.info("math threads: %d (%s)", threads, how)
    return _current


def current_cpu_share() -> CpuShare | None:
    """The share this process joined, None where no command started it (a notebook, a test calling train())."""
    return _current
