"""Paired differences between a study's mixtures, with bootstrap confidence intervals, and a
verdict on each claim of Fu et al. (2024) that the study's evaluations can test.

The unit of a comparison is what every run of the study evaluates the same way: a needle cell
(length, depth), a RULER sample (task, length, sample), a held-out sequence (domain, index). Two
arms are compared on the units both have, so each unit's difference is paired. The confidence
interval is a two-level percentile bootstrap: each resample draws the seeds (runs) of each arm
with replacement, then the units with replacement (the same units for both arms, so pairs stay
pairs), and computes the statistic on the drawn data. With one seed per arm the first level draws
that one run every time: the interval then covers the units only, not run-to-run variation.

A claim *holds* when the interval excludes 0 in the claimed direction, *does not hold* when it
excludes 0 in the opposite direction, and is *inconclusive at this scale* otherwise. A claim that
something is not hurt (0-4K loss) holds when the interval's upper end is within the tolerance or the
interval contains 0, and does not hold when its lower end is above the tolerance.

Every number names its metric and that metric's definition; a lenient metric (needle token
accuracy or Fu's word score, RULER's partial credit) is shown only beside the strict one
(exact match, containment, every expected string found), which decides the verdict.

Pure functions of the evaluation folders: numpy only, no model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SPLIT = 4096  # the paper's 0-4K / 4K-max split
TOLERANCE = 0.01  # nats: Fu et al. count a loss difference above 0.01
RESAMPLES = 2000
LEVEL = 0.95

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive at this scale"
SKIPPED = "not tested"

# role -> arm names tried in order (the first one the study has); "reference" defaults to the baseline
DEFAULT_ROLES: dict[str, tuple[str, ...]] = {
    "per_source": ("per-source",),
    "global": ("global",),
    "original": ("original", "per-source:0.3"),
    "cut": ("cut:4K",),
    "upsample": ("upsample:book",),
}
# role -> how an arm's strategy is recognised when no arm has one of the names above
ROLE_STRATEGIES: dict[str, Callable[[str], bool]] = {
    "per_source": lambda s: s == "per-source",
    "global": lambda s: s == "global",
    "original": lambda s: s == "original",
    "cut": lambda s: s.startswith("cut:"),
    "upsample": lambda s: s.startswith("upsample:"),
}

CLAIMS = {
    "a": "Per-source length upsampling beats global upsampling and the original mixture on 4K-max "
    "loss without hurting 0-4K loss",
    "b": "Cutting documents at 4K hurts retrieval (needle, RULER niah) while its loss looks fine",
    "c": "Upsampling one domain trades other domains' loss: its own 4K-max loss falls, the others' rises",
    "d": "Retrieval extends beyond the training length",
}

RULER_METRICS = {
    "correct": "RULER: 1 if the generated answer holds every expected string (the task's metric is 1), "
    "else 0",
    "score": "RULER's task metric on the generated answer: share of the expected strings found "
    "(string_match_all; QA: string_match_part), partial credit",
}
LOSS_LEGACY = (
    "a token's bucket is its position in a packed mixed-domain sequence "
    "(results written before the per-domain definition)"
)


# ---------------------------------------------------------------------------- loaders


@dataclass
class Scores:
    """One run's scores on one evaluation, per unit: ``units[key][field]`` (a float, or for loss
    a pair ``(summed NLL, tokens)``)."""

    kind: str  # needle | ruler | loss
    folder: str
    units: dict[tuple, dict[str, object]]
    metrics: dict[str, str]  # field -> its definition
    info: dict = field(default_factory=dict)

    def values(self, name: str, keep: Callable[[tuple], bool] | None = None) -> dict[tuple, object]:
        """``{unit key: value of field name}`` over the units ``keep`` accepts (all when None)."""
        return {
            key: unit[name]
            for key, unit in self.units.items()
            if name in unit and (keep is None or keep(key))
        }


def _rows(path: Path) -> list[dict]:
    from .common import read_jsonl

    return list(read_jsonl(path)) if path.is_file() else []


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_needle(folder: str | Path) -> Scores | None:
    """Per cell (length, depth): every metric the run wrote. ``info``: the protocol, the headline
    metric the summary names, the strict metric beside it, the training length."""
    from .needle import GENERATION_METRICS, METRICS, headline_metric

    folder = Path(folder)
    rows = _rows(folder / "results.jsonl")
    if not rows:
        return None
    summary, config = _json(folder / "summary.json"), _json(folder / "config.json")
    protocol = rows[0].get("protocol") or summary.get("protocol") or config.get("protocol")
    metrics = [m for m in METRICS if all(m in r for r in rows)]
    if not metrics:
        return None
    headline = summary.get("headline") or headline_metric(protocol, metrics)
    if headline not in metrics:
        headline = summary.get("metric") if summary.get("metric") in metrics else None
    headline = headline or ("token_accuracy" if "token_accuracy" in metrics else metrics[0])
    if headline in GENERATION_METRICS:
        strict = "contains" if "contains" in metrics else headline
    else:
        strict = "exact" if "exact" in metrics else headline
    units = {(int(r["length"]), int(r["depth"])): {m: float(r[m]) for m in metrics} for r in rows}
    return Scores(
        "needle",
        str(folder),
        units,
        {m: METRICS[m] for m in metrics},
        {
            "protocol": protocol or "unrecorded",
            "headline": headline,
            "strict": strict,
            "train_length": summary.get("train_length"),
            "generation": [m for m in metrics if m in GENERATION_METRICS],
        },
    )


def needle_label(scores: Scores, metric: str) -> str:
    """``needle contains (protocol fu, generation)``: the metric and how it was produced."""
    from .needle import GENERATION_METRICS

    how = "generation" if metric in GENERATION_METRICS else "teacher forcing"
    return f"needle {metric} (protocol {scores.info['protocol']}, {how})"


def load_ruler(folder: str | Path) -> Scores | None:
    """Per sample (task, length, sample): ``correct`` (every expected string found) and ``score``."""
    folder = Path(folder)
    rows = _rows(folder / "results.jsonl")
    if not rows:
        return None
    units = {
        (str(r["task"]), int(r["length"]), int(r["sample"])): {
            "score": float(r["score"]),
            "correct": float(r["score"] >= 1.0 - 1e-9),
        }
        for r in rows
    }
    config = _json(folder / "config.json")
    return Scores(
        "ruler",
        str(folder),
        units,
        dict(RULER_METRICS),
        {"expected": config.get("expected"), "partial": not (folder / "summary.json").is_file()},
    )


def _bucket_low(label: str) -> int:
    from ..units import parse_length

    return parse_length(label.split("-")[0])


def load_loss(folder: str | Path, split: int = SPLIT) -> Scores | None:
    """Per held-out sequence (domain, index): ``(summed NLL, tokens)`` below and above ``split``
    (fields ``0-4K`` and ``4K-max``), so a loss over units is a token-weighted mean. A folder
    without per-sequence rows (written before they were) gives no units; ``info["summary"]`` keeps
    its summary for point estimates."""
    folder = Path(folder)
    summary = _json(folder / "summary.json")
    rows = _rows(folder / "results.jsonl")
    if not rows and not summary:
        return None
    short, long = f"0-{_k(split)}", f"{_k(split)}-max"
    units: dict[tuple, dict[str, object]] = {}
    for r in rows:
        lows = [_bucket_low(b) for b in r["buckets"]]
        highs = [*lows[1:], None]
        fields: dict[str, object] = {}
        below = [i for i, hi in enumerate(highs) if hi is not None and hi <= split]
        above = [i for i, lo in enumerate(lows) if lo >= split]
        if len(below) + len(above) == len(lows):  # no bucket straddles the split
            for name, part in ((short, below), (long, above)):
                fields[name] = (
                    float(sum(r["nll"][i] for i in part)),
                    float(sum(r["tokens"][i] for i in part)),
                )
        units[(str(r["domain"]), int(r["sequence"]))] = fields
    definition = summary.get("definition") or LOSS_LEGACY
    return Scores(
        "loss",
        str(folder),
        units,
        {
            short: f"mean next-token NLL (nats) of tokens with fewer than {split} tokens of context, "
            f"token-weighted over the held-out sequences; {definition}",
            long: f"mean next-token NLL (nats) of tokens with at least {split} tokens of context, "
            f"token-weighted over the held-out sequences; {definition}",
        },
        {
            "definition": definition,
            "summary": summary or None,
            "short": short,
            "long": long,
            "no_units": None
            if rows
            else "no per-sequence rows (results.jsonl; loss evaluations write them since they "
            "were added): rerun the loss evaluation for intervals",
        },
    )


def load_run(folder: str | Path, split: int = SPLIT) -> dict[str, Scores]:
    """Every evaluation of one run's eval folder that a comparison can use: ``needle`` and its
    variants (``needle@fu``), ``ruler``, ``loss``."""
    folder = Path(folder)
    loaders = {"needle": load_needle, "ruler": load_ruler, "loss": lambda f: load_loss(f, split)}
    out: dict[str, Scores] = {}
    for name, loader in loaders.items():
        for path in [folder / name, *sorted(folder.glob(f"{name}@*"))]:
            if path.is_dir() and (scores := loader(path)) is not None:
                out[path.name] = scores
    return out


def _k(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens and tokens % 1024 == 0 else str(tokens)


# ---------------------------------------------------------------------------- the bootstrap


@dataclass(frozen=True)
class Difference:
    """A statistic of arm A against arm B on paired units: the estimate on all the data and its
    percentile interval over the resamples."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    seeds: tuple[int, int]  # runs of A and of B (B: 0 for a one-arm statistic)
    units: int

    def ci_text(self, digits: int = 3) -> str:
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


