"""Evaluation on CPU with tiny random models and the built-in tokenizer."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longmix.eval import needle as needle_mod  # noqa: E402
from longmix.eval.common import (  # noqa: E402
    EvalModel,
    answer_scores,
    generate,
    parse_grid,
    read_jsonl,
    word_recall,
)
from longmix.eval.loss import DEFINITION, run_loss  # noqa: E402
from longmix.eval.needle import (  # noqa: E402
    Haystack,
    NeedleConfig,
    build_cell,
    load_haystack_text,
    prompt_parts,
    run_needle,
)
from longmix.eval.report import build_report  # noqa: E402
from longmix.eval.tasks import (  # noqa: E402
    TASKS,
    TaskInputs,
    effective_length,
    fit_sample,
    make_sample,
    string_match,
    summarize_tasks,
)


@pytest.fixture(scope="module")
def books_haystack(em) -> Haystack:
    return Haystack(em, load_haystack_text("books"), 4096)


def test_grids():
    assert parse_grid("1K:4K:4", lengths=True) == [1024, 2048, 3072, 4096]
    assert parse_grid("0:100:3", lengths=False) == [0, 50, 100]
    assert parse_grid("4K,8K", lengths=True) == [4096, 8192]


@pytest.mark.parametrize("length", [300, 1000, 2048])
@pytest.mark.parametrize("depth", [0, 11, 50, 89, 100])
def test_needle_cell_has_exact_length_and_sits_on_a_sentence_boundary(
    em, books_haystack, length, depth
):
    config = NeedleConfig(protocol="longmix", lengths=(length,), depths=(depth,))
    header, footer = prompt_parts(config)
    parts = (
        em.encode(header),
        em.encode(footer),
        em.encode(config.needle),
        em.encode(config.answer),
    )
    haystack = books_haystack
    cell = build_cell(em, haystack, config, length, depth, parts)
    assert len(cell.prompt) == length
    needle_ids = parts[2]
    assert cell.prompt[cell.insert_at : cell.insert_at + len(needle_ids)] == needle_ids
    at = cell.insert_at - len(parts[0])  # position within the haystack
    room = length - len(parts[0]) - len(parts[1]) - len(needle_ids)
    target = int(room * depth / 100)
    assert at <= target
    assert haystack.boundary[at]  # depth 100 too: the last sentence end of the haystack
    if at > 0:
        before = em.decode(haystack.tokens[:at])
        assert re.search(r"[.!?][\"'”’)\]]*\s*$", before)
    assert not haystack.boundary[
        at + 1 : target + 1
    ].any()  # the nearest boundary before the target


def successor_model(vocab: int = 64) -> EvalModel:
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
    return EvalModel(model.eval(), None, torch.device("cpu"), "successor", 256)


def test_teacher_forcing_agrees_with_greedy_generation():
    em = successor_model()
    prompt = [5, 9, 3, 10]
    generated = generate(em, prompt, 6)
    assert generated == [11, 12, 13, 14, 15, 16]
    assert answer_scores(em, prompt, generated)["exact"] == 1.0
    wrong = [11, 12, 40, 14]
    scores = answer_scores(em, prompt, wrong)
    # teacher forcing feeds the given answer: after the wrong 40 the model predicts 41, not 14
    assert scores["exact"] == 0.0 and scores["token_accuracy"] == 0.5
    assert scores["logprob"] < answer_scores(em, prompt, generated[:4])["logprob"]


def test_word_recall():
    answer = " eat a sandwich and sit in Dolores Park on a sunny day."
    assert word_recall("Eat a sandwich and sit in Dolores Park on a sunny day!", answer) == 1.0
    assert word_recall("go to the park", answer) == pytest.approx(1 / 11)  # 11 distinct words


def test_needle_run_writes_results_heatmap_and_resumes(em, tmp_path, monkeypatch):
    config = NeedleConfig(
        protocol="longmix", lengths=(256, 512), depths=(0, 50, 100), generate_tokens=4
    )
    summary = run_needle(em, config, tmp_path / "needle", progress=False)
    rows = [
        json.loads(line)
        for line in (tmp_path / "needle" / "results.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 6 and summary["cells"] == 6
    assert {
        "exact",
        "token_accuracy",
        "logprob",
        "recall",
        "contains",
        "fu_score",
        "response",
    } <= set(rows[0])
    assert all(r["protocol"] == "longmix" and r["metric_definitions"]["contains"] for r in rows)
    assert (
        summary["headline"] == "contains"
        and summary["protocol"] == "longmix"
        and summary["missing"] == []
    )
    assert all(r["n_tokens"] == r["length"] for r in rows)
    assert (tmp_path / "needle" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    scored = []

    def fake_scores(em, prompts, answer, batch_tokens=None):
        scored.extend(prompts)
        return [{"exact": 1.0} for _ in prompts]

    monkeypatch.setattr(needle_mod, "answer_scores_batch", fake_scores)
    bigger = NeedleConfig(
        protocol="longmix", lengths=(256, 512, 768), depths=(0, 50, 100), generate_tokens=0
    )
    summary = run_needle(em, bigger, tmp_path / "needle", progress=False)
    assert len(scored) == 3 and summary["cells"] == 9  # only the new length was evaluated
    assert {len(p) for p in scored} == {768}


def test_batched_teacher_forcing_equals_one_cell_at_a_time(em):
    from longmix.eval.common import answer_scores_batch

    torch.manual_seed(3)
    prompts = [torch.randint(0, 49152, (300,)).tolist() for _ in range(3)]
    answer = torch.randint(0, 49152, (5,)).tolist()
    batched = answer_scores_batch(em, prompts, answer)
    for prompt, row in zip(prompts, batched):
        single = answer_scores(em, prompt, answer)
        assert row["token_accuracy"] == single["token_accuracy"]
        assert row["logprob"] == pytest.approx(single["logprob"], rel=1e-4)


def test_task_generators_are_seeded_and_answers_are_in_the_text():
    inputs = TaskInputs.from_text(load_haystack_text("books"))
    for task in (t for t in TASKS if not TASKS[t].needs):
        a = make_sample(task, 40, random.Random(7), inputs)
        b = make_sample(task, 40, random.Random(7), inputs)
        c = make_sample(task, 40, random.Random(8), inputs)
        assert a == b and a.prompt != c.prompt
        assert a.expected and all(e.lower() in a.prompt.lower() for e in a.expected)
        assert string_match(" ".join(a.expected), a.expected) == 1.0


def test_task_prompts_are_fitted_to_the_length(em):
    inputs = TaskInputs.from_text(load_haystack_text("books"))
    for task in ("niah_single_1", "niah_single_2", "vt", "cwe", "fwe"):
        sample, prompt = fit_sample(em, task, 2048, 0, inputs)
        budget = 2048 - TASKS[task].answer_tokens
        assert budget - 200 < len(prompt) <= budget


def test_fitted_prompt_is_the_largest_that_fits(em):
    """Same answer as a plain bisection over the whole range of haystack sizes."""
    inputs = TaskInputs.from_text(load_haystack_text("books"))
    for task, length in (("niah_multikey_1", 3000), ("cwe", 1500), ("fwe", 4096), ("vt", 1200)):
        budget = length - TASKS[task].answer_tokens

        def tokens(units, task=task, length=length):
            return em.encode(
                make_sample(
                    task, units, random.Random(f"{task}-{length}-5"), inputs, length, 5
                ).prompt
            )

        low, high = 1, 4 * length
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if len(tokens(middle)) <= budget else (low, middle - 1)
        assert fit_sample(em, task, length, 5, inputs)[1] == tokens(low)
    # a word list that runs out: the prompt stops growing well below the length, and the search still ends
    few = TaskInputs.from_text(
        " ".join(f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(120))
    )
    sample, prompt = fit_sample(em, "cwe", 16384, 0, few)
    assert len(prompt) < 8192 and sample.expected


def test_prompts_fitted_in_worker_processes_match(em, tmp_path):
    from longmix.eval.tasks import TaskConfig, run_tasks

    config = TaskConfig(tasks=("niah_single_1", "fwe"), lengths=(512, 768), samples=2, seed=3)
    text = load_haystack_text("books")
    rows = {}
    for workers in (0, 2):
        run_tasks(em, config, text, tmp_path / str(workers), progress=False, workers=workers)
        rows[workers] = [
            json.loads(line)
            for line in (tmp_path / str(workers) / "results.jsonl").read_text().splitlines()
        ]
    assert len(rows[0]) == 8
    # sample-major order: a run stopped half-way has scored every (task, length) once
    assert [(r["task"], r["length"], r["sample"]) for r in rows[0][:4]] == [
        (t, n, 0) for t in ("niah_single_1", "fwe") for n in (512, 768)
    ]
    assert [(r["n_tokens"], r["expected"], r["response"]) for r in rows[0]] == [
        (r["n_tokens"], r["expected"], r["response"]) for r in rows[2]
    ]


def test_effective_length():
    assert effective_length({"4096": 0.95, "8192": 0.9, "16384": 0.5, "32768": 0.9}, 0.85) == 8192
    assert effective_length({"4096": 0.5}, 0.85) is None


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from longmix.data.mixture import MixtureConfig
    from longmix.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("prep") / "data"
    from longmix.data.corpus import sample_corpus_dir

    prepare(
        PrepareConfig(
            inputs=(str(sample_corpus_dir()),),
            out=str(out),
            seq_len=8192,
            workers=1,
            mixture=MixtureConfig("original", tokens=60_000),
        ),
        progress=False,
        log=lambda m: None,
    )
    return out


def test_loss_buckets_add_up_to_the_overall_loss(em, prepared, tmp_path):
    from longmix.data.store import PackedDataset
    from longmix.eval.loss import DEFINITION, domain_sequences

    summary = run_loss(em, prepared, tmp_path / "loss", max_sequences=1, progress=False)
    assert summary["definition"] == DEFINITION
    rows = summary["domains"]
    total = rows["all"]
    # one sequence per domain, packed from that domain's documents only
    expected = list(domain_sequences(PackedDataset(prepared), 1))
    assert total["tokens"] == sum(len(s.tokens) - 1 for s in expected)
    assert summary["sequences"] == {
        d: sum(s.domain == d for s in expected) for d in summary["sequences"]
    }
    for view in (summary, summary["by_position"]):
        rows = view["domains"]
        total = rows["all"]
        weighted = sum(
            r["loss"] * r["tokens"] for d, r in rows.items() if d != "all" and r["tokens"]
        )
        assert weighted / total["tokens"] == pytest.approx(total["loss"])
        curve = sum(loss * c for loss, c in zip(total["curve"], total["curve_tokens"]) if c)
        assert curve / total["tokens"] == pytest.approx(total["loss"])
        short, long = total["0-4K"], total["4K-max"]
        n_short = total["0-4K tokens"]
        assert n_short == sum(c for e, c in zip(view["edges"], total["curve_tokens"]) if e < 4096)
        assert (short * n_short + (long or 0) * (total["tokens"] - n_short)) / total[
            "tokens"
        ] == pytest.approx(total["loss"])
    # fewer tokens reach 4K of their own document than reach position 4K
    assert (
        summary["domains"]["all"]["4K-max tokens"]
        <= summary["by_position"]["domains"]["all"]["4K-max tokens"]
    )
    assert (tmp_path / "loss" / "loss_by_position.png").is_file()
    # one row per evaluated sequence beside the summary: its bucket sums add up to the summary
    rows = list(read_jsonl(tmp_path / "loss" / "results.jsonl"))
    assert [(r["domain"], r["sequence"]) for r in rows] == [(s.domain, 0) for s in expected]
    assert all(r["n_tokens"] == len(s.tokens) for r, s in zip(rows, expected))
    for view, prefix in ((summary, ""), (summary["by_position"], "position_")):
        for domain, row in view["domains"].items():
            mine = [r for r in rows if domain in ("all", r["domain"])]
            for i, bucket in enumerate(summary["buckets"]):
                tokens = sum(r[f"{prefix}tokens"][i] for r in mine)
                assert tokens == row[f"{bucket} tokens"]
                if tokens:
                    nll = sum(r[f"{prefix}nll"][i] for r in mine)
                    assert nll / tokens == pytest.approx(row[bucket])
    for domain, row in summary["domains"].items():
        mine = [r for r in rows if domain in ("all", r["domain"])]
        assert [sum(r["fine_tokens"][b] for r in mine) for b in range(len(row["curve"]))] == row[
            "curve_tokens"
        ]


def test_report_compares_runs_and_marks_significant_loss_deltas(tmp_path):
    def run(name, loss, exact):
        folder = tmp_path / name
        (folder / "loss").mkdir(parents=True)
        domains = {
            d: {"loss": loss + i, "tokens": 10, "0-4K": loss + i, "4K-max": loss + i - 0.2}
            for i, d in enumerate(["book", "cc"])
        }
        domains["all"] = {"loss": loss, "tokens": 20, "0-4K": loss, "4K-max": loss - 0.2}
        (folder / "loss" / "summary.json").write_text(
            json.dumps({"domains": domains, "edges": [0, 4096, 8192], "definition": DEFINITION})
        )
        (folder / "needle").mkdir()
        rows = [
            {
                "length": n,
                "depth": d,
                "exact": exact * 1024 / n,
                "contains": exact * 512 / n,
                "protocol": "longmix",
            }
            for n in (1024, 2048)
            for d in (0, 100)
        ]
        (folder / "needle" / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        by_length = {
            "1024": {"exact": exact, "contains": exact / 2},
            "2048": {"exact": exact / 2, "contains": exact / 4},
        }
        (folder / "needle" / "summary.json").write_text(
            json.dumps(
                {
                    "cells": 4,
                    "mean": {"exact": 0.75 * exact, "contains": 0.375 * exact},
                    "by_length": by_length,
                    "train_length": 1024,
                    "protocol": "longmix",
                    "headline": "contains",
                }
            )
        )
        return folder

    text = build_report(
        [run("original", 2.0, 0.2), run("per-source", 1.995, 0.9), run("global", 2.05, 0.5)],
        tmp_path / "report",
    )
    assert "| per-source | -0.005 | -0.005 | -0.005 |" in text
    assert "| global | +0.050* | +0.050* | +0.050* |" in text
    assert f"Loss buckets: {DEFINITION}" in text
    assert "| ≤ 1K | > 1K |" in text  # needle means within and beyond the training length
    # the generation score leads; teacher-forced exact match comes after, in its own table
    assert "| per-source | longmix | 4 | contains | 0.338 | 0.450 | 0.225 | – |" in text
    assert "| per-source | longmix | – | 0.675 | – | 0.900 | – | 0.450 | – |" in text
    assert text.index("| contains |") < text.index("Teacher forcing")
    assert (tmp_path / "report" / "needle_heatmaps.png").is_file()
    assert (tmp_path / "report" / "needle_by_length.png").is_file()


def test_report_shows_an_interrupted_task_run_as_partial(tmp_path):
    def run(name, samples):
        folder = tmp_path / name / "ruler"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(
            json.dumps(
                {"tasks": ["vt", "cwe"], "lengths": [1024, 2048], "samples": 2, "threshold": 0.5}
            )
        )
        rows = [
            {"task": t, "length": n, "sample": i, "score": 1.0 if t == "vt" else 0.0}
            for t in ("vt", "cwe")
            for n in (1024, 2048)
            for i in range(2)
        ][:samples]
        (folder / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        if samples == 8:
            (folder / "summary.json").write_text(json.dumps(summarize_tasks(rows, 0.5)))
        return folder.parent

    text = build_report([run("done", 8), run("cut", 5)], tmp_path / "report")
    assert "| done | 0.50 | 0.50 | 2048 (≥ 0.5) |" in text
    # the cut run has both lengths of vt but only one cwe sample: its 2K mean is vt's alone
    assert "| cut (partial: 5 of 8 samples) | 0.50 | 1.00 | 2048 (≥ 0.5) |" in text
    assert (
        "| done | 1.00 | 0.00 |" in text
        and "| cut (partial: 5 of 8 samples) | 1.00 | 0.00 |" in text
    )


def test_cli_eval_needle(tiny_model, tmp_path, capsys):
    from longmix.cli import main

    assert (
        main(
            [
                "eval",
                "needle",
                "--protocol",
                "longmix",
                "--model",
                str(tiny_model),
                "--lengths",
                "256,512",
                "--depths",
                "0:100:2",
                "--out",
                str(tmp_path),
                "--generate-tokens",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "needle" / "summary.json").is_file()
    assert (
        main(["eval", "needle", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    )
    assert "not a HF model folder" in capsys.readouterr().err
    assert np.isfinite(
        json.loads((tmp_path / "needle" / "summary.json").read_text())["mean"]["logprob"]
    )


def test_cli_eval_ruler_loss_and_report(tiny_model, prepared, tmp_path, capsys):
    from longmix.cli import main

    assert (
        main(
            [
                "eval",
                "ruler",
                "--model",
                str(tiny_model),
                "--tasks",
                "niah_single_1,fwe",
                "--lengths",
                "512",
                "--samples",
                "1",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    assert "| niah_single_1 |" in capsys.readouterr().out
    assert (
        main(
            [
                "eval",
                "loss",
                "--model",
                str(tiny_model),
                "--data",
                str(prepared),
                "--sequences",
                "1",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "all" in out and "tokens)" in out
    assert (
        main(
            [
                "eval",
                "report",
                str(tmp_path),
                str(tmp_path),
                "--names",
                "a,b",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    assert (tmp_path / "r" / "report.md").read_text().count("| b |") >= 2
