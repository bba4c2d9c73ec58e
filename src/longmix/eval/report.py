"""`longmix eval report`: several runs side by side, one section per registered evaluation
(each declares its section with ``@evaluation(..., report=...)``), then short-context retention.

The sections of the built-in evaluations are written here (they share the table helpers);
this module imports no evaluation module at import time, so each can name its section.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .common import read_jsonl

SIGNIFICANT = 0.01  # Fu et al.: a loss difference above 0.01 counts
Results = dict[str, list[dict | None]]  # evaluation name -> its summary per run (None: absent)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def build_report(
    runs: list[Path], out: Path, names: list[str] | None = None, extra: list[str] | None = None
) -> str:
    """Markdown (``out/report.md``) and PNGs comparing ``runs``; the first is the baseline.
    ``extra``: lines added at the end (a study's verdicts on the paper's claims)."""
    names = names or [p.name if p.name not in ("eval", "") else p.parent.name for p in runs]
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Evaluation report: {', '.join(names)}",
        "",
        f"Baseline for deltas: **{names[0]}**.",
        "",
    ]

    from .registry import evaluations

    shown = sorted(evaluations().values(), key=lambda e: (e.report_order, e.order, e.name))
    results: Results = {
        e.name: [(e.load or _load_summary)(run / e.name) for run in runs] for e in shown
    }
    for section in dict.fromkeys(e.report for e in shown if e.report is not None):
        lines += section(names, results, out)
    for e in shown:  # variants (a study's `needle@fu`): the section again, in a subfolder
        for key in variant_folders(runs, e.name) if e.report is not None else []:
            summaries = [(e.load or _load_summary)(run / key) for run in runs]
            (out / key).mkdir(exist_ok=True)
            lines += variant_lines(e.report(names, {**results, e.name: summaries}, out / key), key)
    lines += retention_lines(
        names, [(e.retention, results[e.name]) for e in shown if e.retention is not None]
    )
    lines += extra or []
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def variant_folders(runs: list[Path], name: str) -> list[str]:
    """The variants of evaluation ``name`` any run holds (``needle@fu``...), sorted."""
    return sorted({p.name for run in runs for p in run.glob(f"{name}@*") if p.is_dir()})


def variant_lines(lines: list[str], key: str) -> list[str]:
    """A section written for a variant: its headings name the variant, its pictures live in ``key/``."""
    import re

    return [
        f"{line} ({key})"
        if line.startswith("## ")
        else re.sub(r"(!\[[^\]]*\]\()([^)/]+\))", rf"\g<1>{key}/\g<2>", line)
        for line in lines
    ]


def _load_summary(folder: Path) -> dict | None:
    return _load(folder / "summary.json")


# ---------------------------------------------------------------------------- sections


def needle_report(names: list[str], results: Results, out: Path) -> list[str]:
    return needle_section(names, results["needle"], out) if any(results["needle"]) else []


def ruler_report(names: list[str], results: Results, out: Path) -> list[str]:
    return task_tables(names, results["ruler"]) if any(results["ruler"]) else []


def loss_report(names: list[str], results: Results, out: Path) -> list[str]:
    return loss_tables(names, results["loss"]) if any(results["loss"]) else []


def long_qa_report(names: list[str], results: Results, out: Path) -> list[str]:
    """BookQA and MMLU in one table: the paper's long-task and short-task checks side by side."""
    bookqa = results.get("bookqa") or [None] * len(names)
    mmlu = results.get("mmlu") or [None] * len(names)
    if not (any(bookqa) or any(mmlu)):
        return []
    lines = [
        "## Long-book QA and MMLU",
        "",
        "| run | BookQA recall (paper's score) | BookQA F1 | MMLU 5-shot (macro) |",
        "|---|---|---|---|",
    ]
    for name, b, m in zip(names, bookqa, mmlu):
        lines.append(
            f"| {name} | {_fmt(b and b['recall'], 1)} | {_fmt(b and b['f1'], 1)} | "
            f"{_fmt(m and m['macro_accuracy'], 1)} |"
        )
    return [
        *lines,
        "",
        "The paper: BookQA 27.4 (7B) / 31.1 (13B); MMLU 43.3 (7B) / 52.4 (13B).",
        "",
    ]


def lm_eval_report(names: list[str], results: Results, out: Path) -> list[str]:
    return lm_eval_table(names, results["lm-eval"]) if any(results["lm-eval"]) else []


