"""`longmix prepare`: corpus -> exact token lengths -> sampling plan -> packed sequences.

The three stages (Fu et al.'s recipe, engineered):

1. **tokenize** (parallel map over shards): every document tokenized once; tokens and a
   document table per shard (:mod:`longmix.data.tokenize`). Finished shards are skipped on a rerun.
2. **plan** (one small reduce): per-domain length statistics -> a plan from the chosen
   strategy -> a repeat count per document (:mod:`longmix.data.mixture`).
3. **pack** (parallel map over output parts): seeded shuffle, concatenation with
   separators, cut into ``seq_len`` sequences (:mod:`longmix.data.pack`), then statistics,
   the report and ``manifest.json`` (written last, with every file's size and checksum: a
   rerun checks them and redoes what is damaged, see :mod:`longmix.data.verify`).

One process writes a folder at a time (a lock on ``OUT/.lock``); the ranks of a job array
share it. Every setting is checked before the corpus is read.

Output depends only on the inputs and the settings, never on ``workers``; a killed run
rerun with the same arguments resumes and ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..errors import LongmixError, missing_extra
from ..fsutil import (
    as_json_types,
    atomic_write,
    folder_lock,
    read_json,
    remove_stale_temporaries,
    write_json,
)
from ..settings import setting, specs
from ..units import format_count
from .corpus import ReaderOptions, describe_files, discover_shards, normalize_domain
from .executor import (
    LocalExecutor,
    default_workers,
    init_pool_worker,
    make_executor,
    progress_bar,
)
from .mixture import (
    CHARS_PER_TOKEN,
    MixtureConfig,
    PlanError,
    cell_codes,
    check_domains,
    effective_short_keep,
    format_shortfall,
    long_documents,
    long_fraction_of,
    make_plan,
    packing_units,
    select,
    strategy_of,
    summarize,
)
from .pack import Layout, PartTask, compute_layout, shuffled_pieces, write_part
from .sample import (
    NOT_READ_REASON,
    NOT_TOKENIZED_REASON,
    DocumentSample,
    DomainChars,
    Round,
    Sampling,
    ShardUnit,
    calibrate_chars,
    calibration_set,
    cell_needs,
    needed_rates,
    sample_until_covered,
    sampling_of,
    shard_units,
    shard_weights,
    stratum_estimates,
    stratum_weights,
)
from .stats import (
    format_rejections,
    format_table,
    import_plotting,
    markdown_report,
    mixture_stats,
    plot_domain_shares,
    plot_length_distribution,
)
from .store import FORMAT_VERSION, MANIFEST, TIMINGS, part_path, write_index
from .tokenize import (
    BUILTIN_TOKENIZER,
    TokenizerInfo,
    TokenizeTask,
    input_fingerprint,
    resolve_tokenizer,
    shard_is_done,
    shard_stem,
    tokenize_shard,
)
from .verify import digest_files, digest_job, find_damage, recorded_files

# Outputs of a prepared folder, removed by ``overwrite`` (the tokenized cache is kept).
_OUTPUTS = (
    MANIFEST,
    "params.json",
    "stats.json",
    "plan.json",
    "report.md",
    "plots",
    "tokens",
    "index",
    TIMINGS,
)


class PrepareError(LongmixError):
    """A problem with the settings or the inputs, found before or during `prepare`."""


@dataclass(frozen=True)
class PrepareConfig:
    """Every knob of `longmix prepare`; saved (less how and where it runs) in the manifest."""

    inputs: tuple[str, ...] = setting(
        positional=True,
        aliases=("corpus",),
        metavar="CORPUS",
        help="corpus files or folders: .jsonl[.gz|.zst], .parquet, or plain-text files",
    )
    out: str = setting(help="the prepared folder")
    tokenizer: str = setting(
        "smollm2", help="tokenizer.json, a HF tokenizer folder, or 'smollm2' (built in)"
    )
    separator: str | None = setting(
        None, help="token between packed documents (default: the tokenizer's EOS); '' for none"
    )
    seq_len: int = setting(
        81920,
        unit="length",
        check=lambda v: None if v > 1 else "must be at least 2",
        help="tokens per packed sequence (80K = 81,920, the paper's)",
    )
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    cache: str | None = setting(
        None, help="folder for tokenized shards, shared between runs with different strategies"
    )
    workers: int | None = setting(
        None,
        check=lambda v: None if v is None or v > 0 else "must be positive",
        help="processes (default: all cores); the output does not depend on it",
    )
    strict: bool = setting(
        False, help="stop at the first bad document instead of skipping and counting it"
    )
    part_bytes: int = setting(
        1 << 29,
        unit="length",
        flag="--part-size",
        help="size of one tokens/part-NNNNN.bin file (whole sequences)",
    )
    text_files_per_shard: int = setting(
        256, cli=False, help="plain-text documents per tokenization task"
    )
    overwrite: bool = setting(False, help="replace a prepared folder made with other settings")
    executor: str = setting(
        "local",
        choices=("local", "ray"),
        check=lambda v: missing_extra("ray", "ray", "--executor ray") if v == "ray" else None,
        help="local processes or a Ray cluster; same output",
    )
    ray_address: str | None = setting(
        None, help="a running Ray cluster ('auto', 'ray://host:10001'); default: start one here"
    )
    rank: int | None = setting(
        None, help="with --world-size: tokenize only shards i with i % world_size == rank"
    )
    world_size: int | None = setting(
        None, help="ranks sharing the tokenization (a Slurm job array, several machines)"
    )
    finalize: bool = setting(
        False, help="after the ranks: check every shard is done, then plan and pack"
    )
    read: str = setting(
        "auto",
        choices=("auto", "all"),
        help="auto: tokenize only a seeded sample of the shards that covers the budget (the whole "
        "corpus when the budget needs most of it); all: every shard",
    )
    calibration: float = setting(
        0.002,
        check=lambda v: None if 0.0 < v <= 1.0 else "must be within (0, 1]",
        help="--read auto: share of the shards tokenized first to estimate each cell's tokens",
    )
    calibration_min: int = setting(
        8,
        check=lambda v: None if v >= 1 else "must be 1 or more",
        help="--read auto: at least this many calibration shards; fewer shards are read whole",
    )
    read_margin: float = setting(
        1.25,
        check=lambda v: None if v >= 1.0 else "must be 1 or more",
        help="--read auto: read enough of each stratum to cover every cell's target times this",
    )
    dry_run: bool = setting(
        False,
        help="tokenize the calibration shards only, print the estimated plan and its cost, "
        "write no token files",
    )
    cores: int | None = setting(
        None,
        check=lambda v: None if v is None or v > 0 else "must be positive",
        help="--dry-run: also estimate the tokenization time on this many cores",
    )

    def params(self) -> dict:
        """The settings that determine the output (not how or where the work runs), by meaning:
        paths are resolved, so ``data``, ``./data`` and ``/abs/data`` compare equal, and the
        output folder itself is left out (it is where the record lives, wherever it moved)."""
        data = asdict(self)
        for key in (
            "out",
            "workers",
            "overwrite",
            "executor",
            "ray_address",
            "rank",
            "world_size",
            "finalize",
            "dry_run",
            "cores",
        ):
            data.pop(key)
        data["inputs"] = [_real_path(p) for p in self.inputs]
        data["cache"] = _real_path(self.cache) if self.cache else None
        data["tokenizer"] = (
            self.tokenizer if self.tokenizer == BUILTIN_TOKENIZER else _real_path(self.tokenizer)
        )
        return as_json_types(data)


def _real_path(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


class PhaseTimer:
    """Wall seconds per phase of one run, in order of first entry; a phase entered again (the
    rounds of ``--read auto``) adds up. Tells the serial phases from the parallel ones."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed


