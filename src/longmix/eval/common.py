"""What every evaluation needs and that needs no torch: errors, word scores, resumable JSONL
results, and the grid syntax of the settings. The model side is in :mod:`.runtime`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LongmixError
from ..units import parse_length


class EvalError(LongmixError):
    """Bad evaluation settings or inputs."""


_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_recall(response: str, answer: str) -> float:
    """Share of the answer's distinct words found in the response (Fu et al.'s needle score,
    without its double-counted "a" that capped a perfect answer at 11/12)."""
    expected = set(words(answer))
    return len(expected & set(words(response))) / len(expected) if expected else 0.0


# ---------------------------------------------------------------------------- grids


def parse_grid(text: str, *, lengths: bool) -> list[int]:
    """``1K:128K:16`` (16 evenly spaced values, ends included) or ``4K,8K,16K`` or ``0:100:10``."""
    parse = parse_length if lengths else int
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise EvalError(f"bad grid {text!r}: write START:END:COUNT or a comma-separated list")
        start, end, count = parse(parts[0]), parse(parts[1]), int(parts[2])
        if count < 1 or end < start:
            raise EvalError(f"bad grid {text!r}: END must be >= START and COUNT >= 1")
        values = np.linspace(start, end, count) if count > 1 else np.array([start])
        return sorted({int(round(v)) for v in values})
    return [parse(v.strip()) for v in text.split(",") if v.strip()]


# ---------------------------------------------------------------------------- results


class ResultsFile:
    """Append-only JSONL results with resume: a rerun skips the keys already written."""

    def __init__(self, path: Path, key_fields: tuple[str, ...]):
        self.path = path
        self.key_fields = key_fields
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = list(read_jsonl(path)) if path.is_file() else []
        self.done = {self.key(r) for r in self.rows}

    def key(self, row: dict) -> tuple:
        return tuple(row[f] for f in self.key_fields)

    def add(self, row: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
        self.rows.append(row)
        self.done.add(self.key(row))


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: its cell is simply redone


_RUNTIME = ("EvalModel", "load_eval_model", "answer_scores", "answer_scores_batch", "generate")


def __getattr__(name: str) -> Any:  # the torch side, imported when first asked for
    if name in _RUNTIME:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
