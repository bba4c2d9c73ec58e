"""Executors: run independent per-shard tasks, here, in worker processes, or on Ray.

Stage logic lives in plain functions ``fn(task) -> result`` that write their own output
files; an executor only decides where they run. Results come back in completion order;
callers must not depend on it (every output is a function of its task alone), so every
executor produces the same bytes.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm

from ..errors import InvalidInputError, LongmixError, require_extra


def default_workers() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def _init_worker() -> None:
    # One tokenizer thread per process: the parallelism is the process pool itself.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def init_pool_worker() -> None:
    _init_worker()
    # Ctrl-C reaches the whole process group: the parent alone decides (and says it in one
    # line), instead of every worker printing its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent stops the pool with SIGTERM when a task fails or the run is interrupted;
    # as SystemExit it unwinds the task, so atomic writes delete their temporaries.
    signal.signal(signal.SIGTERM, _exit_on_terminate)


def _exit_on_terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class LocalExecutor:
    """A pool of ``workers`` processes (``spawn``); ``workers=1`` runs inline, for debugging.

    Used as a context manager (as ``prepare`` does), it keeps one pool for every ``map``
    inside the block: started on the first map that needs it, closed on exit. Each pool costs
    every worker a fresh import of longmix, pyarrow and the tokenizer, serial time that the
    rounds of ``--read auto`` and the packing would otherwise pay again. Outside a block, each
    map starts and closes a pool of its own.
    """

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())
        self._keep = False  # inside ``with``: the pool outlives each map
        self._pool: multiprocessing.pool.Pool | None = None
        self._exiting: list[multiprocessing.pool.Pool] = []  # closed, not yet joined

    def __enter__(self) -> LocalExecutor:
        self._keep = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._keep = False
        # Even on an error: no map runs now (a failed one has stopped its workers), so the idle
        # workers take their sentinel and exit. A SIGTERM could land on a native thread (pyarrow,
        # tokenizers) of a worker waiting on the task queue's lock and never wake it.
        self.close()

    def close(self, *, wait: bool = True, terminate: bool = False) -> None:
        """Stop the pool, if one runs: let its workers finish, or ``terminate`` them (SIGTERM).
        ``wait=False`` lets them exit while the caller goes on (a later close waits for them);
        a later map starts a new pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            if terminate:
                pool.terminate()
            else:
                pool.close()
            self._exiting.append(pool)
        if wait:
            while self._exiting:
                self._exiting.pop().join()

    def map(
        self,
        fn: Callable[[Any], Any],
        tasks: list,
        *,
        desc: str = "",
        progress: bool = True,
        unit: str = "shard",
        postfix: Callable[[Any], dict] | None = None,
    ) -> Iterator[Any]:
        return _with_progress(self._run(fn, tasks), len(tasks), desc, progress, unit, postfix)

    def _run(self, fn: Callable[[Any], Any], tasks: list) -> Iterable[Any]:
        named = _Named(fn)
        if self.workers == 1 or len(tasks) <= 1:
            _init_worker()
            yield from map(named, tasks)
            return
        pool = self._pool_for(len(tasks))
        try:
            yield from pool.imap_unordered(named, tasks, chunksize=1)
        except BaseException:
            # A failed task, Ctrl-C, or a consumer that stops early (GeneratorExit): the other
            # workers are stopped (SIGTERM, see init_pool_worker) and waited for; a later
            # map starts a new pool.
            self.close(terminate=True)
            raise
        if not self._keep:
            self.close()

    def _pool_for(self, n_tasks: int) -> multiprocessing.pool.Pool:
        if self._pool is None:
            # A kept pool serves later, larger maps too: all the workers. A pool for one map
            # needs no more processes than it has tasks.
            self._pool = self._start_pool(
                self.workers if self._keep else min(self.workers, n_tasks)
            )
        return self._pool

    def _start_pool(self, processes: int) -> multiprocessing.pool.Pool:
        context = multiprocessing.get_context("spawn")
        return context.Pool(processes, initializer=init_pool_worker)


