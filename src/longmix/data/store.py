"""The packed store on disk, its reader, and an exporter to Megatron-LM's indexed format
(parquet for HF ``datasets``: :mod:`longmix.data.export_hf`).

Layout of a prepared folder::

    manifest.json            everything needed to read and reproduce it, and each file's size
                             and checksum (written last; see longmix.data.verify)
    stats.json, report.md    the mixture before/after; plots/*.png
    plan.json                the sampling plan and what each cell achieved
    tokens/part-NNNNN.bin    whole sequences, flat little-endian uint16/uint32
    index/*.npy              document spans of every sequence (see ``SPAN_FIELDS``)
    tokenized/               the exact-length document table and tokens (unless --cache)

Sequence *i* lives in part ``i // sequences_per_part`` at row ``i % sequences_per_part``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputNotFoundError, InvalidInputError
from ..fsutil import atomic_write, read_json

MANIFEST = "manifest.json"
# Wall seconds per phase of the run that wrote the folder: differs between runs, so not
# recorded in the manifest (see longmix.data.verify).
TIMINGS = "timings.json"
FORMAT_VERSION = 1
# Per span (a piece of one document inside one sequence); all in index/<name>.npy
SPAN_FIELDS = {
    "span_start": np.int32,  # first position within the sequence
    "span_length": np.int32,  # tokens, including the trailing separator when present
    "span_domain": np.int16,  # index into manifest["domains"]
    "span_doc_key": np.uint64,  # the document's id (see longmix.data.tokenize.doc_key)
    "span_doc_offset": np.int64,  # offset within the document (cut:N: its chunk): 0 = it starts here
    "span_repeat": np.int32,  # which copy of the document (upsampling repeats it)
}


def part_path(out: Path, part: int) -> Path:
    return out / "tokens" / f"part-{part:05d}.bin"


def write_index(out: Path, arrays: dict[str, np.ndarray], seq_offsets: np.ndarray) -> None:
    for name, dtype in SPAN_FIELDS.items():
        with atomic_write(out / "index" / f"{name}.npy") as sink:
            np.save(sink, np.ascontiguousarray(arrays[name], dtype=dtype))
    with atomic_write(out / "index" / "seq_offsets.npy") as sink:
        np.save(sink, seq_offsets.astype(np.int64))


@dataclass
class PackedSequence:
    """One training sequence and the documents it holds."""

    tokens: np.ndarray  # (seq_len,)
    doc_starts: np.ndarray  # start of each span
    doc_lengths: np.ndarray  # length of each span
    domains: list[str]  # domain of each span
    doc_keys: np.ndarray
    doc_offsets: np.ndarray  # 0 where a document begins in this span

    def cu_seqlens(self) -> np.ndarray:
        """Cumulative boundaries ``[0, l0, l0+l1, ..., seq_len]`` for varlen attention."""
        return np.concatenate([[0], np.cumsum(self.doc_lengths)]).astype(np.int32)

    def position_ids(self) -> np.ndarray:
        """Positions that restart at each document start (continuing pieces keep counting)."""
        positions = np.arange(len(self.tokens), dtype=np.int64)
        starts = np.repeat(self.doc_starts - self.doc_offsets, self.doc_lengths)
        return positions - starts


def read_manifest(folder: Path) -> dict:
    """The manifest of a finished prepared folder, or one line saying what the folder is instead."""
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise InputNotFoundError(
            f"{folder} is not a folder: give one written by `longmix prepare --out`"
        )
    if not manifest_path.is_file():
        unfinished = (folder / "params.json").is_file()
        raise InputNotFoundError(
            f"{folder} is an unfinished prepared folder (no {MANIFEST}): rerun `longmix prepare` "
            "with the same arguments to finish it"
            if unfinished
            else f"{folder} is not a prepared folder (no {MANIFEST}): give the --out folder "
            "of `longmix prepare`, or make one with it"
        )
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as err:
        raise InvalidInputError(
            f"{manifest_path} is unreadable ({type(err).__name__}: {err}): rerun `longmix prepare` "
            "with the same arguments to redo it"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise InvalidInputError(
            f"{manifest_path}: unsupported format version {version} (this longmix reads "
            f"{FORMAT_VERSION}): prepare the data again with this version"
        )
    return manifest


class PackedDataset:
    """Random access to the sequences of a prepared folder (a map-style dataset).

    ``len(ds)`` sequences; ``ds[i]`` is a :class:`PackedSequence`. It follows the
    ``__len__``/``__getitem__`` protocol, so a ``torch.utils.data.DataLoader`` accepts it
    directly (``collate_fn=PackedDataset.collate`` for HF-style batches, or :meth:`torch_sample`).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        # Sizes only (cheap): a truncated or missing file fails here, naming it, and not as
        # a reshape error in the middle of training or an export.
        from .verify import check_sizes

        if damage := check_sizes(self.path, self.manifest):
            raise InvalidInputError(
                f"{damage[0].path}: {damage[0].problem}: the prepared folder is damaged; "
                f"rerun `longmix prepare` with the same arguments to redo it "
                f"(`longmix verify {self.path}` lists every damaged file)"
            )
        self.seq_len: int = self.manifest["seq_len"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self.domains: list[str] = self.manifest["domains"]
        self.per_part: int = self.manifest["sequences_per_part"]
        self._parts: dict[int, np.memmap] = {}
        index = self.path / "index"
        self.seq_offsets = np.load(index / "seq_offsets.npy", mmap_mode="r")
        self.spans = {name: np.load(index / f"{name}.npy", mmap_mode="r") for name in SPAN_FIELDS}

    def __len__(self) -> int:
        return int(self.manifest["n_sequences"])

    def tokens(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range (dataset has {len(self)})")
        part, row = divmod(i, self.per_part)
        if part not in self._parts:
            self._parts[part] = np.memmap(
                part_path(self.path, part), dtype=self.dtype, mode="r"
            ).reshape(-1, self.seq_len)
        return self._parts[part][row]

    def __getitem__(self, i: int) -> PackedSequence:
        tokens = np.asarray(self.tokens(i))
        lo, hi = int(self.seq_offsets[i]), int(self.seq_offsets[i + 1])
        return PackedSequence(
            tokens=tokens,
            doc_starts=np.asarray(self.spans["span_start"][lo:hi]),
            doc_lengths=np.asarray(self.spans["span_length"][lo:hi]),
            domains=[self.domains[d] for d in self.spans["span_domain"][lo:hi]],
            doc_keys=np.asarray(self.spans["span_doc_key"][lo:hi]),
            doc_offsets=np.asarray(self.spans["span_doc_offset"][lo:hi]),
        )

    @staticmethod
    def collate(batch: list[PackedSequence], return_tensors: str = "pt") -> dict:
        """A batch of sequences for a HF model (``DataLoader(ds, collate_fn=PackedDataset.collate)``).

        ``input_ids``, ``labels`` and ``position_ids`` are ``(batch, seq_len)``; ``labels``
        follow HF's convention (the model shifts them) and are -100 at every span start, whose
        previous token belongs to another document or another sequence. ``position_ids``
        restart at each document. ``cu_seqlens`` are the document boundaries of the batch
        flattened to one row (``x.reshape(1, -1)``), as varlen attention kernels take them,
        with ``max_seqlen`` the longest span. ``return_tensors``: ``"pt"`` (torch) or ``"np"``.
        """
        if not batch:
            raise ValueError("collate needs at least one sequence")
        input_ids = np.stack([seq.tokens.astype(np.int64) for seq in batch])
        labels = input_ids.copy()
        for row, seq in enumerate(batch):
            labels[row, seq.doc_starts] = -100
        lengths = np.concatenate([seq.doc_lengths for seq in batch]).astype(np.int64)
        arrays = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": np.stack([seq.position_ids() for seq in batch]),
            "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
        }
        if return_tensors == "np":
            return {**arrays, "max_seqlen": int(lengths.max())}
        import torch

        return {
            **{k: torch.from_numpy(v) for k, v in arrays.items()},
            "max_seqlen": int(lengths.max()),
        }

    def torch_sample(self, i: int) -> dict:
        """Sequence ``i`` as torch tensors (``input_ids``, ``cu_seqlens``, ``position_ids``)."""
        import torch

        seq = self[i]
        return {
            "input_ids": torch.from_numpy(seq.tokens.astype(np.int64)),
            "cu_seqlens": torch.from_numpy(seq.cu_seqlens()),
            "position_ids": torch.from_numpy(seq.position_ids()),
        }


# ---------------------------------------------------------------------------- Megatron

_MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
# Megatron-LM's DType codes (megatron/core/datasets/indexed_dataset.py)
_MEGATRON_DTYPE_CODE = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}


