"""Strategies (pure functions) and the hash-ranked selection."""

from __future__ import annotations

import numpy as np
import pytest

from longmix.data.mixture import (
    MixtureConfig,
    PlanError,
    make_plan,
    parse_domain_weights,
    parse_strategy,
    seeded_hash,
    select,
    summarize,
)

THRESHOLD = 1000


def synthetic_table(seed: int = 0):
    """Three domains: 'web' short-heavy, 'code' mixed, 'book' all long; thousands of docs."""
    rng = np.random.default_rng(seed)
    names = ["book", "code", "web"]
    parts = [
        (0, rng.integers(2000, 20000, 60)),
        (1, np.concatenate([rng.integers(20, 1000, 3000), rng.integers(1001, 8000, 150)])),
        (2, np.concatenate([rng.integers(20, 1000, 20000), rng.integers(1001, 6000, 700)])),
    ]
    domains = np.concatenate([np.full(len(lengths), code, np.int16) for code, lengths in parts])
    lengths = np.concatenate([lengths for _, lengths in parts]).astype(np.int64)
    keys = rng.integers(0, 2**63, len(lengths)).astype(np.uint64)
    return domains, names, lengths, keys


def run(strategy: str, tokens: int, **kw):
    domains, names, lengths, keys = synthetic_table()
    summary = summarize(domains, names, lengths, THRESHOLD)
    config = MixtureConfig(strategy=strategy, tokens=tokens, long_threshold=THRESHOLD, **kw)
    plan = make_plan(summary, config)
    selection = select(plan, domains, names, lengths, keys, config.seed)
    return plan, selection, (domains, names, lengths)


def shares(selection, table):
    domains, names, lengths = table
    tokens = lengths * selection.repeats
    total = tokens.sum()
    domain_share = {n: tokens[domains == c].sum() / total for c, n in enumerate(names)}
    long_share = {n: tokens[(domains == c) & (lengths > THRESHOLD)].sum() / tokens[domains == c].sum() for c, n in enumerate(names)}
    return total, domain_share, long_share


def original_shares(table):
    domains, names, lengths = table
    return shares(type("S", (), {"repeats": np.ones(len(lengths), np.int64)}), table)


def test_parse_strategy_and_weights():
    assert parse_strategy("per-source") == ("per-source", None)
    assert parse_strategy("upsample:book,arxiv") == ("upsample", "book,arxiv")
    assert parse_strategy("cut:4K") == ("cut", "4K")
    assert parse_strategy("per-source:30%") == ("per-source", "30%")
    with pytest.raises(PlanError, match="unknown strategy"):
        parse_strategy("per-source:1.5")
    with pytest.raises(PlanError, match="unknown strategy"):
        parse_strategy("magic")
    with pytest.raises(PlanError, match="unknown strategy"):
        parse_strategy("upsample")
    assert parse_domain_weights("RedPajamaCommonCrawl=0.67, c4=0.15") == (("cc", 0.67), ("c4", 0.15))
    with pytest.raises(PlanError, match="DOMAIN=WEIGHT"):
        parse_domain_weights("cc:0.5")


def assert_budget_and_domain_shares_kept(selection, table, budget) -> tuple[dict, dict]:
    """The selection hits the budget within 1% and keeps every domain's share; returns long shares after and before."""
    total, domain_share, long_share = shares(selection, table)
    _, base_domain, base_long = original_shares(table)
    assert abs(total - budget) / budget < 0.01
    for name in base_domain:
        assert domain_share[name] == pytest.approx(base_domain[name], abs=0.01)
    return long_share, base_long


def test_original_keeps_domain_and_length_mix_and_hits_budget():
    budget = 2_000_000
    plan, selection, table = run("original", budget)
    long_share, base_long = assert_budget_and_domain_shares_kept(selection, table, budget)
    for name in base_long:
        assert long_share[name] == pytest.approx(base_long[name], abs=0.01)


def test_per_source_keeps_domain_shares_and_raises_long_share_within_each_domain():
    budget = 3_000_000
    plan, selection, table = run("per-source", budget, long_fraction=0.7)
    long_share, base_long = assert_budget_and_domain_shares_kept(selection, table, budget)
    assert base_long["web"] < 0.3 and long_share["web"] == pytest.approx(0.7, abs=0.01)
    assert long_share["code"] == pytest.approx(0.7, abs=0.01)
    assert long_share["book"] == 1.0  # already all long: kept, never lowered
    assert plan.notes == []


