"""Synthetic retrieval tasks in the manner of RULER, generated locally and seeded.

Every task builds a haystack (repeated noise sentences or book text), hides needles in it,
asks a question with a base-model answer prefix, and knows the strings the answer must
contain. Lengths are fitted with the model's tokenizer (binary search on the haystack
size) so that prompt + generated tokens stay within the target length.
Score = fraction of the expected strings found in the greedy output.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import EvalModel

import numpy as np

from ..settings import setting
from .common import EvalError, ResultsFile, parse_grid
from .registry import evaluation

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "One of the special magic numbers for {key} is: {value}."
TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
# Greedy tokens per task: RULER's tokens_to_generate (128 for needles, 30 VT, 120 CWE, 50 FWE, 32 QA)
GENERATE = {"niah_single": 128, "niah_multikey": 128, "niah_multivalue": 128, "niah_multiquery": 128, "vt": 30,
            "cwe": 120, "fwe": 50, "qa": 32}
WINDOW = 512  # prompts fitted ahead and answered together (batched by length within each task)


@dataclass
class TaskSample:
    task: str
    prompt: str
    expected: list[str]


def _task_names(text: str) -> tuple[str, ...]:
    return TASKS if text.strip() == "all" else tuple(t.strip() for t in text.split(",") if t.strip())


def _check_tasks(tasks: tuple[str, ...]) -> str | None:
    unknown = [t for t in tasks if t not in TASKS]
    return f"unknown tasks {', '.join(unknown)} (choose from {', '.join(TASKS)}, or all)" if unknown else None


@dataclass(frozen=True)
class TaskConfig:
    """Settings of `longmix eval ruler`."""

    tasks: tuple[str, ...] = setting(TASKS, parse=_task_names, check=_check_tasks, help="comma-separated tasks, or all")
    lengths: tuple[int, ...] = setting((4096, 8192, 16384, 32768), parse=lambda text: tuple(parse_grid(text, lengths=True)),
                                       metavar="GRID", help="prompt lengths: a list (4K,8K) or START:END:COUNT")
    samples: int = setting(20, check=lambda v: None if v > 0 else "must be positive", help="samples per task and length")
    seed: int = setting(0, help="seed of the generated samples")
    threshold: float = setting(0.85, help="a length is effective when the mean score over tasks reaches this")
    haystack: str = setting("books", help="text for the word pools and book haystacks: books (built in), a path, or essays")


class Words:
    """A seeded source of plain words (taken from the haystack text: no download needed)."""

    def __init__(self, text: str):
        self.vocab = sorted({w.lower() for w in re.findall(r"[A-Za-z]{4,10}", text)})
        if len(self.vocab) < 100:
            raise EvalError("the haystack text has too few distinct words for the synthetic tasks")

    def key(self, rng: random.Random) -> str:
        return f"{rng.choice(self.vocab)}-{rng.choice(self.vocab)}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _haystack(units: int, book: list[str] | None) -> list[str]:
    """``units`` haystack sentences: noise, or consecutive book sentences (repeated)."""
    if book is None:
        return [NOISE] * units
    return [book[i % len(book)] for i in range(units)]


def _insert(sentences: list[str], needles: list[str], rng: random.Random) -> str:
    out = list(sentences)
    for needle in needles:
        out.insert(rng.randint(0, len(out)), " " + needle + " ")
    return "".join(out)


def make_sample(task: str, units: int, rng: random.Random, words: Words, book: list[str]) -> TaskSample:
    """One sample of ``task`` with a haystack of ``units`` sentences (or list items)."""
    intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them.\n"
    if task in ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery"):
        key = words.key(rng)
        if task == "niah_single":
            values = {key: [_number(rng)]}
            needles = [NEEDLE.format(key=key, value=values[key][0])]
            queried = [key]
            text = _insert(_haystack(units, None), needles, rng)
        else:
            if task == "niah_multivalue":
                values = {key: [_number(rng) for _ in range(4)]}
                queried = [key]
            else:
                keys = [key] + [words.key(rng) for _ in range(3)]
                values = {k: [_number(rng)] for k in keys}
                queried = keys if task == "niah_multiquery" else [key]  # multikey: 3 distractor keys
            needles = [NEEDLE.format(key=k, value=v) for k, vs in values.items() for v in vs]
            text = _insert(_haystack(units, book), needles, rng)
        question = f"What are all the special magic numbers for {', '.join(queried)} mentioned in the provided text?"
        prefix = f"The special magic numbers for {', '.join(queried)} mentioned in the provided text are"
        expected = [v for k in queried for v in values[k]]
        return TaskSample(task, f"{intro}{text}\n{question}\nAnswer: {prefix}", expected)
    if task == "vt":
        value = str(rng.randint(10_000, 99_999))
        names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(5)]
        chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
        text = _insert(_haystack(units, None), chain, random.Random(rng.random()))
        question = f"Find all variables that are assigned the value {value} in the text above."
        prefix = f"According to the chain(s) of variable assignment in the text above, 5 variables are assigned the value {value}, they are:"
        return TaskSample(task, f"Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{text}\n"
                                f"Question: {question}\nAnswer: {prefix}", names)
    if task == "cwe":
        common = rng.sample(words.vocab, 10)
        rare = rng.sample(words.vocab, min(max(1, units), len(words.vocab) - 10))
        # RULER: 30 copies of each common word, 3 of each other word; fewer copies when
        # the length leaves room for few words, so that short lengths still fit
        copies = min(30, 4 + units // 10)
        items = common * copies + [w for w in rare if w not in common] * 3
        rng.shuffle(items)
        listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))
        question = "What are the 10 most common words in the above list?"
        return TaskSample(task, f"Below is a numbered list of words. In these words, some appear more often than others. "
                                f"Memorize the ones that appear most often.\n{listing}\nQuestion: {question}\n"
                                "Answer: The top 10 words that appear most often in the list are:", common)
    if task == "fwe":
        pool = rng.sample(words.vocab, 50)
        ranks = np.arange(1, len(pool) + 1, dtype=float)
        weights = 1 / ranks**2  # zeta(2) frequencies: the first three words dominate
        drawn = random.Random(rng.random()).choices(pool, weights=weights, k=max(10, units * 4))
        counts = Counter(drawn)
        top = [w for w, _ in counts.most_common(3)]
        return TaskSample(task, "Read the following coded text and track the frequency of each coded word. Find the three "
                                f"most frequently appeared coded words.\n{' '.join(drawn)}\nQuestion: Do not provide any "
                                "explanation. Please ignore the dots '....'. What are the three most frequently appeared "
                                "words in the above coded text?\nAnswer: According to the coded text above, the three most "
                                "frequently appeared words are:", top)
    raise EvalError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")


def fit_sample(em: EvalModel | Encoder, task: str, length: int, seed: int, words: Words,
               book: list[str]) -> tuple[TaskSample, list[int]]:
    """The largest haystack whose prompt + answer budget fits ``length`` tokens.

    The token count grows about linearly with the haystack's units, so a few secant steps
    land next to the answer; a galloping bracket and a bisection then find the exact
    largest fit. That is ~6 tokenizations of a long prompt where a bisection over the
    whole range needs ~17, and tokenizing dominates the cost of the synthetic tasks.
    """
    budget = length - GENERATE[task]
    built: dict[int, tuple[TaskSample, list[int]]] = {}

    def build(units: int) -> tuple[TaskSample, list[int]]:
        if units not in built:
            sample = make_sample(task, units, random.Random(f"{task}-{length}-{seed}"), words, book)
            built[units] = (sample, em.encode(sample.prompt))
        return built[units]

    def fits(units: int) -> bool:
        return len(build(units)[1]) <= budget

    if not fits(1):
        raise EvalError(f"{task}: length {length} is too short for even the smallest prompt ({len(build(1)[1])} tokens)")
    smallest, guess = len(build(1)[1]), 17
    # some prompts stop growing (a task's word list runs out): never look past this many units
    limit = int(1.5 * budget / max(1.0, (len(build(guess)[1]) - smallest) / (guess - 1))) + 2
    for _ in range(4):
        per_unit = max(0.5, (len(build(guess)[1]) - smallest) / (guess - 1))
        estimate = min(limit, max(2, 1 + int((budget - smallest) / per_unit)))
        if estimate == guess:
            break
        guess = estimate
    if fits(guess):
        low, step = guess, 1
        while low + step <= limit and fits(low + step):
            low, step = low + step, step * 2
        high = low + step  # does not fit, or lies past the limit
    else:
        high, step = guess, 1
        while high - step > 1 and not fits(high - step):
            high, step = high - step, step * 2
        low = max(1, high - step)
    while high - low > 1:  # fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return build(low)


@dataclass
class Encoder:
    """Just the tokenizer (picklable), for fitting prompts in worker processes."""

    tokenizer: object

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


_worker: dict = {}


def _start_fit_worker(encoder: Encoder, words: Words, book: list[str]) -> None:
    _worker.update(encoder=encoder, words=words, book=book)


def _fit_in_worker(key: tuple[str, int, int]) -> tuple[TaskSample, list[int]]:
    task, length, seed = key
    return fit_sample(_worker["encoder"], task, length, seed, _worker["words"], _worker["book"])


def string_match(response: str, expected: list[str]) -> float:
    """RULER's string_match_all: the share of expected strings present (case-insensitive)."""
    text = response.lower()
    return sum(e.lower() in text for e in expected) / len(expected)


