"""Batched, cached greedy decoding and shared-prefix reuse give what one prompt at a time gives."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longmix.data.tokenize import builtin_tokenizer_dir  # noqa: E402
from longmix.eval import runtime  # noqa: E402
from longmix.eval.runtime import (  # noqa: E402
    EvalModel,
    answer_scores,
    answer_scores_batch,
    generate,
    generate_batch,
    prefill_groups,
    truncate_at_stop,
)

VOCAB = 49152


@pytest.fixture(scope="module")
def em() -> EvalModel:
    """A tiny random fp32 LLaMA (grouped-query attention) with longmix's attention and the built-in tokenizer."""
    from tokenizers import Tokenizer

    from longmix.train.attention import register_attention_backends

    register_attention_backends()
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.3,
    )  # outputs that vary with the context
    config._attn_implementation = "longmix_sdpa"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    tokenizer = Tokenizer.from_file(str(builtin_tokenizer_dir() / "tokenizer.json"))
    return EvalModel(model, tokenizer, torch.device("cpu"), "tiny", 1024)


def random_tokens(n: int, generator: torch.Generator) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=generator).tolist()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Varied lengths (some equal), and three prompts sharing a 150-token prefix."""
    g = torch.Generator().manual_seed(1)
    shared = random_tokens(150, g)
    return [random_tokens(n, g) for n in (3, 40, 17, 40, 90)] + [
        shared + random_tokens(n, g) for n in (20, 20, 45)
    ]


@pytest.fixture(scope="module")
def one_at_a_time(em, prompts) -> list[list[int]]:
    return [generate(em, p, 10) for p in prompts]


@pytest.mark.parametrize(
    "batch_tokens", [10_000, 150]
)  # one batch; several, with padding inside each
@pytest.mark.parametrize("min_prefix", [16, 10**9])  # prefix reuse on and off
def test_batched_generation_equals_one_prompt_at_a_time(
    em, prompts, one_at_a_time, batch_tokens, min_prefix
):
    assert (
        generate_batch(em, prompts, 10, batch_tokens=batch_tokens, min_prefix=min_prefix)
        == one_at_a_time
    )


def test_stop_strings_end_each_sequence_where_one_at_a_time_would(em, prompts, one_at_a_time):
    texts = [em.decode(t) for t in one_at_a_time]
    # a stop string taken from the middle of one response, and one that never occurs
    stop = (texts[1].lstrip()[3:6], "\x00never")
    expected = [truncate_at_stop(em, tokens, stop) for tokens in one_at_a_time]
    assert any(len(e) < 10 for e in expected) and any(len(e) == 10 for e in expected)
    got = generate_batch(em, prompts, 10, stop=stop, batch_tokens=200)
    assert got == expected
    for tokens in got:
        if (
            len(tokens) < 10
        ):  # stopped early: the stop string is in the response, and not before its last token
            assert (
                stop[0] in em.decode(tokens).lstrip()
                and stop[0] not in em.decode(tokens[:-1]).lstrip()
            )


def successor_model(vocab: int = 64, eos: int | None = None) -> EvalModel:
    """A model whose greedy output is forced: after token t it always predicts t+1."""
    config = transformers.LlamaConfig(
        hidden_size=vocab,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=vocab,
        tie_word_embeddings=False,
        max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(torch.roll(torch.eye(vocab), 1, dims=0))
    model.generation_config.eos_token_id = eos
    return EvalModel(model.eval(), None, torch.device("cpu"), "successor", 256)


def test_end_of_sequence_finishes_a_row_and_the_others_go_on():
    em = successor_model(eos=20)
    prompts = [[5, 9, 3, 16], [1, 2], [30, 31, 32, 33, 34, 35]]
    got = generate_batch(em, prompts, 6)
    assert got == [[17, 18, 19, 20], [3, 4, 5, 6, 7, 8], [36, 37, 38, 39, 40, 41]]
    assert got == [generate(em, p, 6) for p in prompts]


def test_a_stop_string_far_into_a_long_response_ends_it_at_its_last_token():
    """Past the first few tokens only a response's tail is searched for a new stop string."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(builtin_tokenizer_dir() / "tokenizer.json"))
    em = successor_model(vocab=128)
    em.tokenizer = tokenizer
    prompts = [[48], [59]]  # responses "ABCD…" and "LMNO…": one letter per token
    got = generate_batch(em, prompts, 60, stop=("UVW", "\x00never"))
    assert [em.decode(t) for t in got] == ["ABCDEFGHIJKLMNOPQRSTUVW", "LMNOPQRSTUVW"]
    assert got == [truncate_at_stop(em, generate(em, p, 60), ("UVW",)) for p in prompts]