def prepare(
    config: PrepareConfig, *, progress: bool = True, log: Callable[[str], None] | None = None
) -> dict:
    """Run the whole pipeline; returns the contents of ``stats.json`` and ``"timings"``: the
    wall seconds of each phase and in all (also in ``OUT/timings.json``)."""
    log = log or (lambda message: print(message, file=sys.stderr))
    started = time.perf_counter()
    out = Path(config.out)
    _check_config(config)
    if config.world_size is not None and (
        config.rank is None or not 0 <= config.rank < config.world_size
    ):
        raise PrepareError(f"--rank must be within 0..{config.world_size - 1}")
    tokenizer = resolve_tokenizer(config.tokenizer, config.separator)
    # With one worker everything runs here, on one core; otherwise the plots get a process.
    separate = (config.workers or default_workers()) > 1
    shared = config.world_size is not None
    # One writer per folder; the ranks of a job array share theirs. ``closing`` unwinds in
    # reverse: the executor, entered last, stops its workers before the locks are released.
    with _Plots(separate) as plots, ExitStack() as closing:
        closing.enter_context(folder_lock(out, shared=shared))
        if config.cache:
            closing.enter_context(folder_lock(config.cache, shared=shared))
        return _prepare_locked(config, out, tokenizer, started, progress, log, plots, closing)


