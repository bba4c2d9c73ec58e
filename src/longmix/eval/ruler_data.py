"""Samples written by NVIDIA/RULER's ``scripts/data/prepare.py``, to score them here.

RULER writes ``<save_dir>/<task>/<subset>.jsonl`` (subset: validation), and its ``run.sh``
puts each length in ``<root>/<model>/synthetic/<length>/data``. Each line holds ``index``,
``input``, ``outputs`` (the expected strings), ``length`` (prompt + answer budget in RULER's
tokenizer) and, in newer versions, ``answer_prefix``, which RULER appends to ``input`` before
generating. Accepted layouts under DIR: ``<length>/[data/]<task>/<subset>.jsonl``,
``<task>/<subset>.jsonl``, ``<task>.jsonl``; a file without a length folder counts each sample
at the power of two at or above its ``length`` (RULER's lengths are powers of two).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .common import EvalError

SUBSETS = ("validation", "test")


@dataclass
class RulerSample:
    task: str
    length: int  # the nominal length (RULER's max_seq_length)
    index: int
    prompt: str  # input + answer_prefix: what the model continues
    outputs: list[str]


def _task_of(path: Path) -> str:
    return path.parent.name if path.stem in SUBSETS else path.stem


def _length_folder(path: Path, root: Path) -> int | None:
    """The nearest folder between the file and DIR named by a number (e.g. 4096)."""
    for folder in path.parents:
        if folder.name.isdigit():
            return int(folder.name)
        if folder == root:
            break
    return None


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def load_ruler_samples(directory: str | Path) -> list[RulerSample]:
    """Every sample of the RULER JSONL files under ``directory``, sorted by task, length, index."""
    from .tasks import TASKS

    root = Path(directory)
    if not root.is_dir():
        raise EvalError(
            f"RULER data folder {root} not found: give the folder prepare.py wrote (--ruler-data DIR)"
        )
    files = sorted(p for p in root.rglob("*.jsonl") if not p.name.startswith("."))
    if not files:
        raise EvalError(
            f"no .jsonl files under {root}: expected <length>/<task>/validation.jsonl as RULER's prepare.py writes"
        )
    samples = []
    for path in files:
        task = _task_of(path)
        if task not in TASKS:
            raise EvalError(
                f"{path}: unknown RULER task {task!r} (known: {', '.join(TASKS)}); "
                "name the file or its folder after the task"
            )
        length = _length_folder(path, root)
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                outputs = row["outputs"]
                prompt = row["input"] + row.get("answer_prefix", "")
                index = int(row.get("index", number - 1))
                nominal = length if length is not None else _power_of_two_at_least(row["length"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise EvalError(
                    f"{path}:{number}: not a RULER sample ({type(error).__name__}: {error}); "
                    "each line needs input, outputs and length"
                ) from None
            if isinstance(outputs, str):
                outputs = [outputs]
            if not outputs:
                raise EvalError(f"{path}:{number}: empty outputs: nothing to score against")
            samples.append(RulerSample(task, nominal, index, prompt, [str(o) for o in outputs]))
    return sorted(samples, key=lambda s: (list(TASKS).index(s.task), s.length, s.index))
