"""Throughput of `longmix prepare` against the raw tokenizer, per core, in one run.

    python benchmarks/bench_prepare.py [--copies 5] [--json benchmarks/results/prepare.json]

1. Corpus: the built-in sample, written ``--copies`` times (different file names, so
   different document ids) as SlimPajama-style ``jsonl.zst``.
2. Baseline: the same texts, already decoded in memory, through the raw HF
   ``tokenizers`` ``encode_batch`` (and ``encode_batch_fast``) on one thread.
3. Pipeline: ``prepare`` end to end with one worker (read zstd + JSON, tokenize, write
   shards, plan, pack, statistics, report and plots), then with all cores.
4. Long documents: the tokenize stage on single documents of 40K, 400K and 2M characters;
   a quadratic tokenizer would show a falling rate.

The ratio pipeline/baseline is the number to watch (target >= 0.8 per core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: a per-core baseline

import orjson  # noqa: E402
import tokenizers  # noqa: E402
import zstandard  # noqa: E402

from longmix.cli import sample_corpus_dir  # noqa: E402
from longmix.data.corpus import ReaderOptions, discover_shards, iter_documents  # noqa: E402
from longmix.data.executor import default_workers  # noqa: E402
from longmix.data.mixture import MixtureConfig  # noqa: E402
from longmix.data.prepare import PrepareConfig, prepare  # noqa: E402
from longmix.data.tokenize import TokenizeTask, input_fingerprint, resolve_tokenizer, tokenize_shard  # noqa: E402


def build_corpus(root: Path, copies: int) -> list[str]:
    texts = []
    for shard in discover_shards([sample_corpus_dir()]):
        texts.extend(d.text for d in iter_documents(shard, ReaderOptions()) if hasattr(d, "text"))
    for source in sorted(sample_corpus_dir().rglob("*.jsonl.zst")):
        for copy in range(copies):
            target = root / f"copy{copy}" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    return texts * copies


def baseline(texts: list[str], tokenizer_path: str) -> dict:
    tok = tokenizers.Tokenizer.from_file(tokenizer_path)
    out = {}
    for name in ("encode_batch", "encode_batch_fast"):
        encode = getattr(tok, name)
        start = time.perf_counter()
        n = 0
        for i in range(0, len(texts), 256):
            n += sum(len(e.ids) for e in encode(texts[i : i + 256], add_special_tokens=False))
        seconds = time.perf_counter() - start
        out[name] = {"tokens": n, "seconds": seconds, "tokens_per_s": n / seconds}
    return out


def pipeline(corpus: Path, work: Path, workers: int) -> dict:
    out = work / f"prepared-{workers}"
    config = PrepareConfig(
        inputs=(str(corpus),),
        out=str(out),
        seq_len=8192,
        workers=workers,
        mixture=MixtureConfig(strategy="per-source"),
    )
    start = time.perf_counter()
    stats = prepare(config, progress=False, log=lambda m: None)
    seconds = time.perf_counter() - start
    tokens = stats["before"]["total"]["tokens"]
    return {
        "workers": workers,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_core": tokens / seconds / workers,
    }


def long_documents(work: Path, tokenizer) -> list[dict]:
    book = "".join(
        d.text
        for s in discover_shards([sample_corpus_dir()])
        for d in iter_documents(s, ReaderOptions())
        if hasattr(d, "text") and d.domain == "book"
    )
    rows = []
    for chars in (40_000, 400_000, 2_000_000):
        text = (book * (chars // len(book) + 1))[:chars]
        path = work / f"long{chars}" / "doc.jsonl.zst"
        path.parent.mkdir(parents=True)
        record = (
            orjson.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaBook"}}) + b"\n"
        )
        path.write_bytes(zstandard.ZstdCompressor().compress(record))
        shard = discover_shards([path])[0]
        task = TokenizeTask(
            shard, str(path.parent), tokenizer.path, tokenizer.vocab_size, ReaderOptions()
        )
        start = time.perf_counter()
        summary = tokenize_shard(task, input_fingerprint(task, tokenizer.sha256))
        seconds = time.perf_counter() - start
        rows.append(
            {
                "chars": chars,
                "tokens": summary["tokens"],
                "seconds": seconds,
                "chars_per_s": chars / seconds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tokenizer = resolve_tokenizer("smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = build_corpus(work / "corpus", args.copies)
        result = {
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": default_workers(),
                "python": sys.version.split()[0],
                "tokenizers": tokenizers.__version__,
            },
            "corpus": {"documents": len(texts), "characters": sum(map(len, texts))},
            "baseline": baseline(texts, tokenizer.path),
            "pipeline_1_worker": pipeline(work / "corpus", work, 1),
            "pipeline_all_cores": pipeline(work / "corpus", work, default_workers()),
            "long_documents": long_documents(work, tokenizer),
        }
    base = result["baseline"]["encode_batch"]["tokens_per_s"]
    fast = result["baseline"]["encode_batch_fast"]["tokens_per_s"]
    one = result["pipeline_1_worker"]["tokens_per_s_per_core"]
    allc = result["pipeline_all_cores"]
    result["ratio_vs_encode_batch"] = one / base
    result["ratio_vs_encode_batch_fast"] = one / fast
    print(
        f"corpus: {result['corpus']['documents']} documents, {result['corpus']['characters'] / 1e6:.1f}M characters, "
        f"{result['pipeline_1_worker']['tokens'] / 1e6:.2f}M tokens; {result['machine']}"
    )
    print("| measurement | tokens/s per core | ratio |")
    print("|---|---|---|")
    print(f"| raw `encode_batch`, 1 thread | {base:,.0f} | 1.00 |")
    print(f"| raw `encode_batch_fast`, 1 thread | {fast:,.0f} | {fast / base:.2f} |")
    print(
        f"| `prepare` end to end, 1 worker | {one:,.0f} | {one / base:.2f} (vs fast: {one / fast:.2f}) |"
    )
    print(
        f"| `prepare` end to end, {allc['workers']} workers | {allc['tokens_per_s_per_core']:,.0f} "
        f"({allc['tokens_per_s']:,.0f} total) | {allc['tokens_per_s_per_core'] / base:.2f} |"
    )
    print("\n| document | tokens | seconds | characters/s |")
    print("|---|---|---|---|")
    for row in result["long_documents"]:
        print(
            f"| {row['chars']:,} chars | {row['tokens']:,} | {row['seconds']:.2f} | {row['chars_per_s']:,.0f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
