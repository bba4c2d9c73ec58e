"""Mixture strategies: per-domain length statistics + a target -> a sampling plan -> a selection.

A *plan* gives, for every domain, how many tokens to take from its short documents
(length <= threshold) and from its long ones. Each strategy is a small pure function
from the corpus summary to a plan. :func:`select` then turns the plan into a repeat count
per document: within a (domain, length class) cell, documents are ranked by a seeded hash
of their id, whole copies are taken while the target allows (upsampling proper), and the
fractional rest is the hash-ranked prefix that lands nearest the target. The selection is
therefore a pure function of (document ids, lengths, seed): identical for any worker count.

Strategies (Fu et al. 2024, Table 5):

- ``original``: the corpus as it is;
- ``per-source``: keep each domain's token share, raise the long share within each domain
  to ``long_fraction`` (the paper's recommendation); ``per-source:0.3`` sets the fraction
  in the name (a corpus already long-heavy can thus be brought down to SlimPajama's ~30%);
- ``global``: raise the long share over the whole corpus, ignoring domains (``global:F`` too);
- ``upsample:D1,D2``: give the named domains raw weight ``domain_weight`` before
  normalising (Fu et al.'s code uses 0.6: Book / ArXiv / Code upsampling);
- ``cut:N``: truncate every document to N tokens, then ``original``.

``domain_weights`` (e.g. ``cc=0.67,c4=0.15``) replace the corpus' own domain shares as the
starting mix of any strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import LongmixError
from ..settings import setting
from ..units import parse_length
from .corpus import normalize_domain

STRATEGIES = ("original", "per-source[:F]", "global[:F]", "upsample:DOMAIN[,DOMAIN]", "cut:N")


class PlanError(LongmixError, ValueError):
    """A strategy or its parameters cannot be applied to this corpus."""


def _check_strategy(text: str) -> str | None:
    try:
        parse_strategy(text)
    except PlanError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class MixtureConfig:
    """The mixture knobs of `longmix prepare`."""

    strategy: str = setting("per-source", check=_check_strategy,
                            help=f"mixture strategy, one of {', '.join(STRATEGIES)} (the paper's Table 5)")
    tokens: int | None = setting(None, unit="count",
                                 check=lambda v: None if v is None or v > 0 else "must be positive (leave it out for the corpus' own size)",
                                 help="token budget, e.g. 500M or 5B; default: the corpus' own size")
    long_threshold: int = setting(4096, unit="length", check=lambda v: None if v > 0 else "must be positive",
                                  help="a document is long when it has more tokens than this")
    long_fraction: float = setting(0.7, check=lambda v: None if 0.0 <= v <= 1.0 else "must be within 0..1",
                                   help="per-source / global: target share of tokens from long documents")
    domain_weight: float = setting(0.6, check=lambda v: None if v > 0 else "must be positive",
                                   help="upsample: raw weight of each named domain before normalising (Fu's code: 0.6)")
    domain_weights: tuple[tuple[str, float], ...] | None = setting(
        None, parse=lambda text: parse_domain_weights(text), metavar="D=W,...",
        help="explicit starting domain mix, e.g. cc=0.67,c4=0.15,github=0.045")
    seed: int = setting(0, help="seed of the selection and of the packing order")


@dataclass(frozen=True)
class DomainSummary:
    short_tokens: int
    long_tokens: int
    short_docs: int
    long_docs: int

    @property
    def tokens(self) -> int:
        return self.short_tokens + self.long_tokens


@dataclass
class Plan:
    strategy: str
    budget: int
    long_threshold: int
    truncate_to: int | None
    # domain -> {"short": tokens, "long": tokens}
    targets: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)


def parse_strategy(text: str) -> tuple[str, str | None]:
    """``"upsample:book,arxiv"`` -> ``("upsample", "book,arxiv")``; validates the name."""
    name, _, argument = text.strip().partition(":")
    name = name.lower().replace("_", "-")
    if name in ("original", "per-source", "global") and not argument:
        return name, None
    if name in ("per-source", "global") and _fraction(argument) is not None:
        return name, argument
    if name == "upsample" and any(d.strip() for d in argument.split(",")):
        return name, argument
    if name == "cut" and argument:
        try:
            length = parse_length(argument)
        except ValueError:
            length = 0
        if length < 1:
            raise PlanError(f"bad strategy {text!r}: cut needs a positive token count, e.g. cut:4K")
        return name, argument
    raise PlanError(f"unknown strategy {text!r}: choose one of {', '.join(STRATEGIES)}")


def _fraction(text: str) -> float | None:
    try:
        value = float(text.strip().rstrip("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def long_fraction_of(config: MixtureConfig) -> float:
    """The long-token share a strategy aims at: ``per-source:0.3`` overrides ``long_fraction``."""
    name, argument = parse_strategy(config.strategy)
    if name in ("per-source", "global") and argument:
        return float(_fraction(argument))
    return config.long_fraction


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
            raise PlanError(f"bad domain weight {item!r}: write DOMAIN=WEIGHT, e.g. cc=0.67,book=0.05")
        pairs.append((normalize_domain(name), weight))
    if not pairs or sum(w for _, w in pairs) <= 0:
        raise PlanError("domain weights must name at least one domain with a positive weight")
    return tuple(pairs)


def summarize(domains: np.ndarray, names: list[str], lengths: np.ndarray, threshold: int) -> dict[str, DomainSummary]:
    """Token and document counts per domain, split at the long threshold."""
    long = lengths > threshold
    out = {}
    for code, name in enumerate(names):
        in_domain = domains == code
        out[name] = DomainSummary(
            short_tokens=int(lengths[in_domain & ~long].sum()),
            long_tokens=int(lengths[in_domain & long].sum()),
            short_docs=int((in_domain & ~long).sum()),
            long_docs=int((in_domain & long).sum()),
        )
    return out


# ---------------------------------------------------------------------------- strategies


def make_plan(summary: dict[str, DomainSummary], config: MixtureConfig) -> Plan:
    """Dispatch to the strategy named in ``config`` (the summary must already reflect ``cut``)."""
    name, argument = parse_strategy(config.strategy)
    total = sum(s.tokens for s in summary.values())
    if total == 0:
        raise PlanError("the corpus has no tokens: every document was rejected or empty")
    budget = config.tokens or total
    long_fraction = long_fraction_of(config)
    if not 0.0 <= long_fraction <= 1.0:
        raise PlanError(f"long fraction must be within 0..1, got {long_fraction}")
    notes: list[str] = []
    shares = base_shares(summary, config.domain_weights, notes)
    if name == "original":
        targets = keep_length_mix(summary, shares, budget)
    elif name == "per-source":
        targets = per_source(summary, shares, budget, long_fraction, notes, exact=argument is not None)
    elif name == "global":
        targets = global_long(summary, shares, budget, long_fraction, notes, exact=argument is not None)
    elif name == "upsample":
        targets = keep_length_mix(summary, upsample_shares(shares, argument or "", config.domain_weight), budget)
    else:  # cut: lengths were truncated by the caller; the mix is otherwise the original one
        targets = keep_length_mix(summary, shares, budget)
    truncate_to = parse_length(argument) if name == "cut" else None
    return Plan(config.strategy, budget, config.long_threshold, truncate_to, targets, notes)


def base_shares(
    summary: dict[str, DomainSummary], weights: tuple[tuple[str, float], ...] | None, notes: list[str]
) -> dict[str, float]:
    """The starting domain mix: explicit weights (normalised) or the corpus' own token shares."""
    total = sum(s.tokens for s in summary.values())
    if not weights:
        return {d: s.tokens / total for d, s in summary.items()}
    given = dict(weights)
    unknown = sorted(set(given) - set(summary))
    if unknown:
        raise PlanError(f"domain weights name domains the corpus lacks: {', '.join(unknown)} (corpus has: {', '.join(sorted(summary))})")
    empty = [d for d, w in given.items() if w > 0 and summary[d].tokens == 0]
    if empty:
        raise PlanError(f"domains with weight but no tokens: {', '.join(empty)}")
    missing = sorted(set(summary) - set(given))
    if missing:
        notes.append(f"domains without a weight are left out: {', '.join(missing)}")
    norm = sum(given.values())
    return {d: given.get(d, 0.0) / norm for d in summary}


