"""Standard benchmarks through EleutherAI's lm-evaluation-harness (`longmix eval lm-eval`).

The harness (package ``lm_eval``, the ``lm-eval`` extra) scores the loaded model on its
tasks (``--tasks hellaswag,arc_easy``); we keep its full output as ``results.json`` and
the numbers per task as ``summary.json``, so `longmix eval report` shows them beside ours.
The model is handed over already loaded (the harness's ``HFLM`` wraps it), with the
tokenizer of the model folder and the trained length as the harness's context limit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import missing_extra, require_extra
from ..settings import setting
from .common import EvalError
from .registry import evaluation
from .report import lm_eval_report

if TYPE_CHECKING:
    from .runtime import EvalModel

# the harness: its module, the extra that installs it, what needs it
HARNESS = ("lm_eval", "lm-eval", "longmix eval lm-eval (lm-evaluation-harness)")
# The metric a task is summed up by in tables, in order of preference.
HEADLINE_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mc2", "word_perplexity", "perplexity")


def harness_missing(_: Any = None) -> str | None:
    """One line naming the extra when the harness is not installed, else None."""
    return missing_extra(*HARNESS)


def _task_list(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tasks:
        raise ValueError("name at least one task")
    return tasks


@dataclass(frozen=True)
class LmEvalConfig:
    """Settings of `longmix eval lm-eval`."""

    # The check runs when the settings are read: a missing extra fails before the model loads.
    tasks: tuple[str, ...] = setting(
        parse=_task_list,
        check=harness_missing,
        metavar="TASK,TASK",
        help="lm-evaluation-harness task or group names, comma-separated",
    )
    num_fewshot: int | None = setting(None, help="few-shot examples (default: each task's own)")
    limit: float | None = setting(
        None, help="examples per task (a count, or a share below 1): quick checks only"
    )
    batch_size: int = setting(
        8, check=lambda v: None if v > 0 else "must be positive", help="harness batch size"
    )
    max_length: int | None = setting(
        None,
        unit="length",
        help="longest input the harness may build (default: the model's trained length)",
    )
    seed: int = setting(1234, help="seed of the harness's few-shot sampling")
    include_path: str | None = setting(
        None, help="a folder of task YAML files of your own (e.g. on local data)"
    )


def flatten_metrics(task_results: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}`` -> ``{"acc": 0.5, "acc_stderr": 0.1}``
    (a filter other than ``none`` stays in the name: ``exact_match[strict-match]``)."""
    metrics = {}
    for key, value in task_results.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # the alias, and "N/A" standard errors
        name, _, filter_name = key.partition(",")
        metrics[name if filter_name in ("", "none") else f"{name}[{filter_name}]"] = float(value)
    return metrics


def headline(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The metric a task is shown by: the first of :data:`HEADLINE_METRICS` it has, else its first."""
    for name in (*HEADLINE_METRICS, *metrics):
        for key in (name, *(k for k in metrics if k.startswith(f"{name}["))):
            if key in metrics and not key.endswith("_stderr") and "_stderr[" not in key:
                return key, metrics[key]
    return None


def summarize_results(
    results: dict[str, Any], model: str, config: LmEvalConfig, seconds: float
) -> dict:
    tasks = {task: flatten_metrics(values) for task, values in results.get("results", {}).items()}
    samples = {task: int(m.pop("sample_len")) for task, m in tasks.items() if "sample_len" in m}
    return {
        "model": model,
        "tasks": tasks,
        "samples": samples,
        "headline": {
            task: dict(zip(("metric", "value"), pick))
            for task, m in tasks.items()
            if (pick := headline(m))
        },
        "n_shot": results.get("n-shot", {}),
        "versions": results.get("versions", {}),
        "limit": config.limit,
        "harness_version": _harness_version(),
        "seconds": seconds,
    }


def _harness_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def _hf_tokenizer(em: EvalModel, folder: str) -> Any:
    """The model folder's tokenizer as transformers loads it, else the one longmix evaluates with."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        return PreTrainedTokenizerFast(tokenizer_object=em.tokenizer)


def _describe(summary: dict) -> str:
    lines = []
    for task, metrics in summary["tasks"].items():
        shown = ", ".join(
            f"{name} {value:.4f}"
            + (f" ± {metrics[f'{name}_stderr']:.4f}" if f"{name}_stderr" in metrics else "")
            for name, value in metrics.items()
            if "_stderr" not in name
        )
        lines.append(f"{task:<24} {shown}")
    return "\n".join(lines) or "(no results)"


@evaluation(
    "lm-eval",
    LmEvalConfig,
    doc="standard benchmarks through lm-evaluation-harness (extra: lm-eval)",
    describe=_describe,
    order=80,
    report=lm_eval_report,
    report_order=50,
)
def run_lm_eval(em: EvalModel, config: LmEvalConfig, out: Path, progress: bool = True) -> dict:
    require_extra(*HARNESS, EvalError)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    folder = str(getattr(em.model, "name_or_path", "") or em.name)
    started = time.perf_counter()
    model = HFLM(
        pretrained=em.model,
        tokenizer=_hf_tokenizer(em, folder),
        batch_size=config.batch_size,
        max_length=config.max_length or em.train_length,
        device=str(em.device),
    )
    extra = {}
    if config.include_path:
        from lm_eval.tasks import TaskManager

        extra["task_manager"] = TaskManager(include_path=config.include_path)
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=list(config.tasks),
        num_fewshot=config.num_fewshot,
        limit=config.limit,
        log_samples=False,
        random_seed=config.seed,
        **extra,
        numpy_random_seed=config.seed,
        torch_random_seed=config.seed,
        fewshot_random_seed=config.seed,
    )
    if results is None:  # a non-main rank of a distributed harness run
        return {}
    summary = summarize_results(results, em.name, config, time.perf_counter() - started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
