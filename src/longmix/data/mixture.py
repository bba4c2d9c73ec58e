"""Mixture strategies: per-domain length statistics + a target -> a sampling plan -> a selection.

A *plan* gives, for every domain, how many tokens to take from its short documents
(length <= threshold) and from its long ones. Each strategy is a small pure function
from the corpus summary to a plan, declared once in :data:`STRATEGIES` (name, argument,
one-line doc, the paper's and Fu et al.'s description); the ``--strategy`` check, its error
message and the README table read that registry. :func:`select` then turns the plan into a
repeat count per document: within a (domain, length class) cell, documents are ranked by a
seeded hash of their id, whole copies are taken while the target allows (at most
``max_repeats``), and the fractional rest is the hash-ranked prefix that lands nearest the
target. The selection is therefore a pure function of (document ids, lengths, seed):
identical for any worker count.

With ``short_keep`` P (Fu et al.'s released code), ``per-source``, ``global`` and
``upsample`` instead keep every long document and each short one with a seeded probability
P, then take the kept documents in seeded order, once each, until each domain's budget
(``global``: the whole budget) is filled.

``cut:N`` and ``truncate:N`` reshape the document table before planning
(:func:`packing_units`): chunks of at most N tokens, or each document's first N tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LongmixError
from ..settings import setting
from ..units import format_count, parse_length
from .corpus import normalize_domain

# Fu et al.'s estimate of LLaMA tokens per character (LLAMA_CHAR_TO_TOKEN_RATIO)
CHARS_PER_TOKEN = 3.68
LENGTH_ESTIMATES = ("tokens", "chars")
_SHORT_KEEP_SALT = 2  # the keep/drop draw of short documents is independent of the ranking
_CHUNK_SALT = 3  # ranking keys of chunks made by cut:N
# Rows per step of the passes over the whole table: temporaries stay this size, whatever
# the number of documents.
ROWS_PER_STEP = 1 << 16


def row_steps(n: int) -> list[slice]:
    """``[0, n)`` in slices of :data:`ROWS_PER_STEP` rows."""
    return [slice(i, min(i + ROWS_PER_STEP, n)) for i in range(0, n, ROWS_PER_STEP)]


class PlanError(LongmixError, ValueError):
    """A strategy or its parameters cannot be applied to this corpus."""


# ---------------------------------------------------------------------------- strategy registry


@dataclass(frozen=True)
class PlanInput:
    """What a strategy's plan function sees."""

    summary: dict[str, DomainSummary]
    shares: dict[str, float]  # the starting domain mix (normalised)
    budget: int
    long_fraction: float
    argument: Any  # the strategy's parsed argument (None when absent)
    notes: list[str]


@dataclass(frozen=True)
class Strategy:
    """One mixture strategy: how it is written, checked, documented and planned."""

    name: str
    syntax: str  # as written in --strategy, e.g. "cut:N"
    doc: str  # one line: what it does
    plan: Callable[[PlanInput], dict[str, dict[str, float]]]
    argument: str = "none"  # "none", "optional" or "required"
    read_argument: Callable[[str], Any] | None = None  # text -> value; raises PlanError
    # With --short-keep: None (not applicable), "per-domain" (fill each domain's budget) or "global"
    short_keep: str | None = None
    reshape: Callable[[dict, Any], dict] | None = None  # the document table -> the packed units
    shares: Callable[[dict[str, float], Any, MixtureConfig], dict[str, float]] | None = None
    paper: str = ""  # the paper's description (Table 5 and its text)
    fu_code: str = ""  # what Fu et al.'s released code does
    flags: str = ""  # how to run it here

    def parse(self, argument: str | None) -> Any:
        if argument is None or argument == "":
            if self.argument == "required":
                raise PlanError(f"strategy {self.name} needs an argument: write {self.syntax}")
            return None
        if self.argument == "none":
            raise PlanError(f"strategy {self.name} takes no argument (got {argument!r})")
        assert self.read_argument is not None
        return self.read_argument(argument)


STRATEGIES: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    STRATEGIES[strategy.name] = strategy
    return strategy


def strategy_names() -> str:
    """``original, per-source[:F], ...`` for help texts and error messages."""
    return ", ".join(s.syntax for s in STRATEGIES.values())


def strategy_docs_table() -> str:
    """The README table of every strategy and what it does."""
    lines = ["| strategy | what it does |", "|---|---|"]
    lines += [f"| `{s.syntax}` | {s.doc} |" for s in STRATEGIES.values()]
    return "\n".join(lines)


