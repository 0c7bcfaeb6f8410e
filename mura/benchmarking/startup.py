"""The bench's measurements of the real command, `python -m mura.train`, each run in a process of its own (so
interpreter start, imports and config composition count).

- `startup`: how long a researcher waits for a first result, from the run's timings.json (mura/callbacks/timing.py):
  process start to the first optimizer step, epoch 0 against a steady epoch, the first Grad-CAM gallery against later
  ones.
- `share`: two jobs at once against one alone, on the same cores (a local sweep, or a second experiment started while
  the first trains): the jobs must share the cores, not fight over them (mura.app.cpu_share)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mura.app.cpu_share import current_cpu_share

# The warm-up run only builds the decode-once cache (and warms the page cache): one batch each way, no sanity
# check, no gallery, no test, and no cuDNN autotuning (on an H100 that alone took most of a minute; the measured run
# does its own, in its own process, as a user's run would).
CACHE_ONLY = ["trainer.max_epochs=1", "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1",
              "++trainer.num_sanity_val_steps=0", "++trainer.benchmark=false", "test=false", "~callbacks.gradcam"]


def cache_only(overrides: list[str]) -> list[str]:
    """`overrides` shrunk to the cache-building run: CACHE_ONLY after them, less what they already say (Hydra refuses
    to delete `~callbacks.gradcam` twice)."""
    return [*overrides, *(item for item in CACHE_ONLY if item not in overrides)]


def _train(overrides: list[str], run_dir: Path, timeout_s: float) -> tuple[float, float]:
    """Its launch time and wall seconds."""
    launched = time.time()
    _train_together([overrides], [run_dir], timeout_s)
    return launched, time.time() - launched


def _train_together(overrides: list[list[str]], run_dirs: list[Path], timeout_s: float) -> None:
    """`mura.train` once per (overrides, run folder), all at once; returns when every one has ended, raises if any failed."""
    commands = [[sys.executable, "-m", "mura.train", *args, f"hydra.run.dir={run_dir}"] for args, run_dir in zip(overrides, run_dirs, strict=True)]
    # The bench waits while they train: it is no job of its own, and counted as one it would halve their threads
    share = current_cpu_share()
    if share is not None:
        share.leave()
    try:
        _run_all(commands, timeout_s)
    finally:
        if share is not None:
            share.join()


def _run_all(commands: list[list[str]], timeout_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="mura_logs_") as logs:
        processes = []
        for index, command in enumerate(commands):
            with open(Path(logs) / f"{index}.err", "w") as stderr:  # a file, not a pipe: nothing waits to be read
                processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr))
        deadline = time.monotonic() + timeout_s
        try:
            for process in processes:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        for index, (command, process) in enumerate(zip(commands, processes, strict=True)):
            if process.returncode != 0:
                error = (Path(logs) / f"{index}.err").read_text()[-3000:]
                raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}):\n{error}")


# (root, cache folder, overrides) -> None where an earlier startup measurement of this process built that cache, or
# why its build failed: a variant that changes only how the run trains (extra_overrides) measures on that cache
# without building it again, and does not try a build that has already failed.
_cache_builds: dict[tuple[str, ...], str | None] = {}


def measure_startup(root: Path, cache_dir: Path, output_dir: Path, overrides: list[str], timeout_s: float = 600,
                    extra_overrides: Sequence[str] = (), variant: str | None = None) -> dict:
    """`mura.train <overrides> <extra_overrides>` on `root` once to build the cache, then once measured (the goals
    hold "once the cache exists"). The runs train in a scratch folder (their checkpoints, galleries and reports are
    not the bench's output); the measured run's timings.json and train.log are kept in <output_dir>/startup/, a
    variant's in <output_dir>/startup/<variant>/. `extra_overrides` are a variant's (e.g. trainer.benchmark=false):
    they must not change the data (if they did, the measured run would build its own cache, and its data setup
    phase would show it)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the bench's own cached blocks would otherwise sit beside the child's model
    common = [*overrides, f"data.root={root}", f"data.cache_dir={cache_dir}"]
    kept = output_dir / "startup" / (variant or "")
    kept.mkdir(parents=True, exist_ok=True)
    key = tuple(common)
    if _cache_builds.get(key):
        raise RuntimeError(f"the cache build of an earlier startup measurement failed: {_cache_builds[key]}")
    deadline = time.monotonic() + timeout_s  # for both runs together: the bench's budget_s hands over what is left
    with tempfile.TemporaryDirectory(prefix="mura_startup_") as scratch:
        if key not in _cache_builds:
            try:
                _train(cache_only(common), Path(scratch) / "cache_build", timeout_s)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                _cache_builds[key] = str(error)[-500:]
                raise
            _cache_builds[key] = None
        run_dir = Path(scratch) / "measured"
        launched, wall = _train([*common, *extra_overrides], run_dir, max(deadline - time.monotonic(), 1.0))
        for name in ("timings.json", "train.log"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, kept / name)
    timings = json.loads((kept / "timings.json").read_text())
    validation = [epoch["val_s"] for epoch in timings["epochs"] if epoch["val_s"] is not None]
    steady = timings["steady_epoch_train_s"]
    after_fit = timings["after_fit"]
    return {
        "kind": "startup", "recipe": "ours", "images_per_s": None, "peak_mem_gib": None,
        **{key: timings[key] for key in ("origin", "first_step_s", "to_first_step", "first_epoch_train_s", "steady_epoch_train_s",
                                         "first_epoch_vs_steady", "first_epoch_extra_s", "first_gallery_s", "later_gallery_s")},
        # The goal is validation, and the test, each at most 10% of an epoch's training.
        "validation_vs_steady_epoch": round(statistics.median(validation) / steady, 3) if validation and steady else None,
        "test_vs_steady_epoch": round(after_fit["test_s"] / steady, 3) if "test_s" in after_fit and steady else None,
        "after_fit": after_fit,
        "epochs": timings["epochs"],
        "wall_s": round(wall, 1),
        "config": {"overrides": overrides, "extra_overrides": list(extra_overrides), "launched": launched, "kept": str(kept)},
    }


def measure_sharing(root: Path, cache_dir: Path, overrides: list[str], timeout_s: float = 900) -> dict:
    """`mura.train <overrides>` on `root`: once to build the cache, once alone, then twice at once, as two jobs of a
    local sweep start. The figures are the ratios: two at once against one alone (ideally under 1.5: the cores are
    shared), and against the same two one after the other (at most 1: running them at once never costs more)."""
    common = [*overrides, f"data.root={root}", f"data.cache_dir={cache_dir}"]
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="mura_share_") as scratch:
        _train(cache_only(common), Path(scratch) / "cache_build", timeout_s)
        launched, alone = _train(common, Path(scratch) / "alone", max(deadline - time.monotonic(), 1.0))
        started = time.time()
        _train_together([common, common], [Path(scratch) / "first", Path(scratch) / "second"],
                        max(deadline - time.monotonic(), 1.0))
        together = time.time() - started
    return {
        "kind": "share", "recipe": "ours", "images_per_s": None, "peak_mem_gib": None,
        "alone_s": round(alone, 1), "two_at_once_s": round(together, 1),
        "two_at_once_vs_alone": round(together / alone, 2),
        "two_at_once_vs_one_after_the_other": round(together / (2 * alone), 2),
        "config": {"overrides": overrides, "launched": launched},
    }
