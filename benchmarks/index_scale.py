"""Indexing at full-release scale: 40,005 listed images (MURA-v1.1's count) as empty files in a temporary tree.

    .venv/bin/python benchmarks/index_scale.py [--real-pngs DIR] [--workers 2]

Prints the best of three `build_index` times and the peak resident memory. The goal: under 2 s and 200 MB.

Second row: the up-front image check (`find_unreadable`, what runs when the decode-once cache is off) over the
same 40,005 paths, each file now a hard link to a temporary copy of one of the real MURA PNGs under --real-pngs
(cycled; links to copies, never to the user's files, so nothing written through the tree can reach the dataset;
hard links cost no space; symlinks if the temporary folder's filesystem has no hard links). Best of 2-3 runs, with the
files in the page cache: the real release read cold from disk adds its read time. If the full run would take
more than ~3 minutes, a 10,000-path subset is timed and the total extrapolated (the output says so).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pandas  # noqa: F401 - imported before measuring, so its cost is not counted

from mura.data.index import BODY_PARTS, build_index
from mura.data.verify import find_unreadable

IMAGES = {"train": 36_808, "valid": 3_197}  # REFERENCE.md section 1
REAL_PNGS = Path("/work/shared/data/mura-humerus/MURA-v1.1/train/XR_HUMERUS")  # a real sample (1,272 PNGs)
TIME_BUDGET_S = 180.0  # above this for the full run, time a subset and extrapolate
SUBSET = 10_000


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


def link_real_images(root: Path, paths: list[str], real_pngs: list[Path]) -> str:
    """Replace each empty file by a hard link (else symlink) to a copy of a real PNG; say which was used."""
    copies = root.parent / "real-png-copies"
    copies.mkdir()
    sources = [Path(shutil.copyfile(png, copies / f"{number}.png")) for number, png in enumerate(real_pngs)]
    for name, link in {"hard links": os.link, "symlinks": os.symlink}.items():
        try:
            trial = root / ".link-trial"
            link(sources[0], trial)
            trial.unlink()
        except OSError:
            continue
        for number, path in enumerate(paths):
            target = root / path
            target.unlink()
            link(sources[number % len(sources)], target)
        return name
    raise OSError(f"cannot link {sources[0]} into {root}")


def time_image_check(root: Path, paths: list[str], real_pngs: Path, workers: int) -> None:
    sources = sorted(real_pngs.rglob("*.png"))
    if not sources:
        print(f"image check: skipped, no PNGs under {real_pngs} (pass --real-pngs)")
        return
    method = link_real_images(root, paths, sources)
    # A probe (it also loads the sources into the page cache) sizes the run.
    probe = paths[:2_000]
    started = time.perf_counter()
    find_unreadable(root, probe, workers=workers, progress=False)
    estimate = (time.perf_counter() - started) * len(paths) / len(probe)
    measured = paths if estimate <= TIME_BUDGET_S else paths[:SUBSET]
    runs = 3 if estimate * len(measured) / len(paths) * 3 <= TIME_BUDGET_S else 2
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        failures = find_unreadable(root, measured, workers=workers, progress=False)
        times.append(time.perf_counter() - started)
    if failures:
        print(f"  {len(failures)} files rejected, first: {next(iter(failures.items()))}")
    best = min(times)
    rate = len(measured) / best
    line = (f"{len(measured)} real PNGs checked (find_unreadable, {workers} workers; {method} to {len(sources)} "
            f"copies of the files under {real_pngs}, cycled): best {best:.2f} s of {runs}, {rate:,.0f} images/s")
    if len(measured) < len(paths):
        line += f"; extrapolated to all {len(paths)}: {len(paths) / rate:.1f} s (a {len(measured)}-path subset was timed)"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-pngs", type=Path, default=REAL_PNGS, help="folder of real MURA PNGs to link to")
    parser.add_argument("--workers", type=int, default=2, help="processes for the image check")
    args = parser.parse_args()
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
        time_image_check(root, table["path"].tolist(), args.real_pngs, args.workers)


if __name__ == "__main__":
    main()
