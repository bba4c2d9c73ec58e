"""Every evaluation declared once: name, settings class, run function, terminal summary, docs.

An evaluation module registers itself with :func:`evaluation`; the CLI (`longmix eval NAME`),
the study (`eval: {NAME: {...}}`) and the report iterate over :data:`EVALUATIONS`. Modules
of this package are discovered and imported here (they import torch only when they run),
so adding an evaluation is one new file in ``longmix/eval/``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import setting


@dataclass(frozen=True)
class Evaluation:
    name: str  # the CLI subcommand, the study's key and the results subfolder
    settings: type  # the settings dataclass (fields declared with longmix.settings.setting)
    run: Callable[
        ..., dict
    ]  # run(em, settings, out_dir, progress) -> summary (written to out_dir/summary.json)
    describe: Callable[[dict], str]  # the summary as text for the terminal
    doc: str  # one line for --help
    order: (
        int  # the study runs quick evaluations first: a stopped evaluation keeps the quick results
    )
    uses_heldout: bool = (
        False  # its `data` setting defaults, in a study, to the study's held-out prepared data
    )
    # check(settings, tokenizer) raises EvalError for settings that only the tokenizer can refute
    # (e.g. a needle length below the prompt's fixed part); it runs before the model loads.
    check: Callable[[Any, Any], None] | None = None
    # How it appears in `longmix eval report`: report(names, results, out) -> markdown lines of
    # its section ([] to leave it out), where results maps every evaluation's name to its
    # summaries, one per run (None where a run lacks it). Evaluations that name the same
    # function share one section (BookQA and MMLU); sections follow report_order.
    report: Callable[[list[str], dict[str, list[dict | None]], Path], list[str]] | None = None
    report_order: int = 50
    # load(folder) -> the summary the report reads; None: folder/summary.json when present
    load: Callable[[Path], dict | None] | None = None
    # retention(base, other) -> this evaluation's part of the report's short-context retention
    # line for `other` against the baseline `base` (None: nothing to compare)
    retention: Callable[[dict, dict], str | None] | None = None


EVALUATIONS: dict[str, Evaluation] = {}


def evaluation(
    name: str,
    settings: type,
    *,
    doc: str,
    describe: Callable[[dict], str],
    order: int = 50,
    uses_heldout: bool = False,
    check: Callable[[Any, Any], None] | None = None,
    report: Callable[[list[str], dict[str, list[dict | None]], Path], list[str]] | None = None,
    report_order: int = 50,
    load: Callable[[Path], dict | None] | None = None,
    retention: Callable[[dict, dict], str | None] | None = None,
) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Declare ``run(em, settings, out_dir, progress) -> summary`` as evaluation ``name``
    (the fields of :class:`Evaluation` say what each argument is for)."""

    def register(run: Callable[..., dict]) -> Callable[..., dict]:
        EVALUATIONS[name] = Evaluation(
            name,
            settings,
            run,
            describe,
            doc,
            order,
            uses_heldout,
            check,
            report,
            report_order,
            load,
            retention,
        )
        return run

    return register


_LOADED = False


def evaluations() -> dict[str, Evaluation]:
    """The registered evaluations, quickest first (importing every module of this package once)."""
    global _LOADED
    if not _LOADED:
        package = Path(__file__).parent
        for module in pkgutil.iter_modules([str(package)]):
            if module.name not in ("registry", "runtime"):
                importlib.import_module(f"{__package__}.{module.name}")
        _LOADED = True
    return dict(sorted(EVALUATIONS.items(), key=lambda item: (item[1].order, item[0])))


@dataclass(frozen=True)
class EvalTarget:
    """What every evaluation command takes besides its own settings."""

    model: str = setting(help="a HF model folder")
    out: str = setting(help="results folder: one subfolder per evaluation (a rerun resumes)")
    tokenizer: str | None = setting(
        None, help="tokenizer.json or a folder holding one (default: the model's)"
    )
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N")
    cuda_graphs: bool = setting(
        True, help="on a GPU, replay each decoding step as a CUDA graph (off: eager steps)"
    )


def tokenizer_file(model: str | Path, tokenizer: str | Path | None) -> Path:
    """The tokenizer.json an evaluation of ``model`` uses: ``tokenizer`` (a file or folder) or the model's."""
    from .common import EvalError

    path = Path(tokenizer) if tokenizer else Path(model) / "tokenizer.json"
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise EvalError(f"no tokenizer.json at {path}: pass --tokenizer")
    return path


def precheck(name: str, settings: Any, model: str | Path, tokenizer: str | Path | None) -> None:
    """Run the evaluation's tokenizer-only checks, before any model is loaded."""
    from .common import EvalError

    if not (Path(model) / "config.json").is_file():
        raise EvalError(f"{model} is not a HF model folder (no config.json)")
    item = evaluations()[name]
    if item.check is not None:
        from tokenizers import Tokenizer

        item.check(settings, Tokenizer.from_file(str(tokenizer_file(model, tokenizer))))


def run_evaluation(
    name: str,
    em: Any,
    settings: Any,
    out: Path,
    progress: bool = True,
    folder: str | None = None,
) -> dict:
    """Run one registered evaluation into ``out/NAME`` (or ``out/folder``: a variant's own).

    Each invocation's wall time is appended to ``timing.jsonl`` there (a resumed evaluation
    has several lines; their sum is its cost), so a study's evaluation time can be put beside
    its training time.
    """
    target = Path(out) / (folder or name)
    started = time.perf_counter()
    summary = evaluations()[name].run(em, settings, target, progress)
    line = {"evaluation": name, "seconds": round(time.perf_counter() - started, 2)}
    line["device"] = str(getattr(em, "device", "")) or None
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "timing.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    return summary
