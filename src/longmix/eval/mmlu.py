"""MMLU, 5-shot, for the short-context check (the paper: 43.3 for its 7B, 52.4 for 13B).

The standard CSV layout: ``DIR/dev/<subject>_dev.csv`` (the shots) and
``DIR/test/<subject>_test.csv``, rows ``question, A, B, C, D, answer-letter`` without a
header. The answer is the letter among " A"/" B"/" C"/" D" with the highest
log-likelihood after ``Answer:`` (one forward per question, no generation).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import EvalModel

import numpy as np

from ..settings import setting
from .common import EvalError, ResultsFile
from .registry import evaluation
from .report import long_qa_report, mmlu_retention

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, str, str, str]
    answer: str


def read_csv(path: Path) -> list[Question]:
    """Rows of one subject file; a malformed row raises naming file and line."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) != 6:
                raise EvalError(
                    f"{path}:{line_no}: expected 6 columns (question, A, B, C, D, answer), found {len(row)}"
                )
            answer = row[5].strip().upper()
            if answer not in LETTERS:
                raise EvalError(
                    f"{path}:{line_no}: answer must be one of A/B/C/D, found {row[5]!r}"
                )
            rows.append(Question(row[0], (row[1], row[2], row[3], row[4]), answer))
    return rows


def subjects(root: Path) -> list[str]:
    if not (root / "test").is_dir() or not (root / "dev").is_dir():
        raise EvalError(
            f"{root} is not in the MMLU layout: it needs dev/ and test/ folders of <subject>_dev.csv / _test.csv"
        )
    names = sorted(p.name[: -len("_test.csv")] for p in (root / "test").glob("*_test.csv"))
    if not names:
        raise EvalError(f"{root / 'test'} holds no <subject>_test.csv files")
    for name in names:
        if not (root / "dev" / f"{name}_dev.csv").is_file():
            raise EvalError(
                f"{root / 'dev' / (name + '_dev.csv')} is missing (the shots for {name})"
            )
    return names


def format_question(q: Question, with_answer: bool) -> str:
    text = (
        q.question
        + "\n"
        + "".join(f"{letter}. {choice}\n" for letter, choice in zip(LETTERS, q.choices))
        + "Answer:"
    )
    return text + (f" {q.answer}\n\n" if with_answer else "")


def few_shot_prompt(subject: str, shots: list[Question], question: Question) -> str:
    """The standard MMLU prompt: a header, k solved dev questions, then the test question."""
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return (
        header + "".join(format_question(s, True) for s in shots) + format_question(question, False)
    )


def choose(em: EvalModel, prompt: list[int], letter_ids: list[int]) -> tuple[str, list[float]]:
    import torch

    with torch.no_grad():
        ids = torch.tensor([prompt], device=em.device)
        hidden = em.model.model(input_ids=ids, use_cache=False).last_hidden_state[0, -1]
        logprobs = torch.log_softmax(em.model.lm_head(hidden).float(), -1)[letter_ids]
    return LETTERS[int(logprobs.argmax())], logprobs.tolist()


def letter_token_ids(em: EvalModel) -> list[int]:
    ids = []
    for letter in LETTERS:
        encoded = em.encode(f" {letter}")
        if len(encoded) != 1:
            raise EvalError(
                f"the tokenizer splits ' {letter}' into {len(encoded)} tokens; MMLU scoring needs one"
            )
        ids.append(encoded[0])
    return ids


def run_mmlu(
    em: EvalModel,
    data: str | Path,
    out: Path,
    shots: int = 5,
    limit: int | None = None,
    only: list[str] | None = None,
    progress: bool = True,
) -> dict:
    from ..data.executor import progress_bar

    root = Path(data)
    names = [s for s in subjects(root) if not only or s in only]
    letters = letter_token_ids(em)
    results = ResultsFile(out / "results.jsonl", ("subject", "index"))
    work = []
    for subject in names:
        dev = read_csv(root / "dev" / f"{subject}_dev.csv")[:shots]
        test = read_csv(root / "test" / f"{subject}_test.csv")[:limit]
        work.extend(
            (subject, dev, i, q) for i, q in enumerate(test) if (subject, i) not in results.done
        )
    for subject, dev, index, question in progress_bar(
        work, desc="mmlu", unit="question", enabled=progress
    ):
        started = time.perf_counter()
        predicted, logprobs = choose(
            em, em.encode(few_shot_prompt(subject, dev, question)), letters
        )
        results.add(
            {
                "subject": subject,
                "index": index,
                "answer": question.answer,
                "predicted": predicted,
                "correct": predicted == question.answer,
                "logprobs": logprobs,
                "seconds": time.perf_counter() - started,
            }
        )
    per_subject = {
        s: float(np.mean([r["correct"] for r in results.rows if r["subject"] == s]))
        for s in names
        if any(r["subject"] == s for r in results.rows)
    }
    summary = {
        "model": em.name,
        "shots": shots,
        "subjects": per_subject,
        "macro_accuracy": float(np.mean(list(per_subject.values()))) * 100 if per_subject else None,
        "micro_accuracy": float(
            np.mean([r["correct"] for r in results.rows if r["subject"] in names])
        )
        * 100,
        "note": "the paper: 43.3 (7B-80K), 52.4 (13B-64K)",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass(frozen=True)
class MMLUConfig:
    """Settings of `longmix eval mmlu`."""

    data: str = setting(
        help="folder with dev/ and test/ <subject>_{dev,test}.csv (the MMLU release layout)"
    )
    shots: int = setting(
        5, check=lambda v: None if v >= 0 else "must be 0 or more", help="examples from dev/"
    )
    limit: int | None = setting(None, help="the first N test questions per subject")
    subjects: tuple[str, ...] | None = setting(None, help="comma-separated subset of subjects")


def _describe(summary: dict) -> str:
    return (
        f"MMLU {summary['shots']}-shot: macro {summary['macro_accuracy']:.1f}, "
        f"micro {summary['micro_accuracy']:.1f} over {len(summary['subjects'])} subjects"
    )


@evaluation(
    "mmlu",
    MMLUConfig,
    doc="MMLU few-shot by answer-letter log-likelihood (short-context check)",
    describe=_describe,
    order=30,
    report=long_qa_report,
    report_order=40,
    retention=mmlu_retention,
)
def run_mmlu_eval(em: EvalModel, config: MMLUConfig, out: Path, progress: bool = True) -> dict:
    return run_mmlu(
        em,
        config.data,
        out,
        config.shots,
        config.limit,
        list(config.subjects) if config.subjects else None,
        progress=progress,
    )
