"""Long-book QA and MMLU on tiny fixtures in the public layouts."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from longmix.eval.bookqa import f1_score, read_examples, recall_score, run_bookqa, truncate_middle  # noqa: E402
from longmix.eval.common import EvalError  # noqa: E402
from longmix.eval.mmlu import Question, few_shot_prompt, read_csv, run_mmlu, subjects  # noqa: E402
from longmix.eval.report import build_report  # noqa: E402


def write_bookqa(path, n=3):
    rows = [
        {
            "id": i,
            "context": "Once upon a time. " * 400
            + f"The key was hidden in room {i}. "
            + "The end. " * 300,
            "input": "Where was the key hidden?",
            "answer": [f"in room {i}"],
            "options": [],
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_truncation_keeps_start_and_end_and_hits_the_length():
    tokens = list(range(100))
    cut = truncate_middle(tokens, 31)
    assert len(cut) == 31 and cut[:15] == list(range(15)) and cut[15:] == list(range(84, 100))
    assert truncate_middle(tokens, 200) == tokens


def test_bookqa_scores():
    assert recall_score("He hid it in room 7, I think", "in room 7") == 1.0
    assert recall_score("room 8", "in room 7") == pytest.approx(1 / 3)
    assert f1_score("room 7", "the room 7") == 1.0  # articles and punctuation are ignored
    assert f1_score("a big room 7", "room 7") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1_score("nothing", "room 7") == 0.0


def test_bookqa_reads_errors_and_runs(em, tmp_path):  # noqa: F811
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"context": "x", "input": "q", "answer": ["a"]}\n{"context": "x", "answer": ["a"]}\n'
    )
    with pytest.raises(EvalError, match=r"bad\.jsonl:2: missing field 'input'"):
        read_examples(bad)
    data = write_bookqa(tmp_path / "longbook_qa_eng.jsonl")
    summary = run_bookqa(
        em, data, tmp_path / "bookqa", max_length=600, generate_tokens=8, progress=False
    )
    rows = [
        json.loads(line)
        for line in (tmp_path / "bookqa" / "results.jsonl").read_text().splitlines()
    ]
    assert summary["examples"] == 3 and all(
        r["prompt_tokens"] == 592 and r["truncated_from"] > 592 for r in rows
    )
    assert 0 <= summary["recall"] <= 100 and 0 <= summary["f1"] <= 100


def write_mmlu(root, subject="high_school_physics", n_test=3):
    (root / "dev").mkdir(parents=True)
    (root / "test").mkdir()
    dev = "\n".join(f'"Dev question {i}?",w,x,y,z,{"ABCD"[i % 4]}' for i in range(5))
    (root / "dev" / f"{subject}_dev.csv").write_text(dev + "\n")
    test = "\n".join(
        f'"Test question {i}, with a comma?",one,two,three,four,{"ABCD"[i % 4]}'
        for i in range(n_test)
    )
    (root / "test" / f"{subject}_test.csv").write_text(test + "\n")
    return root


def test_five_shot_prompt_layout():
    shots = [Question(f"Q{i}?", ("a", "b", "c", "d"), "ABCD"[i]) for i in range(2)]
    prompt = few_shot_prompt(
        "college_biology", shots, Question("Final?", ("e", "f", "g", "h"), "C")
    )
    assert prompt == (
        "The following are multiple choice questions (with answers) about college biology.\n\n"
        "Q0?\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\n"
        "Q1?\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n\n"
        "Final?\nA. e\nB. f\nC. g\nD. h\nAnswer:"
    )


def test_mmlu_layout_errors(tmp_path):
    with pytest.raises(EvalError, match="dev/ and test/"):
        subjects(tmp_path)
    root = write_mmlu(tmp_path / "m")
    (root / "test" / "bad_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,E\n")
    with pytest.raises(EvalError, match=r"bad_dev\.csv is missing"):
        subjects(root)
    with pytest.raises(EvalError, match=r"bad_test\.csv:2: expected 6 columns"):
        read_csv(root / "test" / "bad_test.csv")
    (root / "test" / "bad_test.csv").write_text("q,a,b,c,d,E\n")
    with pytest.raises(EvalError, match=r"bad_test\.csv:1: answer must be one of"):
        read_csv(root / "test" / "bad_test.csv")


def test_mmlu_runs_resumes_and_reports(em, tmp_path):  # noqa: F811
    root = write_mmlu(tmp_path / "mmlu")
    summary = run_mmlu(em, root, tmp_path / "run" / "mmlu", progress=False)
    assert (
        set(summary["subjects"]) == {"high_school_physics"}
        and 0 <= summary["macro_accuracy"] <= 100
    )
    rows = (tmp_path / "run" / "mmlu" / "results.jsonl").read_text().splitlines()
    again = run_mmlu(em, root, tmp_path / "run" / "mmlu", progress=False)
    assert (
        len((tmp_path / "run" / "mmlu" / "results.jsonl").read_text().splitlines())
        == len(rows)
        == 3
    )
    assert again["macro_accuracy"] == summary["macro_accuracy"]
    other = tmp_path / "other" / "mmlu"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(
        json.dumps({**summary, "macro_accuracy": summary["macro_accuracy"] + 5})
    )
    text = build_report(
        [tmp_path / "run", tmp_path / "other"], tmp_path / "report", ["base", "tuned"]
    )
    assert "MMLU 5-shot" in text and "- tuned: MMLU +5.0 points" in text