def export_megatron(dataset: PackedDataset, prefix: str | Path) -> tuple[Path, Path]:
    """Write ``PREFIX.bin`` / ``PREFIX.idx`` in Megatron-LM's indexed-dataset format.

    Each packed sequence becomes one Megatron document of ``seq_len`` tokens, so
    Megatron's GPTDataset (with ``seq_length`` = our seq_len) trains on exactly our
    packing. Tokens are stored as uint16 when they fit, else int32 (Megatron has no uint32).
    """
    prefix = Path(prefix)
    dtype = np.dtype(np.uint16) if dataset.dtype.itemsize == 2 else np.dtype(np.int32)
    n = len(dataset)
    with atomic_write(_with(prefix, ".bin")) as sink:
        for i in range(n):
            sink.write(np.asarray(dataset.tokens(i), dtype=dtype).tobytes())
    lengths = np.full(n, dataset.seq_len, dtype=np.int32)
    pointers = np.arange(n, dtype=np.int64) * dataset.seq_len * dtype.itemsize
    documents = np.arange(n + 1, dtype=np.int64)
    with atomic_write(_with(prefix, ".idx")) as sink:
        sink.write(_MEGATRON_MAGIC)
        sink.write(struct.pack("<Q", 1))
        sink.write(struct.pack("<B", _MEGATRON_DTYPE_CODE[dtype]))
        sink.write(struct.pack("<Q", n))
        sink.write(struct.pack("<Q", len(documents)))
        sink.write(lengths.tobytes())
        sink.write(pointers.tobytes())
        sink.write(documents.tobytes())
    return _with(prefix, ".bin"), _with(prefix, ".idx")


