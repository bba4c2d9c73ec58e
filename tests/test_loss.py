"""Table-5 loss: per-domain packing and buckets by offset within the token's own document."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from longmix.data.store import PackedSequence
from longmix.eval.loss import (
    DEFINITION,
    bucket_labels,
    describe_loss,
    domain_sequences,
    evaluate_loss,
    own_document_context,
)


@dataclass
class Store:
    """A held-out store in memory: mixed-domain sequences with their document spans."""

    seq_len: int
    domains: list[str]
    sequences: list[PackedSequence]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> PackedSequence:
        return self.sequences[i]


def packed(spans: list[tuple[str, int, int, int]], values: dict[int, int]) -> PackedSequence:
    """A sequence from spans (domain, document key, offset in the document, length); each
    token's value is ``values[key]`` + its offset in the document, so the test can read it back."""
    tokens = np.concatenate(
        [values[key] + offset + np.arange(length) for _, key, offset, length in spans]
    )
    lengths = np.array([s[3] for s in spans])
    return PackedSequence(
        tokens=tokens,
        doc_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        doc_lengths=lengths,
        domains=[s[0] for s in spans],
        doc_keys=np.array([s[1] for s in spans], dtype=np.uint64),
        doc_offsets=np.array([s[2] for s in spans]),
    )


@pytest.fixture
def store() -> Store:
    # domain A: document 1 (3 tokens) then document 2 (9 tokens, cut across the two sequences);
    # domain B: document 3 (4 tokens) between them. Token value = 100·domain + offset in its document.
    values = {1: 0, 2: 0, 3: 100}
    return Store(
        8,
        ["A", "B"],
        [
            packed([("A", 1, 0, 3), ("B", 3, 0, 4), ("A", 2, 0, 1)], values),
            packed([("A", 2, 1, 8)], values),
        ],
    )


def test_own_document_context_restarts_at_each_document_and_at_the_sequence_start():
    keys = np.array([7, 7, 7, 9, 9, 9, 9], dtype=np.uint64)
    offsets = np.array(
        [5, 6, 7, 0, 1, 0, 1]
    )  # a continued piece, a document, a repeated copy of it
    assert own_document_context(keys, offsets).tolist() == [0, 1, 2, 0, 1, 0, 1]


def test_sequences_are_packed_from_one_domain_in_order(store):
    seqs = list(domain_sequences(store, per_domain=5))
    assert [(s.domain, s.tokens.tolist()) for s in seqs] == [
        ("A", [0, 1, 2, 0, 1, 2, 3, 4]),
        ("A", [5, 6, 7, 8]),
        ("B", [100, 101, 102, 103]),
    ]
    assert seqs[0].doc_context.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert seqs[1].doc_context.tolist() == [
        0,
        1,
        2,
        3,
    ]  # continued: counted from the sequence start
    assert [s.domain for s in domain_sequences(store, per_domain=1)] == ["A", "B"]


def test_loss_buckets_by_offset_within_the_own_document(store):
    # the loss of predicting a token is its value mod 100: its offset within its own document
    summary = evaluate_loss(
        store, lambda tokens: (tokens[1:] % 100).astype(float), per_domain=5, splits=(4,)
    )
    by_document, by_position = summary["by_document"]["domains"], summary["by_position"]["domains"]
    assert summary["by_document"]["buckets"] == ["0-4", "4-max"]
    # A, own-document context < 4: offsets 1, 2 (doc 1), 0, 1, 2, 3 (doc 2, first sequence), 6, 7, 8 (continued)
    assert by_document["A"]["0-4"] == pytest.approx((1 + 2 + 0 + 1 + 2 + 3 + 6 + 7 + 8) / 9)
    assert by_document["A"]["4-max"] == pytest.approx(4.0) and by_document["A"]["4-max tokens"] == 1
    # by position in the evaluated sequence: positions 1-3 of both A sequences, then 4-7 of the first
    assert by_position["A"]["0-4"] == pytest.approx((1 + 2 + 0 + 6 + 7 + 8) / 6)
    assert by_position["A"]["4-max"] == pytest.approx((1 + 2 + 3 + 4) / 4)
    # B's tokens never share a sequence with A's
    assert by_document["B"]["0-4"] == pytest.approx(2.0) and by_document["B"]["tokens"] == 3
    assert by_document["all"]["tokens"] == by_position["all"]["tokens"] == 7 + 3 + 3
    assert summary["sequences"] == {"A": 2, "B": 1}


def test_default_split_is_the_papers_and_every_output_states_the_definition(store):
    assert bucket_labels((4096,)) == ["0-4K", "4K-max"]
    assert bucket_labels((2048, 4096)) == ["0-2K", "2K-4K", "4K-max"]
    views = evaluate_loss(store, lambda tokens: np.ones(len(tokens) - 1), per_domain=1)
    summary = {
        "definition": DEFINITION,
        **views["by_document"],
        "by_position": views["by_position"],
    }
    text = describe_loss(summary)
    assert text.startswith("Definition: ") and "own document" in text and "0-4K 1.0000" in text
    assert "by position in the sequence" in text
