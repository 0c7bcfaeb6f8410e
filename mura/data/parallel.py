"""Work on many image files in several processes, in input order, with a progress bar (cache build, image check)."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

Job = TypeVar("Job")
Result = TypeVar("Result")


def fork_context():
    """fork where there is one: workers start in milliseconds and import nothing again (spawn would re-import the
    caller's world, torch included)."""
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None


def map_in_processes(
    function: Callable[[Job], Result],
    jobs: Sequence[Job],
    sizes: Sequence[int],
    workers: int,
    desc: str,
    progress: bool = True,
    fork: bool = False,
) -> Iterator[Result]:
    """`function(job)` for every job, yielded in input order; in `workers` processes (inline for one worker or one
    job), advancing a progress bar of `sum(sizes)` items (a job's size: the files it holds)."""
    with tqdm(total=sum(sizes), desc=desc, unit="img", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            context = fork_context() if fork else None
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
                for size, result in zip(sizes, pool.map(function, jobs), strict=True):
                    bar.update(size)
                    yield result
        else:
            for size, job in zip(sizes, jobs, strict=True):
                result = function(job)
                bar.update(size)
                yield result