class _Plots:
    """Draws ``plots/`` (about 2 s of matplotlib, serial): here, or in a process of its own
    (``separate``), started with the tokenization so that matplotlib is imported meanwhile,
    and fed the plan while the workers pack."""

    def __init__(self, separate: bool) -> None:
        self.separate = separate
        self.pool: ProcessPoolExecutor | None = None
        self.pending: Future | None = None

    def start(self) -> None:
        if self.separate and self.pool is None:
            context = multiprocessing.get_context("spawn")
            # Set up as the executor's workers: Ctrl-C is the parent's to handle.
            self.pool = ProcessPoolExecutor(1, context, initializer=init_pool_worker)
            self.pool.submit(import_plotting)

    def draw(self, out: Path, table: dict, plan_result: dict, threshold: int) -> None:
        if self.pool is None:
            _draw_plots(out, table, plan_result, threshold)
            return
        # Only the columns the plots read travel to the process.
        packed = plan_result["units"]
        self.pending = self.pool.submit(
            _draw_plots,
            out,
            {k: table[k] for k in ("names", "domains", "n_tokens")},
            {
                "units": {k: packed[k] for k in ("domains", "n_tokens")},
                "selection": plan_result["selection"],
                "before": plan_result["before"],
                "after": plan_result["after"],
            },
            threshold,
        )

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()  # its error, if any, raised here

    def __enter__(self) -> _Plots:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _prepare_locked(
    config: PrepareConfig,
    out: Path,
    tokenizer: TokenizerInfo,
    started: float,
    progress: bool,
    log: Callable[[str], None],
    plots: _Plots,
    closing: ExitStack,
) -> dict:
    timer = PhaseTimer()
    _claim_output(out, config)
    # The first line, from `longmix prepare` and each prepare step of a study alike; written with
    # the first message, so that a fault found before any work stays the only line.
    announced: list[str] = []

    def announce() -> None:
        if not announced:
            announced.append(f"prepare {config.mixture.strategy} -> {out}")
            log(announced[0])

    if (out / MANIFEST).is_file():
        with timer("check"):
            damage = find_damage(out)
        announce()
        if not damage:
            log(
                f"{out} is already complete (every file checked); delete it or pass --overwrite to redo it"
            )
            return {**read_json(out / "stats.json"), "timings": _timings(timer, started)}
        more = f" and {len(damage) - 1} more" if len(damage) > 1 else ""
        log(f"{out} is damaged ({damage[0].describe(out)}{more}): redoing the damaged files")
        for item in damage:
            item.path.unlink(missing_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)

    with timer("discover"):
        shards = discover_shards(list(config.inputs), config.text_files_per_shard)
        tokenized = Path(config.cache) if config.cache else out / "tokenized"
        tokenized.mkdir(parents=True, exist_ok=True)
        if config.world_size is None:  # no concurrent ranks: leftovers of a killed run can go
            remove_stale_temporaries(out)
            remove_stale_temporaries(tokenized)
        # One pool of workers for the whole run (every round of tokenization, the packing).
        executor = closing.enter_context(
            make_executor(config.executor, config.workers, config.ray_address)
        )
    announce()
    log(describe_files(shards))
    log(
        f"{len(shards)} shards from {', '.join(config.inputs)}; tokenizer {tokenizer.name} "
        f"(vocab {tokenizer.vocab_size}, {tokenizer.dtype.name}); {config.executor} executor, {executor.workers} workers"
    )

    if config.world_size is not None:  # one rank of a job array: its share of the shards, then stop
        mine = [s for s in shards if s.index % config.world_size == config.rank]
        with timer("tokenize"):
            tokenize_all(mine, tokenized, tokenizer, config, executor, progress, log)
        log(
            f"rank {config.rank}/{config.world_size}: {len(mine)} shards tokenized; when every rank is done, run "
            "the same command with --finalize instead of --rank/--world-size"
        )
        return {
            "rank": config.rank,
            "world_size": config.world_size,
            "shards": len(mine),
            "timings": _timings(timer, started),
        }
    if config.finalize:
        missing = missing_shards(shards, tokenized, tokenizer, config)
        if missing:
            raise PrepareError(
                f"{len(missing)} of {len(shards)} shards are not tokenized yet (e.g. "
                f"{', '.join(s.name for s in missing[:3])}): rerun the ranks that failed"
            )
    if not config.dry_run:
        plots.start()
    units = shard_units(shards)
    if config.read == "all" and not config.dry_run:
        with timer("tokenize"):
            summaries = tokenize_all(shards, tokenized, tokenizer, config, executor, progress, log)
        with timer("load"):
            table, counts = _load_checked(tokenized, shards, summaries, config)
        with timer("plan"):
            plan_result = plan_mixture(table, config.mixture)
        sampling = sampling_of(units, {s.index for s in shards}, "all")
    else:
        seen: dict = {}  # the calibration's chars per token, the latest round's domain names

        def tokenize(ids: list[int], rates: dict[str, np.ndarray] | None = None) -> None:
            samples = None
            if rates:
                chars = seen.setdefault("chars", _calibrated_chars(seen["first"], config.mixture))
                by_stratum = {
                    s: document_sample(chars, seen["names"], r, config.mixture)
                    for s, r in rates.items()
                }
                samples = {i: by_stratum[units[i].stratum] for i in ids}
            with timer("tokenize"):
                tokenize_all(
                    [shards[i] for i in ids],
                    tokenized,
                    tokenizer,
                    config,
                    executor,
                    progress,
                    log,
                    samples,
                )

        def plan_on(read: set[int]) -> Round | None:
            current = _plan_round(read, shards, units, tokenized, config, executor.workers, timer)
            if current is not None:
                seen.setdefault("first", current.result[0])
                seen["names"] = current.result[0]["names"]
            return current

        calibration = (
            calibration_set(units, config.calibration, config.calibration_min, config.mixture.seed)
            if len(shards) >= config.calibration_min
            else [s.index for s in shards]  # too few shards to sample: read them all
        )
        if config.dry_run:
            estimate = dry_run(
                config,
                units,
                calibration,
                shards,
                tokenized,
                tokenizer,
                tokenize,
                plan_on,
                executor.workers,
                log,
            )
            return {**estimate, "timings": _timings(timer, started)}
        sampling, current = sample_until_covered(
            units,
            calibration,
            config.read_margin,
            config.mixture.seed,
            tokenize,
            plan_on,
            log,
            documents=samples_documents(config.mixture),
        )
        seen.clear()
        table, plan_result, summaries, counts = current.result
        if not sampling.complete:
            log(
                f"read {len(sampling.read)} of {len(shards)} shards ({sampling.bytes_read / sampling.bytes_total:.2%} "
                f"of the corpus' bytes) in {sampling.rounds} rounds: the budget's cells are covered"
            )
    with timer("plots"):  # only the plan feeds them
        plots.draw(out, table, plan_result, config.mixture.long_threshold)
    layout, parts = pack_all(
        out, table, plan_result, tokenizer, tokenized, config, executor, progress, timer
    )
    # No task of the local workers is left: they exit while the statistics are written.
    executor.close(wait=False)

    with timer("statistics"):
        stats = _stats_record(
            config, tokenizer, sampling, units, table, plan_result, summaries, counts, layout, parts
        )
        manifest = stats["manifest"]
        copy_tokenizer(Path(tokenizer.path), out / "tokenizer")
        write_json(out / "plan.json", stats["plan"])
        write_json(out / "stats.json", stats)
    with timer("report"), atomic_write(out / "report.md", "w") as sink:
        sink.write(markdown_report(stats))
    with timer("plots"):
        plots.wait()
    with timer("manifest"):
        # Sizes and checksums let a rerun (and `longmix verify`) tell a whole folder from a
        # damaged one.
        paths = [str(p) for p in recorded_files(out)]
        manifest["files"] = digest_files(out, _checksums(paths, executor, progress))
        write_json(out / MANIFEST, manifest)
    timings = _timings(timer, started)
    write_json(out / TIMINGS, timings)  # after the manifest: not a recorded output

    log(format_table(stats["before"], stats["after"]))
    for note in plan_result["plan"].notes:
        log(f"note: {note}")
    for record in plan_result["selection"].shortfalls:
        log(f"warning: {format_shortfall(record)}")
    log(
        f"documents read {counts['read']} = used {counts['used']} + rejected {counts['rejected']}"
        + (
            f"; {counts['not_tokenized']} more parsed, not tokenized (outside the sample)"
            if counts["not_tokenized"]
            else ""
        )
        + (
            f"; about {counts['not_read']} not tokenized in all (outside the sample)"
            if counts["not_read"]
            else ""
        )
    )
    if counts["rejected"] or stats["documents"]["file_errors"]:
        log(format_rejections(stats["rejections"]))
    log(
        f"wrote {layout.n_sequences} sequences × {config.seq_len} tokens to {out} in {time.perf_counter() - started:.1f}s"
    )
    return {**stats, "timings": timings}


def _draw_plots(out: Path, table: dict, plan_result: dict, threshold: int) -> None:
    """``plots/``: the length distribution and the domain shares, before and after."""
    packed = plan_result["units"]
    plot_length_distribution(
        table["names"],
        (table["domains"], table["n_tokens"], np.ones(len(table["n_tokens"]), np.int32)),
        (packed["domains"], packed["n_tokens"], plan_result["selection"].repeats),
        threshold,
        out / "plots" / "length_distribution.png",
    )
    plot_domain_shares(
        plan_result["before"], plan_result["after"], out / "plots" / "domain_shares.png"
    )


