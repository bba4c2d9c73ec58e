"""Corpus readers: files on disk -> a stream of documents, or of counted rejections.

Formats: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ``.parquet``, ``.arrow`` (records with a
text and a domain field; SlimPajama's schema by default; ``.arrow`` as HF ``datasets``
``save_to_disk`` writes it, for a Dataset or each split of a DatasetDict), JSON lines under
any other name (found by content: ``Dataset.to_json`` writes ``.json``) and plain-text files
(one document per file, domain from a path rule). Folders are searched recursively.
Everything streams: memory does not grow with the size of a file or of the corpus.

Files that are not text are refused, not tokenized: binary files (images, archives),
``datasets`` metadata (``dataset_info.json``, ``state.json``), single JSON documents and
anything that is not a regular file (a FIFO would block the reader forever).

Nothing vanishes: every record either becomes a :class:`Document` or a
:class:`Rejection` that names its reason, file and line.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import stat
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import zstandard

from ..errors import InputNotFoundError, LongmixError
from ..settings import setting

RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".arrow")


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
    "not_regular_file",
    "binary_file",
    "metadata_file",
    "json_document",
)
# Reasons that concern a whole file, not one document of it.
FILE_REASONS = (
    "truncated_archive",
    "unreadable_file",
    "not_regular_file",
    "binary_file",
    "metadata_file",
    "json_document",
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
        return f"{where}: {self.reason.replace('_', ' ')}" + (
            f" ({self.detail})" if self.detail else ""
        )


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
    domain_field: str = setting(
        "meta.redpajama_set_name", help="dotted path of the records' domain label"
    )
    domain: str | None = setting(
        None, help="one domain for every document (corpora without labels)"
    )
    # Without a match the first folder under the corpus root names the domain.
    domain_rules: tuple[tuple[str, str], ...] = setting(
        (),
        parse=_parse_domain_rules,
        flag="--domain-rule",
        metavar="GLOB=DOMAIN",
        repeatable=True,
        help="plain-text files: domain by path pattern (repeatable), first match wins; "
        "default: the first folder under the corpus root",
    )
    allowed_domains: tuple[str, ...] | None = setting(
        None,
        parse=lambda text: tuple(normalize_domain(d) for d in text.split(",") if d.strip()),
        flag="--domains",
        help="comma-separated known domains; documents of others are rejected as unknown_domain",
    )


@dataclass(frozen=True)
class Shard:
    """One unit of parallel work: a record file, or a group of plain-text files."""

    index: int
    kind: str  # "records" or "text"
    paths: tuple[str, ...]
    labels: tuple[str, ...]  # stable names for doc ids and messages
    roots: tuple[str, ...] = field(default=())  # label of each file's corpus root
    kinds: tuple[FileKind, ...] = field(
        default=()
    )  # what each file was found to be (see classify_file)

    @property
    def name(self) -> str:
        return (
            self.labels[0]
            if len(self.labels) == 1
            else f"{self.labels[0]} (+{len(self.labels) - 1} files)"
        )


def is_record_file(path: str | Path) -> bool:
    return str(path).endswith(RECORD_SUFFIXES)


# ---------------------------------------------------------------------------- what a file is


@dataclass(frozen=True)
class FileKind:
    """A file's format (``jsonl``, ``parquet``, ``arrow``, ``text``) or why it is refused."""

    format: str  # one of the formats above, or "refused"
    reason: str = ""  # refused: a FILE_REASONS entry
    detail: str = ""

    @property
    def refused(self) -> bool:
        return self.format == "refused"