def keep_length_mix(summary: dict[str, DomainSummary], shares: dict[str, float], budget: int) -> dict[str, dict[str, float]]:
    """Each domain gets its share of the budget, split short/long as it is in the corpus."""
    targets = {}
    for domain, s in summary.items():
        amount = budget * shares[domain]
        long_share = s.long_tokens / s.tokens if s.tokens else 0.0
        targets[domain] = {"short": amount * (1 - long_share), "long": amount * long_share}
    return targets


def per_source(
    summary: dict[str, DomainSummary], shares: dict[str, float], budget: int, long_fraction: float, notes: list[str],
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
        original = s.long_tokens / s.tokens if s.tokens else 0.0
        if amount > 0 and s.long_tokens == 0 and long_fraction > 0:
            notes.append(f"{domain}: no documents longer than the threshold; its share stays all short (target {long_fraction:.0%} long is impossible)")
            long_share = 0.0
        elif s.short_tokens == 0:
            long_share = 1.0
        else:
            long_share = long_fraction if exact else max(original, long_fraction)
        targets[domain] = {"short": amount * (1 - long_share), "long": amount * long_share}
    return targets


def global_long(
    summary: dict[str, DomainSummary], shares: dict[str, float], budget: int, long_fraction: float, notes: list[str],
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
        notes.append(f"no documents longer than the threshold anywhere: target {long_fraction:.0%} long is impossible")
        return targets
    if (long_total / (long_total + short_total) >= long_fraction and not exact) or short_total == 0:
        return targets
    long_rate = long_fraction * budget / long_total
    short_rate = (1 - long_fraction) * budget / short_total
    return {d: {"short": t["short"] * short_rate, "long": t["long"] * long_rate} for d, t in targets.items()}


def upsample_shares(shares: dict[str, float], domains_text: str, weight: float) -> dict[str, float]:
    """Set the named domains' raw weight to ``weight``, keep the others, normalise."""
    chosen = [normalize_domain(d) for d in domains_text.split(",") if d.strip()]
    unknown = sorted(set(chosen) - set(shares))
    if unknown or not chosen:
        raise PlanError(f"upsample names unknown domains {unknown or domains_text!r}; corpus has: {', '.join(sorted(shares))}")
    raw = {d: (weight if d in chosen else share) for d, share in shares.items()}
    norm = sum(raw.values())
    return {d: w / norm for d, w in raw.items()}


# ---------------------------------------------------------------------------- selection


def seeded_hash(keys: np.ndarray, seed: int, salt: int = 0) -> np.ndarray:
    """SplitMix64 of (key, seed, salt): a uniform, reproducible 64-bit rank per document."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & (2**64 - 1))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@dataclass
class Selection:
    repeats: np.ndarray  # copies of each document (int32, one per row of the document table)
    cells: list[dict]  # per (domain, class): target, available, achieved tokens, repeat factor


def select(plan: Plan, domains: np.ndarray, names: list[str], lengths: np.ndarray, keys: np.ndarray, seed: int) -> Selection:
    """Repeat counts per document that meet each cell's token target as closely as possible."""
    repeats = np.zeros(len(lengths), dtype=np.int32)
    ranks = seeded_hash(keys, seed)
    long = lengths > plan.long_threshold
    cells = []
    for code, domain in enumerate(names):
        for length_class, members in (("short", ~long), ("long", long)):
            rows = np.flatnonzero((domains == code) & members)
            target = plan.targets[domain][length_class]
            available = int(lengths[rows].sum())
            achieved = 0
            if available and target > 0:
                whole = int(target // available)
                rest = target - whole * available
                order = rows[np.argsort(ranks[rows], kind="stable")]
                cumulative = np.cumsum(lengths[order])
                take = int(np.searchsorted(cumulative, rest))  # cumulative[take] >= rest
                if take < len(order) and cumulative[take] - rest < rest - (cumulative[take - 1] if take else 0):
                    take += 1  # including the crossing document lands nearer the target
                repeats[rows] += whole
                repeats[order[:take]] += 1
                achieved = whole * available + (int(cumulative[take - 1]) if take else 0)
            cells.append(
                {
                    "domain": domain,
                    "class": length_class,
                    "target_tokens": round(target),
                    "available_tokens": available,
                    "selected_tokens": achieved,
                    "repeat_factor": achieved / available if available else 0.0,
                    "max_repeats": int(repeats[rows].max()) if len(rows) else 0,
                }
            )
    return Selection(repeats, cells)
