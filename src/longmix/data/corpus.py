"""Corpus readers: files on disk -> a stream of documents, or of counted rejections.

Formats: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ``.parquet`` (records with a text and a
domain field; SlimPajama's schema by default) and plain-text files (one document per
file, domain from a path rule). Folders are searched recursively. Everything streams:
memory does not grow with the size of a file or of the corpus.

Nothing vanishes: every record either becomes a :class:`Document` or a
:class:`Rejection` that names its reason, file and line.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import zstandard

from ..errors import InputNotFoundError, LongmixError
from ..settings import setting

RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")


def sample_corpus_dir() -> Path:
    """The small multi-domain corpus shipped with the package (SlimPajama layout)."""
    return Path(str(resources.files("longmix") / "assets" / "sample"))

# SlimPajama's set names, and the short names users type (`upsample:book`, `cc=0.5`).
_DOMAIN_ALIASES = {
    "commoncrawl": "cc",
    "common_crawl": "cc",
    "books": "book",
    "code": "github",
    "wiki": "wikipedia",
    "stack": "stackexchange",
    "se": "stackexchange",
}

# Reasons a record or file is rejected; each is counted in stats.json.
REJECT_REASONS = (
    "broken_json",
    "missing_text",
    "non_string_text",
    "invalid_utf8",
    "empty_document",
    "missing_domain",
    "unknown_domain",
    "truncated_archive",
    "unreadable_file",
)


class BadInputError(LongmixError):
    """Raised in strict mode at the first bad record; names file and line."""

    def __init__(self, rejection: Rejection):
        super().__init__(rejection.describe())
        self.rejection = rejection


def normalize_domain(name: str) -> str:
    """Map a set name to its short form: ``RedPajamaArXiv`` -> ``arxiv``, ``Books`` -> ``book``."""
    key = name.strip()
    if key.lower().startswith("redpajama"):
        key = key[len("redpajama") :]
    key = key.lower()
    return _DOMAIN_ALIASES.get(key, key)


@dataclass(frozen=True)
class Document:
    text: str
    domain: str
    file: str  # path label relative to the corpus root given by the user
    line: int  # 1-based line (JSONL) or row (parquet); 0 for a whole-file document


@dataclass(frozen=True)
class Rejection:
    reason: str
    file: str
    line: int
    detail: str = ""

    def describe(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason.replace('_', ' ')}" + (f" ({self.detail})" if self.detail else "")


def _parse_domain_rules(text: str) -> tuple[tuple[str, str], ...]:
    rules = []
    for rule in filter(None, (r.strip() for r in text.split(";"))):
        pattern, sep, domain = rule.rpartition("=")
        if not sep or not pattern or not domain:
            raise ValueError(f"bad domain rule {rule!r}: write GLOB=DOMAIN")
        rules.append((pattern, domain))
    return tuple(rules)


@dataclass(frozen=True)
class ReaderOptions:
    """How records map to documents; every field is a `longmix prepare` option."""

    text_field: str = setting("text", help="the records' text field")
    # A JSON-string ``meta`` (as in some parquet mirrors) is parsed on the way.
    domain_field: str = setting("meta.redpajama_set_name", help="dotted path of the records' domain label")
    domain: str | None = setting(None, help="one domain for every document (corpora without labels)")
    # Without a match the first folder under the corpus root names the domain.
    domain_rules: tuple[tuple[str, str], ...] = setting(
        (), parse=_parse_domain_rules, flag="--domain-rule", metavar="GLOB=DOMAIN", repeatable=True,
        help="plain-text files: domain by path pattern (repeatable), first match wins; "
        "default: the first folder under the corpus root")
    allowed_domains: tuple[str, ...] | None = setting(
        None, parse=lambda text: tuple(normalize_domain(d) for d in text.split(",") if d.strip()), flag="--domains",
        help="comma-separated known domains; documents of others are rejected as unknown_domain")


@dataclass(frozen=True)
class Shard:
    """One unit of parallel work: a record file, or a group of plain-text files."""

    index: int
    kind: str  # "records" or "text"
    paths: tuple[str, ...]
    labels: tuple[str, ...]  # stable names for doc ids and messages
    roots: tuple[str, ...] = field(default=())  # label of each file's corpus root

    @property
    def name(self) -> str:
        return self.labels[0] if len(self.labels) == 1 else f"{self.labels[0]} (+{len(self.labels) - 1} files)"


def is_record_file(path: str | Path) -> bool:
    return str(path).endswith(RECORD_SUFFIXES)


def discover_shards(inputs: list[str | Path], text_files_per_shard: int = 256) -> list[Shard]:
    """List the work: one shard per record file, plain-text files in fixed-size groups.

    Order and grouping depend only on the sorted relative paths, so shard numbers (and
    everything derived from them) are the same on every machine and for any worker count.
    """
    records: list[tuple[str, str, str]] = []
    texts: list[tuple[str, str, str]] = []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            raise InputNotFoundError(f"corpus path does not exist: {root}")
        if root.is_file():
            target = records if is_record_file(root) else texts
            target.append((str(root), root.name, ""))
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(Path(dirpath, f) for f in filenames if not f.startswith(".") and not f.endswith(".tmp"))
        for path in sorted(files):
            label = f"{root.name}/{path.relative_to(root).as_posix()}"
            target = records if is_record_file(path) else texts
            target.append((str(path), label, root.name))
    if not records and not texts:
        raise InputNotFoundError(f"no input files under {', '.join(map(str, inputs))}")
    records.sort(key=lambda item: item[1])
    texts.sort(key=lambda item: item[1])
    shards = [Shard(i, "records", (p,), (label,), (root,)) for i, (p, label, root) in enumerate(records)]
    for start in range(0, len(texts), text_files_per_shard):
        group = texts[start : start + text_files_per_shard]
        shards.append(
            Shard(
                len(shards),
                "text",
                tuple(p for p, _, _ in group),
                tuple(label for _, label, _ in group),
                tuple(root for _, _, root in group),
            )
        )
    return shards


def iter_documents(shard: Shard, options: ReaderOptions) -> Iterator[Document | Rejection]:
    """Every document of the shard, in file order, or the reason it was rejected."""
    if shard.kind == "text":
        for path, label, root in zip(shard.paths, shard.labels, shard.roots or [""] * len(shard.paths)):
            yield _read_text_file(path, label, root, options)
        return
    path, label = shard.paths[0], shard.labels[0]
    if path.endswith(".parquet"):
        yield from _read_parquet(path, label, options)
    else:
        yield from _read_jsonl(path, label, options)


# ---------------------------------------------------------------------------- records


def _record_to_document(record: Any, label: str, line: int, options: ReaderOptions) -> Document | Rejection:
    if not isinstance(record, dict):
        return Rejection("broken_json", label, line, "a line must hold a JSON object")
    text = record.get(options.text_field)
    if text is None:
        fields = ", ".join(sorted(map(str, record))[:10])  # names the field to pass as --text-field
        return Rejection("missing_text", label, line, f"no field {options.text_field!r}; fields: {fields}")
    if not isinstance(text, str):
        return Rejection("non_string_text", label, line, f"{options.text_field!r} is {type(text).__name__}")
    if not text.strip():
        return Rejection("empty_document", label, line)
    if options.domain is not None:
        domain = options.domain
    else:
        domain = _lookup(record, options.domain_field)
        if not isinstance(domain, str) or not domain.strip():
            return Rejection("missing_domain", label, line, f"no string field {options.domain_field!r}")
    return _checked_domain(Document(text, normalize_domain(domain), label, line), options)


def _checked_domain(doc: Document, options: ReaderOptions) -> Document | Rejection:
    if options.allowed_domains is not None and doc.domain not in options.allowed_domains:
        return Rejection("unknown_domain", doc.file, doc.line, f"domain {doc.domain!r}")
    return doc


def _lookup(record: dict, dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if isinstance(value, (str, bytes)):
            # SlimPajama mirrors store `meta` as a JSON string rather than an object.
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _read_jsonl(path: str, label: str, options: ReaderOptions) -> Iterator[Document | Rejection]:
    line_no = 0
    try:
        with _open_lines(path) as stream:
            for line_no, raw in enumerate(stream, start=1):
                if not raw.strip():
                    yield Rejection("empty_document", label, line_no, "blank line")
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield Rejection("invalid_utf8", label, line_no, f"byte {err.start}")
                    continue
                try:
                    record = orjson.loads(text)
                except orjson.JSONDecodeError as err:
                    yield Rejection("broken_json", label, line_no, str(err).split("\n")[0][:120])
                    continue
                yield _record_to_document(record, label, line_no, options)
    except (EOFError, TruncatedArchiveError) as err:
        yield Rejection("truncated_archive", label, line_no + 1, f"{type(err).__name__}: {err}; rest of file lost")
    except (OSError, zlib.error, zstandard.ZstdError) as err:  # gzip.BadGzipFile is an OSError
        yield Rejection("unreadable_file", label, line_no + 1 if line_no else 0, f"{type(err).__name__}: {err}")


def _read_parquet(path: str, label: str, options: ReaderOptions) -> Iterator[Document | Rejection]:
    import pyarrow.parquet as pq

    row = 0
    try:
        parquet = pq.ParquetFile(path)
        top = options.domain_field.split(".")[0]
        wanted = [options.text_field] + ([top] if options.domain is None else [])
        columns = [c for c in wanted if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            for record in batch.to_pylist():
                row += 1
                yield _record_to_document(record, label, row, options)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        yield Rejection("unreadable_file", label, row + 1 if row else 0, f"{type(err).__name__}: {err}")


# ---------------------------------------------------------------------------- plain text


def text_file_domain(label: str, root: str, options: ReaderOptions) -> str:
    """Domain of a plain-text document: fixed, by rule, or its first folder under the root."""
    if options.domain is not None:
        return normalize_domain(options.domain)
    for pattern, domain in options.domain_rules:
        if fnmatch.fnmatch(label, pattern) or fnmatch.fnmatch(label.split("/", 1)[-1], pattern):
            return normalize_domain(domain)
    parts = label.split("/")
    # label = "<root>/<sub>/.../<file>": the first folder below the root, else the root.
    return normalize_domain(parts[1] if len(parts) > 2 else (root or parts[0]))


def _read_text_file(path: str, label: str, root: str, options: ReaderOptions) -> Document | Rejection:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        return Rejection("unreadable_file", label, 0, f"{type(err).__name__}: {err}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejection("invalid_utf8", label, 0, f"byte {err.start}")
    if not text.strip():
        return Rejection("empty_document", label, 0)
    return _checked_domain(Document(text, text_file_domain(label, root, options), label, 0), options)


# ---------------------------------------------------------------------------- decompression


class TruncatedArchiveError(Exception):
    """The compressed stream ended inside a frame: the file was cut short."""


class _ZstdRawReader(io.RawIOBase):
    """Decompress a (multi-frame) zstd file, and notice truncation.

    ``zstandard``'s stream reader returns a silent EOF for a file cut mid-frame, which would
    drop its tail without a word; this reader raises :class:`TruncatedArchiveError` instead.
    """

    def __init__(self, handle: io.BufferedReader):
        self._handle = handle
        self._new_frame()
        self._pending = b""

    def _new_frame(self) -> None:
        self._decoder = zstandard.ZstdDecompressor().decompressobj()
        self._frame_started = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._handle.read(1 << 20)
            if not chunk:
                if self._frame_started and not self._decoder.eof:
                    raise TruncatedArchiveError("zstd stream ends inside a frame")
                return 0
            self._pending = self._feed(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _feed(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            self._frame_started = True
            out.append(self._decoder.decompress(chunk))
            if not self._decoder.eof:
                break
            chunk = self._decoder.unused_data
            self._new_frame()
        return b"".join(out)

    def close(self) -> None:
        self._handle.close()
        super().close()


def _open_lines(path: str) -> io.BufferedIOBase:
    """A binary, line-iterable stream over a plain, gzip or zstd file."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        return io.BufferedReader(_ZstdRawReader(open(path, "rb")), buffer_size=1 << 20)
    return open(path, "rb")