def strategy_table() -> str:
    """The README table of every strategy: the paper's text, Fu et al.'s code, the flags here."""
    lines = ["| strategy | paper's text | Fu's code | longmix flags |", "|---|---|---|---|"]
    for s in STRATEGIES.values():
        lines.append(f"| `{s.syntax}` | {s.paper} | {s.fu_code} | {s.flags} |")
    return "\n".join(lines)


def parse_strategy(text: str) -> tuple[str, str | None]:
    """``"upsample:book,arxiv"`` -> ``("upsample", "book,arxiv")``; validates name and argument."""
    name, _, argument = text.strip().partition(":")
    name = name.lower().replace("_", "-")
    strategy = STRATEGIES.get(name)
    if strategy is None:
        raise PlanError(f"unknown strategy {text!r}: choose one of {strategy_names()}")
    try:
        strategy.parse(argument.strip() or None)
    except PlanError as err:
        raise PlanError(
            f"unknown strategy {text!r}: {err}; choose one of {strategy_names()}"
        ) from None
    return name, argument.strip() or None


def strategy_of(text: str) -> tuple[Strategy, Any]:
    """The registry entry and the parsed argument of a ``--strategy`` value."""
    name, argument = parse_strategy(text)
    strategy = STRATEGIES[name]
    return strategy, strategy.parse(argument)


def _check_strategy(text: str) -> str | None:
    try:
        parse_strategy(text)
    except PlanError as err:
        return str(err)
    return None


