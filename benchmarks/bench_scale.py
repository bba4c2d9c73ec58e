"""Planning at SlimPajama scale: memory and time against documents, and the share read.

    python benchmarks/bench_scale.py [--docs 1M,5M] [--json benchmarks/results/scale.json]

A synthetic SlimPajama-shaped document table is generated on the fly: 7 domains with
SlimPajama's token shares (52.2% CC, 26.7% C4, ...) and log-normal lengths around its
per-domain median document lengths (C4 315 tokens ... Book 121,602), every shard (10K
documents) a mix of all domains, as SlimPajama's ``jsonl.zst`` files are.

1. **Planning**: the table written as the tokenize stage's per-shard ``docs.parquet``
   files, then ``load_document_table`` + ``plan_mixture`` (per-source, 70% long) +
   layout, for a budget of 1% of the tokens: wall time and peak memory (tracemalloc:
   numpy and Python; and the growth of the process' peak RSS), per document.
2. **Share read and tokenized**: ``--read auto``'s rounds (:func:`sample_until_covered`
   with documents sampled within shards: the same calibration, rates, per-document draws
   and exact re-plans as ``prepare``) on the same table, with tokenization replaced by
   looking the documents up: the share of the corpus read (parsed) and tokenized.
3. **Rates**: one core parsing (decompress + JSON) and tokenizing (parse included) the
   built-in sample, in tokens per second.
4. **Extrapolation** to SlimPajama-627B (590M documents, 627B tokens), from the measured
   bytes per document, the shares and the two rates.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from longmix.data.corpus import ReaderOptions, discover_shards, iter_documents, sample_corpus_dir
from longmix.data.mixture import MixtureConfig, seeded_hash
from longmix.data.pack import compute_layout, shuffled_pieces
from longmix.data.prepare import document_sample, load_document_table, plan_mixture
from longmix.data.sample import (
    DocumentSample,
    Round,
    ShardUnit,
    calibrate_chars,
    calibration_set,
    document_uniforms,
    sample_until_covered,
    shard_weights,
)
from longmix.data.tokenize import (
    TokenizeTask,
    doc_key,
    resolve_tokenizer,
    shard_stem,
    tokenize_shard,
)
from longmix.units import parse_count

# SlimPajama: token share (HF card) and median document length in tokens (Fu et al.'s
# MEDIUM_LENGTH, chars/3.68); sigma of the log-normal chosen so long tails look plausible.
DOMAINS = {
    "arxiv": (0.046, 14_565, 0.9),
    "book": (0.042, 121_602, 0.8),
    "c4": (0.267, 315, 0.9),
    "cc": (0.522, 1_066, 1.2),
    "github": (0.052, 520, 1.5),
    "stackexchange": (0.033, 507, 1.0),
    "wikipedia": (0.038, 409, 1.1),
}
BYTES_PER_TOKEN = {"github": 3.2, "arxiv": 3.6}  # others ~4.2 (English prose)
CHARS_SPREAD = 0.08  # sigma of a document's log chars/token around its domain's
SHARD_DOCS = 10_000
SLIMPAJAMA_DOCS = 590e6
SLIMPAJAMA_TOKENS = 627e9


def synthetic_table(n_docs: int, seed: int = 0) -> dict:
    """Columns of a document table with SlimPajama's domain token shares and lengths."""
    rng = np.random.default_rng(seed)
    names = sorted(DOMAINS)
    mean = np.array([DOMAINS[d][1] * np.exp(DOMAINS[d][2] ** 2 / 2) for d in names])
    share = np.array([DOMAINS[d][0] for d in names])
    docs = share / mean
    counts = np.floor(docs / docs.sum() * n_docs).astype(np.int64)
    counts[names.index("cc")] += n_docs - counts.sum()
    domains = np.repeat(np.arange(len(names), dtype=np.int16), counts)
    rng.shuffle(domains)
    median = np.array([DOMAINS[d][1] for d in names], dtype=np.float64)[domains]
    sigma = np.array([DOMAINS[d][2] for d in names])[domains]
    lengths = np.maximum(1, median * np.exp(sigma * rng.standard_normal(n_docs)))
    lengths = np.minimum(lengths, 2_000_000).astype(np.int64)
    per_token = np.array([BYTES_PER_TOKEN.get(d, 4.2) for d in names])[domains]
    chars = lengths * per_token * np.exp(CHARS_SPREAD * rng.standard_normal(n_docs))
    return {
        "names": names,
        "domains": domains,
        "n_tokens": lengths,
        "n_chars": chars.astype(np.int64),
    }