def test_per_source_with_a_fraction_in_its_name_sets_it_both_ways():
    budget = 3_000_000
    plan, selection, table = run("per-source:0.3", budget, long_fraction=0.7)
    long_share, base_long = assert_budget_and_domain_shares_kept(selection, table, budget)
    assert base_long["code"] > 0.3 and long_share["code"] == pytest.approx(0.3, abs=0.01)  # lowered
    assert long_share["web"] == pytest.approx(0.3, abs=0.01)
    assert long_share["book"] == 1.0  # no short documents to take instead


def test_global_raises_overall_long_share_and_domain_mix_drifts():
    budget = 3_000_000
    _, selection, table = run("global", budget, long_fraction=0.7)
    total, domain_share, _ = shares(selection, table)
    domains, names, lengths = table
    tokens = lengths * selection.repeats
    assert tokens[lengths > THRESHOLD].sum() / total == pytest.approx(0.7, abs=0.01)
    _, base_domain, _ = original_shares(table)
    # the long-rich domain grows, the short-heavy one shrinks
    assert domain_share["book"] > base_domain["book"] + 0.05
    assert domain_share["web"] < base_domain["web"] - 0.05


def test_upsample_raises_the_named_domain_share():
    budget = 2_000_000
    _, selection, table = run("upsample:books", budget, domain_weight=0.6)
    _, domain_share, long_share = shares(selection, table)
    _, base_domain, base_long = original_shares(table)
    expected = 0.6 / (0.6 + 1 - base_domain["book"])
    assert domain_share["book"] == pytest.approx(expected, abs=0.01)
    assert long_share["web"] == pytest.approx(base_long["web"], abs=0.01)  # length mix unchanged


def test_repeats_long_documents_when_the_corpus_is_short_of_data():
    domains, names, lengths, _ = synthetic_table()
    corpus_tokens = int(lengths.sum())
    plan, selection, table = run("per-source", corpus_tokens * 3, max_repeats=100)  # uncapped
    total, _, long_share = shares(selection, table)
    assert abs(total - corpus_tokens * 3) / (corpus_tokens * 3) < 0.01
    assert selection.repeats.max() >= 3
    long_cells = [c for c in selection.cells if c["class"] == "long"]
    assert all(c["repeat_factor"] > 1 for c in long_cells)
    assert long_share["web"] == pytest.approx(0.7, abs=0.01)


def test_impossible_target_is_reported_and_closest_plan_kept():
    domains = np.array([0] * 100 + [1] * 100, np.int16)
    lengths = np.array([50] * 100 + [2000] * 50 + [100] * 50, np.int64)
    names = ["qa", "web"]
    summary = summarize(domains, names, lengths, THRESHOLD)
    plan = make_plan(summary, MixtureConfig("per-source", tokens=20_000, long_threshold=THRESHOLD))
    assert any("qa" in note and "impossible" in note for note in plan.notes)
    assert plan.targets["qa"]["long"] == 0
    assert sum(plan.targets["qa"].values()) == pytest.approx(20_000 * summary["qa"].tokens / lengths.sum())


def test_explicit_domain_weights_set_the_mix():
    plan, selection, table = run("per-source", 2_000_000, domain_weights=(("web", 2.0), ("code", 1.0), ("book", 1.0)))
    _, domain_share, _ = shares(selection, table)
    assert domain_share["web"] == pytest.approx(0.5, abs=0.01)
    assert domain_share["book"] == pytest.approx(0.25, abs=0.01)
    with pytest.raises(PlanError, match="lacks"):
        run("original", 1000, domain_weights=(("nope", 1.0),))


def test_selection_depends_only_on_ids_and_seed():
    domains, names, lengths, keys = synthetic_table()
    summary = summarize(domains, names, lengths, THRESHOLD)
    plan = make_plan(summary, MixtureConfig("per-source", tokens=1_000_000, long_threshold=THRESHOLD))
    a = select(plan, domains, names, lengths, keys, seed=0).repeats
    perm = np.random.default_rng(5).permutation(len(lengths))
    b = select(plan, domains[perm], names, lengths[perm], keys[perm], seed=0).repeats
    assert np.array_equal(a[perm], b)  # row order (e.g. shard layout) does not matter
    c = select(plan, domains, names, lengths, keys, seed=1).repeats
    assert not np.array_equal(a, c)


def test_seeded_hash_is_uniform_enough():
    ranks = seeded_hash(np.arange(100_000, dtype=np.uint64), seed=3)
    top_bit = (ranks >> np.uint64(63)).astype(int)
    assert abs(top_bit.mean() - 0.5) < 0.01
    assert len(np.unique(ranks)) == 100_000