Statistic = Callable[[np.ndarray, np.ndarray | None], float]


def mean_difference(a: np.ndarray, b: np.ndarray | None) -> float:
    """Mean over A's runs and units minus B's (B None: A's mean)."""
    return float(a.mean() - (b.mean() if b is not None else 0.0))


def pooled_difference(a: np.ndarray, b: np.ndarray | None) -> float:
    """For ``(sum, count)`` units, e.g. (summed NLL, tokens): A's pooled mean minus B's, each
    ``Σ sums / Σ counts`` over runs and units (a token-weighted mean loss)."""

    def pooled(x: np.ndarray) -> float:
        tokens = x[..., 1].sum()
        return float(x[..., 0].sum() / tokens) if tokens else float("nan")

    return pooled(a) - (pooled(b) if b is not None else 0.0)


def above(level: float) -> Statistic:
    """A one-arm statistic: A's mean minus ``level`` (e.g. chance)."""
    return lambda a, b: float(a.mean() - level)


def _stack(runs: Sequence[Mapping[tuple, object]], keys: list[tuple]) -> np.ndarray:
    return np.stack([np.array([np.asarray(run[k], float) for k in keys]) for run in runs])


def paired_difference(
    a_runs: Sequence[Mapping[tuple, object]],
    b_runs: Sequence[Mapping[tuple, object]] | None,
    statistic: Statistic = mean_difference,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Difference:
    """Two-level bootstrap of ``statistic(A, B)`` (arrays shaped runs × units × value).

    ``a_runs``/``b_runs``: one mapping per seed, unit key -> value (a float, or a tuple such as
    ``(summed NLL, tokens)``). The units compared are those every run of both arms has, in key
    order. Each resample draws each arm's runs with replacement, then the units with replacement,
    the same units for both arms; the estimate is the statistic on all the data. ``b_runs`` None:
    a one-arm statistic (against chance). Deterministic given ``seed``.
    """
    if not a_runs or (b_runs is not None and not b_runs):
        raise ValueError("each arm needs at least one run")
    every = [*a_runs, *(b_runs or [])]
    common = set(every[0])
    for run in every[1:]:
        common &= set(run)
    keys = sorted(common)
    if not keys:
        raise ValueError("the runs have no unit in common")
    a = _stack(a_runs, keys)
    b = _stack(b_runs, keys) if b_runs is not None else None
    estimate = statistic(a, b)
    rng = np.random.default_rng(seed)
    n_a, n_b, n_units = len(a), (len(b) if b is not None else 0), len(keys)
    stats = np.empty(resamples)
    for r in range(resamples):
        ia = rng.integers(0, n_a, n_a)
        ib = rng.integers(0, n_b, n_b) if b is not None else None
        units = rng.integers(0, n_units, n_units)
        stats[r] = statistic(
            a[ia][:, units], b[ib][:, units] if b is not None and ib is not None else None
        )
    tail = (1 - level) / 2
    if np.isnan(stats).all():
        low = high = float("nan")
    else:  # a resample without tokens in a bucket has no pooled loss: it is left out
        low, high = np.nanquantile(stats, [tail, 1 - tail])
    return Difference(
        float(estimate), float(low), float(high), level, resamples, (n_a, n_b), n_units
    )


def decide(diff: Difference, direction: int) -> str:
    """``direction`` +1: A is claimed higher than B; -1: lower."""
    low, high = (diff.low, diff.high) if direction > 0 else (-diff.high, -diff.low)
    return HOLDS if low > 0 else FAILS if high < 0 else INCONCLUSIVE


def decide_not_worse(diff: Difference, tolerance: float) -> str:
    """A claimed not higher than B (a loss not hurt): holds when the interval's upper end is
    within ``tolerance`` or the interval contains 0; does not hold when its lower end exceeds it."""
    if diff.high <= tolerance or diff.low <= 0 <= diff.high:
        return HOLDS
    return FAILS if diff.low > tolerance else INCONCLUSIVE


# ---------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class NotTested:
    """Why a comparison was not made; ``point``: an estimate without interval, where one exists."""

    reason: str
    point: float | None = None


@dataclass
class Comparison:
    """What to compare and how: the field, the units kept, the statistic."""

    evaluation: str  # a key of load_run's result: needle, needle@fu, ruler, loss
    field: str
    metric: str  # the label shown: what the number is, how it was produced
    definition: str
    statistic: Statistic = mean_difference
    keep: Callable[[tuple], bool] | None = None


Runs = list[dict[str, Scores]]  # one arm: load_run of each seed's eval folder
NO_LOSS_UNITS = "no per-sequence loss rows (evaluated before loss wrote them): point estimate only"


def _difference(a: Runs, b: Runs | None, c: Comparison, options: dict) -> Difference | NotTested:
    """The bootstrap of one comparison, or why it cannot be made."""
    arms = [a] if b is None else [a, b]
    if any(c.evaluation not in run for arm in arms for run in arm):
        return NotTested(f"no {c.evaluation} results for every run")
    if c.evaluation == "loss" and any(
        run["loss"].info.get("no_units") for arm in arms for run in arm
    ):
        return NotTested(NO_LOSS_UNITS, _loss_point(a, b, c) if b is not None else None)
    runs = [[run[c.evaluation].values(c.field, c.keep) for run in arm] for arm in arms]
    try:
        diff = paired_difference(
            runs[0], runs[1] if b is not None else None, c.statistic, **options
        )
    except ValueError as err:
        return NotTested(f"{c.evaluation}: {err}")
    if not np.isfinite([diff.estimate, diff.low, diff.high]).all():
        return NotTested(f"{c.evaluation}: nothing to average (no tokens in the bucket)")
    return diff


def _loss_point(a: Runs, b: Runs, c: Comparison) -> float | None:
    """A's pooled loss minus B's from the summaries (runs without per-sequence rows)."""

    def pooled(runs: Runs) -> float | None:
        total = tokens = 0.0
        for run in runs:
            summary = run["loss"].info.get("summary") or {}
            for domain, row in summary.get("domains", {}).items():
                if domain == "all" or row.get(c.field) is None:
                    continue
                if c.keep is not None and not c.keep((domain, 0)):
                    continue
                n = row.get(f"{c.field} tokens")
                n = _bucket_tokens(summary, domain, c.field) if n is None else n
                total, tokens = total + row[c.field] * n, tokens + n
        return total / tokens if tokens else None

    pa, pb = pooled(a), pooled(b)
    return None if pa is None or pb is None else pa - pb


def _bucket_tokens(summary: dict, domain: str, bucket: str) -> float:
    """Tokens of ``bucket`` (``0-4K``, ``4K-max``) from the fine curve's counts (summaries written
    without per-bucket counts)."""
    from ..units import parse_length

    low, _, high = bucket.partition("-")
    lo, hi = parse_length(low), (None if high == "max" else parse_length(high))
    edges, counts = summary.get("edges", []), summary["domains"][domain].get("curve_tokens", [])
    return float(sum(n for e, n in zip(edges, counts) if e >= lo and (hi is None or e < hi)))


def _numbers(diff: Difference | NotTested) -> dict:
    if isinstance(diff, NotTested):
        return {"reason": diff.reason, "point_estimate": diff.point}
    return {**asdict(diff), "seeds": list(diff.seeds), "reason": None}


def _row(
    claim: str,
    comparison: str,
    c: Comparison,
    diff: Difference | NotTested,
    rule: str,
    decide_with: Callable[[Difference], str],
    beside: Sequence[tuple[Comparison, Difference | NotTested]] = (),
) -> dict:
    return {
        "claim": claim,
        "claim_text": CLAIMS[claim],
        "comparison": comparison,
        "evaluation": c.evaluation,
        "metric": c.metric,
        "definition": c.definition,
        "rule": rule,
        **_numbers(diff),
        "verdict": SKIPPED if isinstance(diff, NotTested) else decide_with(diff),
        "beside": [
            {"metric": o.metric, "definition": o.definition, **_numbers(d)} for o, d in beside
        ],
    }


def skipped(claim: str, reason: str, comparison: str = "–") -> dict:
    """A row for a comparison the study cannot make (an arm or an evaluation missing)."""
    return {
        "claim": claim,
        "claim_text": CLAIMS[claim],
        "comparison": comparison,
        "metric": "–",
        "definition": None,
        "rule": None,
        "reason": reason,
        "verdict": SKIPPED,
        "beside": [],
    }


def resolve_roles(
    arms: Sequence[str],
    baseline: str,
    roles: Mapping[str, str] | None = None,
    strategies: Mapping[str, str] | None = None,
) -> dict[str, str | None]:
    """Role -> arm name (None: the study has none): the caller's mapping first, then the default
    names, then the first arm whose strategy (``strategies``: arm name -> strategy) fits the role;
    ``reference`` (what cut:4K and the upsampled mixture are compared with): the baseline."""
    roles = dict(roles or {})
    out: dict[str, str | None] = {}
    for role, names in DEFAULT_ROLES.items():
        if role in roles:
            out[role] = roles[role] if roles[role] in arms else None
            continue
        found = next((n for n in names if n in arms), None)
        if found is None and strategies:
            found = next((n for n in arms if ROLE_STRATEGIES[role](strategies.get(n, ""))), None)
        out[role] = found
    reference = roles.get("reference", baseline)
    out["reference"] = reference if reference in arms else None
    return out


def upsampled_domains(name: str, strategy: str | None = None) -> list[str]:
    """``upsample:book,arxiv`` -> ``["book", "arxiv"]`` (from the strategy, else the arm's name)."""
    for text in (strategy, name):
        if text and text.startswith("upsample:"):
            return [d.strip() for d in text.split(":", 1)[1].split(",") if d.strip()]
    return []


def loss_comparison(
    runs: Runs, which: str, keep: Callable[[tuple], bool] | None = None, where: str = "all domains"
) -> Comparison | None:
    """The pooled (token-weighted) loss of the ``short`` (0-4K) or ``long`` (4K-max) bucket."""
    loss = next((run["loss"] for run in runs if "loss" in run), None)
    if loss is None:
        return None
    name = loss.info[which]
    return Comparison(
        "loss",
        name,
        f"loss {name} ({where}, token-weighted)",
        loss.metrics[name],
        pooled_difference,
        keep,
    )


def decide_lower(diff: Difference) -> str:
    return decide(diff, -1)


def decide_higher(diff: Difference) -> str:
    return decide(diff, +1)


LOWER = "A − B < 0: CI below 0"
HIGHER = "A − B > 0: CI above 0"


def verdicts(
    groups: Mapping[str, Sequence[str | Path]],
    train_len: int,
    baseline: str,
    base_model: str | Path | None = None,
    roles: Mapping[str, str] | None = None,
    strategies: Mapping[str, str] | None = None,
    tolerance: float = TOLERANCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    split: int = SPLIT,
) -> list[dict]:
    """One row per (claim, comparison, metric) of :data:`CLAIMS`, each with its estimate, interval
    and verdict, or the reason it was not tested.

    ``groups``: arm name -> its runs' eval folders (one per seed); ``baseline``: an arm name;
    ``base_model``: the base model's eval folder; ``roles``: role (``per_source``, ``global``,
    ``original``, ``cut``, ``upsample``, ``reference``) -> arm name, over :func:`resolve_roles`'s
    defaults; ``strategies``: arm name -> strategy, to recognise arms named otherwise.
    """
    runs = {
        arm: [load_run(f, split) for f in folders] for arm, folders in groups.items() if folders
    }
    base = [load_run(base_model, split)] if base_model and Path(base_model).is_dir() else None
    role = resolve_roles(list(runs), baseline, roles, strategies)
    options = {"resamples": resamples, "seed": seed, "level": level}
    within = f"A − B ≤ +{tolerance}: CI upper end ≤ +{tolerance} or CI contains 0"

    def not_worse(diff: Difference) -> str:
        return decide_not_worse(diff, tolerance)

    def missing(*names: str) -> str | None:
        absent = [n.replace("_", "-") for n in names if role.get(n) is None]
        return f"no {' or '.join(absent)} arm in the study" if absent else None

    def loss_rows(claim, label, a, b, parts) -> list[dict]:
        out = []
        for which, keep, where, rule, how in parts:
            c = loss_comparison(a + b, which, keep, where)
            if c is None:
                return [skipped(claim, "no loss results", label)]
            out.append(_row(claim, label, c, _difference(a, b, c, options), rule, how))
        return out

    rows: list[dict] = []
    # a. per-source against global and against the original mixture, on loss
    for other in ("global", "original"):
        label = f"{role['per_source'] or 'per-source'} − {role[other] or other}"
        if (why := missing("per_source", other)) is not None:
            rows.append(skipped("a", why, label))
            continue
        a, b = runs[role["per_source"]], runs[role[other]]
        rows += loss_rows(
            "a",
            label,
            a,
            b,
            [
                ("long", None, "all domains", LOWER, decide_lower),
                ("short", None, "all domains", within, not_worse),
            ],
        )

    # b. cut:4K against the reference: retrieval lower, loss not higher
    if (why := missing("cut", "reference")) is not None:
        rows.append(skipped("b", why))
    else:
        a, b = runs[role["cut"]], runs[role["reference"]]
        label = f"{role['cut']} − {role['reference']}"
        rows += _needle_rows("b", label, a, b, options, None, LOWER, decide_lower)
        rows += _ruler_rows("b", label, a, b, options)
        rows += loss_rows(
            "b",
            label,
            a,
            b,
            [
                ("short", None, "all domains", within, not_worse),
                ("long", None, "all domains", within, not_worse),
            ],
        )

    # c. one domain upsampled against the reference: its own 4K-max loss lower, the others' higher
    if (why := missing("upsample", "reference")) is not None:
        rows.append(skipped("c", why))
    else:
        up, ref = role["upsample"], role["reference"]
        own = upsampled_domains(up, (strategies or {}).get(up))
        label = f"{up} − {ref}"
        if not own:
            rows.append(skipped("c", f"which domain {up} upsamples is not known", label))
        else:
            rows += loss_rows(
                "c",
                label,
                runs[up],
                runs[ref],
                [
                    ("long", lambda k: k[0] in own, ", ".join(own), LOWER, decide_lower),
                    ("long", lambda k: k[0] not in own, "other domains", HIGHER, decide_higher),
                ],
            )

    # d. needle cells beyond the training length: per-source against the base model, or chance
    if (why := missing("per_source")) is not None:
        rows.append(skipped("d", why))
    else:
        ps = role["per_source"]
        where = f"cells > {_k(train_len)}"
        beyond = lambda key: key[0] > train_len  # noqa: E731
        if base is not None:
            rows += _needle_rows(
                "d",
                f"{ps} − base model",
                runs[ps],
                base,
                options,
                beyond,
                HIGHER,
                decide_higher,
                where,
            )
        else:
            rule = "A − chance > 0: CI above 0"
            rows += _needle_rows(
                "d",
                f"{ps} − chance (0)",
                runs[ps],
                None,
                options,
                beyond,
                rule,
                decide_higher,
                where,
            )
    return rows


def _needle_rows(
    claim: str,
    label: str,
    a: Runs,
    b: Runs | None,
    options: dict,
    keep: Callable[[tuple], bool] | None,
    rule: str,
    how: Callable[[Difference], str],
    where: str = "all cells",
) -> list[dict]:
    """One row per needle evaluation (``needle``, ``needle@fu``...) the runs have: the strict
    metric decides, the headline metric beside it when it is another one."""
    every = a + (b or [])
    keys = sorted({k for run in every for k in run if k.split("@")[0] == "needle"})
    if not keys:
        return [skipped(claim, "no needle results", label)]
    rows = []
    for key in keys:
        scores = next(run[key] for run in every if key in run)
        strict, headline = scores.info["strict"], scores.info["headline"]
        if b is None and strict not in ("exact", "contains"):
            reason = f"{key}: the chance level of {strict} is not known; evaluate the base model"
            rows.append(skipped(claim, reason, label))
            continue
        statistic = mean_difference if b is not None else above(0.0)
        compare = [
            Comparison(
                key, m, f"{needle_label(scores, m)}, {where}", scores.metrics[m], statistic, keep
            )
            for m in dict.fromkeys([strict, headline])
        ]
        beside = [(c, _difference(a, b, c, options)) for c in compare[1:]]
        rows.append(
            _row(
                claim, label, compare[0], _difference(a, b, compare[0], options), rule, how, beside
            )
        )
    return rows


def _ruler_rows(claim: str, label: str, a: Runs, b: Runs, options: dict) -> list[dict]:
    """RULER's needle tasks (niah_*): every expected string found, partial credit beside."""
    if not any("ruler" in run for run in a + b):
        return [skipped(claim, "no RULER results", label)]
    niah = lambda key: key[0].startswith("niah")  # noqa: E731
    strict, lenient = (
        Comparison("ruler", m, f"RULER niah {m} (generation)", RULER_METRICS[m], keep=niah)
        for m in ("correct", "score")
    )
    beside = [(lenient, _difference(a, b, lenient, options))]
    return [
        _row(claim, label, strict, _difference(a, b, strict, options), LOWER, decide_lower, beside)
    ]


def claim_verdicts(rows: list[dict]) -> dict[str, dict]:
    """Claim -> its verdict over the comparisons tested (does not hold when one does not, holds
    when every one holds, inconclusive otherwise; not tested when none was) and the counts."""
    out = {}
    for claim in CLAIMS:
        mine = [r for r in rows if r["claim"] == claim]
        tested = [r["verdict"] for r in mine if r["verdict"] != SKIPPED]
        if not tested:
            verdict = SKIPPED
        elif FAILS in tested:
            verdict = FAILS
        elif all(v == HOLDS for v in tested):
            verdict = HOLDS
        else:
            verdict = INCONCLUSIVE
        out[claim] = {
            "text": CLAIMS[claim],
            "verdict": verdict,
            "tested": len(tested),
            "comparisons": len(mine),
        }
    return out


# ---------------------------------------------------------------------------- tables


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _estimate(item: dict) -> str:
    """``+0.012 [-0.004, +0.030]``; without an interval, the point estimate or a dash."""
    if item.get("estimate") is not None:
        return f"{_num(item['estimate'])} [{_num(item['low'])}, {_num(item['high'])}]"
    if item.get("point_estimate") is not None:
        return f"{_num(item['point_estimate'])} (point estimate, no CI)"
    return "–"


def seeds_note(rows: list[dict]) -> str:
    """How the intervals were made, and what one seed per arm leaves out."""
    made = [r for r in rows if r.get("seeds")]
    if not made:
        return ""
    counts = sorted({tuple(r["seeds"]) for r in made})
    text = (
        f"{made[0]['level']:.0%} percentile intervals from {made[0]['resamples']} bootstrap "
        "resamples, each drawing each arm's seeds, then the units (needle cells, RULER samples, "
        "held-out sequences) paired across the arms."
    )
    if all(max(c) <= 1 for c in counts):
        return text + (
            " One seed per arm: the bootstrap runs over units only, so the intervals leave out "
            "run-to-run variation (another seed can move a mixture by more)."
        )
    return text + " Seeds (A, B): " + "; ".join(f"{x}, {y}" for x, y in counts) + "."


def verdict_table(rows: list[dict]) -> str:
    """Markdown: each claim's verdict, then every comparison with its metric, estimate and
    interval, the lenient metric beside the strict one, then the definitions of the metrics."""
    claims = claim_verdicts(rows)
    lines = [
        "## Verdicts on the paper's claims",
        "",
        "| claim | verdict | comparisons tested |",
        "|---|---|---|",
        *[
            f"| {k}. {c['text']} | {c['verdict']} | {c['tested']} of {c['comparisons']} |"
            for k, c in claims.items()
        ],
        "",
        "| claim | comparison (A − B) | metric (strict) | estimate [CI] | rule | verdict | "
        "lenient metric beside |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        beside = "; ".join(
            f"{b['metric']}: {_estimate(b)}"
            + (f" ({b['reason']})" if b.get("reason") and b.get("estimate") is None else "")
            for b in r["beside"]
        )
        verdict = r["verdict"] + (f": {r['reason']}" if r.get("reason") else "")
        lines.append(
            f"| {r['claim']} | {r['comparison']} | {r['metric']} | {_estimate(r)} | "
            f"{r.get('rule') or '–'} | {verdict} | {beside or '–'} |"
        )
    note = seeds_note(rows)
    lines += ["", *([note, ""] if note else []), *definition_lines(rows)]
    return "\n".join(lines) + "\n"


def definition_lines(rows: list[dict]) -> list[str]:
    """Each metric named in ``rows`` with its definition, once."""
    defined: dict[str, str] = {}
    for r in rows:
        for item in [r, *r.get("beside", [])]:
            if item.get("definition"):
                defined.setdefault(item["metric"], item["definition"])
    return ["Definitions:", "", *[f"- {m}: {d}" for m, d in defined.items()], ""] if defined else []


def differences(
    groups: Mapping[str, Sequence[str | Path]],
    baseline: str,
    train_len: int | None = None,
    base_model: str | Path | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    split: int = SPLIT,
) -> list[dict]:
    """Every arm (and the base model) against ``baseline`` on each metric: needle strict and
    headline (all cells, and beyond ``train_len``), RULER correct and score, loss 0-4K and 4K-max."""
    runs = {
        arm: [load_run(f, split) for f in folders] for arm, folders in groups.items() if folders
    }
    if base_model and Path(base_model).is_dir():
        runs["base model"] = [load_run(base_model, split)]
    if baseline not in runs:
        return []
    options = {"resamples": resamples, "seed": seed, "level": level}
    every = [run for arm in runs.values() for run in arm]
    compare: list[tuple[Comparison, bool]] = []  # (comparison, lenient)
    cuts: list[tuple[str, Callable[[tuple], bool] | None]] = [("all cells", None)]
    if train_len:
        cuts.append((f"cells > {_k(train_len)}", lambda key: key[0] > train_len))
    for key in sorted({k for run in every for k in run if k.split("@")[0] == "needle"}):
        scores = next(run[key] for run in every if key in run)
        strict = scores.info["strict"]
        for where, keep in cuts:
            for m in dict.fromkeys([strict, scores.info["headline"]]):
                label = f"{needle_label(scores, m)}, {where}"
                compare.append(
                    (Comparison(key, m, label, scores.metrics[m], keep=keep), m != strict)
                )
    if any("ruler" in run for run in every):
        compare += [
            (
                Comparison("ruler", m, f"RULER {m} (all tasks, generation)", RULER_METRICS[m]),
                lenient,
            )
            for m, lenient in (("correct", False), ("score", True))
        ]
    compare += [(c, False) for w in ("short", "long") if (c := loss_comparison(every, w))]
    b = runs[baseline]
    return [
        {
            "arm": arm,
            "baseline": baseline,
            "metric": c.metric,
            "definition": c.definition,
            "lenient": lenient,
            **_numbers(_difference(a, b, c, options)),
        }
        for arm, a in runs.items()
        if arm != baseline
        for c, lenient in compare
    ]


def difference_table(rows: list[dict]) -> str:
    """Markdown: one column per arm, one line per metric (a lenient one after its strict one)."""
    if not rows:
        return ""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    lenient = {r["metric"] for r in rows if r.get("lenient")}
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    by = {(r["arm"], r["metric"]): r for r in rows}
    baseline = rows[0]["baseline"]
    lines = [
        f"## Paired differences against {baseline} (A − {baseline}: estimate [CI])",
        "",
        "| metric | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for m in metrics:
        cells = [_estimate(by[(arm, m)]) if (arm, m) in by else "–" for arm in arms]
        name = m + (" (lenient; the strict metric is the line above)" if m in lenient else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if r.get("reason"):
            reasons.setdefault(r["reason"], []).append(f"{r['arm']} ({r['metric']})")
    if reasons:
        lines += ["", "Not compared with an interval:", ""]
        lines += [f"- {why}: {', '.join(items)}" for why, items in reasons.items()]
    note = seeds_note(rows)
    lines += ["", *([note, ""] if note else []), *definition_lines(rows)]
    return "\n".join(lines) + "\n"


def write_verdicts(
    groups: Mapping[str, Sequence[str | Path]],
    out_dir: str | Path,
    train_len: int,
    baseline: str,
    base_model: str | Path | None = None,
    **options,
) -> str:
    """``out_dir/verdicts.md`` (the verdict table, then the paired differences) and
    ``out_dir/verdicts.json`` (every row, with its definitions), each written atomically; returns
    the markdown. ``options``: those of :func:`verdicts`."""
    from ..fsutil import atomic_write, write_json

    rows = verdicts(groups, train_len, baseline, base_model, **options)
    shared = {k: v for k, v in options.items() if k in ("resamples", "seed", "level", "split")}
    diffs = differences(groups, baseline, train_len, base_model, **shared)
    text = verdict_table(rows) + "\n" + difference_table(diffs)
    out = Path(out_dir)
    with atomic_write(out / "verdicts.md", "w") as handle:
        handle.write(text)
    write_json(
        out / "verdicts.json",
        {
            "claims": claim_verdicts(rows),
            "verdicts": rows,
            "differences": diffs,
            "baseline": baseline,
            "train_length": train_len,
            "groups": {arm: [str(f) for f in folders] for arm, folders in groups.items()},
            "base_model": str(base_model) if base_model else None,
            "tolerance": options.get("tolerance", TOLERANCE),
            "method": seeds_note(rows),
        },
    )
    return text
