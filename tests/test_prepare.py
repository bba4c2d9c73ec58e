"""End to end: prepare a synthetic corpus, then check what landed where."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_word_tokenizer, write_jsonl

from longmix.cli import main
from longmix.data.mixture import MixtureConfig
from longmix.data.prepare import PrepareConfig, PrepareError, prepare
from longmix.data.store import PackedDataset, export_megatron, read_megatron
from longmix.data.verify import verify_prepared

THRESHOLD = 256


def config_for(corpus: Path, tokenizer: Path, out: Path, **kw) -> PrepareConfig:
    mixture = kw.pop(
        "mixture", MixtureConfig(strategy="per-source", tokens=120_000, long_threshold=THRESHOLD)
    )
    return PrepareConfig(
        inputs=(str(corpus),),
        out=str(out),
        tokenizer=str(tokenizer),
        seq_len=kw.pop("seq_len", 1024),
        mixture=mixture,
        part_bytes=kw.pop("part_bytes", 16 * 1024),
        **kw,
    )


def run(config: PrepareConfig) -> dict:
    return prepare(config, progress=False, log=lambda m: None)


def document_tokens(out: Path) -> dict[int, tuple[np.ndarray, str]]:
    """doc_key -> (tokens, domain), read back from the tokenized shards."""
    docs = {}
    for table_path in sorted((out / "tokenized").glob("*.docs.parquet")):
        tokens = np.fromfile(str(table_path).replace(".docs.parquet", ".tokens"), dtype="<u2")
        table = pq.read_table(table_path).to_pydict()
        for key, domain, n, offset in zip(
            table["doc_key"], table["domain"], table["n_tokens"], table["offset"]
        ):
            docs[key] = (tokens[offset : offset + n], domain)
    return docs


def test_every_token_of_every_selected_document_lands_once_per_repeat(
    tmp_path, mixed_corpus, word_tokenizer
):
    out = tmp_path / "out"
    stats = run(config_for(mixed_corpus, word_tokenizer, out))
    ds = PackedDataset(out)
    docs = document_tokens(out)
    sep = ds.manifest["tokenizer"]["separator_id"]
    assert sep == 1 and len(ds) == stats["packing"]["n_sequences"] > 10

    covered: dict[tuple[int, int], list[tuple[int, int]]] = {}
    spans_repeat = np.load(out / "index" / "span_repeat.npy")
    for i in range(len(ds)):
        seq = ds[i]
        assert seq.doc_starts[0] == 0 and seq.doc_lengths.sum() == ds.seq_len
        assert np.array_equal(seq.doc_starts[1:], np.cumsum(seq.doc_lengths)[:-1])
        lo = int(ds.seq_offsets[i])
        for j, (start, length, key, offset, domain) in enumerate(
            zip(seq.doc_starts, seq.doc_lengths, seq.doc_keys, seq.doc_offsets, seq.domains)
        ):
            doc, doc_domain = docs[int(key)]
            piece = np.append(doc, sep)  # each copy is followed by the separator
            assert np.array_equal(
                seq.tokens[start : start + length], piece[offset : offset + length]
            )
            assert domain == doc_domain
            covered.setdefault((int(key), int(spans_repeat[lo + j])), []).append(
                (int(offset), int(offset + length))
            )

    cut = 0
    for (key, _), intervals in covered.items():
        intervals.sort()
        assert intervals[0][0] == 0
        assert all(a[1] == b[0] for a, b in zip(intervals, intervals[1:]))  # no gap, no overlap
        if intervals[-1][1] != len(docs[key][0]) + 1:
            cut += 1
    assert cut <= 1  # only the document at the tail may be cut off
    selected = sum(c["selected_tokens"] for c in stats["plan"]["cells"])
    separators = stats["after"]["total"]["documents"]
    assert len(ds) * ds.seq_len + stats["packing"]["tail_tokens_dropped"] == selected + separators


def test_per_source_report_matches_the_recipe(tmp_path, mixed_corpus, word_tokenizer):
    stats = run(config_for(mixed_corpus, word_tokenizer, tmp_path / "out"))
    before, after = stats["before"]["domains"], stats["after"]["domains"]
    assert set(after) == {"cc", "c4", "github", "book", "stackexchange"}
    for name in ("cc", "github"):
        assert before[name]["long_share"] < 0.6
        assert after[name]["long_share"] == pytest.approx(0.7, abs=0.02)
    for name in after:
        assert after[name]["share"] == pytest.approx(before[name]["share"], abs=0.01)
    assert any("stackexchange" in n for n in stats["plan"]["notes"])
    assert stats["after"]["total"]["tokens"] == pytest.approx(120_000, rel=0.01)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| cc |" in report and "impossible" in report
    for png in ("length_distribution.png", "domain_shares.png"):
        assert (tmp_path / "out" / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_truncate_strategy_truncates_documents(tmp_path, mixed_corpus, word_tokenizer):
    out = tmp_path / "out"
    run(
        config_for(
            mixed_corpus,
            word_tokenizer,
            out,
            mixture=MixtureConfig("truncate:100", tokens=50_000, long_threshold=THRESHOLD),
        )
    )
    ds = PackedDataset(out)
    ends = np.load(out / "index" / "span_doc_offset.npy") + np.load(
        out / "index" / "span_length.npy"
    )
    assert ends.max() <= 101  # 100 tokens and the separator
    stats = json.loads((out / "stats.json").read_text())
    assert (
        stats["after"]["total"]["long_share"] == 0.0
        and stats["before"]["total"]["long_share"] > 0.2
    )
    assert ds.manifest["truncate_to"] == 100


def tree_digest(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("params.json", "timings.json")
    }


def test_output_is_byte_identical_for_any_worker_count(tmp_path, mixed_corpus, word_tokenizer):
    one = tmp_path / "one"
    two = tmp_path / "two"
    run(config_for(mixed_corpus, word_tokenizer, one, workers=1))
    run(config_for(mixed_corpus, word_tokenizer, two, workers=2))
    digests_one, digests_two = tree_digest(one), tree_digest(two)
    assert len(digests_one) > 20
    assert digests_one == digests_two


def test_timings_of_each_phase_are_returned_and_kept_beside_the_outputs(
    tmp_path, mixed_corpus, word_tokenizer
):
    out = tmp_path / "out"
    stats = run(config_for(mixed_corpus, word_tokenizer, out, workers=2))
    timings = stats["timings"]
    phases = {"discover", "tokenize", "load", "plan", "layout", "index", "pack", "statistics"}
    assert phases | {"report", "plots", "manifest", "total"} <= set(timings)
    assert all(isinstance(s, float) and s >= 0 for s in timings.values())
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"]
    assert json.loads((out / "timings.json").read_text()) == pytest.approx(timings)
    # not an output: stats.json and the manifest leave it out, and a check of the folder passes
    assert "timings" not in json.loads((out / "stats.json").read_text())
    assert "timings.json" not in json.loads((out / "manifest.json").read_text())["files"]
    assert verify_prepared(out) == []
    again = run(config_for(mixed_corpus, word_tokenizer, out, workers=2))
    assert set(again["timings"]) == {"check", "total"} and again["timings"]["check"] >= 0


def test_rerun_resumes_after_a_kill_and_ends_byte_identical(tmp_path, mixed_corpus, word_tokenizer):
    reference = tmp_path / "reference"
    run(config_for(mixed_corpus, word_tokenizer, reference, workers=1))
    killed = tmp_path / "killed"
    code = (
        f"import sys; sys.path[:0] = {[str(Path(__file__).parent)]!r}\n"
        "from test_prepare import config_for, run\n"
        "from pathlib import Path\n"
        f"run(config_for(Path({str(mixed_corpus)!r}), Path({str(word_tokenizer)!r}), Path({str(killed)!r}), workers=1))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while time.time() < deadline and not list((killed / "tokenized").glob("shard-*.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), (
        "the run should have been killed before finishing"
    )
    stats = run(config_for(mixed_corpus, word_tokenizer, killed, workers=2))
    assert stats["packing"]["n_sequences"] > 0
    assert not list(killed.rglob("*.tmp"))
    assert tree_digest(killed) == tree_digest(reference)


def test_resume_skips_tokenized_shards_and_written_parts(tmp_path, mixed_corpus, word_tokenizer):
    out = tmp_path / "out"
    run(config_for(mixed_corpus, word_tokenizer, out))
    reference = tree_digest(out)
    (out / "manifest.json").unlink()
    (out / "tokens" / "part-00001.bin").unlink()
    stamp = {p: p.stat().st_mtime_ns for p in (out / "tokenized").glob("*.tokens")}
    messages = []
    prepare(config_for(mixed_corpus, word_tokenizer, out), progress=False, log=messages.append)
    assert any("4 of 4 shards already tokenized" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert tree_digest(out) == reference


def test_other_settings_in_the_same_folder_are_refused_unless_overwrite(
    tmp_path, mixed_corpus, word_tokenizer
):
    out = tmp_path / "out"
    run(config_for(mixed_corpus, word_tokenizer, out))
    other = MixtureConfig(strategy="original", tokens=60_000, long_threshold=THRESHOLD)
    with pytest.raises(PrepareError, match="mixture"):
        run(config_for(mixed_corpus, word_tokenizer, out, mixture=other))
    stats = run(config_for(mixed_corpus, word_tokenizer, out, mixture=other, overwrite=True))
    assert (
        PackedDataset(out).manifest["strategy"] == "original"
        and stats["manifest"]["budget"] == 60_000
    )


def test_shared_cache_is_reused_across_strategies(tmp_path, mixed_corpus, word_tokenizer):
    cache = tmp_path / "cache"
    run(config_for(mixed_corpus, word_tokenizer, tmp_path / "a", cache=str(cache)))
    messages = []
    config = config_for(
        mixed_corpus,
        word_tokenizer,
        tmp_path / "b",
        cache=str(cache),
        mixture=MixtureConfig("global", tokens=100_000, long_threshold=THRESHOLD),
    )
    prepare(config, progress=False, log=messages.append)
    assert any("already tokenized" in m for m in messages)
    assert not (tmp_path / "b" / "tokenized").exists()


def test_large_vocabulary_is_stored_as_uint32(tmp_path):
    tok = make_word_tokenizer(tmp_path / "bigtok", vocab_size=70_000)
    write_jsonl(
        tmp_path / "c" / "a.jsonl",
        [{"text": "w69990 w5 w69997 " * 30, "meta": {"redpajama_set_name": "Book"}}] * 4,
    )
    out = tmp_path / "out"
    run(config_for(tmp_path / "c", tok, out, seq_len=64, mixture=MixtureConfig("original")))
    ds = PackedDataset(out)
    assert ds.dtype == np.dtype("<u4") and ds[0].tokens.max() >= 69_990


def test_megatron_export_reads_back(tmp_path, mixed_corpus, word_tokenizer):
    out = tmp_path / "out"
    run(config_for(mixed_corpus, word_tokenizer, out))
    ds = PackedDataset(out)
    export_megatron(ds, tmp_path / "mega" / "data")
    lengths, pointers, documents, tokens = read_megatron(tmp_path / "mega" / "data")
    assert len(lengths) == len(ds) and set(lengths) == {ds.seq_len}
    assert list(documents) == list(range(len(ds) + 1))
    for i in (0, len(ds) // 2, len(ds) - 1):
        start = pointers[i] // tokens.itemsize
        assert np.array_equal(tokens[start : start + lengths[i]], ds[i].tokens)
    header = (tmp_path / "mega" / "data.idx").read_bytes()[:18]
    assert header[:9] == b"MMIDIDX\x00\x00" and header[17] == 8  # uint16 code


def test_sequence_helpers_for_document_masking(tmp_path, mixed_corpus, word_tokenizer):
    out = tmp_path / "out"
    run(config_for(mixed_corpus, word_tokenizer, out))
    seq = PackedDataset(out)[3]
    cu = seq.cu_seqlens()
    assert cu[0] == 0 and cu[-1] == len(seq.tokens) and np.all(np.diff(cu) > 0)
    positions = seq.position_ids()
    for start, length, offset in zip(seq.doc_starts, seq.doc_lengths, seq.doc_offsets):
        assert positions[start] == offset and positions[start + length - 1] == offset + length - 1


def test_bad_settings_fail_before_any_work(tmp_path, mixed_corpus, word_tokenizer):
    with pytest.raises(Exception, match="unknown strategy"):
        run(
            config_for(mixed_corpus, word_tokenizer, tmp_path / "o", mixture=MixtureConfig("bogus"))
        )
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        run(config_for(mixed_corpus, tmp_path / "missing", tmp_path / "o2"))
    with pytest.raises(PrepareError, match="less than one sequence"):
        run(config_for(mixed_corpus, word_tokenizer, tmp_path / "o3", seq_len=1 << 20))


def test_cli_prepare_sample_and_stats(tmp_path, capsys):
    out = tmp_path / "sample"
    assert (
        main(
            [
                "prepare",
                "--sample",
                "--out",
                str(out),
                "--seq-len",
                "8K",
                "--workers",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    ds = PackedDataset(out)
    assert len(ds) > 100 and ds.manifest["tokenizer"]["name"] == "smollm2"
    assert set(ds.domains) == {"arxiv", "book", "cc", "github", "stackexchange", "wikipedia"}
    capsys.readouterr()
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "per-source" in text and "cc" in text and "→" in text
    assert main(["stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["seq_len"] == 8192


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "corpus path does not exist" in capsys.readouterr().err
    write_jsonl(tmp_path / "c.jsonl", [{"text": "a b c", "meta": {"redpajama_set_name": "Book"}}])
    assert (
        main(
            [
                "prepare",
                str(tmp_path / "c.jsonl"),
                "--out",
                str(tmp_path / "o"),
                "--strategy",
                "upsample:wiki",
                "--quiet",
            ]
        )
        == 2
    )
    assert "upsample names unknown domains" in capsys.readouterr().err
