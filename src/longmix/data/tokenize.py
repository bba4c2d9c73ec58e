"""Exact token lengths: tokenize every document once, store its tokens and a document table.

Per input shard this writes, atomically and in this order:

- ``shard-NNNNN.tokens``: the tokens of every accepted document, flat little-endian
  uint16 (vocabulary up to 65,536) or uint32;
- ``shard-NNNNN.docs.parquet``: one row per document: ``doc_key`` (a stable 64-bit id
  from its file and line), ``domain``, ``n_tokens``, ``n_chars`` (characters, for
  ``--length-estimate chars``; absent in tables written before it), ``offset`` (into the
  tokens file), ``file``, ``line``;
  With a document sample (``--read auto``), only the documents it includes are tokenized
  and the table has an ``inclusion`` column: the rate each was drawn at;
- ``shard-NNNNN.json``: counts, rejections with their location, and the fingerprint of
  the inputs. It is written last and marks the shard as done, so a rerun skips it.

Later stages never tokenize again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputNotFoundError, InvalidInputError
from ..fsutil import as_json_types, atomic_write, read_json, write_json
from .corpus import (
    FILE_REASONS,
    BadInputError,
    Document,
    ReaderOptions,
    Rejection,
    Shard,
    iter_documents,
)
from .sample import DocumentSample

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BUILTIN_TOKENIZER = "smollm2"
# Rejections listed one by one per shard (all are counted; a corpus with millions of bad
# lines should not turn its stats into a log).
MAX_LISTED_REJECTIONS = 1000
_BATCH_CHARS = 1 << 21  # ~2 MB of text per encode_batch call keeps memory flat


@dataclass(frozen=True)
class TokenizerInfo:
    """What later stages must know about the tokenizer, recorded in every manifest."""

    path: str  # the tokenizer.json file
    name: str
    vocab_size: int
    sha256: str
    vocab_sha256: str  # of the token -> id map: equal for the same vocabulary however serialised
    separator_id: int | None  # put between documents when packing
    separator: str | None

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32; always little-endian on disk."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def builtin_tokenizer_dir() -> Path:
    return Path(str(resources.files("longmix") / "assets" / "tokenizer"))


def resolve_tokenizer(spec: str | Path | None, separator: str | None = None) -> TokenizerInfo:
    """Find ``tokenizer.json`` from a file, a HF tokenizer folder, or the built-in name.

    The separator defaults to the folder's ``eos_token`` (``tokenizer_config.json``), else
    to a well-known end-of-text token the vocabulary has.
    """
    builtin = spec is None or str(spec) == BUILTIN_TOKENIZER
    path = builtin_tokenizer_dir() if builtin else Path(spec)
    folder = path if path.is_dir() else path.parent
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise InputNotFoundError(
            f"no tokenizer at {spec}: give a tokenizer.json file, a folder holding one "
            f"(a Hugging Face model or tokenizer folder), or '{BUILTIN_TOKENIZER}'"
        )
    tokenizer = load_tokenizer_file(file)
    if separator is None:
        config = folder / "tokenizer_config.json"
        if config.is_file():
            eos = _read_tokenizer_config(config).get("eos_token")
            separator = eos.get("content") if isinstance(eos, dict) else eos
    if separator is None:
        separator = next(
            (
                t
                for t in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
                if tokenizer.token_to_id(t) is not None
            ),
            None,
        )
    separator_id = None
    if separator is not None and separator != "":
        separator_id = tokenizer.token_to_id(separator)
        if separator_id is None:
            raise InvalidInputError(
                f"separator token {separator!r} is not in the vocabulary of {file}"
            )
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    name = (
        BUILTIN_TOKENIZER
        if builtin
        else (folder.name if file.name == "tokenizer.json" else file.stem)
    )
    return TokenizerInfo(
        str(file.resolve()),
        name,
        tokenizer.get_vocab_size(with_added_tokens=True),
        digest,
        vocab_digest(file),
        separator_id,
        separator or None,
    )


def load_tokenizer_file(file: str | Path) -> Tokenizer:
    """``Tokenizer.from_file``, with a damaged file (empty, truncated, not a tokenizer) as one clear line."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # the Rust side raises a bare Exception with a serde message
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        size = Path(file).stat().st_size
        raise InvalidInputError(
            f"{file} is not a usable tokenizer.json ({'empty file' if size == 0 else reason}): "
            "it may be truncated; download it again or give another --tokenizer"
        ) from None


def _read_tokenizer_config(path: Path) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise InvalidInputError(
            f"{path} is not readable JSON ({err}): repair it, delete it, or pass --separator"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"{path} must hold a JSON object: repair it, delete it, or pass --separator"
        )
    return data


def vocab_digest(tokenizer_json: str | Path) -> str:
    """SHA-256 of the sorted token -> id map of a ``tokenizer.json``."""
    vocab = load_tokenizer_file(tokenizer_json).get_vocab(with_added_tokens=True)
    return hashlib.sha256(
        "\n".join(f"{t}\t{i}" for t, i in sorted(vocab.items())).encode()
    ).hexdigest()