def _checksums(paths: list[str], executor, progress: bool) -> list[tuple[str, dict]]:
    """Each file's digest. Local: on threads, as hashing and reading release the GIL, and
    starting a pool of processes costs more than these files take to hash (Ray: its tasks)."""
    if not isinstance(executor, LocalExecutor):
        return list(
            executor.map(digest_job, paths, desc="checksum", progress=progress, unit="file")
        )
    with ThreadPoolExecutor(executor.workers, thread_name_prefix="checksum") as pool:
        digests = pool.map(digest_job, paths)
        bar = progress_bar(
            digests, total=len(paths), desc="checksum", unit="file", enabled=progress
        )
        return list(bar)


def _timings(timer: PhaseTimer, started: float) -> dict[str, float]:
    """The phases' wall seconds and ``total`` (since ``prepare`` was called)."""
    return {**timer.seconds, "total": time.perf_counter() - started}


def _stats_record(
    config: PrepareConfig,
    tokenizer: TokenizerInfo,
    sampling: Sampling,
    units: list[ShardUnit],
    table: dict,
    plan_result: dict,
    summaries: list[dict],
    counts: dict,
    layout: Layout,
    parts: int,
) -> dict:
    """``stats.json``: the documents, the reading, the plan, the packing and the manifest
    (less its ``files``, which come once every other output is written)."""
    stats = {
        "documents": {**counts, "file_errors": sum(s["file_errors"] for s in summaries)},
        "reading": reading_record(sampling, units, table["names"], plan_result, summaries),
        "rejections": _collect_rejections(summaries),
        "before": plan_result["before"],
        "after": plan_result["after"],
        "plan": {
            "notes": plan_result["plan"].notes,
            "cells": plan_result["selection"].cells,
            "targets": plan_result["plan"].targets,
            "shortfalls": plan_result["selection"].shortfalls,
        },
        "packing": {
            "n_sequences": layout.n_sequences,
            "seq_len": layout.seq_len,
            "tail_tokens_dropped": layout.tail_tokens_dropped,
            "tail_documents_cut": layout.tail_documents_cut,
            "spans": len(layout.span_seq),
        },
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "inputs": list(config.inputs),
        "tokenizer": {k: v for k, v in asdict(tokenizer).items() if k != "path"},
        "dtype": tokenizer.dtype.str,
        "seq_len": config.seq_len,
        "n_sequences": layout.n_sequences,
        "sequences_per_part": parts,
        "n_parts": -(-layout.n_sequences // parts),
        "tokens": layout.n_sequences * config.seq_len,
        "domains": table["names"],
        "strategy": config.mixture.strategy,
        "budget": plan_result["plan"].budget,
        "long_threshold": config.mixture.long_threshold,
        "long_fraction": long_fraction_of(config.mixture),
        "domain_weight": config.mixture.domain_weight,
        "domain_weights": dict(config.mixture.domain_weights)
        if config.mixture.domain_weights
        else None,
        "seed": config.mixture.seed,
        "truncate_to": plan_result["plan"].truncate_to,
        "cut_to": plan_result["plan"].cut_to,
        "short_keep": effective_short_keep(config.mixture),
        "length_estimate": config.mixture.length_estimate,
        "max_repeats": config.mixture.max_repeats,
        "reader": asdict(config.reader),
        "read": config.read,
        "sampling": {
            "calibration": config.calibration,
            "calibration_min": config.calibration_min,
            "read_margin": config.read_margin,
            "shards_read": len(sampling.read),
            "shards": sampling.n_shards,
            "rounds": sampling.rounds,
        },
    }
    stats["manifest"] = manifest
    return stats


def _check_config(config: PrepareConfig) -> None:
    """Everything that can be checked before reading the corpus (settings built in Python skip
    the checks of the command line and the YAML file, so each field's check runs here too)."""
    for spec in specs(PrepareConfig):
        value = config
        for name in (*spec.path, spec.name):
            value = getattr(value, name)
        if value is None:
            continue
        choices = spec.choices()
        check = spec.meta.get("check")
        problem = (
            f"{value!r} is not one of {', '.join(map(str, choices))}"
            if choices is not None and value not in choices
            else check(value)
            if check is not None
            else None
        )
        if problem:
            raise PrepareError(f"{spec.flag} {value!r}: {problem}")
    if config.seq_len < 2:
        raise PrepareError(f"seq_len must be at least 2, got {config.seq_len}")
    if config.mixture.long_threshold < 1:
        raise PrepareError("long threshold must be positive")
    if not config.inputs:
        raise PrepareError("no corpus given")
    _check_named_domains(config)


def _check_named_domains(config: PrepareConfig) -> None:
    """Domains named by the mixture that no document can have, when the reader settings alone
    decide the domains (``--domain``, ``--domains``); otherwise only the corpus can tell."""
    reader = config.reader
    known = (reader.domain,) if reader.domain else reader.allowed_domains
    if known is not None:
        check_domains(config.mixture, [normalize_domain(d) for d in known])


# A field holding a document's text, by the names corpora commonly use for it.
_TEXT_FIELD_NAMES = (
    "content",
    "raw_content",
    "contents",
    "body",
    "document",
    "article",
    "markdown",
    "passage",
    "story",
)
# What usually causes each rejection when every document is rejected.
_LIKELY_FIX = {
    "missing_domain": "pass --domain NAME (one domain for all) or --domain-field with the records' domain path",
    "unknown_domain": "widen --domains, or leave it out",
    "broken_json": "the files are not JSON lines: give plain-text files another suffix than .jsonl",
    "invalid_utf8": "the files are not UTF-8 text",
    "non_string_text": "--text-field names a field that is not text",
    "empty_document": "the documents are empty (or only whitespace the tokenizer drops)",
    "truncated_archive": "the compressed files are truncated: download them again",
    "unreadable_file": "the files cannot be read: check their permissions and format",
}


def explain_no_documents(summaries: list[dict]) -> str:
    """Why no document survived: the top reasons with counts and one place each, and a fix."""
    rejections = _collect_rejections(summaries, examples_per_reason=1)
    read = sum(s["documents_read"] for s in summaries)
    if not rejections["counts"]:
        return f"the corpus has no tokens: {read} documents read, none with text"
    top = sorted(rejections["counts"].items(), key=lambda item: (-item[1], item[0]))
    example = {item["reason"]: item for item in rejections["examples"]}
    reasons = []
    for reason, count in top[:3]:
        where = example.get(reason)
        place = ""
        if where:
            line = f":{where['line']}" if where["line"] else ""  # 0: a whole file
            place = (
                f" (e.g. {where['file']}{line}{': ' + where['detail'] if where['detail'] else ''})"
            )
        reasons.append(f"{reason.replace('_', ' ')} ×{count}{place}")
    return (
        f"no usable document: {read} read, all rejected: {'; '.join(reasons)}; "
        f"{_likely_fix(top[0][0], example.get(top[0][0]))}"
    )


def _likely_fix(reason: str, example: dict | None) -> str:
    if reason == "missing_text":
        match = re.search(
            r"no field '([^']*)'; fields: (.*)$", example["detail"] if example else ""
        )
        if match:
            fields = match.group(2).split(", ")
            guess = next((f for f in _TEXT_FIELD_NAMES if f in fields), None)
            choice = (
                f"--text-field {guess}"
                if guess
                else "--text-field NAME with the one holding the text"
            )
            return f"the records have no {match.group(1)!r} field but {', '.join(fields)}: pass {choice}"
        return "pass --text-field NAME with the field that holds the text"
    return _LIKELY_FIX.get(reason, "see the examples above")


def _claim_output(out: Path, config: PrepareConfig) -> None:
    """Record the settings in ``params.json``; refuse to mix two runs' outputs in one folder."""
    params_file = out / "params.json"
    if params_file.is_file():
        previous = read_json(params_file)
        packed = (out / "tokens").exists() or (out / MANIFEST).exists()
        # Before packing starts nothing depends on the settings (tokenized shards carry
        # their own fingerprints), so a run that failed early may be rerun with a fix.
        if previous != config.params() and packed:
            if not config.overwrite:
                changed = sorted(
                    k
                    for k in set(previous) | set(config.params())
                    if previous.get(k) != config.params().get(k)
                )
                raise PrepareError(
                    f"{out} holds a dataset prepared with other settings ({', '.join(changed)} differ); "
                    "use another --out, or --overwrite to replace it"
                )
            for name in _OUTPUTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    if not params_file.is_file() or read_json(params_file) != config.params():
        write_json(params_file, config.params())  # ranks of a job array all arrive here: write once


# ---------------------------------------------------------------------------- stage 1


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(tokenizer_json: Path, folder: Path) -> None:
    """Keep the tokenizer with the data, so training finds it even after the original moves."""
    for name in TOKENIZER_FILES:
        source = tokenizer_json.parent / name if name != "tokenizer.json" else tokenizer_json
        if source.is_file():
            with atomic_write(folder / name) as sink:
                sink.write(source.read_bytes())


def tokenize_all(
    shards,
    tokenized: Path,
    tokenizer: TokenizerInfo,
    config: PrepareConfig,
    executor,
    progress: bool,
    log: Callable[[str], None],
    samples: dict[int, DocumentSample] | None = None,
) -> list[dict]:
    """Tokenize the shards not done yet (only the documents of ``samples[shard index]``
    where given); return every shard's summary in shard order."""
    tasks = [
        TokenizeTask(
            s,
            str(tokenized),
            tokenizer.path,
            tokenizer.vocab_size,
            config.reader,
            config.strict,
            (samples or {}).get(s.index),
        )
        for s in shards
    ]
    jobs = [(t, input_fingerprint(t, tokenizer.sha256)) for t in tasks]
    todo = [job for job in jobs if not shard_is_done(*job)]
    if len(todo) < len(jobs):
        log(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} shards already tokenized")
    tokens = 0

    def postfix(summary: dict) -> dict:
        nonlocal tokens
        tokens += summary["tokens"]
        return {"tokens": f"{tokens:,}"}

    for _ in executor.map(_tokenize_job, todo, desc="tokenize", progress=progress, postfix=postfix):
        pass
    return [read_json(tokenized / f"{shard_stem(s.index)}.json") for s in shards]


def missing_shards(
    shards, tokenized: Path, tokenizer: TokenizerInfo, config: PrepareConfig
) -> list:
    tasks = [
        TokenizeTask(
            s, str(tokenized), tokenizer.path, tokenizer.vocab_size, config.reader, config.strict
        )
        for s in shards
    ]
    return [t.shard for t in tasks if not shard_is_done(t, input_fingerprint(t, tokenizer.sha256))]


def _tokenize_job(job) -> dict:
    return tokenize_shard(*job)


def _load_checked(
    tokenized: Path, shards, summaries: list[dict], config: PrepareConfig, chars: bool = False
):
    """The document table of the shards read, checked against their summaries; and the counts
    (``chars``: with character counts even where the plan does not need them)."""
    table = load_document_table(
        tokenized,
        [s.index for s in shards],
        chars=chars or config.mixture.length_estimate == "chars",
    )
    check_domains(config.mixture, table["names"])
    if config.mixture.length_estimate == "chars" and "n_chars" not in table:
        raise PrepareError(
            f"the tokenized shards in {tokenized} predate character counts, which --length-estimate "
            "chars needs: delete that folder to tokenize again, or use --length-estimate tokens"
        )
    parsed = sum(s["documents_read"] for s in summaries)
    not_tokenized = sum(s.get("documents_not_tokenized", 0) for s in summaries)
    read = parsed - not_tokenized  # tokenized: the documents the sample includes
    used = sum(s["documents_used"] for s in summaries)
    rejected = sum(s["documents_rejected"] for s in summaries)
    if read != used + rejected:
        raise PrepareError(
            f"document accounting broke: parsed {parsed} != used {used} + rejected {rejected} "
            f"+ not tokenized {not_tokenized}"
        )
    if not sum(s["tokens"] for s in summaries):
        raise PrepareError(explain_no_documents(summaries))
    if used != len(table["n_tokens"]):
        raise PrepareError(
            f"document table has {len(table['n_tokens'])} rows but shards report {used} documents"
        )
    return table, {
        "read": read,
        "used": used,
        "rejected": rejected,
        "parsed": parsed,
        "not_tokenized": not_tokenized,
        "not_read": 0,
    }


def _plan_round(
    read: set[int],
    shards,
    units: list[ShardUnit],
    tokenized: Path,
    config: PrepareConfig,
    workers: int,
    timer: PhaseTimer | None = None,
) -> Round | None:
    """The exact plan on the shards read, weighted up to the whole corpus (None: they hold no
    usable document, so the sample says nothing and everything must be read)."""
    timer = timer or PhaseTimer()
    with timer("load"):
        chosen = [shards[i] for i in sorted(read)]
        summaries = [read_json(tokenized / f"{shard_stem(s.index)}.json") for s in chosen]
        complete = len(read) == len(shards)
        if not complete and not sum(s["tokens"] for s in summaries):
            return None
        # the calibration's characters tell each document's class before it is tokenized
        calibrating = not complete and samples_documents(config.mixture)
        table, counts = _load_checked(tokenized, chosen, summaries, config, chars=calibrating)
    with timer("plan"):
        weights = None if complete else shard_weights(units, read)
        plan_result = plan_mixture(
            table, config.mixture, shard_weights=weights, n_shards=len(shards)
        )
    if weights is not None:
        by_stratum = stratum_weights(units, read)
        extra = sum(
            s["documents_read"] * (by_stratum[units[s["shard"]].stratum] - 1) for s in summaries
        )
        counts["not_read"] = round(extra) + counts["not_tokenized"]
    targets = plan_result["plan"].targets
    return Round(
        np.array(
            [[targets[d]["short"], targets[d]["long"]] for d in table["names"]], dtype=np.float64
        ),
        plan_result["selection"].cells,
        plan_result["shard_cells"],
        (table, plan_result, summaries, counts),
        np.array(
            [[s.short_docs, s.long_docs] for s in plan_result["summary"].values()], np.float64
        ),
    )


def samples_documents(mixture: MixtureConfig) -> bool:
    """Whether documents within shards may be sampled: the selection's rows are whole
    documents and each (domain, class) cell is filled on its own (cut/truncate make rows
    of parts, and --short-keep's one pass sees the domain's documents together)."""
    strategy, _ = strategy_of(mixture.strategy)
    return strategy.reshape is None and effective_short_keep(mixture) is None


def _calibrated_chars(table: dict, mixture: MixtureConfig):
    """Chars per token per domain from the calibration's table (exactly /3.68 with
    ``--length-estimate chars``, which classes documents by that alone)."""
    if mixture.length_estimate == "chars":
        return tuple(DomainChars(name, CHARS_PER_TOKEN, 1.0, 1.0) for name in table["names"])
    return calibrate_chars(
        table["names"],
        table["domains"],
        table["n_tokens"],
        table["n_chars"],
        mixture.long_threshold,
    )


def document_sample(chars, names: list[str], rates: np.ndarray, mixture: MixtureConfig):
    """The sample of one stratum: each calibrated domain's short and long rates."""
    return DocumentSample(
        mixture.seed,
        mixture.long_threshold,
        chars,
        tuple(
            (float(rates[names.index(c.name), 0]), float(rates[names.index(c.name), 1]))
            if c.name in names
            else (1.0, 1.0)
            for c in chars
        ),
    )


def reading_record(
    sampling: Sampling, units: list[ShardUnit], names: list[str], plan_result: dict, summaries
) -> dict:
    """stats.json's "reading": shards and bytes read, and per domain the share of its
    (estimated) tokens that was tokenized."""
    record = sampling.record()
    cells = plan_result.get("shard_cells")
    if cells is not None and not sampling.complete:
        read = set(sampling.read)
        estimates = sum(stratum_estimates(units, read, cells).values())
        held = plan_result["shard_tokens"].sum(axis=0)
        record["share_read_by_domain"] = {
            name: float(held[i].sum() / estimates[i].sum()) if estimates[i].sum() else 1.0
            for i, name in enumerate(names)
        }
        record["share_tokenized"] = float(held.sum() / estimates.sum()) if estimates.sum() else 1.0
        record["not_read_reason"] = NOT_READ_REASON
        if sampling.document_rates:
            record["not_tokenized_reason"] = NOT_TOKENIZED_REASON
    else:
        record["share_read_by_domain"] = {name: 1.0 for name in names}
        record["share_tokenized"] = 1.0
    return record


def dry_run(
    config: PrepareConfig,
    units: list[ShardUnit],
    calibration: list[int],
    shards,
    tokenized: Path,
    tokenizer: TokenizerInfo,
    tokenize: Callable[[list[int]], None],
    plan_on: Callable[[set[int]], Round | None],
    workers: int,
    log: Callable[[str], None],
) -> dict:
    """The plan from the calibration's estimates and what reading it costs, before any heavy work."""
    tokenize(calibration)
    read = set(calibration)
    current = plan_on(read)
    if current is None:
        raise PrepareError(
            f"the {len(read)} calibration shards hold no usable document: run with --read all to see why"
        )
    table = current.result[0]
    names = table["names"]
    estimates = stratum_estimates(units, read, current.shard_cells)
    complete = len(read) == len(units)
    rates = (
        {s: 1.0 for s in estimates}
        if config.read == "all"
        else needed_rates(current.targets, estimates, config.read_margin)
    )
    corpus = sum(estimates.values())
    to_read = (
        # documents sampled within the shards read: each cell's need of its own tokens
        cell_needs(current.targets, estimates, config.read_margin) * corpus
        if config.read != "all" and samples_documents(config.mixture)
        else sum(rates[s] * e for s, e in estimates.items())
    )
    per_core = _tokens_per_second(shards[calibration[0]], tokenizer, config)
    cores = [c for c in dict.fromkeys((workers, config.cores)) if c]
    rows = []
    for i, name in enumerate(names):
        rows.append(
            {
                "domain": name,
                "target_tokens": float(current.targets[i].sum()),
                "corpus_tokens": float(corpus[i].sum()),
                "share_read": float(to_read[i].sum() / corpus[i].sum()) if corpus[i].sum() else 0.0,
                "tokens_to_read": float(to_read[i].sum()),
            }
        )
    total = {
        "domain": "total",
        "target_tokens": float(current.targets.sum()),
        "corpus_tokens": float(corpus.sum()),
        "share_read": float(to_read.sum() / corpus.sum()) if corpus.sum() else 0.0,
        "tokens_to_read": float(to_read.sum()),
    }
    result = {
        "domains": rows,
        "total": total,
        "calibration_shards": len(calibration),
        "shards": len(units),
        "exact": complete,
        "tokens_per_second_per_core": per_core,
        "cores": cores,
        "share_read_by_stratum": rates,
    }
    log(format_dry_run(result))
    return {"dry_run": result}


def _tokens_per_second(shard, tokenizer: TokenizerInfo, config: PrepareConfig) -> float:
    """This machine's tokenization rate on one core: one calibration shard again, timed."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        task = TokenizeTask(shard, folder, tokenizer.path, tokenizer.vocab_size, config.reader)
        started = time.perf_counter()
        summary = tokenize_shard(task, {})
        seconds = time.perf_counter() - started
    return summary["tokens"] / seconds if seconds > 0 else 0.0


def format_dry_run(result: dict) -> str:
    """The dry run's table: per domain the target, the corpus, the share to read and the time."""
    rate = result["tokens_per_second_per_core"]
    cores = result["cores"]
    head = ["domain", "target", "corpus (est.)", "read", *(f"time on {c} cores" for c in cores)]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for row in [*result["domains"], result["total"]]:
        times = [
            format_duration(row["tokens_to_read"] / (rate * c)) if rate else "?" for c in cores
        ]
        lines.append(
            " | ".join(
                [
                    row["domain"],
                    format_count(round(row["target_tokens"])),
                    format_count(round(row["corpus_tokens"])),
                    f"{row['share_read']:.2%}",
                    *times,
                ]
            )
        )
    basis = (
        "exact (every shard calibrated)"
        if result["exact"]
        else (f"estimated from {result['calibration_shards']} of {result['shards']} shards")
    )
    lines.append(
        f"{basis}; tokenization at {format_count(round(rate))} tokens/s per core (measured here)"
    )
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def load_document_table(tokenized: Path, shard_ids: list[int], chars: bool = True) -> dict:
    """Concatenate the shards' document tables (the columns the plan and packing need).

    Columns are filled into arrays allocated once for all rows, and the domain labels come
    as codes straight from each file's Arrow dictionary: no Python object per document, so
    memory is the arrays themselves: 21 bytes a document (uint64 key, int8 domain, int32
    length, offset and shard where they fit; 4 more with ``chars``).
    """
    files = [tokenized / f"{shard_stem(i)}.docs.parquet" for i in shard_ids]
    # n_chars: absent from tables tokenized before it was recorded
    schemas = [pq.read_schema(f).names for f in files]
    with_chars = chars and all("n_chars" in names for names in schemas)
    # inclusion: only in shards whose documents were sampled (the others: every document)
    sampled = [("inclusion" in names) for names in schemas]
    metadata = [pq.read_metadata(f) for f in files]
    rows = [m.num_rows for m in metadata]
    total = sum(rows)
    # int32 where every value fits (a shard's offsets: its tokens; a document's length)
    narrow = {
        name: np.int32 if all(_fits_int32(m, name) for m in metadata) else np.int64
        for name in ("n_tokens", "offset", "n_chars")
    }
    table = {
        "doc_key": np.empty(total, np.uint64),
        "domains": np.empty(total, np.int16),
        "n_tokens": np.empty(total, narrow["n_tokens"]),
        "offset": np.empty(total, narrow["offset"]),
        "shard": np.empty(total, np.int32),
        **({"n_chars": np.empty(total, narrow["n_chars"])} if with_chars else {}),
        **({"inclusion": np.ones(total, np.float64)} if any(sampled) else {}),
    }
    wanted = ["doc_key", "domain", "n_tokens", "offset", *(["n_chars"] if with_chars else [])]
    codes: dict[str, int] = {}  # in order of first appearance; sorted at the end
    at = 0
    for shard, path, n, has_rates in zip(shard_ids, files, rows, sampled):
        part = pq.read_table(
            path,
            columns=[*wanted, *(["inclusion"] if has_rates else [])],
            read_dictionary=["domain"],
        )
        if has_rates:
            table["inclusion"][at : at + n] = part.column("inclusion").to_numpy()
        stop = at + n
        for name, column in (
            ("doc_key", "doc_key"),
            ("n_tokens", "n_tokens"),
            ("offset", "offset"),
        ):
            table[name][at:stop] = part.column(column).to_numpy()
        if with_chars:
            table["n_chars"][at:stop] = part.column("n_chars").to_numpy()
        domain = part.column("domain").combine_chunks()
        labels = domain.dictionary.to_pylist()
        local = np.array([codes.setdefault(label, len(codes)) for label in labels], np.int16)
        table["domains"][at:stop] = local[domain.indices.to_numpy()] if n else local[:0]
        table["shard"][at:stop] = shard
        at = stop
        del part
    names = sorted(codes)
    # int8 codes where the domains fit (SlimPajama has 7)
    remap = np.zeros(max(len(codes), 1), np.int8 if len(codes) <= 127 else np.int16)
    for name, code in codes.items():
        remap[code] = names.index(name)
    table["domains"] = remap[table["domains"]] if total else table["domains"]
    table["names"] = names
    return table


def _fits_int32(metadata: pq.FileMetaData, column: str) -> bool:
    """Whether a column's values fit int32, from the file's statistics (unknown: no)."""
    if metadata.num_rows == 0:
        return True
    names = metadata.schema.names
    if column not in names:
        return True  # not in this file: nothing to hold
    index = names.index(column)
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max or not -(2**31) <= stats.min <= stats.max < 2**31:
            return False
    return True


# ---------------------------------------------------------------------------- stage 2


def plan_mixture(
    table: dict,
    mixture: MixtureConfig,
    shard_weights: np.ndarray | None = None,
    n_shards: int | None = None,
) -> dict:
    """Plan and select; returns the plan, the selection, the packing units and both stats.

    The units are the rows that are selected and packed: the documents, or their chunks
    (``cut``) or first tokens (``truncate``), with the same columns as the document table
    plus ``rank_key``, the id that ranks and shuffles them.
    """
    if mixture.length_estimate == "chars" and "n_chars" not in table:
        raise PlanError(
            "--length-estimate chars needs character counts, which this document table lacks: tokenize again"
        )
    units = packing_units(table, mixture.strategy)
    lengths = units["n_tokens"]
    chars = units["n_chars"] if mixture.length_estimate == "chars" else None
    long = long_documents(lengths, mixture.long_threshold, chars)
    # Only a sample read: weight each unit by its shard's inverse inclusion probability, so the
    # plan aims at the whole corpus' domain and long shares; selection is among the sample.
    weights = None if shard_weights is None else shard_weights[units["shard"]]
    if weights is not None and "inclusion" in units:  # documents sampled within their shards
        weights = weights / units["inclusion"]
    summary = summarize(
        units["domains"], units["names"], lengths, mixture.long_threshold, long, weights
    )
    del weights
    plan = make_plan(summary, mixture)
    selection = select(
        plan, units["domains"], units["names"], lengths, units["rank_key"], mixture.seed, long
    )
    inverse = 1.0 / units["inclusion"] if "inclusion" in units else None
    return {
        # tokens per shard and cell: estimated for the whole shard, and tokenized
        "shard_cells": None if n_shards is None else shard_cells(units, long, n_shards, inverse),
        "shard_tokens": None if n_shards is None else shard_cells(units, long, n_shards),
        "plan": plan,
        "summary": summary,  # per domain and class: tokens and documents (estimated)
        "selection": selection,
        "units": units,
        "before": mixture_stats(
            table["domains"], table["names"], table["n_tokens"], None, mixture.long_threshold
        ),
        "after": mixture_stats(
            units["domains"], units["names"], lengths, selection.repeats, mixture.long_threshold
        ),
    }


def shard_cells(
    units: dict, long: np.ndarray, n_shards: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Tokens per shard, domain and length class (``[shard, domain, class]``), each unit
    counted ``weights`` times (1 / its inclusion rate: the shard's whole tokens)."""
    n_domains = len(units["names"])
    codes = units["shard"].astype(np.int64) * (2 * n_domains) + cell_codes(units["domains"], long)
    tokens = units["n_tokens"] if weights is None else units["n_tokens"] * weights
    counts = np.bincount(codes, weights=tokens, minlength=n_shards * 2 * n_domains)
    return counts.reshape(n_shards, n_domains, 2)


# ---------------------------------------------------------------------------- stage 3


def pack_all(
    out: Path,
    table: dict,
    plan_result: dict,
    tokenizer: TokenizerInfo,
    tokenized: Path,
    config: PrepareConfig,
    executor,
    progress: bool,
    timer: PhaseTimer | None = None,
):
    """Lay out all sequences, write the span index, then the token parts (skipping done ones)."""
    timer = timer or PhaseTimer()
    table = plan_result["units"]  # rows: the packed units (documents, or their chunks)
    lengths = table["n_tokens"]
    with timer("layout"):
        rows, copies = shuffled_pieces(
            plan_result["selection"].repeats, table["rank_key"], config.mixture.seed
        )
        layout = compute_layout(
            rows, copies, lengths, config.seq_len, tokenizer.separator_id is not None
        )
    if layout.n_sequences == 0:
        raise PrepareError(
            f"the selection holds {layout.tail_tokens_dropped} tokens, less than one sequence of {config.seq_len}: "
            "raise --tokens or lower --seq-len"
        )
    offsets = layout.seq_offsets()
    with timer("index"):
        write_index(
            out,
            {
                "span_start": layout.span_start,
                "span_length": layout.span_length,
                "span_domain": table["domains"][layout.span_row],
                "span_doc_key": table["doc_key"][layout.span_row],
                "span_doc_offset": layout.span_doc_offset,
                "span_repeat": layout.span_repeat,
            },
            offsets,
        )

    with timer("layout"):  # the parts' tasks
        itemsize = tokenizer.dtype.itemsize
        per_part = max(1, config.part_bytes // (config.seq_len * itemsize))
        shard_files = (
            tuple(
                str(tokenized / f"{shard_stem(i)}.tokens")
                for i in range(int(table["shard"].max()) + 1)
            )
            if len(table["shard"])
            else ()
        )
        tasks = []
        for part, first in enumerate(range(0, layout.n_sequences, per_part)):
            last = min(first + per_part, layout.n_sequences)
            path = part_path(out, part)
            if path.is_file() and path.stat().st_size == (last - first) * config.seq_len * itemsize:
                continue  # written whole by an earlier, interrupted run (writes are atomic)
            lo, hi = int(offsets[first]), int(offsets[last])
            span_rows = layout.span_row[lo:hi]
            tasks.append(
                PartTask(
                    path=str(path),
                    first=first,
                    last=last,
                    seq_len=config.seq_len,
                    dtype=tokenizer.dtype.str,
                    separator_id=tokenizer.separator_id,
                    shard_files=shard_files,
                    span_start=layout.span_start[lo:hi],
                    span_length=layout.span_length[lo:hi],
                    span_seq=layout.span_seq[lo:hi],
                    span_doc_offset=layout.span_doc_offset[lo:hi],
                    span_shard=table["shard"][span_rows],
                    span_shard_offset=table["offset"][span_rows],
                    span_doc_tokens=lengths[span_rows],
                )
            )
    with timer("pack"):
        for _ in executor.map(write_part, tasks, desc="pack", progress=progress, unit="part"):
            pass
    return layout, per_part


def _collect_rejections(summaries: list[dict], examples_per_reason: int = 20) -> dict:
    counts: dict[str, int] = {}
    examples: list[dict] = []
    shown: dict[str, int] = {}
    for summary in summaries:
        for reason, n in summary["rejected"].items():
            counts[reason] = counts.get(reason, 0) + n
        for item in summary["rejections"]:
            if shown.get(item["reason"], 0) < examples_per_reason:
                shown[item["reason"]] = shown.get(item["reason"], 0) + 1
                examples.append(item)
    return {"counts": counts, "examples": examples}