class _Named:
    """Runs a task; an unexpected error comes back naming the task (its files)."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def __call__(self, task: Any) -> Any:
        try:
            return self.fn(task)
        except LongmixError:
            raise  # already one clear line naming the file (a bad record, an unwritable output)
        except Exception as err:
            raise TaskFailed(f"task {task_name(task)} failed: {type(err).__name__}: {err}") from err


class TaskFailed(LongmixError, RuntimeError):
    """A task failed (after retries); names the task so the user knows which file to look at."""


class RayExecutor:
    """The same tasks as Ray Core tasks, on a running cluster (``address``) or a local one.

    Ray retries a task whose worker died (``max_retries``); a task that raises is retried
    too, then reported with its name. Only Ray Core is used: Ray Data's JSON reader and
    ordering rules are not involved (we read the files ourselves, and order never matters).
    """

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, max_retries: int = 2
    ):
        require_extra("ray", "ray", "--executor ray")
        import ray

        self.ray = ray
        if not ray.is_initialized():
            ray.init(
                address=address,
                num_cpus=None if address else num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
            )
        self.max_retries = max_retries
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self.window = 2 * self.workers  # enough to keep every CPU busy while results come back

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self, *, wait: bool = True) -> None:
        """Nothing to stop: Ray keeps its own workers, and the cluster outlives the run."""

    def map(
        self,
        fn: Callable[[Any], Any],
        tasks: list,
        *,
        desc: str = "",
        progress: bool = True,
        unit: str = "shard",
        postfix: Callable[[Any], dict] | None = None,
    ) -> Iterator[Any]:
        return _with_progress(
            self._run(fn, tasks, desc), len(tasks), f"{desc} (ray)", progress, unit, postfix
        )

    def _run(self, fn: Callable[[Any], Any], tasks: list, desc: str) -> Iterator[Any]:
        remote = self.ray.remote(max_retries=self.max_retries, retry_exceptions=True)(fn)
        # A bounded window of tasks in flight: submitting all of SlimPajama's ~59K shard tasks
        # at once and waiting on the whole list each time is quadratic in the task count.
        queue = iter(tasks)
        pending: dict[Any, Any] = {}
        try:
            while True:
                for task in queue:
                    pending[remote.remote(task)] = task
                    if len(pending) >= self.window:
                        break
                if not pending:
                    return
                done, _ = self.ray.wait(list(pending), num_returns=1)
                task = pending.pop(done[0])
                try:
                    yield self.ray.get(done[0])
                except Exception as err:
                    raise TaskFailed(
                        f"{desc} task {task_name(task)} failed after {self.max_retries} "
                        f"retries: {err}"
                    ) from err
        finally:
            # A failure, Ctrl-C or a caller that stops early: the tasks still in flight are
            # cancelled (not killed: an interrupted task unwinds and removes its temporaries).
            for ref in pending:
                self.ray.cancel(ref)


def _with_progress(
    results: Iterable[Any],
    total: int,
    desc: str,
    progress: bool,
    unit: str,
    postfix: Callable[[Any], dict] | None,
) -> Iterator[Any]:
    """Pass results through, advancing a progress bar (with an optional running postfix)."""
    bar = progress_bar(total=total, desc=desc, unit=unit, enabled=progress and total > 0)
    try:
        for result in results:
            bar.update(1)
            if postfix is not None:
                bar.set_postfix(postfix(result), refresh=False)
            yield result
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:  # stop the workers now, not when the generator is collected
            close()


def progress_bar(
    iterable: Iterable[Any] | None = None, *, enabled: bool = True, **options: Any
) -> tqdm:
    """A tqdm bar (over ``iterable``, or updated by hand), drawn only on a terminal: redirected
    to a file, its ``\r`` updates would flood the log. Every progress bar of longmix comes from here."""
    return tqdm(
        iterable, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, **options
    )


def task_name(task: Any) -> str:
    """A human name for a task: its shard's files, or its output path."""
    inner = task[0] if isinstance(task, tuple) else task
    shard = getattr(inner, "shard", None)
    if shard is not None:
        return shard.name
    return str(getattr(inner, "path", inner))[:200]


def make_executor(
    kind: str, workers: int | None = None, address: str | None = None
) -> LocalExecutor | RayExecutor:
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=workers)
    raise InvalidInputError(f"unknown executor {kind!r}: local or ray")
