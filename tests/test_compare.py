"""Paired bootstrap differences and the verdicts on the paper's claims (numpy only: no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longmix.eval.compare import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    SKIPPED,
    decide,
    decide_not_worse,
    load_loss,
    load_needle,
    load_ruler,
    paired_difference,
    pooled_difference,
    resolve_roles,
    verdicts,
    write_verdicts,
)

RESULTS = Path(__file__).parent.parent / "benchmarks" / "results" / "study-smollm2-h200x4" / "eval"


def runs(offset: float, seeds: int = 2, units: int = 150, seed: int = 0, spread: float = 0.05):
    """One mapping per seed: unit -> a shared per-unit level, a per-seed shift and noise, + offset."""
    rng = np.random.default_rng(seed)
    level = np.random.default_rng(99).normal(0, 1, units)  # the units themselves: shared by arms
    return [
        {(i,): float(level[i] + offset + shift + rng.normal(0, 0.2)) for i in range(units)}
        for shift in rng.normal(0, spread, seeds)
    ]


def test_bootstrap_is_deterministic_by_seed():
    a, b = runs(0.1, seed=1), runs(0.0, seed=2)
    first = paired_difference(a, b, resamples=300, seed=5)
    assert paired_difference(a, b, resamples=300, seed=5) == first
    other = paired_difference(a, b, resamples=300, seed=6)
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)
    assert first.seeds == (2, 2) and first.units == 150 and first.resamples == 300


@pytest.mark.parametrize("offset, verdict", [(0.5, HOLDS), (0.0, INCONCLUSIVE), (-0.5, FAILS)])
def test_a_large_difference_holds_none_is_inconclusive_a_reversed_one_does_not_hold(
    offset, verdict
):
    diff = paired_difference(runs(offset, seed=1), runs(0.0, seed=2), resamples=500)
    assert diff.low <= diff.estimate <= diff.high
    assert decide(diff, +1) == verdict  # claimed: A higher than B
    assert abs(diff.estimate - offset) < 0.15


def test_paired_resampling_keeps_pairs():
    # every unit differs by the same offset: paired, no resample can move the difference
    rng = np.random.default_rng(0)
    b = {(i,): float(v) for i, v in enumerate(rng.normal(0, 10, 200))}
    a = {key: value + 0.3 for key, value in b.items()}
    diff = paired_difference([a], [b], resamples=400)
    assert diff.estimate == pytest.approx(0.3)
    assert diff.high - diff.low == pytest.approx(0, abs=1e-9)
    # units only one arm has are left out; a one-arm statistic needs no second arm
    a[(999,)] = 100.0
    assert paired_difference([a], [b], resamples=50).units == 200
    assert paired_difference([a], None, resamples=50).units == 201


def test_more_seeds_widen_the_interval_by_the_run_to_run_variation():
    one = paired_difference(runs(0.2, 1, seed=1), runs(0.0, 1, seed=2), resamples=500)
    many = paired_difference(
        runs(0.2, 4, seed=1, spread=0.3), runs(0.0, 4, seed=2, spread=0.3), resamples=500
    )
    assert many.seeds == (4, 4)
    assert many.high - many.low > one.high - one.low


def test_pooled_difference_weighs_by_tokens():
    a = {("book", 0): (10.0, 10.0), ("cc", 0): (1.0, 1.0)}  # loss 1.0 on 11 tokens
    b = {("book", 0): (20.0, 10.0), ("cc", 0): (0.0, 1.0)}  # 20 / 11
    diff = paired_difference([a], [b], pooled_difference, resamples=20)
    assert diff.estimate == pytest.approx(1.0 - 20 / 11)


def test_not_worse_rule():
    from longmix.eval.compare import Difference

    def d(low, high):
        return Difference((low + high) / 2, low, high, 0.95, 1, (1, 1), 1)

    assert decide_not_worse(d(-0.05, -0.02), 0.01) == HOLDS  # better
    assert decide_not_worse(d(0.002, 0.008), 0.01) == HOLDS  # within the tolerance
    assert decide_not_worse(d(-0.01, 0.05), 0.01) == HOLDS  # contains 0
    assert decide_not_worse(d(0.005, 0.03), 0.01) == INCONCLUSIVE
    assert decide_not_worse(d(0.02, 0.03), 0.01) == FAILS


def test_roles_by_name_then_by_strategy():
    arms = ["per-source:0.3", "per-source", "fu-code", "my-cut", "global"]
    strategies = {"my-cut": "cut:4K", "fu-code": "per-source"}
    role = resolve_roles(arms, "per-source:0.3", strategies=strategies)
    assert role["per_source"] == "per-source" and role["original"] == "per-source:0.3"
    assert role["cut"] == "my-cut" and role["upsample"] is None
    assert role["reference"] == "per-source:0.3"
    assert resolve_roles(arms, "global", {"per_source": "fu-code"})["per_source"] == "fu-code"


# ---------------------------------------------------------------------------- the study's raw results


def real_groups() -> dict[str, list[Path]]:
    return {
        "per-source:0.3": [RESULTS / "per-source-0.3"],
        "per-source": [RESULTS / "per-source"],
        "original": [RESULTS / "original"],
        "upsample:book": [RESULTS / "upsample-book"],
        "cut:4K": [RESULTS / "cut-4K"],
    }


def test_loaders_read_the_studys_raw_results():
    needle = load_needle(RESULTS / "per-source" / "needle")
    assert len(needle.units) == 176 and needle.units[(1024, 10)]["exact"] == 1.0
    # written before generation and protocols: teacher forcing, token accuracy with exact beside
    assert needle.info["protocol"] == "unrecorded"
    assert (needle.info["headline"], needle.info["strict"]) == ("token_accuracy", "exact")
    ruler = load_ruler(RESULTS / "cut-4K" / "ruler")
    assert len(ruler.units) == 304 and ruler.info["partial"]  # stopped part way: no summary
    unit = ruler.units[("niah_single", 4096, 0)]
    assert unit["correct"] in (0.0, 1.0) and 0 <= unit["score"] <= 1
    loss = load_loss(RESULTS / "per-source" / "loss")
    assert not loss.units and loss.info["no_units"]  # evaluated before per-sequence rows


def test_verdict_table_from_the_studys_raw_results(tmp_path):
    groups = real_groups()
    text = write_verdicts(
        groups, tmp_path, 32768, "per-source:0.3", RESULTS / "base", resamples=200
    )
    assert "needle exact (protocol unrecorded, teacher forcing)" in text
    assert "needle token_accuracy (protocol unrecorded, teacher forcing)" in text
    assert "RULER niah correct (generation)" in text and "RULER niah score (generation)" in text
    assert "One seed per arm: the bootstrap runs over units only" in text
    assert "no global arm in the study" in text
    assert "point estimate, no CI" in text  # loss summaries only: no interval, said so
    data = json.loads((tmp_path / "verdicts.json").read_text())
    rows = data["verdicts"]
    assert all(r["verdict"] in (HOLDS, FAILS, INCONCLUSIVE, SKIPPED) for r in rows)
    needle_b = next(r for r in rows if r["claim"] == "b" and r["evaluation"] == "needle")
    assert needle_b["comparison"] == "cut:4K − per-source:0.3"
    assert needle_b["definition"].startswith("teacher forcing: 1 if every answer token")
    assert needle_b["beside"][0]["metric"].startswith("needle token_accuracy")  # lenient beside
    assert needle_b["seeds"] == [1, 1] and needle_b["units"] == 176
    d = next(r for r in rows if r["claim"] == "d")
    assert d["comparison"] == "per-source − base model" and d["metric"].endswith("cells > 32K")
    assert d["units"] == 8 * 11  # 8 of the 16 lengths (35,430 to 64K) are beyond 32K
    assert not list(tmp_path.glob("*.tmp"))
    # every number in the differences names its metric and definition
    assert all(r["metric"] and r["definition"] for r in data["differences"])


# ---------------------------------------------------------------------------- synthetic eval folders


def write_needle(folder: Path, shift: float, seed: int, lengths=(1024, 4096, 8192)) -> None:
    from longmix.eval.needle import definitions, summary_of

    rng = np.random.default_rng(seed)
    rows = []
    for length in lengths:
        for depth in range(0, 101, 10):
            p = np.clip(0.6 + shift - 0.1 * (length > 4096), 0, 1)
            contains = float(rng.random() < p)
            rows.append(
                {
                    "length": length,
                    "depth": depth,
                    "fu_score": min(1.0, contains * 11 / 12 + 0.2 * rng.random()),
                    "recall": contains,
                    "contains": contains,
                    **definitions("fu"),
                }
            )
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summary_of(rows, protocol="fu", lengths=lengths, depths=list(range(0, 101, 10)))
    (folder / "summary.json").write_text(json.dumps(summary))


def write_ruler(folder: Path, shift: float, seed: int) -> None:
    from longmix.eval.tasks import summarize_tasks

    rng = np.random.default_rng(seed)
    rows = [
        {
            "task": task,
            "length": length,
            "sample": i,
            "score": float(rng.random() < np.clip(0.7 + shift, 0, 1)),
        }
        for task in ("niah_single_1", "vt")
        for length in (1024, 4096)
        for i in range(30)
    ]
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps(summarize_tasks(rows, 0.85)))


DOMAINS = ("book", "cc", "github")


def write_loss(folder: Path, shifts: dict[str, tuple[float, float]], seed: int) -> None:
    """Per-sequence rows: per domain a loss at 0-4K and 4K-max, moved by ``shifts[domain]``."""
    from longmix.eval.loss import DEFINITION, summarize_loss

    rng = np.random.default_rng(seed)
    rows = []
    sums, counts = np.zeros((len(DOMAINS), 2)), np.zeros((len(DOMAINS), 2))
    for d, domain in enumerate(DOMAINS):
        for i in range(20):
            tokens = [4096, 4095]
            level = np.random.default_rng(i + 10 * d).normal(2.0, 0.3)
            losses = [
                (level + shifts.get(domain, (0, 0))[k] + rng.normal(0, 0.01)) * tokens[k]
                for k in (0, 1)
            ]
            rows.append(
                {
                    "domain": domain,
                    "sequence": i,
                    "n_tokens": 8192,
                    "buckets": ["0-4K", "4K-max"],
                    "nll": losses,
                    "tokens": tokens,
                }
            )
            sums[d] += losses
            counts[d] += tokens
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "definition": DEFINITION,
        **summarize_loss(sums, counts, list(DOMAINS), [0, 4096, 8192]),
    }
    (folder / "summary.json").write_text(json.dumps(summary))


# each arm: needle shift, ruler shift, loss shifts per domain (0-4K, 4K-max)
ARMS = {
    "per-source": (0.2, 0.0, {}),
    "global": (0.2, 0.0, {d: (0.0, 0.08) for d in DOMAINS}),
    "original": (0.2, 0.0, {d: (0.0, 0.05) for d in DOMAINS}),
    "cut:4K": (-0.3, -0.5, {d: (-0.01, 0.0) for d in DOMAINS}),
    "upsample:book": (0.2, 0.0, {"book": (-0.1, -0.2), "cc": (0.05, 0.1), "github": (0.05, 0.1)}),
}


def write_run(folder: Path, arm: str | None, seed: int) -> Path:
    needle, ruler, loss = ARMS[arm] if arm else (-0.6, -0.6, {d: (0.3, 2.0) for d in DOMAINS})
    write_needle(folder / "needle@fu", needle, seed)
    write_ruler(folder / "ruler", ruler, seed + 100)
    write_loss(folder / "loss", loss, seed + 200)
    return folder


def test_verdicts_on_synthetic_runs_with_seeds(tmp_path):
    groups = {
        arm: [
            write_run(tmp_path / f"{arm}.seed{k}".replace(":", "-"), arm, 10 * i + k)
            for k in (0, 1)
        ]
        for i, arm in enumerate(ARMS)
    }
    base = write_run(tmp_path / "base", None, 999)
    rows = verdicts(groups, 4096, "per-source", base, resamples=300)
    by = {(r["claim"], r["metric"]): r for r in rows}
    verdict = {key: r["verdict"] for key, r in by.items()}
    assert verdict[("a", "loss 4K-max (all domains, token-weighted)")] == HOLDS
    assert verdict[("a", "loss 0-4K (all domains, token-weighted)")] == HOLDS
    assert verdict[("b", "needle contains (protocol fu, generation), all cells")] == HOLDS
    assert verdict[("b", "RULER niah correct (generation)")] == HOLDS
    assert verdict[("c", "loss 4K-max (book, token-weighted)")] == HOLDS
    assert verdict[("c", "loss 4K-max (other domains, token-weighted)")] == HOLDS
    d = by[("d", "needle contains (protocol fu, generation), cells > 4K")]
    assert d["verdict"] == HOLDS and d["comparison"] == "per-source − base model"
    assert d["seeds"] == [2, 1] and d["units"] == 11
    # fu's word score is lenient: it is shown only beside containment, never alone
    assert d["beside"][0]["metric"] == "needle fu_score (protocol fu, generation), cells > 4K"
    assert all(r["metric"] != d["beside"][0]["metric"] for r in rows)
    # without the base model: above chance (containment's chance is 0)
    chance = verdicts(groups, 4096, "per-source", None, resamples=100)
    d = next(r for r in chance if r["claim"] == "d")
    assert d["comparison"] == "per-source − chance (0)" and d["verdict"] == HOLDS
    # an arm missing: its claim is not tested, with the reason
    del groups["upsample:book"]
    c = [r for r in verdicts(groups, 4096, "per-source", base, resamples=50) if r["claim"] == "c"]
    assert c == [
        {
            "claim": "c",
            "claim_text": c[0]["claim_text"],
            "comparison": "–",
            "metric": "–",
            "definition": None,
            "rule": None,
            "reason": "no upsample arm in the study",
            "verdict": SKIPPED,
            "beside": [],
        }
    ]
    text = write_verdicts(groups, tmp_path / "out", 4096, "per-source", base, resamples=50)
    assert "Seeds (A, B): " in text and "One seed per arm" not in text
