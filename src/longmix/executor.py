"""Executors: run independent per-shard tasks, here or in worker processes.

Stage logic lives in plain functions ``fn(task) -> result`` that write their own output
files; an executor only decides where they run. Results come back in completion order;
callers must not depend on it (every output is a function of its task alone).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _init_worker() -> None:
    # One tokenizer thread per process: the parallelism is the process pool itself.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


class LocalExecutor:
    """A pool of ``workers`` processes (``spawn``); ``workers=1`` runs inline, for debugging."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())

    def map(self, fn: Callable[[Any], Any], tasks: list, *, desc: str = "", progress: bool = True,
            unit: str = "shard", postfix: Callable[[Any], dict] | None = None) -> Iterator[Any]:
        bar = tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress or not tasks, dynamic_ncols=True)
        try:
            for result in self._run(fn, tasks):
                bar.update(1)
                if postfix is not None:
                    bar.set_postfix(postfix(result), refresh=False)
                yield result
        finally:
            bar.close()

    def _run(self, fn: Callable[[Any], Any], tasks: list) -> Iterable[Any]:
        if self.workers == 1 or len(tasks) <= 1:
            _init_worker()
            yield from map(fn, tasks)
            return
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(self.workers, len(tasks)), initializer=_init_worker) as pool:
            yield from pool.imap_unordered(fn, tasks, chunksize=1)
