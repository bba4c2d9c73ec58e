"""RULER's task definitions: generators, templates, counts, scores, and scoring RULER's own files."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from longmix.eval.common import EvalError
from longmix.eval.needle import load_haystack_text
from longmix.eval.ruler_data import load_ruler_samples
from longmix.eval.tasks import (
    CWE_PREFIX,
    FWE_PREFIX,
    NOISE,
    QA_PREFIX,
    RULER_THRESHOLD,
    TASKS,
    TaskConfig,
    TaskInputs,
    cwe_counts,
    fwe_counts,
    make_sample,
    read_hotpotqa,
    read_squad,
    resolve_tasks,
    string_match_all,
    string_match_part,
    summarize_tasks,
    task_table,
    zeta,
)


@pytest.fixture(scope="module")
def inputs() -> TaskInputs:
    return TaskInputs.from_text(load_haystack_text("books"))


@pytest.fixture
def qa_files(tmp_path: Path) -> tuple[Path, Path]:
    paragraphs = [
        {
            "context": f"Paragraph {i} says the colour of box {i} is shade{i}.",
            "qas": [
                {
                    "question": f"What colour is box {i}?",
                    "answers": [{"text": f"shade{i}"}, {"text": f"Shade{i}!"}],
                    "is_impossible": False,
                },
                {"question": "Unanswerable?", "answers": [], "is_impossible": True},
            ],
        }
        for i in range(6)
    ]
    squad = tmp_path / "squad.json"
    squad.write_text(
        json.dumps({"data": [{"paragraphs": paragraphs[:3]}, {"paragraphs": paragraphs[3:]}]})
    )
    hotpot = tmp_path / "hotpot.json"
    hotpot.write_text(
        json.dumps(
            [
                {
                    "question": f"Who owns item {i}?",
                    "answer": f"owner{i}",
                    "context": [
                        [f"Item {i}", [f"Item {i} belongs to ", f"owner{i}."]],
                        [f"Other {i}", ["Nothing here."]],
                    ],
                }
                for i in range(5)
            ]
        )
    )
    return squad, hotpot


def test_variable_tracking_hops_come_in_chain_order(inputs):
    for seed in range(40):
        sample = make_sample("vt", 60, random.Random(seed), inputs)
        _, example, question = sample.prompt.split("Memorize and track")
        names = sample.expected
        assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
        value = re.search(rf"VAR {names[0]} = (\d{{5}})", question).group(1)
        positions = [question.index(f"VAR {names[0]} = {value}")] + [
            question.index(f"VAR {names[j + 1]} = VAR {names[j]}") for j in range(4)
        ]
        assert positions == sorted(positions), f"seed {seed}: hops out of order"
        assert question.endswith(f"5 variables are assigned the value {value}, they are: ")
        # the solved example before it: a 3-letter chain, in order, and its answer
        example_names = re.findall(r"VAR ([A-Z]{3}) =", example)
        assert len(example_names) == 5 and example.endswith(" " + " ".join(example_names) + "\n\n")
        assert all(
            f"VAR {b} = VAR {a}" in example for a, b in zip(example_names, example_names[1:])
        )


def rulers_noise_context(noise: int, chain: list[str], rng: random.Random) -> str:
    """RULER's variable_tracking.py, noise haystack, written again: each hop inserted at the
    next of sorted random sentence positions, shifted by the hops already inserted."""
    sentences = [NOISE] * noise
    positions = sorted(rng.sample(range(len(sentences)), len(chain)))
    for position, j in zip(positions, range(len(chain))):
        sentences.insert(position + j, chain[j])
    return "\n".join(sentences).replace(". \n", ".\n")


def test_variable_tracking_context_and_chain_are_rulers():
    from longmix.eval.tasks import _vt_chain, _vt_text

    for seed in range(20):
        names, value, chain = _vt_chain(random.Random(seed), 4, 5)
        assert chain == [f"VAR {names[0]} = {value}"] + [
            f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])
        ]
        assert len(set(names)) == 5 and 10_000 <= int(value) <= 99_998
        noise = 30 + seed
        assert _vt_text(noise, chain, random.Random(seed)) == rulers_noise_context(
            noise, chain, random.Random(seed)
        )


@pytest.mark.parametrize("task", [t for t in TASKS if not TASKS[t].needs])
def test_prompts_end_with_rulers_answer_prefix(inputs, task):
    sample = make_sample(task, 50, random.Random(3), inputs, length=8192)
    spec = TASKS[task]
    head = spec.template.split("{")[0]
    if task.startswith("niah"):
        single = len(sample.expected) == 1
        kind = ("uuid" if "uuid" in task or task.endswith("_3") else "number") + (
            "" if single else "s"
        )
        assert sample.prompt.startswith(
            ("A special magic " if single else "Some special magic ")
            + kind
            + (" is hidden" if single else " are hidden")
        )
        assert sample.prompt.endswith(
            f" mentioned in the provided text {'is' if single else 'are'}"
        )
        assert re.search(
            rf"What {'is' if single else 'are all'} the special magic {kind} for .+ mentioned in the "
            rf"provided text\? The special magic {kind} for",
            sample.prompt,
        )
    else:
        assert head in sample.prompt
        prefix = spec.answer_prefix.split("{")[0]
        assert prefix in sample.prompt[-len(spec.answer_prefix) - 40 :]
    assert sample.expected and all(e in sample.prompt for e in sample.expected)


def test_niah_variants_use_rulers_haystacks_and_values(inputs):
    uuid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    noise = make_sample("niah_single_1", 30, random.Random(1), inputs)
    assert noise.prompt.count(NOISE) == 30 and re.fullmatch(r"\d{7}", noise.expected[0])
    essay = make_sample("niah_single_2", 300, random.Random(1), inputs)
    assert NOISE not in essay.prompt and re.fullmatch(r"\d{7}", essay.expected[0])
    assert uuid.match(make_sample("niah_single_3", 300, random.Random(1), inputs).expected[0])
    distractors = make_sample("niah_multikey_2", 30, random.Random(1), inputs)
    assert distractors.prompt.count("One of the special magic numbers for") == 31
    keyed = make_sample("niah_multikey_3", 30, random.Random(1), inputs)
    assert keyed.prompt.count("One of the special magic uuids for") == 31 and uuid.match(
        keyed.expected[0]
    )
    query = re.search(r"magic uuid for (\S+) mentioned", keyed.prompt).group(1)
    assert uuid.match(query)
    multi = make_sample("niah_multiquery", 300, random.Random(1), inputs)
    assert len(multi.expected) == 4 and ", and " in multi.prompt


def _numbered_words(listing: str) -> list[str]:
    return re.findall(r"\d+\. (\S+)", listing)


@pytest.mark.parametrize("length", [2048, 8192])
def test_cwe_word_counts_and_one_shot_example(inputs, length):
    sample = make_sample("cwe", 40, random.Random(5), inputs, length=length)
    (ex_words, ex_common, ex_other), (common, other) = cwe_counts(length)
    example, question = sample.prompt.split(CWE_PREFIX)[:2]
    ex_counts = Counter(_numbered_words(example))
    assert len(ex_counts) == ex_words
    assert sorted(Counter(ex_counts.values()).items()) == sorted(
        {ex_common: 10, ex_other: ex_words - 10}.items()
    )
    answer_part = question.split("\n")[
        0
    ]  # the solved example's answer: its 10 common words, numbered
    assert set(_numbered_words(answer_part)) == {w for w, n in ex_counts.items() if n == ex_common}
    counts = Counter(_numbered_words(question.split("\n", 1)[1]))
    assert {w for w, n in counts.items() if n == common} == set(sample.expected)
    assert len(counts) == 50 and all(
        n == other for w, n in counts.items() if w not in sample.expected
    )
    assert sample.prompt.endswith(CWE_PREFIX)


def test_fwe_counts_follow_the_zeta_distribution_with_dots_as_noise(inputs):
    assert zeta(2.0) == pytest.approx(math.pi**2 / 6, rel=1e-9)
    assert zeta(3.0) == pytest.approx(1.2020569031595942, rel=1e-9)
    sample = make_sample("fwe", 3000, random.Random(2), inputs, length=4096)
    text = sample.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
    counts = Counter(text.split())
    expected_counts = fwe_counts(3000, (4096 - 50) // 50)
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and ranked[1:4] == sample.expected
    assert sorted(counts.values(), reverse=True) == [n for n in expected_counts if n > 0]
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:])
    assert sample.prompt.endswith(FWE_PREFIX)


def test_scores_are_rulers_string_match_all_and_part():
    assert string_match_all("the numbers are 123 and 456", ["123", "456", "789"]) == pytest.approx(
        2 / 3
    )
    assert string_match_all("ABC", ["abc"]) == 1.0
    assert string_match_part("it is Paris", ["London", "paris"]) == 1.0
    assert string_match_part("it is Rome", ["London", "Paris"]) == 0.0
    assert TASKS["qa_1"].metric is string_match_part and TASKS["vt"].metric is string_match_all
    budgets = {name: task.answer_tokens for name, task in TASKS.items()}
    assert budgets["niah_single_1"] == 128 and budgets["vt"] == 30 and budgets["cwe"] == 120
    assert budgets["fwe"] == 50 and budgets["qa_2"] == 32 and len(TASKS) == 13


def test_qa_tasks_read_user_files_and_hide_the_gold_paragraphs(qa_files, inputs):
    squad, hotpot = (read_squad(qa_files[0]), read_hotpotqa(qa_files[1]))
    assert len(squad.questions) == 6 and squad.questions[0]["outputs"] == ["shade0", "Shade0!"]
    assert len(squad.questions[0]["more"]) == 2  # the other paragraphs of its article
    data = TaskInputs(inputs.words, inputs.essay, {"squad": squad, "hotpotqa": hotpot})
    sample = make_sample("qa_1", 4, random.Random(0), data, index=4)
    assert "Question: What colour is box 4?" in sample.prompt and "box 4 is shade4" in sample.prompt
    assert sample.prompt.count("Document ") == 4 and sample.prompt.endswith(QA_PREFIX)
    two = make_sample("qa_2", 3, random.Random(0), data, index=1)
    assert "Item 1\nItem 1 belongs to owner1." in two.prompt and two.expected == ["owner1"]
    with pytest.raises(EvalError, match="not a SQuAD"):
        read_squad(qa_files[1])
    with pytest.raises(EvalError, match="not found"):
        read_hotpotqa(qa_files[0].parent / "missing.json")


def test_all_tasks_skips_those_without_data_and_names_them(qa_files):
    tasks, skipped = resolve_tasks(TaskConfig())
    assert "qa_1" not in tasks and skipped == {
        "qa_1": "no --squad file",
        "qa_2": "no --hotpotqa file",
    }
    assert len(tasks) == 11
    tasks, skipped = resolve_tasks(TaskConfig(squad=str(qa_files[0])))
    assert "qa_1" in tasks and list(skipped) == ["qa_2"]
    with pytest.raises(EvalError, match="qa_2 needs the hotpotqa file"):
        resolve_tasks(TaskConfig(tasks=("vt", "qa_2")))


def test_effective_length_states_its_threshold_and_basis():
    rows = [
        {"task": t, "length": n, "sample": 0, "score": s}
        for t, scores in {"vt": (1.0, 0.9, 0.2), "fwe": (0.9, 0.85, 0.9)}.items()
        for n, s in zip((4096, 8192, 16384), scores)
    ]
    summary = summarize_tasks(rows, RULER_THRESHOLD)
    assert summary["effective_length"] == 8192  # 0.95, 0.875 pass 0.856; 0.55 fails
    assert "Llama-2-7B" in summary["threshold_basis"] and "85.6" in summary["threshold_basis"]
    line = task_table({**summary, "skipped": {"qa_1": "no --squad file"}})
    assert (
        "Llama-2-7B" in line
        and "over 2 of RULER's 13 tasks" in line
        and "qa_1 (no --squad file)" in line
    )
    assert summarize_tasks(rows, 0.95)["threshold_basis"] == "set by the user"
    assert summarize_tasks(rows, 0.95)["effective_length"] == 4096


# ---------------------------------------------------------------------------- RULER's own files


def _write_ruler(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.fixture
def ruler_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ruler"
    for length in (4096, 8192):
        _write_ruler(
            root / str(length) / "data" / "niah_single_1" / "validation.jsonl",
            [
                {
                    "index": i,
                    "input": f"hidden {length} {i}",
                    "outputs": [f"{length + i}"],
                    "length": length - 100,
                    "answer_prefix": " The special magic number is",
                }
                for i in range(3)
            ],
        )
    _write_ruler(
        root / "qa_2.jsonl",
        [{"index": 0, "input": "Q0", "outputs": ["Paris", "paris city"], "length": 5000}],
    )
    return root


def test_ruler_files_are_read_with_task_length_and_answer_prefix(ruler_dir):
    samples = load_ruler_samples(ruler_dir)
    assert [(s.task, s.length, s.index) for s in samples] == [
        ("niah_single_1", n, i) for n in (4096, 8192) for i in range(3)
    ] + [("qa_2", 8192, 0)]
    assert samples[0].prompt == "hidden 4096 0 The special magic number is" and samples[
        0
    ].outputs == ["4096"]
    _write_ruler(
        ruler_dir / "4096" / "mystery" / "validation.jsonl",
        [{"input": "x", "outputs": ["y"], "length": 1}],
    )
    with pytest.raises(EvalError, match="unknown RULER task 'mystery'"):
        load_ruler_samples(ruler_dir)
    with pytest.raises(EvalError, match="not found"):
        load_ruler_samples(ruler_dir / "nothing")


def test_ruler_files_are_scored_with_each_tasks_budget_and_metric(ruler_dir, tmp_path, monkeypatch):
    runtime = pytest.importorskip("longmix.eval.runtime")
    from longmix.eval.tasks import run_ruler

    class ScriptedModel:
        """Answers each prompt from a script: the right number for sample 0 and 1, a wrong one for 2."""

        name = "scripted"

        def __init__(self):
            self.prompts: list[str] = []

        def encode(self, text: str) -> list[int]:
            self.prompts.append(text)
            return [len(self.prompts) - 1]

        def decode(self, ids: list[int]) -> str:
            prompt = self.prompts[ids[0]]
            if prompt.startswith("Q0"):
                return " Paris\n"
            length, index = (int(x) for x in prompt.split()[1:3])
            return f" {length + index}." if index < 2 else " 1234."

    budgets = []

    def fake_generate(em, prompts, max_new_tokens, stop=()):
        budgets.extend([max_new_tokens] * len(prompts))
        yield list(enumerate(prompts))  # one batch: each "answer" is its prompt's id

    monkeypatch.setattr(runtime, "iter_generate_batch", fake_generate)
    out = tmp_path / "out"
    summary = run_ruler(ScriptedModel(), TaskConfig(ruler_data=str(ruler_dir)), out, progress=False)
    assert summary["tasks"]["niah_single_1"] == {
        "4096": pytest.approx(2 / 3),
        "8192": pytest.approx(2 / 3),
    }
    assert summary["tasks"]["qa_2"] == {"8192": 1.0}
    assert sorted(budgets) == [32] + [128] * 6
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["response"] == "4096."  # RULER's cleaning of the answer
    assert "RULER files" in task_table(summary)
    from longmix.eval.report import task_summary

    (out / "summary.json").unlink()  # as if stopped: the report rebuilds it from the results
    assert task_summary(out)["partial"] == "7 of 7 samples"


def test_report_states_the_threshold_basis_and_task_coverage(tmp_path):
    from longmix.eval.report import build_report

    rows = [
        {"task": t, "length": n, "sample": 0, "score": 1.0}
        for t in ("vt", "fwe")
        for n in (4096, 8192)
    ]
    folder = tmp_path / "run" / "ruler"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summarize_tasks(rows, RULER_THRESHOLD)))
    text = build_report([tmp_path / "run"], tmp_path / "report")
    assert "| run | 1.00 | 1.00 | 8192 (≥ 0.856) |" in text
    assert (
        "Threshold 0.856: Llama-2-7B's RULER score at 4K, 85.6 averaged over the 13 tasks" in text
    )
    assert "not comparable with published effective lengths: run (2)" in text