def test_prefix_reuse_gives_the_teacher_forcing_scores_of_no_reuse(em, monkeypatch):
    """Needle-like prompts: one length, a shared text with an insert at growing depths."""
    g = torch.Generator().manual_seed(2)
    text, insert, answer = random_tokens(240, g), random_tokens(8, g), random_tokens(5, g)
    depths = (0, 60, 120, 200, 240)
    prompts = [text[:d] + insert + text[d:] for d in depths]
    groups = prefill_groups(prompts, list(range(len(prompts))), min_prefix=16)
    # each prompt reuses the text up to the insert it meets first (the shallowest: nothing worth it);
    # the deepest two share the text up to 200 and run together
    assert [(g.members, g.prefix) for g in groups] == [
        ([0], 0),
        ([1], 60),
        ([2], 120),
        ([3, 4], 200),
    ]
    computed = []
    forward = runtime._forward
    monkeypatch.setattr(
        runtime,
        "_forward",
        lambda em, ids, *a, **k: computed.append(ids.numel()) or forward(em, ids, *a, **k),
    )
    reused = answer_scores_batch(em, prompts, answer, batch_tokens=10_000, min_prefix=16)
    # the shared text is run once (200 tokens, extended group by group), then what follows each prefix
    assert sum(computed) == 200 + sum(248 + 5 - prefix for prefix in (60, 120, 200, 200))
    computed.clear()
    tight = answer_scores_batch(em, prompts, answer, batch_tokens=200, min_prefix=16)
    assert not computed  # a cache of 253 tokens does not fit 200: plain forwards, no cache kept
    plain = answer_scores_batch(em, prompts, answer, min_prefix=10**9)
    single = [answer_scores(em, p, answer) for p in prompts]
    for a, b, c, d in zip(reused, plain, single, tight):
        assert (
            a["token_accuracy"] == b["token_accuracy"] == c["token_accuracy"] == d["token_accuracy"]
        )
        assert a["logprob"] == pytest.approx(b["logprob"], rel=1e-5) == c["logprob"]


def test_prefix_reuse_gives_the_generations_of_no_reuse(em):
    g = torch.Generator().manual_seed(3)
    text, insert = random_tokens(200, g), random_tokens(6, g)
    prompts = [text[:d] + insert + text[d:] for d in (0, 50, 100, 150, 200)] + [
        text + random_tokens(30, g)
    ]
    expected = [generate(em, p, 8) for p in prompts]
    for batch_tokens in (
        10_000,
        120,
    ):  # all in one batch (copied from the prefix), or one by one (in its buffer)
        assert generate_batch(em, prompts, 8, batch_tokens=batch_tokens, min_prefix=16) == expected


def test_groups_join_only_when_no_prompt_loses_its_prefix():
    shared = list(range(100))
    prompts = [shared + [1000 + i, 7] for i in range(3)] + [[5] * 102, [6] * 102, [9] * 50]
    groups = prefill_groups(prompts, list(range(len(prompts))), min_prefix=16)
    assert [(g.members, g.prefix) for g in groups] == [([0, 1, 2], 100), ([3, 4], 0), ([5], 0)]


# ---------------------------------------------------------------------------- the evaluations' loops


def one_at_a_time_runtime(monkeypatch) -> None:
    """Make the runtime answer one prompt at a time: HF ``generate`` cut at the first stop, and
    teacher forcing without batching or prefix reuse (the evaluations' behaviour before batching)."""
    batched_scores = runtime.answer_scores_batch

    def iter_generate_batch(em, prompts, max_new_tokens, stop=(), batch_tokens=None, min_prefix=0):
        for i, prompt in enumerate(prompts):
            yield [(i, truncate_at_stop(em, generate(em, prompt, max_new_tokens), stop))]

    def answer_scores_batch(em, prompts, answer, batch_tokens=None, min_prefix=0):
        return [batched_scores(em, [p], answer, min_prefix=10**9)[0] for p in prompts]

    monkeypatch.setattr(runtime, "iter_generate_batch", iter_generate_batch)
    monkeypatch.setattr(runtime, "answer_scores_batch", answer_scores_batch)


def read_rows(path) -> list[dict]:
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        assert row.pop("seconds") >= 0
    return rows


