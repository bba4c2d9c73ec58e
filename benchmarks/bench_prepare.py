"""Throughput of `longmix prepare` against the raw tokenizer, per core, in one run.

    python benchmarks/bench_prepare.py [--copies 5] [--workers 1,8,16] [--baseline-copies 2]
        [--no-long-documents] [--json benchmarks/results/prepare.json]

1. Corpus: the built-in sample, written ``--copies`` times (different file names, so
   different document ids) as SlimPajama-style ``jsonl.zst``.
2. Baseline: the same texts (``--baseline-copies`` copies of them), already decoded in
   memory, through the raw HF ``tokenizers`` ``encode_batch`` (and ``encode_batch_fast``)
   on one thread.
3. Pipeline: ``prepare`` end to end (read zstd + JSON, tokenize, write shards, plan, pack,
   statistics, report and plots) at each ``--workers`` count (default: 1 and all cores),
   with its per-phase wall seconds and the serial part (all but tokenize and pack); the
   packed token parts and ``stats.json`` are hashed and must be equal across the counts.
4. Long documents: the tokenize stage on single documents of 40K, 400K and 2M characters;
   a quadratic tokenizer would show a falling rate (``--no-long-documents`` skips it).

The ratio pipeline/baseline per core is the number to watch (target >= 0.8).
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
from longmix.fsutil import file_digest  # noqa: E402

# The phases that run on every worker; the rest of a run is serial (see PhaseTimer).
PARALLEL_PHASES = ("tokenize", "pack")


def build_corpus(root: Path, copies: int) -> None:
    """The built-in sample's files, written ``copies`` times under other names."""
    for source in sorted(sample_corpus_dir().rglob("*.jsonl.zst")):
        for copy in range(copies):
            target = root / f"copy{copy}" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)


def sample_texts(copies: int) -> list[str]:
    """The built-in sample's texts, decoded in memory, ``copies`` times (the baseline's input)."""
    texts = []
    for shard in discover_shards([sample_corpus_dir()]):
        texts.extend(d.text for d in iter_documents(shard, ReaderOptions()) if hasattr(d, "text"))
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
    timings = stats["timings"]
    return {
        "workers": workers,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_core": tokens / seconds / workers,
        "timings": timings,
        "serial_seconds": serial_seconds(timings),
        "outputs": output_digests(out),
    }


def serial_seconds(timings: dict[str, float]) -> float:
    """Everything but the parallel phases: planning, statistics, plots, index, manifest..."""
    return timings["total"] - sum(timings.get(p, 0.0) for p in PARALLEL_PHASES)


def output_digests(out: Path) -> dict[str, str]:
    """BLAKE2b (the manifest's digest) of the packed token parts and ``stats.json``: equal
    for every worker count."""
    files = [*sorted((out / "tokens").glob("*.bin")), out / "stats.json"]
    return {f.relative_to(out).as_posix(): file_digest(f)["blake2b"] for f in files}


