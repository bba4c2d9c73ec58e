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


def test_a_failing_task_is_reported_with_its_file(tmp_path, mixed_corpus, word_tokenizer, monkeypatch):
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
    stats = run(config_for(mixed_corpus, word_tokenizer, tmp_path / "out", workers=1))  # the rerun resumes
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