def assert_same_rows(batched: list[dict], single: list[dict]) -> None:
    assert len(batched) == len(single) > 0
    for a, b in zip(batched, single):
        if "logprob" in a:
            assert a.pop("logprob") == pytest.approx(b.pop("logprob"), rel=1e-5)
        assert a == b


@pytest.mark.parametrize("protocol", ["longmix", "fu"])
def test_needle_rows_are_those_of_one_cell_at_a_time(em, tmp_path, monkeypatch, protocol):
    from longmix.eval.needle import NeedleConfig, run_needle

    if protocol == "fu":
        pytest.importorskip("importlib.util").find_spec("needlehaystack") or pytest.skip(
            "needlehaystack not installed"
        )
        config = NeedleConfig(protocol="fu", lengths=(256, 384), depths=(0, 50, 100))
    else:
        config = NeedleConfig(
            protocol="longmix", lengths=(256, 384), depths=(0, 50, 100), generate_tokens=5
        )
    run_needle(em, config, tmp_path / "batched", progress=False)
    one_at_a_time_runtime(monkeypatch)
    run_needle(em, config, tmp_path / "single", progress=False)
    batched, single = (
        read_rows(tmp_path / "batched" / "results.jsonl"),
        read_rows(tmp_path / "single" / "results.jsonl"),
    )
    assert [(r["length"], r["depth"]) for r in batched] == [
        (n, d) for n in (256, 384) for d in (0, 50, 100)
    ]
    assert_same_rows(batched, single)


def test_task_rows_are_those_of_one_sample_at_a_time(em, tmp_path, monkeypatch):
    from longmix.eval.needle import load_haystack_text
    from longmix.eval.tasks import GENERATE, TaskConfig, run_tasks

    config = TaskConfig(tasks=("niah_single_1", "vt"), lengths=(900, 1100), samples=2, seed=1)
    text = load_haystack_text("books")
    run_tasks(em, config, text, tmp_path / "batched", progress=False, workers=0)
    one_at_a_time_runtime(monkeypatch)
    run_tasks(em, config, text, tmp_path / "single", progress=False, workers=0)
    batched, single = (
        read_rows(tmp_path / "batched" / "results.jsonl"),
        read_rows(tmp_path / "single" / "results.jsonl"),
    )
    # sample-major order, as written one at a time
    assert [(r["task"], r["length"], r["sample"]) for r in batched] == [
        (t, n, i) for i in range(2) for t in ("niah_single_1", "vt") for n in (900, 1100)
    ]
    assert all(r["n_tokens"] + GENERATE[r["task"]] <= r["length"] for r in batched)
    assert_same_rows(batched, single)


def test_bookqa_rows_are_those_of_one_example_at_a_time(em, tmp_path, monkeypatch):
    import json

    from longmix.eval.bookqa import run_bookqa

    rows = [
        {
            "id": i,
            "context": "Once upon a time. " * (40 + 60 * i) + f"The key was hidden in room {i}. ",
            "input": "Where was the key hidden?",
            "answer": [f"in room {i}"],
        }
        for i in range(4)
    ]
    data = tmp_path / "longbook_qa_eng.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run_bookqa(em, data, tmp_path / "batched", max_length=500, generate_tokens=6, progress=False)
    one_at_a_time_runtime(monkeypatch)
    run_bookqa(em, data, tmp_path / "single", max_length=500, generate_tokens=6, progress=False)
    batched, single = (
        read_rows(tmp_path / "batched" / "results.jsonl"),
        read_rows(tmp_path / "single" / "results.jsonl"),
    )
    assert [r["id"] for r in batched] == ["0", "1", "2", "3"]
    assert (
        len({r["prompt_tokens"] for r in batched}) > 1
    )  # prompts of several lengths: padded batches
    assert_same_rows(batched, single)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decoding_gives_the_tokens_of_eager_steps(em, prompts):
    """Captured and replayed steps (with rows finishing and dropped mid-batch) against the same
    steps run eagerly, and against one prompt at a time, on a GPU."""
    import dataclasses

    gpu = dataclasses.replace(em, model=em.model.to("cuda"), device=torch.device("cuda"))
    try:
        eager = generate_batch(
            dataclasses.replace(gpu, cuda_graphs=False), prompts, 12, stop=("e",), batch_tokens=400
        )
        graphed = generate_batch(gpu, prompts, 12, stop=("e",), batch_tokens=400)
        assert not runtime._DecodeStep.failed_capture
        assert graphed == eager
        assert generate_batch(gpu, prompts, 10) == [generate(gpu, p, 10) for p in prompts]
    finally:
        em.model.to("cpu")