def write_shards(table: dict, folder: Path) -> list[int]:
    """The table as the tokenize stage writes it: one docs.parquet per shard of 10K documents."""
    n = len(table["n_tokens"])
    ids = []
    names = np.array(table["names"])
    for shard, start in enumerate(range(0, n, SHARD_DOCS)):
        stop = min(start + SHARD_DOCS, n)
        lengths = table["n_tokens"][start:stop]
        offset = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        keys = seeded_hash(np.arange(start, stop, dtype=np.uint64), 12345)
        part = pa.table(
            {
                "doc_key": pa.array(keys, pa.uint64()),
                "domain": pa.DictionaryArray.from_arrays(
                    pa.array(table["domains"][start:stop].astype(np.int32)), pa.array(names)
                ),
                "n_tokens": pa.array(lengths, pa.int64()),
                "n_chars": pa.array(table["n_chars"][start:stop], pa.int64()),
                "offset": pa.array(offset, pa.int64()),
            }
        )
        pq.write_table(part, folder / f"{shard_stem(shard)}.docs.parquet")
        ids.append(shard)
    return ids


def mixture_for(table_tokens: int, share: float) -> MixtureConfig:
    return MixtureConfig(
        strategy="per-source", tokens=int(table_tokens * share), long_threshold=4096
    )


def measure_planning(folder: Path, shard_ids: list[int], mixture: MixtureConfig) -> dict:
    """Load + plan + layout of every shard's table: time and peak memory."""
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    table = load_document_table(folder, shard_ids, chars=False)
    loaded = time.perf_counter()
    result = plan_mixture(table, mixture)
    planned = time.perf_counter()
    rows, copies = shuffled_pieces(
        result["selection"].repeats, result["units"]["rank_key"], mixture.seed
    )
    layout = compute_layout(rows, copies, table["n_tokens"], 81920, True)
    done = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    n = len(table["n_tokens"])
    return {
        "documents": n,
        "load_s": round(loaded - started, 2),
        "plan_s": round(planned - loaded, 2),
        "layout_s": round(done - planned, 2),
        "total_s": round(done - started, 2),
        "peak_bytes": peak,
        "bytes_per_document": round(peak / n, 1),
        "rss_growth_bytes_per_document": round(rss_growth / n, 1),
        "sequences": layout.n_sequences,
    }


