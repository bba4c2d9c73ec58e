"""Packing: the part writer's output does not depend on how many sequences it holds in memory at once."""

from __future__ import annotations

import numpy as np

from longmix.data.pack import PartTask, compute_layout, write_part


def _part(tmp_path, name: str, lengths: np.ndarray, seq_len: int, shard: str) -> PartTask:
    rows = np.arange(len(lengths), dtype=np.int64)
    layout = compute_layout(rows, np.zeros(len(rows), np.int32), lengths, seq_len, separator=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return PartTask(
        path=str(tmp_path / name),
        first=0,
        last=layout.n_sequences,
        seq_len=seq_len,
        dtype="uint16",
        separator_id=0,
        shard_files=(shard,),
        span_start=layout.span_start,
        span_length=layout.span_length,
        span_seq=layout.span_seq,
        span_doc_offset=layout.span_doc_offset,
        span_shard=np.zeros(len(layout.span_seq), np.int64),
        span_shard_offset=offsets[layout.span_row],
        span_doc_tokens=lengths[layout.span_row],
    )


def test_part_written_in_small_chunks_is_identical_and_holds_every_token(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=200)
    tokens = rng.integers(1, 60_000, size=int(lengths.sum()), dtype=np.uint16)
    shard = tmp_path / "shard.bin"
    tokens.tofile(shard)
    seq_len = 64
    whole = _part(tmp_path, "whole.bin", lengths, seq_len, str(shard))
    chunked = _part(tmp_path, "chunked.bin", lengths, seq_len, str(shard))
    n_whole = write_part(whole)
    n_chunked = write_part(chunked, chunk_bytes=3 * seq_len * 2 + 1)  # three sequences at a time
    assert n_whole == n_chunked == whole.last * seq_len
    written = np.fromfile(chunked.path, dtype=np.uint16)
    assert written.tobytes() == np.fromfile(whole.path, dtype=np.uint16).tobytes()
    # Documents then separators, in order, cut at the last full sequence.
    expected = np.concatenate(
        [
            np.append(tokens[o : o + n], 0)
            for o, n in zip(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        ]
    )[: len(written)]
    assert np.array_equal(written, expected)
