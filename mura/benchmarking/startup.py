"""The bench's `startup` measurement: how long a researcher waits for a first result. It runs the real command,
`python -m mura.train`, in a process of its own (so interpreter start, imports and config composition count), and
reads the run's timings.json (mura/callbacks/timing.py): process start to the first optimizer step, epoch 0 against
a steady epoch, the first Grad-CAM gallery against later ones."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The warm-up run only builds the decode-once cache (and warms the page cache): one batch each way.
CACHE_ONLY = ["trainer.max_epochs=1", "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1", "test=false",
              "callbacks.gradcam.every_n_epochs=0"]


def _train(overrides: list[str], run_dir: Path, timeout_s: float) -> float:
    command = [sys.executable, "-m", "mura.train", *overrides, f"hydra.run.dir={run_dir}"]
    launched = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return time.time() - launched


def measure_startup(root: Path, cache_dir: Path, output_dir: Path, overrides: list[str], timeout_s: float = 600) -> dict:
    """`mura.train <overrides>` on `root` once to build the cache, then once measured (the goals hold "once the cache
    exists"). Its own table: it has no images per second."""
    common = [*overrides, f"data.root={root}", f"data.cache_dir={cache_dir}"]
    _train([*common, *CACHE_ONLY], output_dir / "startup" / "cache_build", timeout_s)
    run_dir = output_dir / "startup" / "measured"
    wall = _train(common, run_dir, timeout_s)
    timings = json.loads((run_dir / "timings.json").read_text())
    validation = [epoch["val_s"] for epoch in timings["epochs"] if epoch["val_s"] is not None]
    steady = timings["steady_epoch_train_s"]
    return {
        "kind": "startup", "recipe": "ours", "images_per_s": None, "peak_mem_gib": None,
        "first_step_s": timings["first_step_s"],
        "first_epoch_train_s": timings["first_epoch_train_s"],
        "steady_epoch_train_s": timings["steady_epoch_train_s"],
        "first_epoch_vs_steady": timings["first_epoch_vs_steady"],
        "first_gallery_s": timings["first_gallery_s"],
        "later_gallery_s": timings["later_gallery_s"],
        # The goal is validation at most 10% of an epoch's training.
        "validation_vs_steady_epoch": round(statistics.median(validation) / steady, 3) if validation and steady else None,
        "epochs": timings["epochs"],
        "wall_s": round(wall, 1),
        "config": {"overrides": overrides, "run_dir": str(run_dir)},
    }