# Once per process, by path: a worker of prepare's pool serves every shard of the run (each
# round of --read auto) with the tokenizer it loaded for its first.
@lru_cache(maxsize=4)
def _load(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def doc_key(file_label: str, line: int) -> int:
    """A stable 64-bit id of a document from where it lives (SlimPajama has no ids)."""
    digest = hashlib.blake2b(f"{file_label}\0{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class TokenizeTask:
    """Everything a worker needs to tokenize one shard (picklable)."""

    shard: Shard
    out_dir: str
    tokenizer_path: str
    vocab_size: int
    reader: ReaderOptions
    strict: bool = False
    sample: DocumentSample | None = None  # None: every document


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def input_fingerprint(task: TokenizeTask, tokenizer_sha: str) -> dict:
    """Identifies the inputs of a shard, so a rerun redoes a shard whose inputs changed."""
    files = []
    for path in task.shard.paths:
        stat = os.stat(path)
        # The real path: the same corpus named another way (relative, via a link) is the same input.
        files.append([os.path.realpath(path), stat.st_size, stat.st_mtime_ns])
    found = {"files": files, "tokenizer_sha256": tokenizer_sha, "reader": asdict(task.reader)}
    if task.sample is not None:  # a shard tokenized at other rates is tokenized again
        found["sample"] = asdict(task.sample)
    return found


def shard_is_done(task: TokenizeTask, fingerprint: dict) -> bool:
    """Done: its summary matches the inputs and its files are whole (a truncated or deleted
    tokens file or document table makes the shard be tokenized again)."""
    out = Path(task.out_dir)
    stem = shard_stem(task.shard.index)
    try:
        summary = read_json(out / f"{stem}.json")
        tokens_bytes = (out / f"{stem}.tokens").stat().st_size
        table_rows = pq.read_metadata(out / f"{stem}.docs.parquet").num_rows
    except (OSError, ValueError, pa.ArrowException):
        return False
    return (
        isinstance(summary, dict)
        and summary.get("fingerprint") == as_json_types(fingerprint)
        and tokens_bytes == summary.get("tokens", -1) * token_dtype(task.vocab_size).itemsize
        and table_rows == summary.get("documents_used")
    )


def tokenize_shard(task: TokenizeTask, fingerprint: dict) -> dict:
    """Tokenize one shard; returns (and stores) its summary. Runs inside a worker."""
    tokenizer = _load(task.tokenizer_path)
    dtype = token_dtype(task.vocab_size)
    out = Path(task.out_dir)
    stem = shard_stem(task.shard.index)
    columns: dict[str, list] = {
        k: [] for k in ("doc_key", "domain", "n_tokens", "n_chars", "offset", "file", "line")
    }
    rejected: dict[str, int] = {}
    listed: list[dict] = []
    offset = 0
    documents_read = 0
    not_tokenized = 0
    sample = task.sample
    inclusion: list[float] = []
    rates: list[float] = []  # of the batch's documents, in order
    with atomic_write(out / f"{stem}.tokens") as sink:
        batch: list[Document] = []
        batch_chars = 0

        def flush() -> None:
            nonlocal offset, batch_chars
            if not batch:
                return
            encodings = tokenizer.encode_batch_fast(
                [d.text for d in batch], add_special_tokens=False
            )
            for document, rate, encoding in zip(batch, rates, encodings):
                ids = np.asarray(encoding.ids, dtype=dtype)
                if len(ids) == 0:  # only whitespace the tokenizer drops
                    _reject(Rejection("empty_document", document.file, document.line, "no tokens"))
                    continue
                sink.write(ids.tobytes())
                columns["doc_key"].append(doc_key(document.file, document.line))
                columns["domain"].append(document.domain)
                columns["n_tokens"].append(len(ids))
                columns["n_chars"].append(len(document.text))
                columns["offset"].append(offset)
                columns["file"].append(document.file)
                columns["line"].append(document.line)
                if sample is not None:
                    inclusion.append(rate)
                offset += len(ids)
            batch.clear()
            rates.clear()
            batch_chars = 0

        def _reject(rejection: Rejection) -> None:
            if task.strict:
                raise BadInputError(rejection)
            rejected[rejection.reason] = rejected.get(rejection.reason, 0) + 1
            if len(listed) < MAX_LISTED_REJECTIONS:
                listed.append(asdict(rejection))

        for item in iter_documents(task.shard, task.reader):
            documents_read += 1
            if isinstance(item, Rejection):
                if item.reason in FILE_REASONS:
                    documents_read -= 1  # a file-level failure, not a document
                _reject(item)
                continue
            rate = 1.0
            if sample is not None:  # decided from characters alone, before any tokenizing
                rate = sample.rate(item.domain, len(item.text))
                if not sample.includes(doc_key(item.file, item.line), rate):
                    not_tokenized += 1
                    continue
            rates.append(rate)
            batch.append(item)
            batch_chars += len(item.text)
            if batch_chars >= _BATCH_CHARS:
                flush()
        flush()

    table = pa.table(
        {
            "doc_key": pa.array(columns["doc_key"], pa.uint64()),
            "domain": pa.array(columns["domain"], pa.string()).dictionary_encode(),
            "n_tokens": pa.array(columns["n_tokens"], pa.int64()),
            "n_chars": pa.array(columns["n_chars"], pa.int64()),
            "offset": pa.array(columns["offset"], pa.int64()),
            "file": pa.array(columns["file"], pa.string()).dictionary_encode(),
            "line": pa.array(columns["line"], pa.int64()),
            **({"inclusion": pa.array(inclusion, pa.float64())} if sample is not None else {}),
        }
    )
    with atomic_write(out / f"{stem}.docs.parquet") as sink:
        pq.write_table(table, sink)
    file_errors = sum(rejected.get(r, 0) for r in FILE_REASONS)
    summary = {
        "shard": task.shard.index,
        "files": list(task.shard.labels),
        "documents_read": documents_read,
        "documents_used": len(columns["doc_key"]),
        "documents_rejected": sum(rejected.values()) - file_errors,
        "file_errors": file_errors,
        "tokens": offset,
        **({"documents_not_tokenized": not_tokenized} if sample is not None else {}),
        "rejected": rejected,
        "rejections": listed,
        "fingerprint": as_json_types(fingerprint),
    }
    write_json(out / f"{stem}.json", summary)
    return summary
