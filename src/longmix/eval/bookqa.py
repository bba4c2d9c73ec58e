"""Long-book QA (InfiniteBench En.QA, ``longbook_qa_eng.jsonl``) as the paper ran it.

Each example's book goes into a base-model prompt; a prompt longer than ``max_length``
loses its middle (the start and the end are kept) so that prompt + answer budget fit
exactly; greedy decoding of a short answer. Two scores per example, each the best over
the reference answers: **recall** of the reference's word set (the paper's score, Table 4)
and **F1** over normalised words (InfiniteBench's own metric).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import EvalModel

import numpy as np

from ..settings import setting
from .common import EvalError, ResultsFile
from .registry import evaluation
from .report import long_qa_report

WINDOW = 32  # examples tokenized and answered together
PROMPT = (
    "Read the book below and answer a question.\n\n{context}\n\nQuestion: {question}\n\nAnswer:"
)


@dataclass(frozen=True)
class BookQAExample:
    id: str
    context: str
    question: str
    answers: tuple[str, ...]


def read_examples(path: str | Path) -> list[BookQAExample]:
    """Read InfiniteBench's JSONL (``context``, ``input``, ``answer`` list); errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path} not found (InfiniteBench's longbook_qa_eng.jsonl)")
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalError(f"{path}:{line_no}: not a JSON line ({err.msg})") from None
            for field in ("context", "input", "answer"):
                if field not in row:
                    raise EvalError(
                        f"{path}:{line_no}: missing field {field!r} (InfiniteBench En.QA has context, input, answer)"
                    )
            answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
            if (
                not answers
                or not all(isinstance(a, str) for a in answers)
                or not isinstance(row["context"], str)
            ):
                raise EvalError(
                    f"{path}:{line_no}: 'answer' must be a list of strings and 'context' a string"
                )
            examples.append(
                BookQAExample(
                    str(row.get("id", line_no)), row["context"], str(row["input"]), tuple(answers)
                )
            )
    if not examples:
        raise EvalError(f"{path} holds no examples")
    return examples


def truncate_middle(tokens: list[int], limit: int) -> list[int]:
    """Keep the first and the last tokens, dropping the middle, to exactly ``limit`` tokens."""
    if len(tokens) <= limit:
        return tokens
    head = limit // 2
    return tokens[:head] + tokens[len(tokens) - (limit - head) :]


def normalize_answer(text: str) -> list[str]:
    """Lowercase, drop punctuation and articles, split (SQuAD / InfiniteBench normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def recall_score(prediction: str, answer: str) -> float:
    """The paper's score: share of the answer's distinct words present in the prediction."""
    truth = set(normalize_answer(answer))
    return len(truth & set(normalize_answer(prediction))) / len(truth) if truth else 0.0


def f1_score(prediction: str, answer: str) -> float:
    """InfiniteBench's qa F1 over normalised word multisets."""
    pred, truth = normalize_answer(prediction), normalize_answer(answer)
    common = sum((Counter(pred) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def run_bookqa(
    em: EvalModel,
    data: str | Path,
    out: Path,
    max_length: int,
    generate_tokens: int = 40,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    from ..data.executor import progress_bar
    from .runtime import in_order, iter_generate_batch, timed

    examples = read_examples(data)[:limit]
    results = ResultsFile(out / "results.jsonl", ("id",))
    budget = max_length - generate_tokens
    if budget <= 0:
        raise EvalError(
            f"--max-length {max_length} leaves no room for {generate_tokens} answer tokens"
        )
    todo = [e for e in examples if (e.id,) not in results.done]
    with progress_bar(total=len(todo), desc="bookqa", unit="example", enabled=progress) as bar:
        for start in range(0, len(todo), WINDOW):  # books tokenized a window at a time
            window = todo[start : start + WINDOW]
            fulls = [
                em.encode(PROMPT.format(context=e.context, question=e.question)) for e in window
            ]
            prompts = [truncate_middle(full, budget) for full in fulls]
            # the prediction is the answer's first line: decoding stops at the newline that ends it
            batches = timed(iter_generate_batch(em, prompts, generate_tokens, stop=("\n",)))
            for row in in_order(
                [
                    (i, _row(window[i], prompts[i], len(fulls[i]), em.decode(tokens), seconds))
                    for i, tokens in batch
                ]
                for batch, seconds in batches
            ):
                results.add(row)  # in the file's order, as soon as the ones before are done
                bar.update(1)
    rows = [r for r in results.rows if r["id"] in {e.id for e in examples}]
    summary = {
        "model": em.name,
        "examples": len(rows),
        "max_length": max_length,
        "recall": float(np.mean([r["recall"] for r in rows])) * 100,
        "f1": float(np.mean([r["f1"] for r in rows])) * 100,
        "note": "recall = the paper's score (Table 4: 27.4 for its 7B, 31.1 for 13B); f1 = InfiniteBench's metric",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _row(
    example: BookQAExample, prompt: list[int], full_length: int, response: str, seconds: float
) -> dict:
    prediction = response.strip().split("\n")[0]
    return {
        "id": example.id,
        "prompt_tokens": len(prompt),
        "truncated_from": full_length,
        "prediction": prediction,
        "answers": list(example.answers),
        "recall": max(recall_score(prediction, a) for a in example.answers),
        "f1": max(f1_score(prediction, a) for a in example.answers),
        "seconds": seconds,
    }


@dataclass(frozen=True)
class BookQAConfig:
    """Settings of `longmix eval bookqa`."""

    data: str = setting(
        help="InfiniteBench's longbook_qa_eng.jsonl (fields context, input, answer)"
    )
    max_length: int = setting(
        131072, unit="length", help="prompt + answer tokens; the book's middle is cut"
    )
    generate_tokens: int = setting(
        40, check=lambda v: None if v > 0 else "must be positive", help="greedy answer tokens"
    )
    limit: int | None = setting(None, help="the first N examples only")


def _describe(summary: dict) -> str:
    return json.dumps(summary, indent=2)


@evaluation(
    "bookqa",
    BookQAConfig,
    doc="long-book QA (InfiniteBench En.QA), recall and F1",
    describe=_describe,
    order=60,
    report=long_qa_report,
    report_order=40,
)
def run_bookqa_eval(em: EvalModel, config: BookQAConfig, out: Path, progress: bool = True) -> dict:
    return run_bookqa(
        em,
        config.data,
        out,
        config.max_length,
        config.generate_tokens,
        config.limit,
        progress=progress,
    )
