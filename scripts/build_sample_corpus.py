"""Build the built-in sample corpus (src/longmix/assets/sample) from license-clean text.

Sources (all redistributable) and the SlimPajama domain each stands in for:

- book: four Canterbury-corpus texts shipped in the `brotli` sdist's tests/testdata
  (Alice in Wonderland, As You Like It, Paradise Lost: public domain; lcet10: a US
  Library of Congress report, public domain);
- github: Python standard-library modules (PSF license);
- cc: Python library reference pages (reStructuredText sources, PSF license),
  from Debian's python3.11-doc (`_sources/library`);
- arxiv: the Python HOWTO and language-reference chapters (long technical documents);
- stackexchange: Python FAQ entries, one question and answer per document;
- wikipedia: Python glossary entries, one term per document.

The labels are stand-ins, not the real SlimPajama sources. Usage::

    pip download --no-deps --no-binary :all: brotli==1.2.1 && tar xzf brotli-1.2.1.tar.gz
    apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb pydoc
    python scripts/build_sample_corpus.py --brotli brotli-1.2.1 --pydoc pydoc
"""

from __future__ import annotations

import argparse
import random
import re
import sysconfig
from pathlib import Path

import orjson
import zstandard

SET_NAMES = {
    "book": "RedPajamaBook",
    "github": "RedPajamaGithub",
    "cc": "RedPajamaCommonCrawl",
    "arxiv": "RedPajamaArXiv",
    "stackexchange": "RedPajamaStackExchange",
    "wikipedia": "RedPajamaWikipedia",
}


def books(brotli: Path) -> list[str]:
    data = brotli / "tests" / "testdata"
    return [(data / name).read_text(encoding="latin-1") for name in ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt")]


def code(limit_bytes: int) -> list[str]:
    """Standard-library modules and packages' files: mostly short, a few long, like GitHub."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    rng = random.Random(0)
    rng.shuffle(files)
    out, size = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        # keep one in six of the long modules, so that short files dominate the count
        if size + len(text) > limit_bytes or (len(text) > 16_000 and rng.random() > 1 / 6):
            continue
        out.append(text)
        size += len(text)
    return out


def rst_files(folder: Path, every: int = 1) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.rst.txt"))[::every]]


def web_pages(folder: Path, whole_every: int = 8) -> list[str]:
    """Library pages, most cut into their sections (short, like web pages), some kept whole."""
    pages = []
    for i, path in enumerate(sorted(folder.glob("*.rst.txt"))[::2]):
        text = path.read_text(encoding="utf-8")
        if i % whole_every == 0:
            pages.append(text)
            continue
        sections = re.split(r"\n(?=[^\n]+\n[-=^~]{3,}\n)", text)
        pages.extend(s.strip() for s in sections if len(s.strip()) > 300)
    return pages


def faq_entries(folder: Path) -> list[str]:
    entries = []
    for path in sorted(folder.glob("*.rst.txt")):
        # Questions are section titles underlined with '-' or '='.
        parts = re.split(r"\n(?=[^\n]+\n[-=]{3,}\n)", path.read_text(encoding="utf-8"))
        entries.extend(p.strip() for p in parts if len(p.strip()) > 200)
    return entries


def glossary_entries(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [e.strip() for e in re.split(r"\n(?=   \S)", text) if len(e.strip()) > 80]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brotli", type=Path, required=True, help="unpacked brotli sdist")
    parser.add_argument("--pydoc", type=Path, required=True, help="unpacked python3.11-doc .deb")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "src/longmix/assets/sample")
    parser.add_argument("--files", type=int, default=6, help="jsonl.zst files to spread documents over")
    args = parser.parse_args()

    sources = args.pydoc / "usr/share/doc/python3.11/html/_sources"
    domains = {
        "book": books(args.brotli),
        "github": code(1_500_000),
        "cc": web_pages(sources / "library"),
        "arxiv": rst_files(sources / "howto") + rst_files(sources / "reference"),
        "stackexchange": faq_entries(sources / "faq"),
        "wikipedia": glossary_entries(sources / "glossary.rst.txt"),
    }
    records = [{"text": text, "meta": {"redpajama_set_name": SET_NAMES[d]}} for d, texts in domains.items() for text in texts]
    random.Random(0).shuffle(records)  # SlimPajama's files hold shuffled documents of all domains
    folder = args.out / "train" / "chunk1"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl.zst"):
        old.unlink()
    compressor = zstandard.ZstdCompressor(level=19)
    for i in range(args.files):
        lines = b"".join(orjson.dumps(r) + b"\n" for r in records[i :: args.files])
        (folder / f"example_train_{i}.jsonl.zst").write_bytes(compressor.compress(lines))
    for domain, texts in domains.items():
        print(f"{domain:<14}{len(texts):>6} documents {sum(map(len, texts)) / 1e6:8.2f} MB")


if __name__ == "__main__":
    main()
