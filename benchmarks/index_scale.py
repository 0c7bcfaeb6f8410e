"""Indexing at full-release scale: 40,005 listed images (MURA-v1.1's count) as empty files in a temporary tree.

    .venv/bin/python benchmarks/index_scale.py

Prints the best of three `build_index` times and the peak resident memory. The goal: under 2 s and 200 MB.
"""

from __future__ import annotations

import random
import resource
import tempfile
import time
from pathlib import Path

import pandas  # noqa: F401 - imported before measuring, so its cost is not counted

from mura.data.index import BODY_PARTS, build_index

IMAGES = {"train": 36_808, "valid": 3_197}  # REFERENCE.md section 1


def make_tree(root: Path) -> None:
    rng = random.Random(0)
    patient = 0
    for split, n_images in IMAGES.items():
        images, studies, count = [], [], 0
        while count < n_images:
            patient += 1
            label = rng.random() < 0.4
            study = f"{split}/{rng.choice(BODY_PARTS)}/patient{patient:05d}/study1_{'positive' if label else 'negative'}"
            studies.append(f"MURA-v1.1/{study}/,{int(label)}")
            (root / study).mkdir(parents=True)
            for view in range(1, min(rng.randint(1, 5), n_images - count) + 1):
                (root / study / f"image{view}.png").touch()
                images.append(f"MURA-v1.1/{study}/image{view}.png")
                count += 1
        (root / f"{split}_image_paths.csv").write_text("\n".join(images) + "\n")
        (root / f"{split}_labeled_studies.csv").write_text("\n".join(studies) + "\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "MURA-v1.1"
        make_tree(root)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        times = []
        for _ in range(3):
            started = time.perf_counter()
            table = build_index(root)
            times.append(time.perf_counter() - started)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{len(table)} images indexed: best {min(times):.2f} s of 3; peak RSS {peak:.0f} MiB "
              f"({peak - before:.0f} MiB above the interpreter with pandas loaded)")


if __name__ == "__main__":
    main()
