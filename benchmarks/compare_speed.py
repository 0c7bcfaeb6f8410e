"""How long mura.compare's statistics take at the size of MURA's valid split: three runs of 1,199 studies of 783
patients over seven body parts (REFERENCE.md), 1 to 4 views each, 10,000 paired-bootstrap replicates.

    python benchmarks/compare_speed.py [replicates]

Fabricated predictions (the statistics do not depend on where the probabilities came from); prints the seconds of
`compare_runs` (every group: body parts, overall, and the studies by number of views)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from mura.data.index import BODY_PARTS
from mura.evaluation.comparison import compare_runs

STUDIES, PATIENTS = 1_199, 783


def fabricated_run(rng: np.random.Generator, labels: np.ndarray, noise: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(1.5 * (2 * labels - 1) + rng.normal(0, noise, len(labels)))))


def main(replicates: int = 10_000) -> float:
    rng = np.random.default_rng(0)
    patient = np.r_[np.arange(PATIENTS), rng.integers(0, PATIENTS, STUDIES - PATIENTS)]
    labels = (rng.random(STUDIES) < 0.45).astype(int)
    base = pd.DataFrame({"study": [f"valid/study{index}" for index in range(STUDIES)],
                         "patient": [f"patient{number:05d}" for number in patient],
                         "body_part": np.asarray(BODY_PARTS)[patient % len(BODY_PARTS)],
                         "n_views": rng.integers(1, 5, STUDIES), "label": labels})
    runs = {}
    for name, noise in (("A", 1.0), ("B", 1.1), ("C", 0.9)):
        probability = fabricated_run(rng, labels, noise)
        runs[name] = base.assign(probability=probability, prediction=(probability > 0.5).astype(int))
    started = time.perf_counter()
    table = compare_runs(runs, "A", replicates=replicates)
    seconds = time.perf_counter() - started
    print(f"{len(runs)} runs, {STUDIES} studies, {replicates:,} replicates, {table['group'].nunique()} groups: "
          f"{seconds:.2f} s")
    return seconds


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
