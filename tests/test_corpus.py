"""Readers: every format, SlimPajama's schema, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import write_jsonl

from longmix.data.corpus import (
    BadInputError,
    Document,
    ReaderOptions,
    Rejection,
    discover_shards,
    iter_documents,
    normalize_domain,
)
from longmix.data.mixture import MixtureConfig
from longmix.data.prepare import PrepareConfig, prepare

SP = {"meta": {"redpajama_set_name": "RedPajamaBook"}}


def read_all(root: Path, options: ReaderOptions | None = None) -> list[Document | Rejection]:
    items = []
    for shard in discover_shards([root]):
        items.extend(iter_documents(shard, options or ReaderOptions()))
    return items


def test_domain_names_are_normalised():
    assert normalize_domain("RedPajamaCommonCrawl") == "cc"
    assert normalize_domain("RedPajamaArXiv") == "arxiv"
    assert normalize_domain("RedPajamaStackExchange") == "stackexchange"
    assert normalize_domain("Books") == "book"
    assert normalize_domain("wiki") == "wikipedia"


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
def test_jsonl_formats_read_text_domain_and_line(tmp_path, compression):
    suffix = {None: ".jsonl", "gz": ".jsonl.gz", "zst": ".jsonl.zst"}[compression]
    records = [
        {"text": f"doc {i}", "meta": {"redpajama_set_name": "RedPajamaGithub"}} for i in range(5)
    ]
    write_jsonl(tmp_path / f"a{suffix}", records, compression)
    docs = read_all(tmp_path)
    assert [d.text for d in docs] == [f"doc {i}" for i in range(5)]
    assert {d.domain for d in docs} == {"github"}
    assert [d.line for d in docs] == [1, 2, 3, 4, 5]


def test_multi_frame_zstd_reads_every_frame(tmp_path):
    frames = [
        zstandard.ZstdCompressor().compress(json.dumps({"text": f"t{i}", **SP}).encode() + b"\n")
        for i in range(3)
    ]
    (tmp_path / "f.jsonl.zst").write_bytes(b"".join(frames))
    assert [d.text for d in read_all(tmp_path)] == ["t0", "t1", "t2"]


def test_slimpajama_layout_is_found_recursively_in_sorted_order(tmp_path):
    for chunk, i in [(2, 0), (1, 1), (1, 0)]:
        write_jsonl(
            tmp_path / "train" / f"chunk{chunk}" / f"example_train_{i}.jsonl.zst",
            [{"text": f"{chunk}-{i}", **SP}],
            "zst",
        )
    (tmp_path / "train" / ".hidden.jsonl").write_text('{"text": "no"}\n')
    shards = discover_shards([tmp_path])
    assert [s.labels[0].split("/", 1)[1] for s in shards] == [
        "train/chunk1/example_train_0.jsonl.zst",
        "train/chunk1/example_train_1.jsonl.zst",
        "train/chunk2/example_train_0.jsonl.zst",
    ]


def test_parquet_with_struct_meta_and_with_json_string_meta(tmp_path):
    struct = pa.table(
        {"text": ["a b", "c"], "meta": [{"redpajama_set_name": "RedPajamaArXiv"}] * 2}
    )
    pq.write_table(struct, tmp_path / "struct.parquet")
    string = pa.table(
        {"text": ["d"], "meta": [json.dumps({"redpajama_set_name": "RedPajamaWikipedia"})]}
    )
    pq.write_table(string, tmp_path / "string.parquet")
    docs = read_all(tmp_path)
    assert [(d.text, d.domain, d.line) for d in docs] == [
        ("d", "wikipedia", 1),
        ("a b", "arxiv", 1),
        ("c", "arxiv", 2),
    ]


def test_custom_fields(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"content": "hello", "source": "Books"}])
    docs = read_all(tmp_path, ReaderOptions(text_field="content", domain_field="source"))
    assert (docs[0].text, docs[0].domain) == ("hello", "book")


def test_plain_text_folders_take_domain_from_folder_or_rule(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "emma.txt").write_text("Emma Woodhouse, handsome, clever.")
    (tmp_path / "code" / "pkg").mkdir(parents=True)
    (tmp_path / "code" / "pkg" / "m.py").write_text("print(1)\n")
    (tmp_path / "notes.md").write_text("a note")
    docs = {d.file.split("/", 1)[1]: d.domain for d in read_all(tmp_path)}
    assert docs == {"book/emma.txt": "book", "code/pkg/m.py": "github", "notes.md": tmp_path.name}
    ruled = read_all(
        tmp_path, ReaderOptions(domain_rules=(("*.py", "RedPajamaGithub"), ("*.md", "wikipedia")))
    )
    assert {d.file.rsplit("/", 1)[1]: d.domain for d in ruled}["notes.md"] == "wikipedia"


BAD_LINES = [
    (b'{"text": "ok", "meta": {"redpajama_set_name": "RedPajamaBook"}}', None),
    (b'{"text": "broken', "broken_json"),
    (b'{"meta": {"redpajama_set_name": "RedPajamaBook"}}', "missing_text"),
    (b'{"text": 42, "meta": {"redpajama_set_name": "RedPajamaBook"}}', "non_string_text"),
    (b'{"text": "caf\xe9", "meta": {"redpajama_set_name": "RedPajamaBook"}}', "invalid_utf8"),
    (b'{"text": "   ", "meta": {"redpajama_set_name": "RedPajamaBook"}}', "empty_document"),
    (b'{"text": "no domain"}', "missing_domain"),
    (b'{"text": "odd", "meta": {"redpajama_set_name": "RedPajamaMystery"}}', "unknown_domain"),
    (b"[1, 2]", "broken_json"),
]


def test_each_bad_line_is_rejected_with_reason_and_line(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [line for line, _ in BAD_LINES])
    items = read_all(tmp_path, ReaderOptions(allowed_domains=("book",)))
    assert len(items) == len(BAD_LINES)
    for line_no, ((_, reason), item) in enumerate(zip(BAD_LINES, items), start=1):
        if reason is None:
            assert isinstance(item, Document)
        else:
            assert isinstance(item, Rejection) and item.reason == reason and item.line == line_no
            assert item.file.endswith("bad.jsonl")


@pytest.mark.parametrize("compression", ["gz", "zst"])
def test_truncated_archive_keeps_what_was_read_and_reports_the_rest(tmp_path, compression):
    records = [{"text": f"document number {i} " * 20, **SP} for i in range(2000)]
    path = write_jsonl(tmp_path / f"t.jsonl.{compression}", records, compression)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    items = read_all(tmp_path)
    docs = [i for i in items if isinstance(i, Document)]
    assert 0 < len(docs) < 2000
    assert isinstance(items[-1], Rejection) and items[-1].reason == "truncated_archive"
    assert items[-1].line == len(docs) + 1
    assert [d.line for d in docs] == list(range(1, len(docs) + 1))


def test_unreadable_file_is_reported(tmp_path):
    (tmp_path / "x.jsonl.gz").write_bytes(b"this is not gzip at all")
    items = read_all(tmp_path)
    assert [i.reason for i in items] == ["unreadable_file"]
    assert "BadGzipFile" in items[0].detail
    (tmp_path / "x.jsonl.gz").unlink()
    (tmp_path / "y.parquet").write_bytes(b"PAR1 garbage")
    assert [i.reason for i in read_all(tmp_path)] == ["unreadable_file"]


def test_invalid_utf8_in_a_text_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bad.txt").write_bytes(b"\xff\xfe broken")
    (tmp_path / "d" / "empty.txt").write_bytes(b"\n\n")
    assert sorted(i.reason for i in read_all(tmp_path)) == ["empty_document", "invalid_utf8"]


def _prepare(tmp_path, corpus, tokenizer, **kw):
    config = PrepareConfig(
        inputs=(str(corpus),),
        out=str(tmp_path / "out"),
        tokenizer=str(tokenizer),
        seq_len=16,
        mixture=MixtureConfig(strategy="original"),
        workers=1,
        **kw,
    )
    return prepare(config, progress=False, log=lambda m: None)


def test_prepare_counts_every_document_read_as_used_or_rejected(tmp_path, word_tokenizer):
    write_jsonl(
        tmp_path / "c" / "bad.jsonl",
        [line for line, _ in BAD_LINES]
        + [b'{"text": "w1 w2 w3", "meta": {"redpajama_set_name": "RedPajamaBook"}}'] * 10,
    )
    stats = _prepare(
        tmp_path, tmp_path / "c", word_tokenizer, reader=ReaderOptions(allowed_domains=("book",))
    )
    docs = stats["documents"]
    assert docs["read"] == len(BAD_LINES) + 10
    assert docs["read"] == docs["used"] + docs["rejected"]
    # "ok" is not in the word vocabulary: one [UNK] token, still a document
    assert docs["used"] == 11
    assert sum(stats["rejections"]["counts"].values()) == docs["rejected"] == len(BAD_LINES) - 1
    assert {e["reason"] for e in stats["rejections"]["examples"]} == {r for _, r in BAD_LINES if r}


def test_strict_mode_stops_at_the_first_bad_document_naming_file_and_line(tmp_path, word_tokenizer):
    write_jsonl(
        tmp_path / "c" / "bad.jsonl",
        [b'{"text": "w1", "meta": {"redpajama_set_name": "RedPajamaBook"}}', b'{"text": "broken'],
    )
    with pytest.raises(BadInputError, match=r"bad\.jsonl:2: broken json"):
        _prepare(tmp_path, tmp_path / "c", word_tokenizer, strict=True)


def test_truncated_gzip_is_counted_as_a_file_error(tmp_path, word_tokenizer):
    records = [{"text": "w1 w2 " * 50, **SP} for _ in range(3000)]
    path = write_jsonl(tmp_path / "c" / "t.jsonl.gz", records, "gz")
    path.write_bytes(path.read_bytes()[:2000])
    stats = _prepare(tmp_path, tmp_path / "c", word_tokenizer)
    assert stats["documents"]["file_errors"] == 1
    assert stats["rejections"]["counts"] == {"truncated_archive": 1}
    assert stats["documents"]["read"] == stats["documents"]["used"] > 0
