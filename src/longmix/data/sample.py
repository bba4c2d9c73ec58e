"""Read what the budget needs: a seeded, stratified sample of shards that covers every target.

A budget that is 1% of a corpus needs a few percent of it tokenized, not all of it. The
shards (the tokenize stage's units: one record file, or a group of plain-text files) are
grouped into *strata* by the folder that holds them (SlimPajama's ``chunkN``, or a folder
per domain). Within a stratum they are ordered by a seeded hash of their name, so the
same shards are chosen for any worker count or executor, and every sample is a prefix of
that order: a larger sample contains a smaller one, and a rerun reuses what is tokenized.

1. **Calibrate**: tokenize the first shards of every stratum (``calibration`` of them,
   at least ``calibration_min`` in all).
2. **Estimate**: a stratum's tokens per (domain, length class) cell are its sampled tokens
   times (stratum bytes / sampled bytes); the plan is made on these full-corpus estimates.
3. **Read**: each stratum reads the share of its bytes that covers, times ``margin``, the
   largest share any of its cells needs (:func:`needed_rates`); the plan is then made
   again on the exact lengths. A cell that still falls short extends the sample
   (:func:`sample_until_covered`, at most :data:`MAX_ROUNDS` rounds, the last reading all).

**Documents within shards** (``documents=True``): reading a shard (decompress, parse) is
far cheaper than tokenizing it, so a shard read need not be tokenized whole. Each
document's (domain, length class) cell is told from its characters (chars per token of
its domain, measured on the calibration) and it is tokenized when a seeded hash of its
key falls under its cell's rate (:class:`DocumentSample`); a document near the threshold,
whose class the characters cannot tell, is always tokenized. A stratum is then read at
the largest need of its cells and each cell tokenized at its need over that rate, and
every document tokenized weighs 1 / (its shard's and its own inclusion rate).

Pure functions over shard names, sizes and per-shard token counts; no tokenizer here.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_ROUNDS = 8
# A budget that needs more than this share of the corpus reads all of it: a sample would
# save little and the exact plan on the whole corpus is the simpler answer.
READ_ALL_ABOVE = 0.5
NOT_READ_REASON = "not read: outside the sample the budget needs"
NOT_TOKENIZED_REASON = "not tokenized: outside the sample the budget needs"
# The document draw is independent of the selection's and the shuffle's hashes.
_DOCUMENT_SALT = 5
# Chars-per-token spread assumed at least this wide (x or / this) around a domain's mean,
# however uniform the calibration looked: a document inside it is always tokenized.
MIN_BAND = 1.05
# The band holds the calibration's per-document ratios between these quantiles: a document
# outside it may still be misclassed, which costs precision, never correctness (it carries
# the rate it was drawn at, and the exact plan checks the cells are covered).
BAND_QUANTILES = (0.01, 0.99)
# A cell's documents are sampled at a rate giving at least this many of them (in
# expectation): the estimate of its tokens is then within a few percent (relative standard
# error about cv / sqrt(n), cv of document lengths about 1), however small the budget.
MIN_CELL_DOCUMENTS = 200
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ShardUnit:
    """What sampling knows of a shard before reading it."""

    index: int
    label: str
    stratum: str
    size: int  # bytes on disk


def stratum_of(label: str) -> str:
    """The folder of the shard's first file (``train/chunk3``), or ``""`` at the top level."""
    return label.rsplit("/", 1)[0] if "/" in label else ""


def shard_units(shards: Sequence) -> list[ShardUnit]:
    """One unit per shard (:class:`longmix.data.corpus.Shard`): index, name, stratum, size."""
    return [
        ShardUnit(s.index, s.labels[0], stratum_of(s.labels[0]), sum(map(_size, s.paths)))
        for s in shards
    ]


def _size(path: str) -> int:
    return os.stat(path).st_size