def measure_share_read(table: dict, mixture: MixtureConfig, calibration: float) -> dict:
    """``--read auto``'s rounds on the table's shards; tokenizing = looking documents up."""
    n = len(table["n_tokens"])
    shard = (np.arange(n) // SHARD_DOCS).astype(np.int32)
    n_shards = int(shard[-1]) + 1
    names = table["names"]
    per_token = np.array([BYTES_PER_TOKEN.get(d, 4.2) for d in names])[table["domains"]]
    sizes = np.bincount(shard, weights=table["n_tokens"] * per_token, minlength=n_shards)
    # ten folders, as SlimPajama's chunk1..chunk10 (each a mix of every domain)
    units = [
        ShardUnit(i, f"chunk{i % 10 + 1}/example_train_{i}.jsonl.zst", f"chunk{i % 10 + 1}", int(s))
        for i, s in enumerate(sizes)
    ]
    keys = seeded_hash(np.arange(n, dtype=np.uint64), 12345)
    draw = document_uniforms(keys, mixture.seed)
    samples: dict[int, object] = {}  # shard -> its DocumentSample (absent: tokenized whole)
    seen: dict = {}

    def tokenize(ids: list[int], rates=None) -> None:
        for i in ids:
            samples.pop(i, None)
        if rates:
            rows = np.isin(shard, np.fromiter(seen["calibration"], np.int32))
            chars = seen.setdefault(
                "chars",
                calibrate_chars(
                    names,
                    table["domains"][rows],
                    table["n_tokens"][rows],
                    table["n_chars"][rows],
                    mixture.long_threshold,
                ),
            )
            for i in ids:
                samples[i] = document_sample(chars, names, rates[units[i].stratum], mixture)

    def tokenized_rows(read: set[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.isin(shard, np.fromiter(read, np.int32))
        rate = np.ones(n, np.float64)
        for i, sample in samples.items():
            part = slice(i * SHARD_DOCS, min((i + 1) * SHARD_DOCS, n))
            rate[part] = sample.rates_of(table["domains"][part], names, table["n_chars"][part])
        return rows & ((rate >= 1) | (draw < rate)), rate

    def plan_on(read: set[int]) -> Round:
        seen.setdefault("calibration", set(read))
        rows, rate = tokenized_rows(read)
        sub = {
            "names": names,
            "domains": table["domains"][rows],
            "n_tokens": table["n_tokens"][rows],
            "doc_key": keys[rows],
            "offset": np.zeros(int(rows.sum()), np.int64),
            "shard": shard[rows],
            **({"inclusion": rate[rows]} if samples else {}),
        }
        weights = None if len(read) == n_shards else shard_weights(units, read)
        result = plan_mixture(sub, mixture, shard_weights=weights, n_shards=n_shards)
        targets = result["plan"].targets
        return Round(
            np.array([[targets[d]["short"], targets[d]["long"]] for d in names]),
            result["selection"].cells,
            result["shard_cells"],
            result,
            np.array([[s.short_docs, s.long_docs] for s in result["summary"].values()], float),
        )

    started = time.perf_counter()
    chosen = calibration_set(units, calibration, 8, mixture.seed)
    sampling, last = sample_until_covered(
        units, chosen, 1.25, mixture.seed, tokenize, plan_on, documents=True
    )
    read_rows = np.isin(shard, np.fromiter(sampling.read, np.int32))
    tokenized, _ = tokenized_rows(set(sampling.read))
    total = int(table["n_tokens"].sum())
    return {
        "shards": n_shards,
        "shards_read": len(sampling.read),
        "rounds": sampling.rounds,
        "share_bytes_read": round(sampling.bytes_read / sampling.bytes_total, 4),
        "share_tokens_read": round(int(table["n_tokens"][read_rows].sum()) / total, 4),
        "share_tokens_tokenized": round(int(table["n_tokens"][tokenized].sum()) / total, 4),
        "share_documents_tokenized": round(int(tokenized.sum()) / n, 4),
        # the calibration (tokenized whole): at least one shard per folder, 8 in all
        "share_tokens_calibration": round(
            int(table["n_tokens"][np.isin(shard, np.array(chosen, np.int32))].sum()) / total, 4
        ),
        "covered": sampling.covers(last.cells),
        "shortfalls": len(last.result["selection"].shortfalls),
        "seconds": round(time.perf_counter() - started, 1),
    }


def measure_rates() -> dict:
    """One core on the built-in sample: tokens/s parsed (decompress + JSON) and tokenized."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core, as in a tokenize worker
    tokenizer = resolve_tokenizer(None)
    shards = discover_shards([str(sample_corpus_dir())])
    reader = ReaderOptions()
    # what a document not drawn costs: read, parsed, its key hashed and its draw made
    sample = DocumentSample(0, 4096, (), ())
    started = time.perf_counter()
    for s in shards:
        for document in iter_documents(s, reader):
            sample.includes(doc_key(document.file, document.line), 0.5)
    parse_s = time.perf_counter() - started
    tokens = 0
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        for s in shards:
            task = TokenizeTask(s, folder, tokenizer.path, tokenizer.vocab_size, reader)
            tokens += tokenize_shard(task, {})["tokens"]
        tokenize_s = time.perf_counter() - started
    return {
        "tokens": tokens,
        "parse_tokens_per_s": round(tokens / parse_s),
        "tokenize_tokens_per_s": round(tokens / tokenize_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default="1M,5M", help="document counts, e.g. 1M,5M,20M")
    parser.add_argument("--budget", type=float, default=0.01, help="budget as a share of tokens")
    parser.add_argument("--calibration", type=float, default=0.002)
    parser.add_argument(
        "--rate", type=float, help="tokens/s per core to assume (default: measured here)"
    )
    parser.add_argument("--cores", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for n in (parse_count(t) for t in args.docs.split(",")):
        table = synthetic_table(n)
        tokens = int(table["n_tokens"].sum())
        mixture = mixture_for(tokens, args.budget)
        with tempfile.TemporaryDirectory() as folder:
            ids = write_shards(table, Path(folder))
            planning = measure_planning(Path(folder), ids, mixture)
        reading = measure_share_read(table, mixture, args.calibration)
        runs.append({"documents": n, "tokens": tokens, "planning": planning, "reading": reading})
        print(json.dumps(runs[-1]), flush=True)
        del table
    rates = measure_rates() if args.rate is None else {"tokenize_tokens_per_s": args.rate}
    print(json.dumps(rates), flush=True)
    parse_rate = rates.get("parse_tokens_per_s")
    worst = max(r["planning"]["bytes_per_document"] for r in runs)
    largest = max(runs, key=lambda r: r["documents"])["reading"]
    # The calibration is at least one shard per folder (10% of 100 shards, 2% of 500):
    # SlimPajama's 59K shards calibrate on 0.2% of them, so its share tokenized is the rest
    # of the largest run's plus that.
    read = largest["share_tokens_read"]
    tokenized = largest["share_tokens_tokenized"] - largest["share_tokens_calibration"] + 0.002
    documents = largest["share_documents_tokenized"]
    # Every document of the shards read is parsed; those drawn are tokenized (parse included).
    core_hours = (
        SLIMPAJAMA_TOKENS * read / parse_rate if parse_rate else 0.0
    ) / 3600 + SLIMPAJAMA_TOKENS * tokenized / rates["tokenize_tokens_per_s"] / 3600
    extrapolation = {
        "documents": SLIMPAJAMA_DOCS,
        "planning_gb_all_documents": round(worst * SLIMPAJAMA_DOCS / 1e9, 1),
        "planning_gb_documents_tokenized": round(worst * SLIMPAJAMA_DOCS * documents / 1e9, 1),
        "share_read": read,
        "share_tokenized": round(tokenized, 4),
        "core_hours": round(core_hours, 1),
        f"hours_on_{args.cores}_cores": round(core_hours / args.cores, 2),
        "rates_per_core": rates,
    }
    print(json.dumps(extrapolation))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
                    "budget_share": args.budget,
                    "runs": runs,
                    "extrapolation": extrapolation,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
