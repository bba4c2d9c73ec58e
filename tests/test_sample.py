"""--read auto: tokenize only the shards the budget needs, and get the plan the whole corpus gives."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import mixed_spec, synthetic_records, write_jsonl

import longmix.data.prepare as prepare_module
from longmix.data.mixture import MixtureConfig
from longmix.data.prepare import PrepareConfig, prepare
from longmix.data.sample import (
    MIN_BAND,
    DocumentSample,
    DomainChars,
    Round,
    Sampling,
    ShardUnit,
    calibrate_chars,
    calibration_set,
    document_uniform,
    document_uniforms,
    needed_rates,
    sample_until_covered,
)

THRESHOLD = 256
N_FILES = 48


@pytest.fixture
def many_shards(tmp_path: Path) -> Path:
    """48 small jsonl files (every domain mixed in each) in two folders, SlimPajama's layout."""
    records = synthetic_records(mixed_spec(scale=8))
    root = tmp_path / "corpus"
    for i in range(N_FILES):
        write_jsonl(root / f"chunk{i % 2 + 1}" / f"example_train_{i}.jsonl", records[i::N_FILES])
    return root


def config(corpus: Path, tokenizer: Path, out: Path, **kw) -> PrepareConfig:
    mixture = kw.pop(
        "mixture", MixtureConfig(strategy="per-source", tokens=20_000, long_threshold=THRESHOLD)
    )
    return PrepareConfig(
        inputs=(str(corpus),),
        out=str(out),
        tokenizer=str(tokenizer),
        seq_len=512,
        mixture=mixture,
        part_bytes=8 * 1024,
        workers=kw.pop("workers", 1),
        calibration_min=2,  # one shard per folder: the first round must read more
        **kw,
    )


def run(cfg: PrepareConfig, log=None) -> dict:
    return prepare(cfg, progress=False, log=log or (lambda m: None))


