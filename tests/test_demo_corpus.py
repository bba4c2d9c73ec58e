"""The demo-corpus builder's parsers and writer, on small inputs made here."""

from __future__ import annotations

import gzip
import json

from longmix.data.corpus import Document, ReaderOptions, discover_shards, iter_documents
from longmix.data.demo_corpus import (
    _B64,
    bible_books,
    dictionary_entries,
    html_to_text,
    write_slimpajama,
)


def b64(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 64)
        digits = _B64[rest] + digits
        if number == 0:
            return digits


def test_dictd_entries_are_read_through_the_base64_index(tmp_path):
    entries = [
        "alpha\n  The first letter, and a long enough definition to be kept as an entry here.",
        "beta\n  The second letter, with another definition that is long enough to be counted too.",
    ]
    blob = "".join(entries).encode()
    (tmp_path / "d.dict.dz").write_bytes(gzip.compress(blob))
    index = f"alpha\t{b64(0)}\t{b64(len(entries[0]))}\nbeta\t{b64(len(entries[0]))}\t{b64(len(entries[1]))}\n"
    (tmp_path / "d.index").write_text("00-database-info\tA\tB\n" + index)
    assert list(dictionary_entries(tmp_path / "d.index", tmp_path / "d.dict.dz")) == entries


def test_html_to_text_drops_markup_and_scripts():
    text = html_to_text(
        "<html><script>var x=1;</script><h1>Title</h1><p>Hello <b>world</b>.</p><nav>menu</nav><p>Bye</p>"
    )
    assert text == "Title\nHello world.\nBye"


def test_bible_books_are_one_document_each(tmp_path):
    rows = [
        {"book": "Genesis", "text": "In the beginning."},
        {"book": "Genesis", "text": "And the earth."},
        {"book": "Exodus", "text": "Now these are the names."},
    ]
    (tmp_path / "kjv.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert list(bible_books(tmp_path / "kjv.jsonl")) == [
        "Genesis\n\nIn the beginning. And the earth.",
        "Exodus\n\nNow these are the names.",
    ]


def test_written_corpus_has_slimpajama_layout_and_reads_back(tmp_path):
    records = [
        {"text": f"document {i}", "meta": {"redpajama_set_name": "RedPajamaBook"}}
        for i in range(250)
    ]
    counts = write_slimpajama(records, tmp_path, docs_per_file=100, validation_share=0.1, seed=0)
    assert counts == {"validation": 25, "train": 225}
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.zst")) == [
        "train/chunk1/example_train_0.jsonl.zst",
        "train/chunk1/example_train_1.jsonl.zst",
        "train/chunk1/example_train_2.jsonl.zst",
        "validation/chunk1/example_holdout_0.jsonl.zst",
    ]
    docs = [
        d
        for s in discover_shards([tmp_path])
        for d in iter_documents(s, ReaderOptions())
        if isinstance(d, Document)
    ]
    assert len(docs) == 250 and {d.domain for d in docs} == {"book"}
    assert len({d.text for d in docs}) == 250  # every document once, none lost between the splits