def _read_fraction(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise PlanError(f"the long fraction must be within 0..1 (or 0%..100%), got {text!r}")
    return value


def _read_chunk_length(text: str) -> int:
    try:
        value = parse_length(text)
    except LongmixError:
        value = 0
    if value < 1:
        raise PlanError(
            f"the length must be a positive number of tokens such as 4K or 4096, got {text!r}"
        )
    return value


def _read_domains(text: str) -> tuple[str, ...]:
    domains = tuple(dict.fromkeys(normalize_domain(d) for d in text.split(",") if d.strip()))
    if not domains:
        raise PlanError(f"name at least one domain, e.g. upsample:book,arxiv (got {text!r})")
    return domains


def _check_short_keep(value: float | None) -> str | None:
    return (
        None
        if value is None or 0.0 < value <= 1.0
        else "must be within (0, 1], e.g. 0.1 (Fu et al.'s code)"
    )


@dataclass(frozen=True)
class DomainSummary:
    short_tokens: int
    long_tokens: int
    short_docs: int
    long_docs: int

    @property
    def tokens(self) -> int:
        return self.short_tokens + self.long_tokens

    @property
    def long_share(self) -> float:
        """Share of the domain's tokens in long documents (0 for an empty domain)."""
        return self.long_tokens / self.tokens if self.tokens else 0.0


# ---------------------------------------------------------------------------- plan functions


def keep_length_mix(
    summary: dict[str, DomainSummary], shares: dict[str, float], budget: int
) -> dict[str, dict[str, float]]:
    """Each domain gets its share of the budget, split short/long as it is in the corpus."""
    targets = {}
    for domain, s in summary.items():
        amount = budget * shares[domain]
        targets[domain] = {"short": amount * (1 - s.long_share), "long": amount * s.long_share}
    return targets


def per_source(
    summary: dict[str, DomainSummary],
    shares: dict[str, float],
    budget: int,
    long_fraction: float,
    notes: list[str],
    exact: bool = False,
) -> dict[str, dict[str, float]]:
    """Keep each domain's share; within it raise the long share to ``long_fraction``.

    A domain already above the target keeps its own long share (the paper only
    down-samples short documents, it never discards long ones), unless ``exact`` asks for
    the fraction both ways. A domain without long documents cannot reach the target: it
    keeps its share, all of it short, and says so.
    """
    targets = {}
    for domain, s in summary.items():
        amount = budget * shares[domain]
        if amount > 0 and s.long_tokens == 0 and long_fraction > 0:
            notes.append(
                f"{domain}: no documents longer than the threshold; its share stays all short (target {long_fraction:.0%} long is impossible)"
            )
            long_share = 0.0
        elif s.short_tokens == 0:
            long_share = 1.0
        else:
            long_share = long_fraction if exact else max(s.long_share, long_fraction)
        targets[domain] = {"short": amount * (1 - long_share), "long": amount * long_share}
    return targets


def global_long(
    summary: dict[str, DomainSummary],
    shares: dict[str, float],
    budget: int,
    long_fraction: float,
    notes: list[str],
    exact: bool = False,
) -> dict[str, dict[str, float]]:
    """Raise the long share over the whole corpus by one long rate and one short rate (``exact``: set it).

    Domains rich in long documents grow and the others shrink: the domain mix drifts,
    which is what the paper's ablation shows.
    """
    targets = keep_length_mix(summary, shares, budget)
    long_total = sum(t["long"] for t in targets.values())
    short_total = sum(t["short"] for t in targets.values())
    if long_total == 0:
        notes.append(
            f"no documents longer than the threshold anywhere: target {long_fraction:.0%} long is impossible"
        )
        return targets
    if (long_total / (long_total + short_total) >= long_fraction and not exact) or short_total == 0:
        return targets
    long_rate = long_fraction * budget / long_total
    short_rate = (1 - long_fraction) * budget / short_total
    return {
        d: {"short": t["short"] * short_rate, "long": t["long"] * long_rate}
        for d, t in targets.items()
    }


def upsample_shares(
    shares: dict[str, float], domains: tuple[str, ...] | str, weight: float
) -> dict[str, float]:
    """Set the named domains' raw weight to ``weight``, keep the others, normalise."""
    chosen = _read_domains(domains) if isinstance(domains, str) else domains
    unknown = sorted(set(chosen) - set(shares))
    if unknown:
        raise PlanError(
            f"upsample names unknown domains: {', '.join(unknown)} (corpus has: {', '.join(sorted(shares))})"
        )
    raw = {d: (weight if d in chosen else share) for d, share in shares.items()}
    norm = sum(raw.values())
    return {d: w / norm for d, w in raw.items()}


def short_keep_targets(
    summary: dict[str, DomainSummary],
    shares: dict[str, float],
    budget: int,
    keep: float,
    per_domain: bool,
) -> dict[str, dict[str, float]]:
    """The expected outcome of Fu et al.'s drop: all long tokens and a share ``keep`` of the short ones.

    A domain's long share p becomes p / (p + keep·(1-p)). ``per_domain``: each domain
    fills its own budget; otherwise the budget is spread in proportion to what is kept,
    so domains rich in long documents grow.
    """
    kept = {d: s.long_tokens + keep * s.short_tokens for d, s in summary.items()}
    total_kept = sum(kept.values())
    targets = {}
    for domain, s in summary.items():
        if per_domain:
            amount = budget * shares[domain]
        else:
            amount = budget * kept[domain] / total_kept if total_kept else 0.0
        long_share = s.long_tokens / kept[domain] if kept[domain] else 0.0
        targets[domain] = {"short": amount * (1 - long_share), "long": amount * long_share}
    return targets


def _plan_original(p: PlanInput) -> dict[str, dict[str, float]]:
    return keep_length_mix(p.summary, p.shares, p.budget)


def _plan_per_source(p: PlanInput) -> dict[str, dict[str, float]]:
    fraction = p.long_fraction if p.argument is None else p.argument
    return per_source(
        p.summary, p.shares, p.budget, fraction, p.notes, exact=p.argument is not None
    )


def _plan_global(p: PlanInput) -> dict[str, dict[str, float]]:
    fraction = p.long_fraction if p.argument is None else p.argument
    return global_long(
        p.summary, p.shares, p.budget, fraction, p.notes, exact=p.argument is not None
    )


# ---------------------------------------------------------------------------- packing units


def whole_documents(table: dict) -> dict:
    """The document table as packing units: one unit per document."""
    return {**table, "rank_key": table["doc_key"]}


def truncate_documents(table: dict, limit: int) -> dict:
    """Each document's first ``limit`` tokens; the rest is dropped."""
    units = whole_documents(table)
    units["n_tokens"] = np.minimum(table["n_tokens"], limit)
    if "n_chars" in table:
        units["n_chars"] = table["n_chars"] * units["n_tokens"] / np.maximum(table["n_tokens"], 1)
    return units


def chunk_documents(table: dict, size: int) -> dict:
    """Every document split into consecutive chunks of at most ``size`` tokens; every token kept.

    A chunk is a unit like a document (its own separator, positions restarting): it keeps
    the document's id, domain and shard, starts ``size``·k tokens further into the shard's
    tokens, and gets its own ranking key so that chunks are selected and shuffled apart.
    """
    n_tokens = table["n_tokens"].astype(np.int64)
    counts = -(-n_tokens // size)
    row = np.repeat(np.arange(len(n_tokens), dtype=np.int64), counts)
    chunk = np.arange(len(row), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    units = {key: value[row] for key, value in table.items() if isinstance(value, np.ndarray)}
    units["names"] = table["names"]
    units["offset"] = table["offset"][row] + chunk * size
    units["n_tokens"] = np.minimum(n_tokens[row] - chunk * size, size)
    if "n_chars" in table:
        units["n_chars"] = table["n_chars"][row] * units["n_tokens"] / n_tokens[row]
    with np.errstate(over="ignore"):
        mixed = table["doc_key"][row] + chunk.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    units["rank_key"] = seeded_hash(mixed, 0, _CHUNK_SALT)
    return units


def packing_units(table: dict, strategy: str) -> dict:
    """The rows that are selected and packed: documents, or what ``cut``/``truncate`` make of them."""
    entry, argument = strategy_of(strategy)
    return entry.reshape(table, argument) if entry.reshape else whole_documents(table)


# ---------------------------------------------------------------------------- the strategies

register(
    Strategy(
        "original",
        "original",
        "the corpus' own domain and length mix",
        _plan_original,
        paper="Original / Cut at 128K: SlimPajama as it is (≈30% of tokens from documents > 4K), packed long",
        fu_code="`--down_sample_mode none`",
        flags="`--strategy original`",
    )
)
register(
    Strategy(
        "per-source",
        "per-source[:F]",
        "keep each domain's token share, raise its long share to --long-fraction (F: set it both ways)",
        _plan_per_source,
        argument="optional",
        read_argument=_read_fraction,
        short_keep="per-domain",
        paper="per-source length upsampling: keep each domain's share, raise its long share ≈30% → ≈70% (§5.3)",
        fu_code="`per_source`: keeps every long document and each short one with probability 0.1, one pass, "
        "until each domain's original token budget is filled: long share p → p/(p+0.1(1−p)) (CC 0.30 → 0.81)",
        flags="paper: `--strategy per-source --long-fraction 0.7`; code: `--strategy per-source --short-keep 0.1 "
        "--length-estimate chars`",
    )
)
register(
    Strategy(
        "global",
        "global[:F]",
        "raise the long share over the whole corpus, ignoring domains (the mix drifts)",
        _plan_global,
        argument="optional",
        read_argument=_read_fraction,
        short_keep="global",
        paper="global length upsampling: raise the long share over the whole corpus; the domain mix drifts",
        fu_code="`global`: the same drop of short documents (probability 0.1 kept), no per-domain budgets",
        flags="paper: `--strategy global --long-fraction 0.7`; code: `--strategy global --short-keep 0.1 "
        "--length-estimate chars`",
    )
)
register(
    Strategy(
        "upsample",
        "upsample:DOMAIN[,DOMAIN]",
        "give the named domains raw weight --domain-weight before normalising, length mix kept",
        _plan_original,
        argument="required",
        read_argument=_read_domains,
        short_keep="per-domain",
        shares=lambda shares, domains, config: upsample_shares(
            shares, domains, config.domain_weight
        ),
        paper="Code↑ / Book↑ / Arxiv↑: one domain upsampled",
        fu_code="`upsample_code_arxiv_book`: GitHub, ArXiv and Book together at weight 0.6 (budgets not normalised: "
        "the same proportions), plus the per-source drop of short documents; single-domain rows are not in the code",
        flags="paper: `--strategy upsample:github` (Code↑), `upsample:book`, `upsample:arxiv`; code: `--strategy upsample:github,arxiv,book --domain-weight 0.6 "
        "--short-keep 0.1 --length-estimate chars`",
    )
)
register(
    Strategy(
        "cut",
        "cut:N",
        "split every document into consecutive chunks of at most N tokens; the mix is kept",
        _plan_original,
        argument="required",
        read_argument=_read_chunk_length,
        reshape=chunk_documents,
        paper='"truncates documents into 4K-length chunks"; the result "inherits the original mixture" (§3)',
        fu_code="not in the code",
        flags="`--strategy cut:4K`",
    )
)
register(
    Strategy(
        "truncate",
        "truncate:N",
        "keep each document's first N tokens and drop the rest, then original",
        _plan_original,
        argument="required",
        read_argument=_read_chunk_length,
        reshape=truncate_documents,
        paper="not in the paper (drops tokens, so long domains such as Book shrink)",
        fu_code="not in the code",
        flags="`--strategy truncate:4K`",
    )
)


@dataclass(frozen=True)
class MixtureConfig:
    """The mixture knobs of `longmix prepare`."""

    strategy: str = setting(
        "per-source",
        check=_check_strategy,
        help=f"mixture strategy (the paper's Table 5), one of {strategy_names()}",
    )
    tokens: int | None = setting(
        None,
        unit="count",
        check=lambda v: (
            None
            if v is None or v > 0
            else "must be positive (leave it out for the corpus' own size)"
        ),
        help="token budget, e.g. 500M or 5B; default: the corpus' own size",
    )
    long_threshold: int = setting(
        4096,
        unit="length",
        check=lambda v: None if v > 0 else "must be positive",
        help="a document is long when it has more tokens than this",
    )
    long_fraction: float = setting(
        0.7,
        check=lambda v: None if 0.0 <= v <= 1.0 else "must be within 0..1",
        help="per-source / global: target share of tokens from long documents",
    )
    domain_weight: float = setting(
        0.6,
        check=lambda v: None if v > 0 else "must be positive",
        help="upsample: raw weight of each named domain before normalising (Fu's code: 0.6)",
    )
    domain_weights: tuple[tuple[str, float], ...] | None = setting(
        None,
        parse=lambda text: parse_domain_weights(text),
        metavar="D=W,...",
        help="explicit starting domain mix, e.g. cc=0.67,c4=0.15,github=0.045",
    )
    short_keep: float | None = setting(
        None,
        check=_check_short_keep,
        metavar="P",
        help="per-source / global / upsample as Fu et al.'s code: keep every long document and each short one "
        "with probability P (0.1 in his code), once each, instead of a target long fraction; "
        "other strategies ignore it",
    )
    length_estimate: str = setting(
        "tokens",
        choices=LENGTH_ESTIMATES,
        help="what decides long vs short: exact tokens, or characters / 3.68 as Fu et al.'s code",
    )
    max_repeats: int = setting(
        4,
        check=lambda v: None if v >= 1 else "must be 1 or more",
        help="no document is used more than this many times; a target that needs more "
        "takes what there is and is reported (Muennighoff et al. 2023: ~4 epochs)",
    )
    seed: int = setting(0, help="seed of the selection and of the packing order")

    def __post_init__(self) -> None:
        if self.short_keep is None or _check_strategy(self.strategy):
            return
        strategy, argument = strategy_of(self.strategy)
        if strategy.name in ("per-source", "global") and argument is not None:
            raise PlanError(
                f"strategy {self.strategy} sets a long fraction and --short-keep {self.short_keep} replaces "
                f"it: use {strategy.name} with --short-keep, or drop --short-keep"
            )


@dataclass
class Plan:
    strategy: str
    budget: int
    long_threshold: int
    truncate_to: int | None
    # domain -> {"short": tokens, "long": tokens}
    targets: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)
    max_repeats: int | None = None  # None: unbounded
    short_keep: float | None = None  # Fu et al.'s sampling: keep probability of short documents
    domain_budgets: bool = (
        True  # with short_keep: fill each domain's budget (per-source), or one (global)
    )
    cut_to: int | None = None


def long_fraction_of(config: MixtureConfig) -> float:
    """The long-token share a strategy aims at: ``per-source:0.3`` overrides ``long_fraction``."""
    strategy, argument = strategy_of(config.strategy)
    if strategy.name in ("per-source", "global") and argument is not None:
        return float(argument)
    return config.long_fraction


def effective_short_keep(config: MixtureConfig) -> float | None:
    """``short_keep`` where the strategy takes it, else None (original, cut and truncate ignore it)."""
    strategy, _ = strategy_of(config.strategy)
    return config.short_keep if strategy.short_keep else None


def parse_domain_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``"cc=0.67,c4=0.15"`` -> ``(("cc", 0.67), ("c4", 0.15))`` with names normalised."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or weight < 0 or not math.isfinite(weight):
            raise PlanError(
                f"bad domain weight {item!r}: write DOMAIN=WEIGHT, e.g. cc=0.67,book=0.05"
            )
        pairs.append((normalize_domain(name), weight))
    if not pairs or sum(w for _, w in pairs) <= 0:
        raise PlanError("domain weights must name at least one domain with a positive weight")
    return tuple(pairs)


def check_domains(config: MixtureConfig, domains: list[str] | tuple[str, ...]) -> None:
    """Refuse domain names (upsample:D, --domain-weights) the corpus cannot have, as soon as its domains are known."""
    strategy, argument = strategy_of(config.strategy)
    have = f"(corpus has: {', '.join(sorted(domains))})"
    unknown = sorted(set(argument) - set(domains)) if strategy.name == "upsample" else []
    if unknown:
        raise PlanError(f"upsample names unknown domains: {', '.join(unknown)} {have}")
    unknown = sorted({d for d, _ in config.domain_weights or ()} - set(domains))
    if unknown:
        raise PlanError(
            f"domain weights name domains the corpus lacks: {', '.join(unknown)} {have}"
        )


def long_documents(
    lengths: np.ndarray, threshold: int, chars: np.ndarray | None = None
) -> np.ndarray:
    """Which documents are long: more tokens than ``threshold``, or (``chars``) more characters / 3.68."""
    if chars is None:
        return lengths > threshold
    return chars / CHARS_PER_TOKEN > threshold


def summarize(
    domains: np.ndarray,
    names: list[str],
    lengths: np.ndarray,
    threshold: int,
    long: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, DomainSummary]:
    """Token and document counts per domain, split at the long threshold (or by ``long``).

    ``weights``: each document counts this many times (the inverse of its inclusion
    probability when only a sample was read), so the summary estimates the whole corpus.
    """
    long = lengths > threshold if long is None else long
    size = 2 * len(names)
    tokens, docs = np.zeros(size), np.zeros(size)
    for step in row_steps(len(lengths)):
        cells = cell_codes(domains[step], long[step])
        if weights is None:  # exact integers: bincount's float64 is exact below 2**53 tokens
            tokens += np.bincount(cells, weights=lengths[step], minlength=size)
            docs += np.bincount(cells, minlength=size)
        else:
            tokens += np.bincount(cells, weights=lengths[step] * weights[step], minlength=size)
            docs += np.bincount(cells, weights=weights[step], minlength=size)
    tokens, docs = np.rint(tokens).astype(np.int64), np.rint(docs).astype(np.int64)
    return {
        name: DomainSummary(
            short_tokens=int(tokens[2 * code]),
            long_tokens=int(tokens[2 * code + 1]),
            short_docs=int(docs[2 * code]),
            long_docs=int(docs[2 * code + 1]),
        )
        for code, name in enumerate(names)
    }


def cell_codes(domains: np.ndarray, long: np.ndarray) -> np.ndarray:
    """The (domain, length class) cell of every row as one small integer: 2 x domain + long."""
    return domains.astype(np.int32) * 2 + long


def make_plan(summary: dict[str, DomainSummary], config: MixtureConfig) -> Plan:
    """Dispatch to the strategy named in ``config`` (the summary must describe its packing units)."""
    strategy, argument = strategy_of(config.strategy)
    total = sum(s.tokens for s in summary.values())
    if total == 0:
        raise PlanError("the corpus has no tokens: every document was rejected or empty")
    budget = config.tokens or total
    long_fraction = long_fraction_of(config)
    if not 0.0 <= long_fraction <= 1.0:
        raise PlanError(f"long fraction must be within 0..1, got {long_fraction}")
    notes: list[str] = []
    shares = base_shares(summary, config.domain_weights, notes)
    if strategy.shares:
        shares = strategy.shares(shares, argument, config)
    short_keep = effective_short_keep(config)
    if config.short_keep is not None and short_keep is None:
        notes.append(
            f"--short-keep applies to per-source, global and upsample; {strategy.name} ignores it"
        )
    if short_keep is not None:
        targets = short_keep_targets(
            summary, shares, budget, short_keep, per_domain=strategy.short_keep == "per-domain"
        )
    else:
        targets = strategy.plan(PlanInput(summary, shares, budget, long_fraction, argument, notes))
    return Plan(
        config.strategy,
        budget,
        config.long_threshold,
        truncate_to=argument if strategy.name == "truncate" else None,
        targets=targets,
        notes=notes,
        max_repeats=config.max_repeats,
        short_keep=short_keep,
        domain_budgets=strategy.short_keep != "global",
        cut_to=argument if strategy.name == "cut" else None,
    )


def base_shares(
    summary: dict[str, DomainSummary],
    weights: tuple[tuple[str, float], ...] | None,
    notes: list[str],
) -> dict[str, float]:
    """The starting domain mix: explicit weights (normalised) or the corpus' own token shares."""
    total = sum(s.tokens for s in summary.values())
    if not weights:
        return {d: s.tokens / total for d, s in summary.items()}
    given = dict(weights)
    unknown = sorted(set(given) - set(summary))
    if unknown:
        raise PlanError(
            f"domain weights name domains the corpus lacks: {', '.join(unknown)} (corpus has: {', '.join(sorted(summary))})"
        )
    empty = [d for d, w in given.items() if w > 0 and summary[d].tokens == 0]
    if empty:
        raise PlanError(f"domains with weight but no tokens: {', '.join(empty)}")
    missing = sorted(set(summary) - set(given))
    if missing:
        notes.append(f"domains without a weight are left out: {', '.join(missing)}")
    norm = sum(given.values())
    return {d: given.get(d, 0.0) / norm for d in summary}


# ---------------------------------------------------------------------------- selection


def seeded_hash(keys: np.ndarray, seed: int, salt: int = 0) -> np.ndarray:
    """SplitMix64 of (key, seed, salt): a uniform, reproducible 64-bit rank per document."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) ^ np.uint64(
            (seed * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & (2**64 - 1)
        )
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def seeded_uniform(keys: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A reproducible draw in [0, 1) per key (53 bits of :func:`seeded_hash`)."""
    return (seeded_hash(keys, seed, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class Selection:
    repeats: np.ndarray  # copies of each document (int32, one per row of the document table)
    cells: list[dict]  # per (domain, class): target, available, achieved tokens, repeat factor
    # per domain whose target could not be met (repeat cap, or short_keep's pool used up)
    shortfalls: list[dict] = field(default_factory=list)


def select(
    plan: Plan,
    domains: np.ndarray,
    names: list[str],
    lengths: np.ndarray,
    keys: np.ndarray,
    seed: int,
    long: np.ndarray | None = None,
) -> Selection:
    """Repeat counts per document that meet each cell's token target as closely as allowed.

    ``long`` marks the long documents (default: more tokens than the plan's threshold).
    """
    long = lengths > plan.long_threshold if long is None else long
    if plan.short_keep is not None:
        repeats, limited = _select_short_keep(plan, domains, names, lengths, keys, seed, long)
    else:
        repeats, limited = _select_to_targets(plan, domains, names, lengths, keys, seed, long)
    size = 2 * len(names)
    available, achieved = cell_tokens(domains, long, lengths, size, repeats)
    most = np.zeros(size, np.int64)
    for step in row_steps(len(lengths)):
        np.maximum.at(most, cell_codes(domains[step], long[step]), repeats[step])
    cells = []
    for code, domain in enumerate(names):
        for c, length_class in enumerate(("short", "long")):
            cell = 2 * code + c
            cells.append(
                {
                    "domain": domain,
                    "class": length_class,
                    "target_tokens": round(plan.targets[domain][length_class]),
                    "available_tokens": int(available[cell]),
                    "selected_tokens": int(achieved[cell]),
                    "repeat_factor": achieved[cell] / available[cell] if available[cell] else 0.0,
                    "max_repeats": int(most[cell]),
                    "limited": bool(limited.get((domain, length_class), False)),
                }
            )
    return Selection(repeats, cells, shortfalls(cells, plan))


def cell_tokens(
    domains: np.ndarray,
    long: np.ndarray,
    lengths: np.ndarray,
    size: int,
    repeats: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell (2 x domain + long): its tokens, and its tokens x ``repeats`` (exact ints)."""
    available, achieved = np.zeros(size, np.int64), np.zeros(size, np.int64)
    for step in row_steps(len(lengths)):
        cells = cell_codes(domains[step], long[step])
        part = lengths[step].astype(np.int64)
        available += np.bincount(cells, weights=part, minlength=size).astype(np.int64)
        if repeats is not None:
            achieved += np.bincount(cells, weights=part * repeats[step], minlength=size).astype(
                np.int64
            )
    return available, achieved


def _in_cell(domains: np.ndarray, long: np.ndarray, code: int, is_long: bool, step: slice):
    """The rows of ``step`` in cell (code, is_long), as a mask of the step."""
    return (domains[step] == code) & (long[step] if is_long else ~long[step])


def ranked_prefix(
    member: Callable[[slice], np.ndarray],
    keys: np.ndarray,
    lengths: np.ndarray,
    seed: int,
    rest: float,
    available: int,
) -> np.ndarray:
    """The rows of a cell (``member(step)``: its mask in each step) taken in seeded-hash
    order until ``rest`` tokens, the document that crosses it taken when that lands nearer.

    Only the rows whose hash is under a cutoff are ranked: a prefix of the whole order
    (ties break on row, as a stable sort of the cell's rows would), widened until it holds
    ``rest`` tokens; a selection far smaller than its cell never sorts the cell.
    """
    share = min(1.0, 2.0 * rest / available + 1e-4) if available else 1.0
    while True:
        cutoff = None if share >= 1.0 else np.uint64(int(share * 2**64))
        rows, hashes = [], []
        for step in row_steps(len(lengths)):
            index = np.flatnonzero(member(step)) + step.start
            rank = seeded_hash(keys[index], seed)
            if cutoff is not None:
                keep = rank < cutoff
                index, rank = index[keep], rank[keep]
            rows.append(index)
            hashes.append(rank)
        found = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        if cutoff is None or int(lengths[found].sum()) >= rest:
            break
        share *= 4
    order = found[np.argsort(np.concatenate(hashes), kind="stable")] if rows else found
    cumulative = np.cumsum(lengths[order], dtype=np.int64)
    take = int(np.searchsorted(cumulative, rest))  # cumulative[take] >= rest
    if take < len(order) and cumulative[take] - rest < rest - (cumulative[take - 1] if take else 0):
        take += 1  # including the crossing document lands nearer the target
    return order[:take]


def _select_to_targets(
    plan: Plan,
    domains: np.ndarray,
    names: list[str],
    lengths: np.ndarray,
    keys: np.ndarray,
    seed: int,
    long: np.ndarray,
) -> tuple[np.ndarray, dict]:
    """Whole copies while the target allows (at most ``max_repeats``), then the hash-ranked prefix nearest the rest."""
    repeats = np.zeros(len(lengths), dtype=np.int32)
    cap = plan.max_repeats
    limited = {}
    tokens, _ = cell_tokens(domains, long, lengths, 2 * len(names))
    for code, domain in enumerate(names):
        for c, length_class in enumerate(("short", "long")):
            target = plan.targets[domain][length_class]
            available = int(tokens[2 * code + c])
            if not available or target <= 0:
                limited[(domain, length_class)] = target >= 1  # wanted tokens, has none
                continue
            whole = int(target // available)
            if cap is not None and whole >= cap:
                # a whole copy more than the cap allows is missing: take the cap, report the rest
                limited[(domain, length_class)] = target - cap * available >= 1
                whole, rest = cap, 0.0
            else:
                rest = target - whole * available
            if whole:
                for step in row_steps(len(lengths)):
                    repeats[step][_in_cell(domains, long, code, bool(c), step)] += whole
            if rest > 0:
                # ranks of this cell only, and only of the rows its rest can reach
                member = lambda step, code=code, c=c: _in_cell(domains, long, code, bool(c), step)  # noqa: E731
                repeats[ranked_prefix(member, keys, lengths, seed, rest, available)] += 1
    return repeats, limited


def _select_short_keep(
    plan: Plan,
    domains: np.ndarray,
    names: list[str],
    lengths: np.ndarray,
    keys: np.ndarray,
    seed: int,
    long: np.ndarray,
) -> tuple[np.ndarray, dict]:
    """Fu et al.'s one pass: keep long documents and short ones with probability P, in seeded order, until the budget.

    As his stream, the document that crosses the budget is still taken; no document twice.
    """
    assert plan.short_keep is not None
    repeats = np.zeros(len(lengths), dtype=np.int32)
    kept = long | (seeded_uniform(keys, seed, _SHORT_KEEP_SALT) < plan.short_keep)
    if plan.domain_budgets:
        groups = [
            ([d], np.flatnonzero(kept & (domains == code)), sum(plan.targets[d].values()))
            for code, d in enumerate(names)
        ]
    else:
        groups = [(list(names), np.flatnonzero(kept), plan.budget)]
    limited = {}
    for group_names, rows, budget in groups:
        order = rows[np.argsort(seeded_hash(keys[rows], seed), kind="stable")]
        cumulative = np.cumsum(lengths[order])
        take = (
            min(int(np.searchsorted(cumulative, budget, side="left")) + 1, len(order))
            if budget >= 1
            else 0
        )
        repeats[order[:take]] = 1
        short_of_budget = budget - (int(cumulative[take - 1]) if take else 0) >= 1
        for domain in group_names:
            for length_class in ("short", "long"):
                limited[(domain, length_class)] = (
                    short_of_budget and plan.targets[domain][length_class] >= 1
                )
    return repeats, limited


def shortfalls(cells: list[dict], plan: Plan) -> list[dict]:
    """One record per domain with a limited cell: target vs achieved tokens and long share."""
    out = []
    for domain in plan.targets:
        mine = [c for c in cells if c["domain"] == domain]
        if not any(c["limited"] for c in mine):
            continue
        target = sum(c["target_tokens"] for c in mine)
        achieved = sum(c["selected_tokens"] for c in mine)
        target_long = sum(c["target_tokens"] for c in mine if c["class"] == "long")
        achieved_long = sum(c["selected_tokens"] for c in mine if c["class"] == "long")
        reason = (
            f"short_keep {plan.short_keep:g} keeps too few documents, none used twice"
            if plan.short_keep is not None
            else f"at most {plan.max_repeats} uses per document"
        )
        out.append(
            {
                "domain": domain,
                "target_tokens": target,
                "achieved_tokens": achieved,
                "target_long_share": target_long / target if target else 0.0,
                "achieved_long_share": achieved_long / achieved if achieved else 0.0,
                "reason": reason,
            }
        )
    return out


def format_shortfall(record: dict) -> str:
    """One warning line: ``web: target 70.0% long of 1.20M tokens, achieved 41.3% long of 800K (...)``."""
    return (
        f"{record['domain']}: target {record['target_long_share']:.1%} long of {format_count(record['target_tokens'])} "
        f"tokens, achieved {record['achieved_long_share']:.1%} long of {format_count(record['achieved_tokens'])} "
        f"({record['reason']})"
    )
