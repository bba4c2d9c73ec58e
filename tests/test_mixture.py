"""Strategies (pure functions), the hash-ranked selection, Fu et al.'s sampling, repeat caps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longmix.cli import main
from longmix.data.mixture import (
    STRATEGIES,
    MixtureConfig,
    PlanError,
    chunk_documents,
    format_shortfall,
    long_documents,
    make_plan,
    packing_units,
    parse_domain_weights,
    parse_strategy,
    seeded_hash,
    select,
    strategy_docs_table,
    strategy_table,
    summarize,
)
from longmix.data.prepare import PrepareConfig, prepare
from longmix.data.store import PackedDataset
from longmix.errors import LongmixError
from longmix.settings import SettingsError, from_mapping

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
    long_share = {
        n: tokens[(domains == c) & (lengths > THRESHOLD)].sum() / tokens[domains == c].sum()
        for c, n in enumerate(names)
    }
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
    assert parse_domain_weights("RedPajamaCommonCrawl=0.67, c4=0.15") == (
        ("cc", 0.67),
        ("c4", 0.15),
    )
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
    assert sum(plan.targets["qa"].values()) == pytest.approx(
        20_000 * summary["qa"].tokens / lengths.sum()
    )


def test_explicit_domain_weights_set_the_mix():
    plan, selection, table = run(
        "per-source", 2_000_000, domain_weights=(("web", 2.0), ("code", 1.0), ("book", 1.0))
    )
    _, domain_share, _ = shares(selection, table)
    assert domain_share["web"] == pytest.approx(0.5, abs=0.01)
    assert domain_share["book"] == pytest.approx(0.25, abs=0.01)
    with pytest.raises(PlanError, match="lacks"):
        run("original", 1000, domain_weights=(("nope", 1.0),))


def test_selection_depends_only_on_ids_and_seed():
    domains, names, lengths, keys = synthetic_table()
    summary = summarize(domains, names, lengths, THRESHOLD)
    plan = make_plan(
        summary, MixtureConfig("per-source", tokens=1_000_000, long_threshold=THRESHOLD)
    )
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


# ---------------------------------------------------------------------------- registry


def test_registry_drives_the_check_its_message_and_the_readme():
    for name, strategy in STRATEGIES.items():
        example = {
            "none": name,
            "optional": name,
            "required": f"{name}:{'book' if name == 'upsample' else '4K'}",
        }
        assert parse_strategy(example[strategy.argument])[0] == name
    with pytest.raises(PlanError) as err:
        parse_strategy("magic")
    assert all(s.syntax in str(err.value) for s in STRATEGIES.values())
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    # regenerate the README tables from the registry when this fails
    assert strategy_docs_table() in readme and strategy_table() in readme


# ---------------------------------------------------------------------------- cut:N


def document_table(seed: int = 0) -> dict:
    domains, names, lengths, keys = synthetic_table(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return {
        "doc_key": keys,
        "domains": domains,
        "n_tokens": lengths,
        "offset": offsets,
        "shard": np.zeros(len(lengths), np.int32),
        "n_chars": lengths * 4,
        "names": names,
    }


def test_cut_splits_documents_into_chunks_keeping_every_token_and_the_domain_mix():
    table = document_table()
    units = chunk_documents(table, 700)
    assert units["n_tokens"].max() <= 700 and units["n_tokens"].min() >= 1
    assert units["n_tokens"].sum() == table["n_tokens"].sum()
    # the chunks of a document tile it: consecutive offsets, same key and domain
    for row in np.flatnonzero(table["n_tokens"] > 1500)[:50]:
        mine = np.flatnonzero(units["doc_key"] == table["doc_key"][row])
        assert np.array_equal(
            units["offset"][mine], table["offset"][row] + 700 * np.arange(len(mine))
        )
        assert units["n_tokens"][mine].sum() == table["n_tokens"][row]
        assert (units["domains"][mine] == table["domains"][row]).all()
    assert len(np.unique(units["rank_key"])) == len(units["rank_key"])  # chunks are ranked apart

    units = packing_units(table, "cut:700")
    summary = summarize(units["domains"], units["names"], units["n_tokens"], THRESHOLD)
    budget = int(table["n_tokens"].sum())
    plan = make_plan(summary, MixtureConfig("cut:700", tokens=budget, long_threshold=THRESHOLD))
    selection = select(
        plan, units["domains"], units["names"], units["n_tokens"], units["rank_key"], 0
    )
    assert (selection.repeats == 1).all()  # the corpus' own size: every chunk once
    for code in range(len(table["names"])):
        assert (units["n_tokens"] * selection.repeats)[units["domains"] == code].sum() == table[
            "n_tokens"
        ][table["domains"] == code].sum()


def test_truncate_keeps_the_first_tokens_only():
    table = document_table()
    units = packing_units(table, "truncate:700")
    assert np.array_equal(units["n_tokens"], np.minimum(table["n_tokens"], 700))
    assert np.array_equal(units["offset"], table["offset"])


def test_cut_end_to_end_packs_chunks_with_every_token(tmp_path, mixed_corpus, word_tokenizer):
    out = tmp_path / "out"
    config = PrepareConfig(
        inputs=(str(mixed_corpus),),
        out=str(out),
        tokenizer=str(word_tokenizer),
        seq_len=512,
        mixture=MixtureConfig("cut:100", long_threshold=256),
    )
    stats = prepare(config, progress=False, log=lambda m: None)
    ends = np.load(out / "index" / "span_doc_offset.npy") + np.load(
        out / "index" / "span_length.npy"
    )
    assert ends.max() <= 101  # a chunk of at most 100 tokens and its separator
    before, after = stats["before"], stats["after"]
    assert after["total"]["tokens"] == before["total"]["tokens"]
    for name in before["domains"]:
        assert after["domains"][name]["tokens"] == before["domains"][name]["tokens"]
    ds = PackedDataset(out)
    assert (
        ds.manifest["cut_to"] == 100
        and ds.manifest["truncate_to"] is None
        and len(ds[0].tokens) == 512
    )


# ---------------------------------------------------------------------------- short_keep


def profile_table(seed: int = 0):
    """Two domains with known length profiles, many documents each (sampling error stays small)."""
    rng = np.random.default_rng(seed)
    names = ["cc", "web"]
    parts = [
        (0, np.concatenate([rng.integers(20, 1000, 40000), rng.integers(1001, 5000, 3000)])),
        (1, np.concatenate([rng.integers(20, 1000, 40000), rng.integers(1001, 3000, 1200)])),
    ]
    domains = np.concatenate([np.full(len(lengths), code, np.int16) for code, lengths in parts])
    lengths = np.concatenate([lengths for _, lengths in parts]).astype(np.int64)
    keys = rng.integers(0, 2**63, len(lengths)).astype(np.uint64)
    return domains, names, lengths, keys


def run_profile(strategy: str, fraction_of_pool: float, keep: float = 0.1, seed: int = 0):
    domains, names, lengths, keys = profile_table()
    long = lengths > THRESHOLD
    pool = lengths[long].sum() + keep * lengths[~long].sum()
    summary = summarize(domains, names, lengths, THRESHOLD)
    config = MixtureConfig(
        strategy,
        tokens=int(pool * fraction_of_pool),
        long_threshold=THRESHOLD,
        short_keep=keep,
        seed=seed,
    )
    plan = make_plan(summary, config)
    return plan, select(plan, domains, names, lengths, keys, seed), (domains, names, lengths)


def test_short_keep_per_source_gives_fus_long_share_and_keeps_domain_budgets():
    plan, selection, table = run_profile("per-source", 0.5)
    domains, names, lengths = table
    assert selection.repeats.max() == 1  # one pass, no repeats
    total, domain_share, long_share = shares(selection, table)
    _, base_domain, base_long = original_shares(table)
    for name in names:
        p = base_long[name]
        assert long_share[name] == pytest.approx(p / (p + 0.1 * (1 - p)), abs=0.03)
        assert domain_share[name] == pytest.approx(base_domain[name], abs=0.01)
    assert abs(total - plan.budget) / plan.budget < 0.01
    assert selection.shortfalls == []


def test_short_keep_global_has_no_domain_budgets():
    plan, selection, table = run_profile("global", 0.5)
    domains, names, lengths = table
    tokens = lengths * selection.repeats
    long_total, short_total = (
        lengths[lengths > THRESHOLD].sum(),
        lengths[lengths <= THRESHOLD].sum(),
    )
    expected = long_total / (long_total + 0.1 * short_total)
    assert tokens[lengths > THRESHOLD].sum() / tokens.sum() == pytest.approx(expected, abs=0.03)
    _, domain_share, _ = shares(selection, table)
    _, base_domain, _ = original_shares(table)
    assert domain_share["cc"] > base_domain["cc"] + 0.02  # the long-rich domain grows


def test_short_keep_keeps_each_short_document_with_probability_p_once():
    plan, selection, table = run_profile(
        "per-source", 10.0, keep=0.25
    )  # budget beyond the pool: all kept ones
    domains, names, lengths = table
    short = lengths <= THRESHOLD
    assert (selection.repeats[~short] == 1).all()
    kept = selection.repeats[short].mean()
    assert abs(kept - 0.25) < 4 * np.sqrt(0.25 * 0.75 / short.sum())
    assert selection.repeats.max() == 1
    assert {s["domain"] for s in selection.shortfalls} == set(
        names
    )  # the budget could not be filled


def test_short_keep_is_deterministic_by_seed():
    a = run_profile("per-source", 0.5, seed=3)[1].repeats
    b = run_profile("per-source", 0.5, seed=3)[1].repeats
    c = run_profile("per-source", 0.5, seed=4)[1].repeats
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_short_keep_does_not_combine_with_a_fraction_in_the_name():
    with pytest.raises(PlanError, match="short-keep"):
        MixtureConfig("per-source:0.3", short_keep=0.1)
    plan = make_plan(
        summarize(*profile_table()[:3], THRESHOLD), MixtureConfig("original", short_keep=0.1)
    )
    assert plan.short_keep is None and any("ignores" in n for n in plan.notes)


@pytest.mark.parametrize("domain_weight", [0.6, 2.0])
def test_short_keep_upsample_sets_the_domain_weight_and_applies_fus_drop(domain_weight):
    """Fu's upsample: the named domain's raw weight, then the per-source drop of short documents."""
    domains, names, lengths, keys = profile_table()
    long = lengths > THRESHOLD
    pool = lengths[long].sum() + 0.1 * lengths[~long].sum()
    config = MixtureConfig(
        "upsample:web",
        tokens=int(pool * 0.3),
        long_threshold=THRESHOLD,
        short_keep=0.1,
        domain_weight=domain_weight,
    )
    plan = make_plan(summarize(domains, names, lengths, THRESHOLD), config)
    selection = select(plan, domains, names, lengths, keys, config.seed)
    table = (domains, names, lengths)
    assert selection.repeats.max() == 1 and selection.shortfalls == []  # one pass, no repeats
    total, domain_share, long_share = shares(selection, table)
    _, base_domain, base_long = original_shares(table)
    web = domain_weight / (domain_weight + base_domain["cc"])
    assert domain_share["web"] == pytest.approx(web, abs=0.01)
    assert domain_share["cc"] == pytest.approx(1 - web, abs=0.01)
    for name in names:
        p = base_long[name]
        assert long_share[name] == pytest.approx(p / (p + 0.1 * (1 - p)), abs=0.03)
    assert abs(total - plan.budget) / plan.budget < 0.01


def chars_table(seed: int = 0) -> dict:
    """The profile corpus as a document table whose characters per token vary (2.5 to 5 per
    document), so characters / 3.68 and exact tokens disagree on which documents are long."""
    domains, names, lengths, keys = profile_table(seed)
    rng = np.random.default_rng(seed + 1)
    return {
        "doc_key": keys,
        "domains": domains,
        "n_tokens": lengths,
        "offset": np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        "shard": np.zeros(len(lengths), np.int32),
        "n_chars": np.round(lengths * rng.uniform(2.5, 5.0, len(lengths))).astype(np.int64),
        "names": names,
    }


def long_by(table: dict, estimate: str) -> np.ndarray:
    if estimate == "chars":
        return table["n_chars"] / 3.68 > THRESHOLD  # Fu's LLAMA_CHAR_TO_TOKEN_RATIO
    return table["n_tokens"] > THRESHOLD


CHARS_STRATEGIES = [
    ("per-source", None),
    ("global", None),
    ("upsample:web", None),
    ("per-source", 0.1),
    ("global", 0.1),
    ("upsample:web", 0.1),
]


@pytest.mark.parametrize("strategy,keep", CHARS_STRATEGIES)
def test_length_estimate_chars_decides_long_and_short_in_every_strategy(strategy, keep):
    from longmix.data.prepare import plan_mixture

    table = chars_table()
    lengths, domains = table["n_tokens"], table["domains"]
    by_chars, by_tokens = long_by(table, "chars"), long_by(table, "tokens")
    assert (by_chars != by_tokens).mean() > 0.02  # the two estimates disagree on many documents
    budget = (
        10 * int(lengths.sum())  # beyond what the drop keeps: every kept document, once
        if keep
        else int(0.3 * lengths.sum())
    )
    results = {
        estimate: plan_mixture(
            table,
            MixtureConfig(
                strategy,
                tokens=budget,
                long_threshold=THRESHOLD,
                short_keep=keep,
                length_estimate=estimate,
            ),
        )
        for estimate in ("chars", "tokens")
    }
    repeats = results["chars"]["selection"].repeats
    assert not np.array_equal(repeats, results["tokens"]["selection"].repeats)
    long_cells = [c for c in results["chars"]["selection"].cells if c["class"] == "long"]
    assert sum(c["available_tokens"] for c in long_cells) == lengths[by_chars].sum()
    tokens = lengths * repeats
    if keep:
        # Fu's drop: documents long by characters / 3.68 always kept, the others with probability P,
        # whatever their exact token count says
        assert (repeats[by_chars] == 1).all() and repeats.max() == 1
        for short in (~by_chars & by_tokens, ~by_chars & ~by_tokens):
            n = short.sum()
            assert abs(repeats[short].mean() - keep) < 4 * np.sqrt(keep * (1 - keep) / n) + 1 / n
        return
    # the long share (a target, or upsample's: the domain's own) is that of the documents long by
    # characters / 3.68, not by exact tokens
    groups = [domains == 0, domains == 1] if strategy != "global" else [np.ones_like(by_chars)]
    for group in groups:
        own = lengths[group & by_chars].sum() / lengths[group].sum()
        expected = own if strategy.startswith("upsample") else 0.7
        share = tokens[group & by_chars].sum() / tokens[group].sum()
        assert share == pytest.approx(expected, abs=0.01)
        assert abs(tokens[group & by_tokens].sum() / tokens[group].sum() - expected) > 0.02


def test_length_estimate_chars_classifies_by_characters():
    lengths = np.array([500, 500, 5000])
    chars = np.array([500 * 3, 5000 * 3, 2000])  # the second is long by characters, the third short
    assert long_documents(lengths, 1000, chars).tolist() == [False, True, False]
    assert long_documents(lengths, 1000).tolist() == [False, False, True]


def test_length_estimate_chars_end_to_end_and_old_tables_refused(
    tmp_path, mixed_corpus, word_tokenizer
):
    import pyarrow.parquet as pq

    from longmix.data.prepare import PrepareError

    out = tmp_path / "out"

    def config(estimate: str, folder: Path = out) -> PrepareConfig:
        return PrepareConfig(
            inputs=(str(mixed_corpus),),
            out=str(folder),
            tokenizer=str(word_tokenizer),
            seq_len=512,
            cache=str(out / "tokenized"),
            mixture=MixtureConfig("original", long_threshold=256, length_estimate=estimate),
        )

    stats = prepare(config("chars"), progress=False, log=lambda m: None)
    docs = pq.read_table(sorted((out / "tokenized").glob("*.docs.parquet"))).to_pydict()
    n_tokens, n_chars = np.array(docs["n_tokens"]), np.array(docs["n_chars"])
    by_chars = n_chars / 3.68 > 256
    assert (by_chars != (n_tokens > 256)).any()  # the two measures disagree on this corpus
    long_available = sum(
        c["available_tokens"] for c in stats["plan"]["cells"] if c["class"] == "long"
    )
    assert long_available == n_tokens[by_chars].sum()
    assert PackedDataset(out).manifest["length_estimate"] == "chars"

    for path in (out / "tokenized").glob(
        "*.docs.parquet"
    ):  # a table written before character counts
        pq.write_table(pq.read_table(path).drop(["n_chars"]), path)
    with pytest.raises(PrepareError, match="predate character counts"):
        prepare(config("chars", tmp_path / "again"), progress=False, log=lambda m: None)
    assert (
        prepare(config("tokens", tmp_path / "old"), progress=False, log=lambda m: None)["after"][
            "total"
        ]["tokens"]
        > 0
    )


# ---------------------------------------------------------------------------- max_repeats


def test_repeat_cap_is_honoured_and_the_shortfall_reported():
    domains, names, lengths, _ = synthetic_table()
    budget = int(lengths.sum()) * 3
    plan, selection, table = run("per-source", budget, max_repeats=2)
    assert selection.repeats.max() == 2
    by_domain = {s["domain"]: s for s in selection.shortfalls}
    assert "web" in by_domain and "book" in by_domain
    web = by_domain["web"]
    assert web["achieved_tokens"] < web["target_tokens"] and web[
        "target_long_share"
    ] == pytest.approx(0.7, abs=0.01)
    assert web["achieved_long_share"] < 0.7
    line = format_shortfall(web)
    assert (
        line.startswith("web: target 70.0% long") and "at most 2 uses" in line and "\n" not in line
    )


def test_repeat_cap_warning_lands_in_the_log_stats_and_report(
    tmp_path, mixed_corpus, word_tokenizer
):
    out = tmp_path / "out"
    lines: list[str] = []
    config = PrepareConfig(
        inputs=(str(mixed_corpus),),
        out=str(out),
        tokenizer=str(word_tokenizer),
        seq_len=512,
        mixture=MixtureConfig("per-source", tokens=2_000_000, long_threshold=256, max_repeats=3),
    )
    stats = prepare(config, progress=False, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning: ")]
    recorded = json.loads((out / "stats.json").read_text())["plan"]["shortfalls"]
    assert len(warnings) == len(recorded) == len(stats["before"]["domains"])  # one line per domain
    assert stats["after"]["total"]["max_repeats"] == 3
    assert "## Targets not met" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("strategy", "cut:0", "positive"),
        ("strategy", "cut:-5", "positive"),
        ("strategy", "truncate:abc", "positive"),
        ("short_keep", 1.5, "within"),
        ("short_keep", 0, "within"),
        ("max_repeats", 0, "1 or more"),
        ("long_fraction", 1.5, "within"),
        ("length_estimate", "words", "tokens, chars"),
    ],
)
def test_bad_values_are_refused_in_one_line(key, value, message):
    with pytest.raises(SettingsError, match=message) as err:
        from_mapping(MixtureConfig, {key: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "flags",
    [
        ["--strategy", "cut:0"],
        ["--strategy", "cut:-5"],
        ["--short-keep", "1.5"],
        ["--max-repeats", "0"],
        ["--long-fraction", "1.5"],
        ["--strategy", "upsample:nonexistent", "--domains", "book,cc"],
    ],
)
def test_cli_refuses_bad_values_before_tokenization(tmp_path, mixed_corpus, capsys, flags):
    out = tmp_path / "out"
    assert main(["prepare", str(mixed_corpus), "--out", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    assert not (out / "tokenized").exists()


def test_python_settings_are_checked_before_tokenization(tmp_path, mixed_corpus):
    out = tmp_path / "out"
    for mixture in (
        MixtureConfig("cut:0"),
        MixtureConfig(max_repeats=0),
        MixtureConfig(short_keep=2.0),
    ):
        with pytest.raises(LongmixError, match="cut:0|max.repeats|short.keep"):
            prepare(
                PrepareConfig(inputs=(str(mixed_corpus),), out=str(out), mixture=mixture),
                progress=False,
                log=lambda m: None,
            )
    assert not (out / "tokenized").exists()
