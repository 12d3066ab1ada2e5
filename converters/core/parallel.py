"""Map a function over jobs on all cores, in order, reporting progress.

Small chunks (about eight per worker) keep two cores evenly loaded when jobs differ in cost;
with one worker (or one job) everything runs in this process, which keeps tracebacks and
profiles simple, and the process pool (``multiprocessing``: 13 ms to import) is not even
imported: a command's start-up is part of its speed. ``fn`` must be a module-level function
(it is pickled to the workers).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def map_jobs(fn: Callable[[J], R], jobs: Sequence[J], *, workers: int = 1,
             progress: Callable[[int, int], None] | None = None) -> list[R]:
    """``[fn(j) for j in jobs]``, spread over ``workers`` processes."""
    total = len(jobs)
    results: list[R] = []
    if workers > 1 and total > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, total)) as pool:
            it: Iterable[R] = pool.map(fn, jobs, chunksize=max(1, total // (workers * 8)))
            for r in it:
                results.append(r)
                if progress:
                    progress(len(results), total)
    else:
        for job in jobs:
            results.append(fn(job))
            if progress:
                progress(len(results), total)
    return results
