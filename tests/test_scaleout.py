"""Scale-out of `prepare`: job-array ranks + finalize, the Ray executor, failures named."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_prepare import config_for, run, tree_digest

from longmix.data import prepare as prepare_module
from longmix.data.executor import TaskFailed
from longmix.data.prepare import PrepareError


def test_ranks_then_finalize_equal_a_single_run(tmp_path, mixed_corpus, word_tokenizer):
    single = tmp_path / "single"
    run(config_for(mixed_corpus, word_tokenizer, single, workers=1))
    merged = tmp_path / "merged"
    base = config_for(mixed_corpus, word_tokenizer, merged, workers=1)
    for rank in range(3):
        result = run(replace(base, rank=rank, world_size=3))
        assert result["shards"] in (1, 2)
    assert not (merged / "manifest.json").exists()
    run(replace(base, finalize=True))
    assert tree_digest(merged) == tree_digest(single)


def test_finalize_refuses_when_a_rank_is_missing(tmp_path, mixed_corpus, word_tokenizer):
    base = config_for(mixed_corpus, word_tokenizer, tmp_path / "out", workers=1)
    run(replace(base, rank=0, world_size=2))
    with pytest.raises(PrepareError, match="2 of 4 shards are not tokenized"):
        run(replace(base, finalize=True))
    with pytest.raises(PrepareError, match="--rank must be within"):
        run(replace(base, rank=2, world_size=2))


def test_a_failing_task_is_reported_with_its_file(
    tmp_path, mixed_corpus, word_tokenizer, monkeypatch
):
    original = prepare_module.tokenize_shard

    def flaky(task, fingerprint):
        if task.shard.index == 2:
            raise OSError("disk went away")
        return original(task, fingerprint)

    monkeypatch.setattr(prepare_module, "tokenize_shard", flaky)
    with pytest.raises(TaskFailed, match=r"example_train_\d\.jsonl\.zst.*disk went away"):
        run(config_for(mixed_corpus, word_tokenizer, tmp_path / "out", workers=1))
    assert not (tmp_path / "out" / "manifest.json").exists()
    monkeypatch.setattr(prepare_module, "tokenize_shard", original)
    stats = run(
        config_for(mixed_corpus, word_tokenizer, tmp_path / "out", workers=1)
    )  # the rerun resumes
    assert stats["documents"]["read"] > 0


@pytest.mark.ray
def test_ray_executor_output_is_byte_identical_to_local(tmp_path, mixed_corpus, word_tokenizer):
    ray = pytest.importorskip("ray")
    local = tmp_path / "local"
    run(config_for(mixed_corpus, word_tokenizer, local, workers=2))
    on_ray = tmp_path / "ray"
    try:
        run(config_for(mixed_corpus, word_tokenizer, on_ray, workers=2, executor="ray"))
    finally:
        ray.shutdown()
    assert tree_digest(on_ray) == tree_digest(local)


class _FakeRay:
    """Just enough of Ray's API to count the tasks in flight."""

    def __init__(self):
        self.in_flight: set[int] = set()
        self.most_in_flight = 0
        self.cancelled: list[int] = []

    def remote(self, **_options):
        def wrap(fn):
            fake = self

            class Remote:
                @staticmethod
                def remote(task):
                    ref = ("ref", task, fn(task))
                    fake.in_flight.add(task)
                    fake.most_in_flight = max(fake.most_in_flight, len(fake.in_flight))
                    return ref

            return Remote

        return wrap

    def wait(self, refs, num_returns):
        first = min(refs, key=lambda ref: ref[1])
        self.in_flight.discard(first[1])
        return [first], refs[1:]

    def get(self, ref):
        if isinstance(ref[2], Exception):
            raise ref[2]
        return ref[2]

    def cancel(self, ref):
        self.cancelled.append(ref[1])
        self.in_flight.discard(ref[1])


def test_ray_executor_keeps_a_bounded_window_of_tasks_in_flight():
    from longmix.data.executor import RayExecutor

    executor = object.__new__(RayExecutor)
    executor.ray, executor.max_retries, executor.window = _FakeRay(), 0, 3
    results = sorted(executor._run(lambda task: task * 10, list(range(20)), "test"))
    assert results == [task * 10 for task in range(20)]
    assert executor.ray.most_in_flight == 3


def test_ray_executor_cancels_the_tasks_in_flight_when_one_fails():
    from longmix.data.executor import RayExecutor, TaskFailed

    executor = object.__new__(RayExecutor)
    executor.ray, executor.max_retries, executor.window = _FakeRay(), 0, 4

    def task(n: int):
        return ValueError("broken shard") if n == 2 else n

    with pytest.raises(TaskFailed, match="task .*2.* failed after 0 retries: broken shard"):
        list(executor._run(task, list(range(20)), "tokenize"))
    assert sorted(executor.ray.cancelled) == [3, 4, 5]  # in flight when task 2 failed
    assert not executor.ray.in_flight
