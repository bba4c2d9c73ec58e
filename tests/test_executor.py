"""The local executor keeps one pool of workers for all the maps of a ``with`` block."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from executor_tasks import fail_on_bad, worker_pid
from test_prepare import config_for, run

from longmix.data.executor import LocalExecutor
from longmix.errors import LongmixError


@pytest.fixture
def pools(monkeypatch) -> list[multiprocessing.pool.Pool]:
    """Every pool a LocalExecutor starts, in order."""
    started: list[multiprocessing.pool.Pool] = []
    start = LocalExecutor._start_pool

    def counted(self: LocalExecutor, processes: int) -> multiprocessing.pool.Pool:
        started.append(start(self, processes))
        return started[-1]

    monkeypatch.setattr(LocalExecutor, "_start_pool", counted)
    return started


def _closed(pool: multiprocessing.pool.Pool) -> bool:
    try:
        pool.apply_async(abs, (1,))
    except ValueError:  # "Pool not running"
        return True
    return False


def test_maps_of_one_block_share_one_pool_stopped_on_exit(pools):
    with LocalExecutor(2) as executor:
        first = set(executor.map(worker_pid, list(range(4)), progress=False))
        second = set(executor.map(worker_pid, list(range(4)), progress=False))
    assert len(pools) == 1
    assert len(first | second) <= 2 and os.getpid() not in first | second
    assert _closed(pools[0]) and multiprocessing.active_children() == []


def test_a_map_outside_a_block_stops_its_own_pool(pools):
    assert sorted(LocalExecutor(2).map(fail_on_bad, ["a", "b", "c"], progress=False)) == [
        "a",
        "b",
        "c",
    ]
    assert len(pools) == 1 and _closed(pools[0]) and multiprocessing.active_children() == []


def test_a_failed_task_stops_the_kept_pool_and_the_next_map_starts_another(pools):
    with LocalExecutor(2) as executor:
        with pytest.raises(LongmixError, match="task bad failed: ValueError"):
            list(executor.map(fail_on_bad, ["a", "bad", "c"], progress=False))
        assert _closed(pools[0]) and multiprocessing.active_children() == []
        assert sorted(executor.map(fail_on_bad, ["d", "e"], progress=False)) == ["d", "e"]
    assert len(pools) == 2 and _closed(pools[1])


def test_a_pool_closed_without_waiting_is_joined_on_exit(pools):
    with LocalExecutor(2) as executor:
        list(executor.map(fail_on_bad, ["a", "b"], progress=False))
        executor.close(wait=False)  # its workers exit meanwhile
        assert _closed(pools[0])
    assert multiprocessing.active_children() == []


def test_one_prepare_run_starts_one_pool_for_every_round_and_the_packing(
    tmp_path, mixed_corpus, word_tokenizer, pools, monkeypatch
):
    sizes: list[int] = []  # tasks of each map
    real_map = LocalExecutor.map

    def counted(self: LocalExecutor, fn, tasks: list, **kw):
        sizes.append(len(tasks))
        return real_map(self, fn, tasks, **kw)

    monkeypatch.setattr(LocalExecutor, "map", counted)
    # Two calibration shards first, then the rest: two rounds of tokenization, then the packing.
    config = config_for(
        mixed_corpus, word_tokenizer, tmp_path / "out", workers=2, calibration_min=2
    )
    run(config)
    assert len([n for n in sizes if n > 1]) >= 3, sizes
    assert len(pools) == 1 and _closed(pools[0])