def outputs(out: Path) -> dict[str, str]:
    """Checksums of the packed tokens and the span index (what training reads)."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ("tokens", "index")
        for p in sorted((out / folder).rglob("*"))
        if p.is_file()
    }


def tokenized_shards(out: Path) -> int:
    return len(list((out / "tokenized").glob("shard-*.json")))


def test_auto_reads_everything_when_the_budget_needs_the_whole_corpus(
    tmp_path, many_shards, word_tokenizer
):
    whole = MixtureConfig(strategy="per-source", long_threshold=THRESHOLD)  # budget: the corpus
    auto = run(config(many_shards, word_tokenizer, tmp_path / "auto", mixture=whole))
    full = run(config(many_shards, word_tokenizer, tmp_path / "all", mixture=whole, read="all"))
    assert auto["reading"]["shards_read"] == N_FILES and auto["reading"]["share_read"] == 1.0
    assert outputs(tmp_path / "auto") == outputs(tmp_path / "all")
    assert auto["plan"] == full["plan"]


def test_auto_reads_a_sample_and_aims_at_the_whole_corpus_mix(
    tmp_path, many_shards, word_tokenizer
):
    auto = run(config(many_shards, word_tokenizer, tmp_path / "auto"))
    full = run(config(many_shards, word_tokenizer, tmp_path / "all", read="all"))
    reading = auto["reading"]
    assert reading["rounds"] >= 1 and reading["calibration_shards"] == 2
    assert 2 < reading["shards_read"] < N_FILES == tokenized_shards(tmp_path / "all")
    assert tokenized_shards(tmp_path / "auto") == reading["shards_read"]
    assert reading["share_read"] < 0.9
    # Horvitz-Thompson weights: the sample's plan targets the whole corpus' domain shares.
    for domain in ("cc", "c4", "github", "stackexchange"):  # hundreds of documents each
        target = full["plan"]["targets"][domain]
        got = sum(auto["plan"]["targets"][domain].values())
        want = sum(target.values())
        assert got == pytest.approx(want, rel=0.2), domain
    # ... and the selection reaches them from the documents read, with no shortfall.
    assert not auto["plan"]["shortfalls"]
    for cell in auto["plan"]["cells"]:
        assert cell["available_tokens"] >= cell["target_tokens"]


def test_documents_accounting_adds_up_with_shards_not_read(tmp_path, many_shards, word_tokenizer):
    stats = run(config(many_shards, word_tokenizer, tmp_path / "out"))
    docs = stats["documents"]
    assert docs["read"] == docs["used"] + docs["rejected"]
    assert docs["not_read"] > 0
    total = sum(len(v) for v in mixed_spec(scale=8).values())
    # the documents of the shards not read are estimated from the bytes not read
    assert docs["read"] + docs["not_read"] == pytest.approx(total, rel=0.2)
    assert stats["reading"]["not_read_reason"].startswith("not read")
    manifest = stats["manifest"]
    assert manifest["read"] == "auto"
    assert manifest["sampling"]["shards_read"] == stats["reading"]["shards_read"]


def test_sampled_output_is_identical_for_one_and_two_workers(tmp_path, many_shards, word_tokenizer):
    run(config(many_shards, word_tokenizer, tmp_path / "one", workers=1))
    run(config(many_shards, word_tokenizer, tmp_path / "two", workers=2))
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two") != {}


def test_a_run_killed_mid_round_resumes_to_the_same_output(
    tmp_path, many_shards, word_tokenizer, monkeypatch
):
    run(config(many_shards, word_tokenizer, tmp_path / "clean"))
    real = prepare_module.tokenize_shard
    done = []

    def crash_after_three(task, fingerprint):
        if len(done) == 3:  # past the 2 calibration shards: inside the first read round
            raise KeyboardInterrupt
        done.append(task.shard.index)
        return real(task, fingerprint)

    monkeypatch.setattr(prepare_module, "tokenize_shard", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(config(many_shards, word_tokenizer, tmp_path / "killed"))
    assert tokenized_shards(tmp_path / "killed") == 3
    monkeypatch.setattr(prepare_module, "tokenize_shard", real)
    log: list[str] = []
    run(config(many_shards, word_tokenizer, tmp_path / "killed"), log.append)
    assert any("already tokenized" in line for line in log)
    assert outputs(tmp_path / "killed") == outputs(tmp_path / "clean")


def test_dry_run_prints_the_estimate_and_writes_no_token_files(
    tmp_path, many_shards, word_tokenizer
):
    log: list[str] = []
    out = tmp_path / "out"
    result = run(config(many_shards, word_tokenizer, out, dry_run=True, cores=64), log.append)
    estimate = result["dry_run"]
    assert not (out / "tokens").exists() and not (out / "manifest.json").exists()
    assert tokenized_shards(out) == estimate["calibration_shards"] == 2
    assert {row["domain"] for row in estimate["domains"]} == {
        "cc",
        "c4",
        "github",
        "book",
        "stackexchange",
    }
    assert 0 < estimate["total"]["share_read"] < 1
    assert estimate["tokens_per_second_per_core"] > 0
    table = "\n".join(log)
    assert "time on 64 cores" in table and "time on 1 cores" in table and "book" in table


def test_calibration_is_stratified_seeded_and_at_least_the_minimum():
    units = [ShardUnit(i, f"chunk{i % 3}/f{i}", f"chunk{i % 3}", 100) for i in range(300)]
    chosen = calibration_set(units, 0.002, 8, seed=0)
    assert len(chosen) >= 8
    assert {units[i].stratum for i in chosen} == {"chunk0", "chunk1", "chunk2"}
    assert chosen == calibration_set(list(reversed(units)), 0.002, 8, seed=0)
    assert chosen != calibration_set(units, 0.002, 8, seed=1)


def test_needed_rates_cover_the_largest_need_of_each_stratum():
    targets = np.array([[10.0, 30.0]])  # one domain: short, long
    estimates = {"a": np.array([[500.0, 100.0]]), "b": np.array([[500.0, 0.0]])}
    rates = needed_rates(targets, estimates, margin=1.5)
    assert rates["a"] == pytest.approx(1.5 * 30 / 100)  # its long cell needs most
    assert rates["b"] == pytest.approx(1.5 * 10 / 1000)


def cell(target: float, available: float, limited: bool = False) -> dict:
    return {"target_tokens": target, "available_tokens": available, "limited": limited}


def test_sampling_covers_only_when_every_target_is_available():
    sampling = Sampling("auto", n_shards=10, read=(0, 1, 2))
    assert sampling.covers([cell(100, 120), cell(0, 0)])
    assert not sampling.covers([cell(100, 99)])
    assert not sampling.covers([cell(100, 500, limited=True)])
    everything = Sampling("auto", n_shards=3, read=(0, 1, 2))
    assert everything.covers([cell(100, 10, limited=True)])  # nothing more to read


def test_a_short_first_round_is_extended_until_covered():
    # Calibration shards (the first in seeded order) are richer than the rest: the estimate
    # is too high, the first round falls short, and a further round must cover the target.
    units = [ShardUnit(i, f"s/{i}", "s", 100) for i in range(100)]
    calibration = calibration_set(units, 0.02, 2, seed=0)
    per_shard = np.zeros((100, 1, 2))
    per_shard[:, 0, 1] = 10.0
    per_shard[calibration, 0, 1] = 40.0
    tokenized: list[int] = []

    def plan_on(read: set[int]) -> Round:
        available = per_shard[sorted(read)].sum()
        cells = [cell(0, 0), cell(300, available)]
        return Round(
            np.array([[0.0, 300.0]]),
            cells,
            per_shard * np.isin(np.arange(100), list(read))[:, None, None],
        )

    sampling, last = sample_until_covered(units, calibration, 1.0, 0, tokenized.extend, plan_on)
    assert sampling.rounds >= 2 and not sampling.complete
    assert sampling.covers(last.cells) and last.cells[1]["available_tokens"] >= 300
    assert len(tokenized) == len(set(tokenized)) == len(sampling.read)  # each shard once


# ---------------------------------------------------------------- documents within shards


def test_documents_within_shards_are_drawn_the_same_for_one_and_two_workers(
    tmp_path, many_shards, word_tokenizer
):
    one = run(config(many_shards, word_tokenizer, tmp_path / "one", workers=1))
    two = run(config(many_shards, word_tokenizer, tmp_path / "two", workers=2))
    assert one["documents"]["not_tokenized"] > 0  # some parsed documents were left out
    assert one["documents"] == two["documents"]
    assert one["reading"]["document_rates"] == two["reading"]["document_rates"]
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two") != {}
    # the plan still covers every cell from the documents tokenized
    assert not one["plan"]["shortfalls"]
    for cell in one["plan"]["cells"]:
        assert cell["available_tokens"] >= cell["target_tokens"]
    assert one["reading"]["share_tokenized"] < one["reading"]["share_read"] < 1


def test_documents_parsed_are_tokenized_rejected_or_left_out(tmp_path, many_shards, word_tokenizer):
    stats = run(config(many_shards, word_tokenizer, tmp_path / "out"))
    docs = stats["documents"]
    assert docs["parsed"] == docs["used"] + docs["rejected"] + docs["not_tokenized"]
    # parsed: every line of the files of the shards read
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "out" / "tokenized").glob("*.json")]
    files = [many_shards.parent / label for s in summaries for label in s["files"]]
    assert docs["parsed"] == sum(len(f.read_text().splitlines()) for f in files)
    assert stats["reading"]["not_tokenized_reason"].startswith("not tokenized")


def test_a_document_whose_class_is_uncertain_is_always_tokenized():
    chars = (DomainChars("web", 4.0, 0.8, 1.25),)
    sample = DocumentSample(seed=0, threshold=1000, chars=chars, rates=((0.0, 0.0),))
    assert sample.rate("web", 4000 * 0.8) == 0.0  # 800 tokens estimated: surely short
    assert sample.rate("web", 4000 * 1.26) == 0.0  # surely long
    for n_chars in (4000 * 0.81, 4000, 4000 * 1.24):  # could be either: drawn at rate 1
        assert sample.rate("web", int(n_chars)) == 1.0
        assert sample.includes(12345, sample.rate("web", int(n_chars)))
    assert sample.rate("other", 10) == 1.0  # a domain the calibration never saw
    # the per-document draw (tokenize) and the vectorised one agree
    n_chars = np.array([100, 3300, 4000, 5100, 9000])
    rates = sample.rates_of(np.zeros(5, np.int16), ["web"], n_chars)
    assert rates.tolist() == [sample.rate("web", int(c)) for c in n_chars]
    keys = np.array([1, 2, 3, 2**63 + 5], np.uint64)
    assert document_uniforms(keys, 7).tolist() == [document_uniform(int(k), 7) for k in keys]


def test_the_calibration_band_holds_nearly_every_ratio_it_saw():
    rng = np.random.default_rng(0)
    n_tokens = rng.integers(100, 2000, 1000)
    n_chars = (n_tokens * 4.0 * np.exp(0.1 * rng.standard_normal(1000))).astype(np.int64)
    domains = np.zeros(1000, np.int16)
    (web,) = calibrate_chars(["web"], domains, n_tokens, n_chars, threshold=800)
    assert web.chars_per_token == pytest.approx(n_chars.sum() / n_tokens.sum())
    near = n_tokens >= 200
    ratio = n_chars[near] / n_tokens[near] / web.chars_per_token
    outside = (ratio < web.low) | (ratio > web.high)
    assert 0 < outside.mean() <= 0.03  # the 1% tails on each side
    assert web.low <= 1 / MIN_BAND and web.high >= MIN_BAND
