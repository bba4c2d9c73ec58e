"""Export a prepared folder as parquet that HF ``datasets`` (and so HF ``Trainer``) reads.

One row per packed sequence, in the schema of Fu et al.'s released data
(``slimpajama_packing.py``): ``input_ids`` and ``source``, the list of the documents the
sequence holds, each ``{"source": domain, "start": first position, "end": one past the last}``.
We add ``doc_key`` and ``doc_offset`` to each span (the document's id and where in the
document the span begins; 0 = the document starts here), so a reader can tell a document
that continues from the previous sequence. ``datasets.load_dataset("parquet",
data_files=f"{OUT}/*.parquet")`` reads it with no code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fsutil import atomic_write, write_json
from .store import PackedDataset

SPAN_TYPE = pa.struct(
    [
        ("source", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("doc_key", pa.uint64()),
        ("doc_offset", pa.int64()),
    ]
)
_FILE_TOKENS = (
    1 << 28
)  # ~1 GB of int32 ids per file: large enough to be few, small enough to download
_GROUP_TOKENS = 1 << 23  # a row group: what a reader holds in memory at once


def hf_schema(token_type: pa.DataType) -> pa.Schema:
    return pa.schema([("input_ids", pa.list_(token_type)), ("source", pa.list_(SPAN_TYPE))])


def export_hf(
    folder: str | Path, out: str | Path, sequences_per_file: int | None = None
) -> list[Path]:
    """Write ``OUT/data-NNNNN-of-MMMMM.parquet`` (and ``OUT/longmix_export.json``); returns the files.

    Token ids are int32 (every vocabulary we pack fits) so HF tooling needs no cast.
    """
    dataset = PackedDataset(folder)
    out = Path(out)
    per_file = sequences_per_file or max(1, _FILE_TOKENS // dataset.seq_len)
    per_group = max(1, min(per_file, _GROUP_TOKENS // dataset.seq_len))
    n_files = max(1, -(-len(dataset) // per_file))
    schema = hf_schema(pa.int32())
    files = []
    for index in range(n_files):
        path = out / f"data-{index:05d}-of-{n_files:05d}.parquet"
        lo, hi = index * per_file, min(len(dataset), (index + 1) * per_file)
        with atomic_write(path) as sink, pq.ParquetWriter(sink, schema) as writer:
            for start in range(lo, hi, per_group):
                rows = [sequence_row(dataset, i) for i in range(start, min(hi, start + per_group))]
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        files.append(path)
    write_json(
        out / "longmix_export.json",
        {
            "source": str(Path(folder).resolve()),
            "sequences": len(dataset),
            "seq_len": dataset.seq_len,
            "files": [f.name for f in files],
            "tokenizer": dataset.manifest.get("tokenizer"),
            "schema": "input_ids: list<int32>; source: list<{source, start, end, doc_key, doc_offset}>",
        },
    )
    return files


def sequence_row(dataset: PackedDataset, i: int) -> dict:
    """Sequence ``i`` as one exported row."""
    seq = dataset[i]
    ends = seq.doc_starts.astype(np.int64) + seq.doc_lengths
    spans = [
        {
            "source": domain,
            "start": int(start),
            "end": int(end),
            "doc_key": int(key),
            "doc_offset": int(offset),
        }
        for domain, start, end, key, offset in zip(
            seq.domains, seq.doc_starts, ends, seq.doc_keys, seq.doc_offsets
        )
    ]
    return {"input_ids": seq.tokens.astype(np.int32), "source": spans}