def order_key(label: str, seed: int) -> int:
    """A seeded 64-bit rank of a shard from its name (the same on every machine)."""
    digest = hashlib.blake2b(f"{label}\0{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def hash_order(units: Sequence[ShardUnit], seed: int) -> dict[str, list[ShardUnit]]:
    """Each stratum's shards in seeded order; strata sorted by name."""
    strata: dict[str, list[ShardUnit]] = {}
    for unit in units:
        strata.setdefault(unit.stratum, []).append(unit)
    return {
        name: sorted(members, key=lambda u: (order_key(u.label, seed), u.index))
        for name, members in sorted(strata.items())
    }


def calibration_set(
    units: Sequence[ShardUnit], fraction: float, minimum: int, seed: int
) -> list[int]:
    """The first shards of every stratum's order: ``fraction`` of it (at least one), and at
    least ``minimum`` in all, spread in proportion to the strata's sizes."""
    if not units:
        return []
    share = min(1.0, max(fraction, minimum / len(units)))
    chosen = []
    for members in hash_order(units, seed).values():
        k = max(1, math.ceil(share * len(members)))
        chosen.extend(u.index for u in members[:k])
    return sorted(chosen)


def prefix_for(order: Sequence[ShardUnit], rate: float) -> list[int]:
    """The shortest prefix of a stratum's order holding at least ``rate`` of its bytes."""
    total = sum(u.size for u in order)
    want = rate * total
    taken, held = [], 0
    for unit in order:
        if held >= want and taken:
            break
        taken.append(unit.index)
        held += unit.size
    return taken


def stratum_weights(units: Sequence[ShardUnit], read: set[int]) -> dict[str, float]:
    """Per stratum, its bytes over its bytes read: the inverse of the realised inclusion
    probability (Horvitz-Thompson in Hajek's form: exactly 1 for a stratum read whole)."""
    total: dict[str, int] = {}
    held: dict[str, int] = {}
    for unit in units:
        total[unit.stratum] = total.get(unit.stratum, 0) + unit.size
        if unit.index in read:
            held[unit.stratum] = held.get(unit.stratum, 0) + unit.size
    return {s: (total[s] / held[s] if held.get(s) else 0.0) for s in sorted(total)}


def shard_weights(units: Sequence[ShardUnit], read: set[int]) -> np.ndarray:
    """The weight of every document of shard i (by shard index; 0 for shards not read)."""
    by_stratum = stratum_weights(units, read)
    out = np.zeros(max((u.index for u in units), default=-1) + 1, dtype=np.float64)
    for unit in units:
        if unit.index in read:
            out[unit.index] = by_stratum[unit.stratum]
    return out


def stratum_estimates(
    units: Sequence[ShardUnit], read: set[int], shard_cells: np.ndarray
) -> dict[str, np.ndarray]:
    """Full-corpus tokens per stratum and cell: sampled tokens x the stratum's weight.

    ``shard_cells[i, d, c]``: tokens of shard i in domain d, class c (0 short, 1 long).
    """
    weights = stratum_weights(units, read)
    out = {s: np.zeros(shard_cells.shape[1:], dtype=np.float64) for s in weights}
    for unit in units:
        if unit.index in read and unit.index < len(shard_cells):
            out[unit.stratum] += shard_cells[unit.index] * weights[unit.stratum]
    return out


def needed_rates(
    targets: np.ndarray, estimates: dict[str, np.ndarray], margin: float
) -> dict[str, float]:
    """Per stratum, the share of it to read so that every cell's expected tokens read reach
    ``margin`` x its target: the largest ``margin * target / corpus tokens`` over the cells
    the stratum holds (reading each stratum at that rate covers the cell in expectation).

    ``targets[d, c]``: the plan's tokens per domain and class, same layout as the estimates.
    """
    totals = sum(estimates.values()) if estimates else np.zeros_like(targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(totals > 0, margin * targets / totals, 0.0)
    return {
        s: float(min(1.0, need[est > 0].max(initial=0.0))) for s, est in sorted(estimates.items())
    }


def document_uniform(key: int, seed: int) -> float:
    """``seeded_uniform`` of one key in plain Python (the tokenize loop's per-document draw)."""
    x = key ^ ((seed * 0x9E3779B97F4A7C15 + _DOCUMENT_SALT * 0xD1B54A32D192ED03) & _MASK64)
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((x ^ (x >> 31)) >> 11) / float(1 << 53)


def document_uniforms(keys: np.ndarray, seed: int) -> np.ndarray:
    """:func:`document_uniform` of many keys at once (the same numbers)."""
    from .mixture import seeded_uniform

    return seeded_uniform(keys, seed, _DOCUMENT_SALT)


@dataclass(frozen=True)
class DomainChars:
    """A domain's characters per token (calibrated) and the band of ratios it was seen in."""

    name: str
    chars_per_token: float
    low: float  # tokens = chars / (chars_per_token x r) for some r within [low, high]
    high: float


@dataclass(frozen=True)
class DocumentSample:
    """Which documents of a shard are tokenized (picklable; part of the shard's fingerprint).

    ``rates``: per domain (same order as ``chars``) the inclusion rate of short and long
    documents. A domain not listed is tokenized whole.
    """

    seed: int
    threshold: int
    chars: tuple[DomainChars, ...]
    rates: tuple[tuple[float, float], ...]

    def rate(self, domain: str, n_chars: int) -> float:
        """The inclusion rate of a document of ``domain`` with ``n_chars`` characters."""
        for entry, (short, long) in zip(self.chars, self.rates):
            if entry.name == domain:
                estimate = n_chars / entry.chars_per_token
                if estimate > self.threshold * entry.high:
                    return long
                if estimate <= self.threshold * entry.low:
                    return short
                return 1.0  # near the threshold: its class is uncertain
        return 1.0

    def rates_of(self, domains: np.ndarray, names: Sequence[str], n_chars: np.ndarray):
        """:meth:`rate` of many documents (domain codes into ``names``) at once."""
        out = np.ones(len(n_chars), dtype=np.float64)
        for entry, (short, long) in zip(self.chars, self.rates):
            if entry.name not in names:
                continue
            mine = domains == names.index(entry.name)
            estimate = n_chars / entry.chars_per_token
            out[mine & (estimate > self.threshold * entry.high)] = long
            out[mine & (estimate <= self.threshold * entry.low)] = short
        return out

    def includes(self, key: int, rate: float) -> bool:
        return rate >= 1.0 or document_uniform(key, self.seed) < rate


def calibrate_chars(
    names: Sequence[str],
    domains: np.ndarray,
    n_tokens: np.ndarray,
    n_chars: np.ndarray,
    threshold: int,
) -> tuple[DomainChars, ...]:
    """Per domain: characters per token over the calibration, and the band of per-document
    ratios (:data:`BAND_QUANTILES`) among documents of at least a quarter of the threshold
    (short ones vary more and are far from it), at least :data:`MIN_BAND` each side."""
    out = []
    for code, name in enumerate(names):
        mine = domains == code
        tokens, chars = n_tokens[mine], n_chars[mine]
        if not tokens.sum():
            continue
        mean = float(chars.sum() / tokens.sum())
        near = tokens >= threshold / 4
        if near.any():
            ratio = chars[near] / tokens[near] / mean
            low, high = (float(q) for q in np.quantile(ratio, BAND_QUANTILES))
        else:  # no document near the threshold to measure: a wide band
            low, high = 1 / (2 * MIN_BAND), 2 * MIN_BAND
        out.append(DomainChars(name, mean, min(low, 1 / MIN_BAND), max(high, MIN_BAND)))
    return tuple(out)


def cell_needs(targets: np.ndarray, estimates: dict[str, np.ndarray], margin: float) -> np.ndarray:
    """Per cell, the share of its corpus tokens to tokenize: ``margin x target / tokens``."""
    totals = sum(estimates.values()) if estimates else np.zeros_like(targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.minimum(1.0, np.where(totals > 0, margin * targets / totals, 0.0))


def document_rates(
    need: np.ndarray, shard_rates: dict[str, float], documents: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per stratum and cell, the documents' rate so that shard rate x it reaches the need;
    and, given the cells' ``documents`` in the corpus, at least :data:`MIN_CELL_DOCUMENTS`
    of each cell that has a target in expectation (the floor never raises a shard rate)."""
    if documents is not None:
        with np.errstate(divide="ignore"):
            floor = np.where(documents > 0, MIN_CELL_DOCUMENTS / documents, 0.0)
        need = np.where(need > 0, np.maximum(need, floor), need)
    out = {}
    for stratum, rate in shard_rates.items():
        out[stratum] = np.minimum(1.0, need / rate) if rate > 0 else np.ones_like(need)
    return out


def expected_share(
    estimates: dict[str, np.ndarray], shard_rates: dict[str, float], doc_rates: dict
) -> float:
    """The share of the corpus' tokens the rates tokenize, in expectation."""
    total = sum(float(e.sum()) for e in estimates.values())
    held = sum(
        shard_rates.get(s, 0.0) * float((doc_rates.get(s, 1.0) * e).sum())
        for s, e in estimates.items()
    )
    return held / total if total else 1.0


@dataclass
class Round:
    """What one exact plan on the shards read says (returned by the caller's planner)."""

    targets: np.ndarray  # [domain, class] tokens the plan wants
    cells: list[dict]  # the selection's cells (target, available, limited)
    shard_cells: np.ndarray  # [shard, domain, class] tokens read
    result: object = None  # the caller's plan, handed back unchanged
    documents: np.ndarray | None = None  # [domain, class] documents in the corpus (estimated)


@dataclass
class Sampling:
    """Which shards were read and why: the record kept in stats.json and the manifest."""

    mode: str  # "auto" or "all"
    n_shards: int
    read: tuple[int, ...]
    calibration: tuple[int, ...] = ()
    rates: dict[str, float] = field(default_factory=dict)  # per stratum: share of bytes read
    rounds: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    # per stratum, [domain, class] share of the documents of the shards read tokenized
    document_rates: dict[str, list] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.read) == self.n_shards

    def covers(self, cells: list[dict]) -> bool:
        """Whether the selection made on the shards read is the one the whole corpus would
        give: every cell with a target has at least that many tokens read and is not limited
        (a cell the whole corpus cannot fill either is covered only by reading everything)."""
        if self.complete:
            return True
        return all(
            c["target_tokens"] < 1
            or (c["available_tokens"] >= c["target_tokens"] and not c["limited"])
            for c in cells
        )

    def record(self, names: Sequence[str] = (), read_share: dict[str, float] | None = None) -> dict:
        return {
            "mode": self.mode,
            "shards": self.n_shards,
            "shards_read": len(self.read),
            "calibration_shards": len(self.calibration),
            "bytes_read": self.bytes_read,
            "bytes": self.bytes_total,
            "share_read": self.bytes_read / self.bytes_total if self.bytes_total else 1.0,
            "share_read_by_stratum": dict(self.rates),
            "share_read_by_domain": dict(read_share or {}),
            "rounds": self.rounds,
            **({"document_rates": dict(self.document_rates)} if self.document_rates else {}),
        }


def sampling_of(
    units: Sequence[ShardUnit],
    read: set[int],
    mode: str,
    calibration=(),
    rounds: int = 0,
    doc_rates: dict[str, np.ndarray] | None = None,
) -> Sampling:
    """The record of a read set: per stratum the share of its bytes read."""
    total: dict[str, int] = {}
    held: dict[str, int] = {}
    for unit in units:
        total[unit.stratum] = total.get(unit.stratum, 0) + unit.size
        held[unit.stratum] = held.get(unit.stratum, 0) + (unit.size if unit.index in read else 0)
    return Sampling(
        mode,
        len(units),
        tuple(sorted(read)),
        tuple(sorted(calibration)),
        {s: (held[s] / total[s] if total[s] else 1.0) for s in sorted(total)},
        rounds,
        sum(held.values()),
        sum(total.values()),
        {s: np.asarray(r).tolist() for s, r in sorted((doc_rates or {}).items())},
    )


def choose(
    units: Sequence[ShardUnit], rates: dict[str, float], seed: int, at_least: set[int]
) -> set[int]:
    """``at_least`` plus, per stratum, the prefix of its order holding ``rates[stratum]``."""
    chosen = set(at_least)
    for stratum, order in hash_order(units, seed).items():
        chosen.update(prefix_for(order, rates.get(stratum, 0.0)))
    return chosen


def share_of(units: Sequence[ShardUnit], read: set[int]) -> float:
    total = sum(u.size for u in units)
    return sum(u.size for u in units if u.index in read) / total if total else 1.0


def sample_until_covered(
    units: Sequence[ShardUnit],
    calibration: Sequence[int],
    margin: float,
    seed: int,
    tokenize: Callable[..., None],
    plan_on: Callable[[set[int]], Round],
    log: Callable[[str], None] = lambda message: None,
    documents: bool = False,
) -> tuple[Sampling, Round]:
    """Tokenize the calibration, then rounds of (choose, tokenize, plan exactly) until the
    selection on the shards read covers every cell; the last round reads everything.

    Each round only adds shards (and raises document rates), and shards already tokenized
    at their rates are reused (``tokenize`` skips them), so a run killed mid-round resumes
    where it stopped. With ``documents``, ``tokenize(ids, rates)`` gets per stratum the
    [domain, class] rates of the documents to tokenize (None: all of them); the calibration
    shards are always tokenized whole.
    """
    everything = {u.index for u in units}
    calibrated = set(calibration)
    read = set(calibration)

    def run(ids: set[int], rates: dict | None) -> None:
        if documents:
            tokenize(sorted(ids - calibrated), rates)
        else:
            tokenize(sorted(ids - read))

    if documents:
        tokenize(sorted(read), None)
    else:
        tokenize(sorted(read))
    current = plan_on(read)
    rounds = 0
    rates: dict[str, float] = {}
    doc_rates: dict[str, np.ndarray] = {}
    while read != everything:
        record = sampling_of(units, read, "auto", calibration, rounds)
        if current is not None and rounds and record.covers(current.cells):
            break
        rounds += 1
        if current is None:  # the shards read hold no usable document: nothing to go on
            doc_rates = {}
            run(everything, None)
            read = everything
            current = plan_on(read)
            break
        estimates = stratum_estimates(units, read, current.shard_cells)
        if documents:
            need = _document_needs(current, estimates, record, doc_rates, margin)
            wanted = {s: float(need[e > 0].max(initial=0.0)) for s, e in estimates.items()}
        else:
            wanted = needed_rates(current.targets, estimates, margin)
            for stratum, est in estimates.items():  # a cell still short: at least double its strata
                for cell in current.cells:
                    if _short(cell) and _holds(est, cell, current):
                        wanted[stratum] = min(1.0, max(wanted[stratum], 2 * record.rates[stratum]))
        rates = {s: max(wanted.get(s, 0.0), rates.get(s, 0.0)) for s in estimates}
        changed = False
        if documents:
            fresh = document_rates(need, rates, current.documents)
            merged = {
                s: np.maximum(r, doc_rates[s])
                if s in doc_rates and doc_rates[s].shape == r.shape
                else r
                for s, r in fresh.items()
            }
            changed = any(
                s not in doc_rates or not np.array_equal(merged[s], doc_rates[s]) for s in merged
            )
            doc_rates = merged
        more = choose(units, rates, seed, read)
        if more == read and not changed and record.covers(current.cells):
            break  # the calibration already covers the margin the targets need
        share = expected_share(estimates, rates, doc_rates) if documents else share_of(units, more)
        if rounds >= MAX_ROUNDS or share > READ_ALL_ABOVE or (more == read and not changed):
            more, doc_rates = everything, {}
        log(
            f"read round {rounds}: {len(more)} of {len(units)} shards "
            f"({share_of(units, more):.2%} of the corpus' bytes"
            + (f", about {share:.2%} of its tokens tokenized)" if doc_rates else ")")
        )
        run(more, doc_rates or None)
        read = more
        current = plan_on(read)
    return sampling_of(units, read, "auto", calibration, rounds, doc_rates), current


def _document_needs(
    current: Round,
    estimates: dict[str, np.ndarray],
    record: Sampling,
    doc_rates: dict[str, np.ndarray],
    margin: float,
) -> np.ndarray:
    """Per cell the share of its tokens to tokenize; a cell still short gets at least twice
    the largest share any stratum tokenized of it."""
    need = cell_needs(current.targets, estimates, margin)
    flat = need.reshape(-1)
    for index, cell in enumerate(current.cells):
        if _short(cell):
            had = max(
                record.rates[s] * float(np.asarray(doc_rates.get(s, 1.0)).reshape(-1)[index])
                if s in doc_rates and doc_rates[s].size == flat.size
                else record.rates[s]
                for s in estimates
            )
            flat[index] = min(1.0, max(flat[index], 2 * had))
    return need


def _short(cell: dict) -> bool:
    return cell["target_tokens"] >= 1 and (
        cell["available_tokens"] < cell["target_tokens"] or cell["limited"]
    )


def _holds(estimate: np.ndarray, cell: dict, current: Round) -> bool:
    """Whether a stratum's estimate has tokens in the cell (by its position in the cells)."""
    index = current.cells.index(cell)
    return bool(estimate.reshape(-1)[index] > 0)
