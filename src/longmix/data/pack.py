"""Packing: selected documents, shuffled by seed, concatenated and cut into fixed-length sequences.

As in Fu et al. 2024, documents are packed regardless of boundaries: a document that
crosses a sequence end continues in the next sequence. Each document (each repeat of
it) is followed by a separator token. The boundaries are kept as *spans*: for every
sequence, the pieces of documents it holds (start, length, domain, document id, offset
in the document, repeat number), which document-masked attention and per-domain loss need.

The layout is computed once, centrally and cheaply (prefix sums); the token copying is
split into independent parts that workers write in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write
from .mixture import seeded_hash

_ORDER_SALT = 1  # the shuffle uses a different hash than the selection


@dataclass
class Layout:
    """Where every piece of every selected document lands."""

    seq_len: int
    n_sequences: int
    tail_tokens_dropped: int  # tokens after the last full sequence
    tail_documents_cut: int  # documents (repeats) that lose tokens to the cut
    # Per span, sorted by (sequence, start):
    span_seq: np.ndarray  # int64
    span_start: np.ndarray  # int32, position within the sequence
    span_length: np.ndarray  # int32, includes the separator when it falls in this span
    span_row: np.ndarray  # int64, row of the document table
    span_doc_offset: np.ndarray  # int64, offset of the span within the document
    span_repeat: np.ndarray  # int32, which copy of the document

    def seq_offsets(self) -> np.ndarray:
        """CSR offsets: the spans of sequence i are ``[offsets[i], offsets[i+1])``."""
        return np.searchsorted(self.span_seq, np.arange(self.n_sequences + 1)).astype(np.int64)


def shuffled_pieces(
    repeats: np.ndarray, keys: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and repeat numbers of all selected copies, in seeded random order.

    The order key hashes (document id, repeat number), so the order depends on nothing
    but the ids and the seed; ties (never seen in practice) break on row.
    """
    chosen = np.flatnonzero(repeats)  # the selected rows only: no temporary per document
    counts = repeats[chosen].astype(np.int64)
    rows = np.repeat(chosen, counts)
    # repeat number of each copy: position within its run of equal rows
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    copy = (np.arange(len(rows), dtype=np.int64) - starts).astype(np.int32)
    with np.errstate(over="ignore"):
        order_key = seeded_hash(
            keys[rows] + copy.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15), seed, _ORDER_SALT
        )
    order = np.lexsort((rows, order_key))
    return rows[order], copy[order]


def compute_layout(
    rows: np.ndarray, copies: np.ndarray, lengths: np.ndarray, seq_len: int, separator: bool
) -> Layout:
    """Cut the concatenation of pieces (document + separator) into ``seq_len`` sequences."""
    piece = lengths[rows].astype(np.int64) + (1 if separator else 0)
    piece_start = (
        np.concatenate([[0], np.cumsum(piece)[:-1]]) if len(piece) else np.zeros(0, np.int64)
    )
    total = int(piece.sum())
    n_sequences = total // seq_len
    kept = n_sequences * seq_len
    # Span boundaries: every piece start plus every sequence start.
    cuts = np.union1d(piece_start[piece_start < kept], np.arange(0, kept, seq_len, dtype=np.int64))
    ends = np.append(cuts[1:], kept)
    owner = np.searchsorted(piece_start, cuts, side="right") - 1
    cut_documents = int(
        ((piece_start < kept) & (piece_start + piece > kept)).sum() + (piece_start >= kept).sum()
    )
    return Layout(
        seq_len=seq_len,
        n_sequences=n_sequences,
        tail_tokens_dropped=total - kept,
        tail_documents_cut=cut_documents,
        span_seq=cuts // seq_len,
        span_start=(cuts % seq_len).astype(np.int32),
        span_length=(ends - cuts).astype(np.int32),
        span_row=rows[owner],
        span_doc_offset=cuts - piece_start[owner],
        span_repeat=copies[owner],
    )


@dataclass(frozen=True)
class PartTask:
    """Write sequences ``[first, last)`` into one part file (picklable, for workers)."""

    path: str
    first: int
    last: int
    seq_len: int
    dtype: str
    separator_id: int | None
    shard_files: tuple[str, ...]  # token file of each shard
    # The spans of these sequences, with their source location:
    span_start: np.ndarray
    span_length: np.ndarray
    span_seq: np.ndarray
    span_doc_offset: np.ndarray
    span_shard: np.ndarray
    span_shard_offset: np.ndarray  # where the document's tokens start in its shard file
    span_doc_tokens: np.ndarray  # document length (after any cut), without the separator


CHUNK_BYTES = (
    64 << 20
)  # a worker holds one chunk of its part, not the whole part (512 MiB by default)


def write_part(task: PartTask, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Copy the tokens of each span into place, chunk by chunk; returns the number of tokens written."""
    dtype = np.dtype(task.dtype)
    sources: dict[int, np.memmap] = {}
    per_chunk = max(1, chunk_bytes // (task.seq_len * dtype.itemsize))
    # Spans are sorted by sequence: the spans of sequences [a, b) are one contiguous slice.
    bounds = np.searchsorted(
        task.span_seq, np.arange(task.first, task.last + per_chunk, per_chunk).clip(max=task.last)
    )
    written = 0
    with atomic_write(Path(task.path)) as sink:
        for chunk, first in enumerate(range(task.first, task.last, per_chunk)):
            out = np.zeros((min(per_chunk, task.last - first), task.seq_len), dtype=dtype)
            for i in range(int(bounds[chunk]), int(bounds[chunk + 1])):
                shard = int(task.span_shard[i])
                if shard not in sources:
                    sources[shard] = np.memmap(task.shard_files[shard], dtype=dtype, mode="r")
                row = out[int(task.span_seq[i]) - first]
                start, length = int(task.span_start[i]), int(task.span_length[i])
                doc_from = int(task.span_doc_offset[i])
                doc_to = min(doc_from + length, int(task.span_doc_tokens[i]))
                base = int(task.span_shard_offset[i])
                n_text = max(0, doc_to - doc_from)
                row[start : start + n_text] = sources[shard][base + doc_from : base + doc_to]
                if n_text < length:  # the rest of the span is the separator
                    row[start + n_text : start + length] = task.separator_id
            sink.write(memoryview(out).cast("B"))  # no bytes copy of the chunk
            written += out.size
    return written