def run_tasks(em: EvalModel, config: TaskConfig, haystack_text: str, out: Path, progress: bool = True,
              workers: int | None = None) -> dict:
    """Score every (task, length, sample); ``workers`` processes fit the prompts (default: the cores, for >= 16 samples)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**asdict(config), "model": em.name}, indent=2))
    words = Words(haystack_text)
    book = [s.strip() + " " for s in re.split(r"(?<=[.!?])\s+", haystack_text) if s.strip()]
    results = ResultsFile(out / "results.jsonl", ("task", "length", "sample"))
    # sample by sample over every (task, length): a stopped run has scored every cell, just fewer times
    todo = [(t, n, i) for i in range(config.samples) for t in config.tasks for n in sorted(config.lengths)
            if (t, n, i) not in results.done]
    keys = [(task, length, config.seed * 100_003 + index) for task, length, index in todo]
    if workers is None:
        workers = min(16, (os.cpu_count() or 1) - 1) if len(todo) >= 16 else 0
    cells = len(config.tasks) * len(config.lengths)
    window = max(1, WINDOW // cells) * cells  # whole samples: every (task, length) of each
    with contextlib.ExitStack() as stack:
        if workers > 1:  # fit the next prompts on other cores while the model answers these
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_fit_worker,
                initargs=(Encoder(em.tokenizer), words, book)))
            fitted = pool.map(_fit_in_worker, keys, chunksize=1)
        else:
            fitted = (fit_sample(em, task, length, seed, words, book) for task, length, seed in keys)
        pending = zip(todo, fitted)
        bar = stack.enter_context(tqdm(total=len(todo), desc="tasks", unit="sample", disable=not progress))
        while chunk := list(itertools.islice(pending, window)):
            for row in _answer(em, chunk):
                results.add(row)
                bar.update(1)
    summary = summarize_tasks(results.rows, config.threshold)
    summary["model"] = em.name
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(task_table(summary))
    return summary


def answer_budget(sample: TaskSample) -> int:
    """Greedy tokens for a sample: its task's own ``tokens_to_generate`` if it declares one, else RULER's."""
    return getattr(sample, "tokens_to_generate", None) or GENERATE[sample.task]


def _answer(em: EvalModel, chunk: list[tuple[tuple[str, int, int], tuple[TaskSample, list[int]]]]) -> Iterator[dict]:
    """The result rows of ``chunk``, in its order, each as soon as it and the ones before are done.

    Prompts with one answer budget and stop strings are generated together, in batches of
    similar length (:func:`runtime.iter_generate_batch`).
    """
    from .runtime import in_order, iter_generate_batch, timed

    def settings(i: int) -> tuple[int, tuple[str, ...]]:
        sample = chunk[i][1][0]
        return answer_budget(sample), tuple(getattr(sample, "stop", ()) or ())

    def row(i: int, tokens: list[int], seconds: float) -> dict:
        (task, length, index), (sample, prompt) = chunk[i]
        response = em.decode(tokens)
        return {"task": task, "length": length, "sample": index, "n_tokens": len(prompt),
                "score": string_match(response, sample.expected), "expected": sample.expected,
                "response": response, "seconds": seconds}

    def batches() -> Iterator[list[tuple[int, dict]]]:
        for (budget, stop), members in itertools.groupby(sorted(range(len(chunk)), key=settings), key=settings):
            members = list(members)
            for batch, seconds in timed(iter_generate_batch(em, [chunk[i][1][1] for i in members], budget, stop)):
                yield [(members[j], row(members[j], tokens, seconds)) for j, tokens in batch]

    return in_order(batches())


def summarize_tasks(rows: list[dict], threshold: float) -> dict:
    tasks = sorted({r["task"] for r in rows}, key=lambda t: TASKS.index(t) if t in TASKS else 99)
    lengths = sorted({r["length"] for r in rows})
    table = {t: {str(n): float(np.mean([r["score"] for r in rows if r["task"] == t and r["length"] == n]))
                 for n in lengths if any(r["task"] == t and r["length"] == n for r in rows)} for t in tasks}
    mean = {str(n): float(np.mean([table[t][str(n)] for t in tasks if str(n) in table[t]])) for n in lengths}
    effective = effective_length(mean, threshold)
    return {"tasks": table, "mean": mean, "threshold": threshold, "effective_length": effective}


def effective_length(mean_by_length: dict[str, float], threshold: float) -> int | None:
    """The longest length such that it and every shorter length score at least ``threshold``."""
    best = None
    for length in sorted(mean_by_length, key=int):
        if mean_by_length[length] < threshold:
            break
        best = int(length)
    return best


def task_table(summary: dict) -> str:
    lengths = list(summary["mean"])
    lines = ["| task | " + " | ".join(lengths) + " |", "|---|" + "---|" * len(lengths)]
    for task, scores in summary["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(f"{scores.get(n, float('nan')):.2f}" for n in lengths) + " |")
    lines.append("| **mean** | " + " | ".join(f"{summary['mean'][n]:.2f}" for n in lengths) + " |")
    lines.append("")
    lines.append(f"Effective length (mean ≥ {summary['threshold']:.2f} at it and every shorter length): "
                 f"{summary['effective_length'] or 'none'}")
    return "\n".join(lines)


@evaluation("ruler", TaskConfig, doc="synthetic retrieval tasks (RULER-style), task × length", describe=task_table,
            order=40)
def run_ruler(em: EvalModel, config: TaskConfig, out: Path, progress: bool = True) -> dict:
    """:func:`run_tasks` on the haystack text the settings name."""
    from .needle import load_haystack_text

    return run_tasks(em, config, load_haystack_text(config.haystack), out, progress=progress)