def task_summary(folder: Path) -> dict | None:
    """The finished summary, or one made from the results so far (marked ``partial``) of an interrupted run."""
    done = _load(folder / "summary.json")
    if done or not (folder / "results.jsonl").is_file():
        return done
    from .tasks import RULER_THRESHOLD, summarize_tasks

    rows = list(read_jsonl(folder / "results.jsonl"))
    if not rows:
        return None
    config = _load(folder / "config.json") or {}
    # RULER files record their sample count; generated runs have tasks × lengths × samples
    expected = config.get("expected") or len(config.get("tasks", [])) * len(
        config.get("lengths", [])
    ) * (config.get("samples") or 0)
    summary = summarize_tasks(rows, config.get("threshold", RULER_THRESHOLD))
    return {**summary, "partial": f"{len(rows)} of {expected or '?'} samples"}


def task_tables(names: list[str], summaries: list[dict | None]) -> list[str]:
    """Mean over tasks by length, then each task's score averaged over the lengths (where the runs differ)."""
    present = [(name, s) for name, s in zip(names, summaries) if s]
    lengths = sorted({n for _, s in present for n in s["mean"]}, key=int)
    tasks = list(dict.fromkeys(t for _, s in present for t in s["tasks"]))
    label = {
        name: name + (f" (partial: {s['partial']})" if s.get("partial") else "")
        for name, s in present
    }
    lines = [
        "## Synthetic tasks (mean over tasks)",
        "",
        "| run | " + " | ".join(_k(int(n)) for n in lengths) + " | effective length |",
        "|---|" + "---|" * (len(lengths) + 1),
    ]
    for name, s in present:
        lines.append(
            f"| {label[name]} | "
            + " | ".join(_fmt(s["mean"].get(n), 2) for n in lengths)
            + f" | {s['effective_length'] or 'none'} (≥ {s['threshold']}) |"
        )
    lines += ["", *threshold_notes(present)]
    lines += [
        "",
        "Each task, mean over the lengths it was scored at (– not scored):",
        "",
        "| run | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for name, s in present:
        cells = [s["tasks"].get(t) for t in tasks]
        lines.append(
            f"| {label[name]} | "
            + " | ".join(_fmt(sum(c.values()) / len(c), 2) if c else "–" for c in cells)
            + " |"
        )
    return [*lines, ""]


def threshold_notes(present: list[tuple[str, dict]]) -> list[str]:
    """What the effective length means: its threshold's basis, and how many of RULER's tasks each run averages."""
    from .tasks import RULER_TASK_COUNT, RULER_THRESHOLD, THRESHOLD_BASIS

    lines = [
        "Effective length: the longest length at which the mean over tasks, and the mean at every shorter "
        "length, reaches the threshold."
    ]
    for threshold in sorted({s["threshold"] for _, s in present}):
        basis = THRESHOLD_BASIS if threshold == RULER_THRESHOLD else "set by the user"
        lines.append(f"Threshold {threshold}: {basis}.")
    partial = [
        f"{name} ({s.get('n_tasks', len(s['tasks']))})"
        for name, s in present
        if s.get("n_tasks", len(s["tasks"])) != RULER_TASK_COUNT
    ]
    if partial:
        lines.append(
            f"Averaged over fewer than RULER's {RULER_TASK_COUNT} tasks, so not comparable with published "
            f"effective lengths: {', '.join(partial)}."
        )
    return [*lines, ""]


def loss_tables(names: list[str], summaries: list[dict | None]) -> list[str]:
    """The paper's Table 5 layout: baseline losses, then each run's delta; * marks |Δ| > 0.01."""
    base = summaries[0]
    if base is None:
        return ["## Loss", "", "(no loss results for the baseline run)", ""]
    domains = [d for d in base["domains"] if d != "all"] + ["all"]
    definition = base.get("definition") or (
        "a token's bucket is its position in a packed mixed-domain sequence "
        "(results written before the per-domain definition)"
    )
    lines = [f"Loss buckets: {definition}", ""]
    for bucket in base.get("buckets", ["0-4K", "4K-max"]):
        lines += [
            f"## Loss, context {bucket} (Δ against {names[0]}; * |Δ| > {SIGNIFICANT})",
            "",
            "| run | " + " | ".join(domains) + " |",
            "|---|" + "---|" * len(domains),
        ]
        lines.append(
            f"| {names[0]} (loss) | "
            + " | ".join(_fmt(base["domains"][d].get(bucket)) for d in domains)
            + " |"
        )
        for name, s in zip(names[1:], summaries[1:]):
            if s is None:
                continue
            if s.get("definition") != base.get("definition"):
                lines.append(f"| {name} | (buckets defined differently: not compared) |")
                continue
            cells = []
            for d in domains:
                a, b = s["domains"].get(d, {}).get(bucket), base["domains"][d].get(bucket)
                if a is None or b is None:
                    cells.append("–")
                    continue
                delta = a - b
                cells.append(f"{delta:+.3f}{'*' if abs(delta) > SIGNIFICANT else ''}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def lm_eval_table(names: list[str], summaries: list[dict | None]) -> list[str]:
    """lm-evaluation-harness: each task's headline metric per run (– where a run lacks the task)."""
    present = [(name, s) for name, s in zip(names, summaries) if s]
    tasks = list(dict.fromkeys(t for _, s in present for t in s["headline"]))
    metric = {
        t: next(s["headline"][t]["metric"] for _, s in present if t in s["headline"]) for t in tasks
    }
    lines = [
        "## lm-evaluation-harness",
        "",
        "| run | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for name, s in present:
        cells = []
        for task in tasks:
            pick = s["headline"].get(task)
            stderr = s["tasks"].get(task, {}).get(f"{pick['metric']}_stderr") if pick else None
            cells.append(
                "–"
                if pick is None
                else _fmt(pick["value"]) + (f" ± {stderr:.3f}" if stderr else "")
            )
        label = name + (f" (limit {s['limit']})" if s.get("limit") else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def split_means(
    summary: dict, metric: str, length: int | None
) -> tuple[float | None, float | None]:
    """Mean of ``metric`` over the lengths up to ``length`` and beyond it (each length weighs its cells equally)."""
    by_length = {int(n): v[metric] for n, v in summary.get("by_length", {}).items() if metric in v}
    if length is None or not by_length:
        return None, None
    within = [v for n, v in by_length.items() if n <= length]
    beyond = [v for n, v in by_length.items() if n > length]
    return (
        sum(within) / len(within) if within else None,
        sum(beyond) / len(beyond) if beyond else None,
    )


def _k(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


RetentionPart = Callable[[dict, dict], str | None]


def retention_lines(
    names: list[str], parts: list[tuple[RetentionPart, list[dict | None]]]
) -> list[str]:
    """Short-context retention against the first run: one line per other run, joining each
    evaluation's part (``retention(base, other)``: e.g. the 0–4K loss delta, the MMLU delta)."""
    # A baseline compared with itself tells whether it has anything to compare against.
    if not any(s[0] and part(s[0], s[0]) is not None for part, s in parts):
        return []
    lines = [f"## Short-context retention (against {names[0]})", ""]
    for i, name in enumerate(names[1:], start=1):
        texts = [part(s[0], s[i]) for part, s in parts if s[0] and s[i]]
        if texts := [t for t in texts if t is not None]:
            lines.append(f"- {name}: " + "; ".join(texts))
    return [*lines, ""]


def loss_retention(base: dict, other: dict) -> str | None:
    """The loss delta at the shortest-context bucket, over all domains (same definitions only)."""
    short = base.get("buckets", ["0-4K"])[0]
    a, b = other["domains"]["all"].get(short), base["domains"]["all"].get(short)
    if a is None or b is None or other.get("definition") != base.get("definition"):
        return None
    delta = a - b
    return f"{short} loss {delta:+.3f}{' (significant)' if abs(delta) > SIGNIFICANT else ''}"


def mmlu_retention(base: dict, other: dict) -> str | None:
    if base.get("macro_accuracy") is None or other.get("macro_accuracy") is None:
        return None
    return f"MMLU {other['macro_accuracy'] - base['macro_accuracy']:+.1f} points"


def needle_section(names: list[str], summaries: list[dict | None], out: Path) -> list[str]:
    """Generation-based retrieval first (each run's protocol headline), teacher forcing second with
    exact match beside token accuracy; a run stopped part way is shown with its missing cells."""
    from .needle import METRICS, PROTOCOLS

    split = next((s["train_length"] for s in summaries if s and s.get("train_length")), None)
    within, beyond = (f"≤ {_k(split)}", f"> {_k(split)}") if split else ("≤ train", "> train")
    present = [(name, s) for name, s in zip(names, summaries) if s]
    label = {name: name + (" (partial)" if s.get("missing") else "") for name, s in present}
    lines = [
        "## Needle in a haystack",
        "",
        "Retrieval scored on the generated answer (each run's protocol decides the score), over all cells and "
        f"split at {_k(split) if split else 'the training length'} (the first run's training length).",
        "",
        f"| run | protocol | cells | score | mean | {within} | {beyond} | word recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in present:
        headline = _headline(s)
        low, high = split_means(s, headline, split) if headline else (None, None)
        lines.append(
            f"| {label[name]} | {s.get('protocol') or 'unrecorded'} | {_cells(s)} | {headline or 'none (no generation)'} | "
            f"{_fmt(s['mean'].get(headline)) if headline else '–'} | {_fmt(low)} | {_fmt(high)} | "
            f"{_fmt(s['mean'].get('recall'))} |"
        )
    teacher = [(name, s) for name, s in present if {"token_accuracy", "exact"} & set(s["mean"])]
    if teacher:
        lines += [
            "",
            "Teacher forcing (secondary: the answer's true tokens are fed, so a token can be right after a wrong one; "
            "exact match beside):",
            "",
            f"| run | protocol | token accuracy | exact | token accuracy {within} | exact {within} | "
            f"token accuracy {beyond} | exact {beyond} | logprob |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in teacher:
            acc, exact = split_means(s, "token_accuracy", split), split_means(s, "exact", split)
            lines.append(
                f"| {label[name]} | {s.get('protocol') or 'unrecorded'} | "
                f"{_fmt(s['mean'].get('token_accuracy'))} | {_fmt(s['mean'].get('exact'))} | "
                f"{_fmt(acc[0])} | {_fmt(exact[0])} | {_fmt(acc[1])} | {_fmt(exact[1])} | "
                f"{_fmt(s['mean'].get('logprob'), 2)} |"
            )
    used = {m for _, s in present for m in s["mean"]} | {
        h for _, s in present if (h := _headline(s))
    }
    protocols = sorted({s["protocol"] for _, s in present if s.get("protocol") in PROTOCOLS})
    lines += (
        ["", "Definitions:", ""]
        + [f"- protocol {p}: {PROTOCOLS[p]}" for p in protocols]
        + [f"- {m}: {METRICS[m]}" for m in METRICS if m in used]
    )
    partial = [(name, s) for name, s in present if s.get("missing")]
    if partial:
        lines += ["", "Runs stopped part way (means over the cells they have):", ""]
        lines += [
            f"- {name}: {len(s['missing'])} of {s.get('expected_cells', '?')} cells missing: {missing_text(s['missing'])}"
            for name, s in partial
        ]
    _needle_curves(summaries, names, split, out / "needle_by_length.png")
    _heatmaps([(name, s) for name, s in present if s.get("rows")], out / "needle_heatmaps.png")
    return [
        *lines,
        "",
        "![needle by length](needle_by_length.png)",
        "",
        "![needle heatmaps](needle_heatmaps.png)",
        "",
    ]


def _headline(summary: dict) -> str | None:
    """The summary's generation-based score (older summaries: the first generation score present)."""
    from .needle import GENERATION_METRICS, headline_metric

    headline = summary.get("headline") or headline_metric(
        summary.get("protocol"), summary.get("mean", {})
    )
    return headline if headline in GENERATION_METRICS else None


def _heatmap_metric(summary: dict) -> str:
    return _headline(summary) or (
        "exact" if "exact" in summary.get("mean", {}) else summary.get("metric", "exact")
    )


def _cells(summary: dict) -> str:
    expected = summary.get("expected_cells")
    return (
        f"{summary['cells']} of {expected}"
        if expected and expected != summary["cells"]
        else str(summary["cells"])
    )


def missing_text(cells: list[list[int]]) -> str:
    """Missing cells grouped by length: ``2K at depths 50, 100; 4K (all depths)``."""
    by_length: dict[int, list[int]] = {}
    for length, depth in cells:
        by_length.setdefault(length, []).append(depth)
    return "; ".join(f"{_k(n)} at depths {', '.join(map(str, d))}" for n, d in by_length.items())


def _needle_curves(
    summaries: list[dict | None], names: list[str], train_length: int | None, path: Path
) -> None:
    """One line per run: its headline score at each length (mean over depths); the runs compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in zip(names, summaries):
        metric = _heatmap_metric(s) if s else None
        points = sorted(
            (int(n), v[metric]) for n, v in (s or {}).get("by_length", {}).items() if metric in v
        )
        if points:
            ax.plot(
                [n / 1024 for n, _ in points],
                [v for _, v in points],
                marker="o",
                markersize=3,
                label=f"{name} ({s.get('protocol') or 'protocol unrecorded'}: {metric})",
            )
    if train_length:
        ax.axvline(train_length / 1024, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            "training length",
            (train_length / 1024, 0.02),
            rotation=90,
            color="grey",
            fontsize=8,
            xytext=(3, 0),
            textcoords="offset points",
        )
    ax.set(
        xlabel="context length (K tokens)",
        ylabel="needle retrieval score (mean over depths)",
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _heatmaps(present: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .needle import plot_heatmap

    if not present:
        return
    columns = min(len(present), 4)  # rows of four panels: readable on a page
    rows_n = -(-len(present) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(5.5 * columns, 4.2 * rows_n), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.axis("off")
    for ax, (name, s) in zip(axes.flat, present):
        title = name + (f" ({len(s['missing'])} cells missing)" if s.get("missing") else "")
        plot_heatmap(s["rows"], _heatmap_metric(s), path, s.get("train_length"), title=title, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