def _with(prefix: Path, suffix: str) -> Path:
    return prefix.parent / (prefix.name + suffix)


def read_megatron(prefix: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.memmap]:
    """Read a Megatron ``.idx``/``.bin`` pair: (lengths, pointers, document_indices, tokens)."""
    prefix = Path(prefix)
    raw = _with(prefix, ".idx").read_bytes()
    if raw[:9] != _MEGATRON_MAGIC:
        raise InvalidInputError(f"{prefix}.idx is not a Megatron index (bad magic)")
    (version,) = struct.unpack_from("<Q", raw, 9)
    (code,) = struct.unpack_from("<B", raw, 17)
    n_seq, n_doc = struct.unpack_from("<QQ", raw, 18)
    if version != 1:
        raise InvalidInputError(f"{prefix}.idx: unsupported version {version}")
    dtype = {v: k for k, v in _MEGATRON_DTYPE_CODE.items()}[code]
    offset = 34
    lengths = np.frombuffer(raw, np.int32, n_seq, offset)
    offset += 4 * n_seq
    pointers = np.frombuffer(raw, np.int64, n_seq, offset)
    offset += 8 * n_seq
    documents = np.frombuffer(raw, np.int64, n_doc, offset)
    return lengths, pointers, documents, np.memmap(_with(prefix, ".bin"), dtype=dtype, mode="r")