# What HF `datasets` writes beside the data in a save_to_disk folder.
_DATASETS_METADATA = ("dataset_info.json", "state.json", "dataset_dict.json")
_MAGIC = (
    (b"\x89PNG", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"%PDF", "PDF document"),
    (b"PK\x03\x04", "zip archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"PAR1", "parquet data"),
    (b"ARROW1", "Arrow data"),
    (b"\x7fELF", "executable"),
    (b"RIFF", "RIFF media"),
)
_SNIFF_BYTES = 1 << 16


def classify_file(path: str | Path) -> FileKind:
    """Decide how to read a file from its type, name and first bytes; never opens a non-regular file."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as err:
        return FileKind("refused", "unreadable_file", f"{type(err).__name__}: {err}")
    if not stat.S_ISREG(mode):
        return FileKind("refused", "not_regular_file", _file_type(mode))
    name = path.name
    if name in _DATASETS_METADATA:
        return FileKind("refused", "metadata_file", "HF datasets metadata")
    if name.endswith(".arrow"):
        if name.startswith("cache-"):  # `Dataset.map` results: a copy of data already read
            return FileKind("refused", "metadata_file", "HF datasets cache file")
        return FileKind("arrow")
    if name.endswith(".parquet"):
        return FileKind("parquet")
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        return FileKind("jsonl")
    try:
        head = _head(str(path))
    except (OSError, EOFError, zlib.error, zstandard.ZstdError, TruncatedArchiveError):
        head = None
    if head is not None and looks_like_json_lines(head):
        return FileKind("jsonl")
    with open(path, "rb") as handle:
        raw = handle.read(_SNIFF_BYTES)
    for magic, what in _MAGIC:
        if raw.startswith(magic):
            return FileKind("refused", "binary_file", what)
    if b"\x00" in raw:
        return FileKind("refused", "binary_file", "NUL bytes: not text")
    if name.endswith(".json"):
        return FileKind("refused", "json_document", "one JSON document, not one record per line")
    return FileKind("text")


def looks_like_json_lines(head: bytes) -> bool:
    """The first non-blank line holds a JSON object (or starts one longer than ``head``)."""
    text = head.lstrip()
    if not text.startswith(b"{"):
        return False
    line, newline, _ = text.partition(b"\n")
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        # A first record longer than the sniffed bytes: judge by its opening.
        return (
            not newline and len(head) >= _SNIFF_BYTES and text[1:].lstrip().startswith((b'"', b"}"))
        )


def _head(path: str) -> bytes:
    with _open_lines(path) as stream:
        return stream.read(_SNIFF_BYTES)


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def describe_files(shards: list[Shard]) -> str:
    """How many files of which kind the corpus holds, e.g. ``12 files: 10 plain text (.md 8, .txt 2);
    2 refused (2 binary file (.png 2))``."""
    read: dict[str, Counter] = {}
    refused: dict[str, Counter] = {}
    for shard in shards:
        for label, kind in zip(shard.labels, shard.kinds):
            target = (
                refused.setdefault(kind.reason, Counter())
                if kind.refused
                else read.setdefault(kind.format, Counter())
            )
            target[_suffix(label)] += 1
    names = {
        "jsonl": "JSON lines",
        "parquet": "parquet",
        "arrow": "Arrow (HF datasets)",
        "text": "plain text",
    }
    total = sum(sum(c.values()) for group in (read, refused) for c in group.values())

    def part(title: str, counts: Counter) -> str:
        suffixes = ", ".join(f"{s} {n}" for s, n in counts.most_common())
        return f"{sum(counts.values())} {title} ({suffixes})"

    text = f"{total} files: " + ", ".join(part(names[f], c) for f, c in sorted(read.items()))
    if refused:
        text += (
            f"; {sum(sum(c.values()) for c in refused.values())} refused ("
            + ", ".join(part(reason.replace("_", " "), c) for reason, c in sorted(refused.items()))
            + ")"
        )
    return text


def _suffix(label: str) -> str:
    name = label.rsplit("/", 1)[-1]
    return name[name.find(".") :] if "." in name.lstrip(".") else "no extension"


def discover_shards(inputs: list[str | Path], text_files_per_shard: int = 256) -> list[Shard]:
    """List the work: one shard per record file, plain-text files in fixed-size groups.

    Order and grouping depend only on the sorted relative paths, so shard numbers (and
    everything derived from them) are the same on every machine and for any worker count.
    Record files (by name or, for JSON lines, by content) get a shard each; plain-text and
    refused files share the grouped shards, where a refused file becomes one counted rejection.
    """
    records: list[tuple[str, str, str, FileKind]] = []
    texts: list[tuple[str, str, str, FileKind]] = []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            raise InputNotFoundError(f"corpus path does not exist: {root}")
        if not root.is_dir():
            found = [(root, root.name, "")]
        else:
            files = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files.extend(
                    Path(dirpath, f)
                    for f in filenames
                    if not f.startswith(".") and not f.endswith(".tmp")
                )
            found = [
                (path, f"{root.name}/{path.relative_to(root).as_posix()}", root.name)
                for path in sorted(files)
            ]
        for path, label, root_label in found:
            kind = classify_file(path)
            target = records if kind.format in ("jsonl", "parquet", "arrow") else texts
            target.append((str(path), label, root_label, kind))
    if not records and not texts:
        raise InputNotFoundError(f"no input files under {', '.join(map(str, inputs))}")
    records.sort(key=lambda item: item[1])
    texts.sort(key=lambda item: item[1])
    shards = [
        Shard(i, "records", (p,), (label,), (root,), (kind,))
        for i, (p, label, root, kind) in enumerate(records)
    ]
    for start in range(0, len(texts), text_files_per_shard):
        group = texts[start : start + text_files_per_shard]
        shards.append(Shard(len(shards), "text", *(tuple(column) for column in zip(*group))))
    return shards


def iter_documents(shard: Shard, options: ReaderOptions) -> Iterator[Document | Rejection]:
    """Every document of the shard, in file order, or the reason it was rejected."""
    kinds = shard.kinds or tuple(classify_file(p) for p in shard.paths)
    if shard.kind == "text":
        for path, label, root, kind in zip(
            shard.paths, shard.labels, shard.roots or [""] * len(shard.paths), kinds
        ):
            if kind.refused:
                yield Rejection(kind.reason, label, 0, kind.detail)
            else:
                yield _read_text_file(path, label, root, options)
        return
    path, label, kind = shard.paths[0], shard.labels[0], kinds[0]
    if kind.refused:
        yield Rejection(kind.reason, label, 0, kind.detail)
    elif kind.format == "parquet":
        yield from _read_parquet(path, label, options)
    elif kind.format == "arrow":
        yield from _read_arrow(path, label, options)
    else:
        yield from _read_jsonl(path, label, options)


# ---------------------------------------------------------------------------- records


def _record_to_document(
    record: Any, label: str, line: int, options: ReaderOptions
) -> Document | Rejection:
    if not isinstance(record, dict):
        return Rejection("broken_json", label, line, "a line must hold a JSON object")
    text = record.get(options.text_field)
    if text is None:
        fields = ", ".join(sorted(map(str, record))[:10])  # names the field to pass as --text-field
        return Rejection(
            "missing_text", label, line, f"no field {options.text_field!r}; fields: {fields}"
        )
    if not isinstance(text, str):
        return Rejection(
            "non_string_text", label, line, f"{options.text_field!r} is {type(text).__name__}"
        )
    if not text.strip():
        return Rejection("empty_document", label, line)
    if options.domain is not None:
        domain = options.domain
    else:
        domain = _lookup(record, options.domain_field)
        if not isinstance(domain, str) or not domain.strip():
            return Rejection(
                "missing_domain", label, line, f"no string field {options.domain_field!r}"
            )
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
        yield Rejection(
            "truncated_archive",
            label,
            line_no + 1,
            f"{type(err).__name__}: {err}; rest of file lost",
        )
    except (OSError, zlib.error, zstandard.ZstdError) as err:  # gzip.BadGzipFile is an OSError
        yield Rejection(
            "unreadable_file", label, line_no + 1 if line_no else 0, f"{type(err).__name__}: {err}"
        )


def _read_parquet(path: str, label: str, options: ReaderOptions) -> Iterator[Document | Rejection]:
    import pyarrow.parquet as pq

    row = 0
    try:
        parquet = pq.ParquetFile(path)
        if options.text_field not in parquet.schema_arrow.names:
            yield from _no_text_column(
                parquet.schema_arrow.names, parquet.metadata.num_rows, label, options
            )
            return
        top = options.domain_field.split(".")[0]
        wanted = [options.text_field] + ([top] if options.domain is None else [])
        columns = [c for c in wanted if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            for record in batch.to_pylist():
                row += 1
                yield _record_to_document(record, label, row, options)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        yield Rejection(
            "unreadable_file", label, row + 1 if row else 0, f"{type(err).__name__}: {err}"
        )


def _no_text_column(
    columns: list[str], rows: int, label: str, options: ReaderOptions, first: int = 0
) -> Iterator[Rejection]:
    """Each row of a table without the text column, rejected with the columns it has (the
    all-rejected message then suggests ``--text-field NAME``)."""
    detail = f"no field {options.text_field!r}; fields: {', '.join(columns[:10])}"
    for row in range(first + 1, first + rows + 1):
        yield Rejection("missing_text", label, row, detail)


def _read_arrow(path: str, label: str, options: ReaderOptions) -> Iterator[Document | Rejection]:
    """An Arrow IPC stream (what ``datasets`` ``save_to_disk`` writes) or IPC file, batch by batch."""
    import pyarrow as pa

    row = 0
    top = options.domain_field.split(".")[0]
    try:
        with pa.memory_map(path) as source:
            try:
                batches: Any = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:  # the random-access IPC file format (Feather v2)
                source.seek(0)
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            for batch in batches:
                if options.text_field not in batch.schema.names:
                    yield from _no_text_column(
                        batch.schema.names, batch.num_rows, label, options, row
                    )
                    row += batch.num_rows
                    continue
                wanted = [options.text_field] + ([top] if options.domain is None else [])
                batch = batch.select([c for c in wanted if c in batch.schema.names])
                for record in batch.to_pylist():
                    row += 1
                    yield _record_to_document(record, label, row, options)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        yield Rejection(
            "unreadable_file", label, row + 1 if row else 0, f"{type(err).__name__}: {err}"
        )


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


def _read_text_file(
    path: str, label: str, root: str, options: ReaderOptions
) -> Document | Rejection:
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # replaced since discovery: opening a FIFO would block
            return Rejection("not_regular_file", label, 0, _file_type(mode))
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
    return _checked_domain(
        Document(text, text_file_domain(label, root, options), label, 0), options
    )


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