def worker_counts(text: str) -> list[int]:
    counts = [int(c) for c in text.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be positive integers, got {text!r}")
    return list(dict.fromkeys(counts))


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
    parser.add_argument("--copies", type=int, default=5, help="copies of the sample to prepare")
    parser.add_argument(
        "--workers",
        type=worker_counts,
        default=None,
        help="worker counts to run the pipeline with, e.g. 1,8,16 (default: 1 and all cores)",
    )
    parser.add_argument(
        "--baseline-copies",
        type=int,
        default=None,
        help="copies of the sample for the raw tokenizer baseline (default: --copies); "
        "a rate per core, so fewer copies measure the same",
    )
    parser.add_argument(
        "--no-long-documents", action="store_true", help="skip the long-documents measurement"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workers = args.workers or list(dict.fromkeys((1, default_workers())))
    baseline_copies = args.baseline_copies or args.copies
    tokenizer = resolve_tokenizer("smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_corpus(work / "corpus", args.copies)
        texts = sample_texts(baseline_copies)
        result = {
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": default_workers(),
                "python": sys.version.split()[0],
                "tokenizers": tokenizers.__version__,
            },
            "corpus": {"copies": args.copies},
            "baseline_corpus": {
                "copies": baseline_copies,
                "documents": len(texts),
                "characters": sum(map(len, texts)),
            },
            "baseline": baseline(texts, tokenizer.path),
        }
        del texts
        runs = [pipeline(work / "corpus", work, n) for n in workers]
        if not args.no_long_documents:
            result["long_documents"] = long_documents(work, tokenizer)
    base = result["baseline"]["encode_batch"]["tokens_per_s"]
    fast = result["baseline"]["encode_batch_fast"]["tokens_per_s"]
    for run in runs:
        run["ratio_vs_encode_batch"] = run["tokens_per_s_per_core"] / base
        run["ratio_vs_encode_batch_fast"] = run["tokens_per_s_per_core"] / fast
    result["corpus"]["tokens"] = runs[0]["tokens"]
    result["pipeline"] = runs
    result["identical_outputs"] = all(r["outputs"] == runs[0]["outputs"] for r in runs)
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def print_report(result: dict) -> None:
    base = result["baseline"]["encode_batch"]["tokens_per_s"]
    fast = result["baseline"]["encode_batch_fast"]["tokens_per_s"]
    runs = result["pipeline"]
    corpus = result["baseline_corpus"]
    print(
        f"pipeline corpus: {result['corpus']['copies']} copies of the sample, "
        f"{result['corpus']['tokens'] / 1e6:.2f}M tokens; baseline: {corpus['copies']} copies, "
        f"{corpus['documents']} documents, {corpus['characters'] / 1e6:.1f}M characters; "
        f"{result['machine']}"
    )
    print("| measurement | tokens/s per core | ratio to `encode_batch` | seconds | serial s |")
    print("|---|---|---|---|---|")
    print(f"| raw `encode_batch`, 1 thread | {base:,.0f} | 1.00 | | |")
    print(f"| raw `encode_batch_fast`, 1 thread | {fast:,.0f} | {fast / base:.2f} | | |")
    for run in runs:
        print(
            f"| `prepare` end to end, {_workers(run['workers'])} "
            f"| {run['tokens_per_s_per_core']:,.0f} ({run['tokens_per_s']:,.0f} total) "
            f"| {run['ratio_vs_encode_batch']:.2f} | {run['seconds']:.2f} | {run['serial_seconds']:.2f} |"
        )
    phases = [p for p in dict.fromkeys(p for r in runs for p in r["timings"]) if p != "total"]
    print("\n| phase (s) | " + " | ".join(_workers(r["workers"]) for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for phase in phases:
        cells = (f"{r['timings'][phase]:.3f}" if phase in r["timings"] else "" for r in runs)
        kind = "parallel" if phase in PARALLEL_PHASES else "serial"
        print(f"| {phase} ({kind}) | " + " | ".join(cells) + " |")
    print("| **serial, in all** | " + " | ".join(f"{r['serial_seconds']:.3f}" for r in runs) + " |")
    print("| **total** | " + " | ".join(f"{r['timings']['total']:.3f}" for r in runs) + " |")
    same = "identical" if result["identical_outputs"] else "DIFFERENT"
    print(
        f"\noutputs (token parts and stats.json, BLAKE2b) across {', '.join(str(r['workers']) for r in runs)} "
        f"workers: {same}"
    )
    if "long_documents" in result:
        print("\n| document | tokens | seconds | characters/s |")
        print("|---|---|---|---|")
        for row in result["long_documents"]:
            print(
                f"| {row['chars']:,} chars | {row['tokens']:,} | {row['seconds']:.2f} | {row['chars_per_s']:,.0f} |"
            )


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n > 1 else ''}"


if __name__ == "__main__":
    main()
