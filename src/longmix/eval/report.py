"""`longmix eval report`: several runs side by side (needle, synthetic tasks, loss, and
lm-evaluation-harness tasks)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import read_jsonl

SIGNIFICANT = 0.01  # Fu et al.: a loss difference above 0.01 counts


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def build_report(runs: list[Path], out: Path, names: list[str] | None = None) -> str:
    """Markdown (``out/report.md``) and PNGs comparing ``runs``; the first is the baseline."""
    names = names or [p.name if p.name not in ("eval", "") else p.parent.name for p in runs]
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Evaluation report: {', '.join(names)}", "", f"Baseline for deltas: **{names[0]}**.", ""]

    needles = [_load(run / "needle" / "summary.json") for run in runs]
    if any(needles):
        split = next((s["train_length"] for s in needles if s and s.get("train_length")), None)
        within, beyond = (f"≤ {_k(split)}", f"> {_k(split)}") if split else ("–", "–")
        lines += ["## Needle in a haystack", "",
                  f"Token accuracy and exact match, all cells and split at {within[2:] if split else 'the trained length'} "
                  f"(the first run's training length).", "",
                  f"| run | cells | token accuracy | {within} | {beyond} | exact | exact {within} | exact {beyond} | logprob |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, s in zip(names, needles):
            if s:
                m = s["mean"]
                acc, exact = split_means(s, "token_accuracy", split), split_means(s, "exact", split)
                lines.append(f"| {name} | {s['cells']} | {_fmt(m.get('token_accuracy'))} | {_fmt(acc[0])} | {_fmt(acc[1])} | "
                             f"{_fmt(m.get('exact'))} | {_fmt(exact[0])} | {_fmt(exact[1])} | {_fmt(m.get('logprob'), 2)} |")
        _heatmaps(runs, names, out / "needle_heatmaps.png")
        metric = next((s.get("metric", "exact") for s in needles if s), "exact")  # the heatmaps' metric
        _needle_curves(needles, names, metric, split, out / "needle_by_length.png")
        lines += ["", "![needle by length](needle_by_length.png)", "", "![needle heatmaps](needle_heatmaps.png)", ""]

    tasks = [task_summary(run / "ruler") for run in runs]
    if any(tasks):
        lines += task_tables(names, tasks)

    losses = [_load(run / "loss" / "summary.json") for run in runs]
    if any(losses):
        lines += loss_tables(names, losses)

    bookqa = [_load(run / "bookqa" / "summary.json") for run in runs]
    mmlu = [_load(run / "mmlu" / "summary.json") for run in runs]
    if any(bookqa) or any(mmlu):
        lines += ["## Long-book QA and MMLU", "", "| run | BookQA recall (paper's score) | BookQA F1 | MMLU 5-shot (macro) |",
                  "|---|---|---|---|"]
        for name, b, m in zip(names, bookqa, mmlu):
            lines.append(f"| {name} | {_fmt(b and b['recall'], 1)} | {_fmt(b and b['f1'], 1)} | "
                         f"{_fmt(m and m['macro_accuracy'], 1)} |")
        lines += ["", "The paper: BookQA 27.4 (7B) / 31.1 (13B); MMLU 43.3 (7B) / 52.4 (13B).", ""]
    harness = [_load(run / "lm-eval" / "summary.json") for run in runs]
    if any(harness):
        lines += lm_eval_table(names, harness)
    lines += retention_lines(names, losses, mmlu)
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def task_summary(folder: Path) -> dict | None:
    """The finished summary, or one made from the results so far (marked ``partial``) of an interrupted run."""
    done = _load(folder / "summary.json")
    if done or not (folder / "results.jsonl").is_file():
        return done
    from .tasks import summarize_tasks

    rows = list(read_jsonl(folder / "results.jsonl"))
    if not rows:
        return None
    config = _load(folder / "config.json") or {}
    expected = len(config.get("tasks", [])) * len(config.get("lengths", [])) * config.get("samples", 0)
    return {**summarize_tasks(rows, config.get("threshold", 0.85)), "partial": f"{len(rows)} of {expected or '?'} samples"}


def task_tables(names: list[str], summaries: list[dict | None]) -> list[str]:
    """Mean over tasks by length, then each task's score averaged over the lengths (where the runs differ)."""
    present = [(name, s) for name, s in zip(names, summaries) if s]
    lengths = sorted({n for _, s in present for n in s["mean"]}, key=int)
    tasks = list(dict.fromkeys(t for _, s in present for t in s["tasks"]))
    label = {name: name + (f" (partial: {s['partial']})" if s.get("partial") else "") for name, s in present}
    lines = ["## Synthetic tasks (mean over tasks)", "", "| run | " + " | ".join(_k(int(n)) for n in lengths)
             + " | effective length |", "|---|" + "---|" * (len(lengths) + 1)]
    for name, s in present:
        lines.append(f"| {label[name]} | " + " | ".join(_fmt(s["mean"].get(n), 2) for n in lengths)
                     + f" | {s['effective_length'] or 'none'} (≥ {s['threshold']}) |")
    lines += ["", "Each task, mean over the lengths it was scored at (– not scored):", "",
              "| run | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, s in present:
        cells = [s["tasks"].get(t) for t in tasks]
        lines.append(f"| {label[name]} | " + " | ".join(
            _fmt(sum(c.values()) / len(c), 2) if c else "–" for c in cells) + " |")
    return [*lines, ""]


def loss_tables(names: list[str], summaries: list[dict | None]) -> list[str]:
    """The paper's Table 5 layout: baseline losses, then each run's delta; * marks |Δ| > 0.01."""
    base = summaries[0]
    if base is None:
        return ["## Loss", "", "(no loss results for the baseline run)", ""]
    domains = [d for d in base["domains"] if d != "all"] + ["all"]
    lines = []
    for bucket in ("0-4K", "4K-max"):
        lines += [f"## Loss, context {bucket} (Δ against {names[0]}; * |Δ| > {SIGNIFICANT})", "",
                  "| run | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
        lines.append(f"| {names[0]} (loss) | " + " | ".join(_fmt(base["domains"][d][bucket]) for d in domains) + " |")
        for name, s in zip(names[1:], summaries[1:]):
            if s is None:
                continue
            cells = []
            for d in domains:
                a, b = s["domains"].get(d, {}).get(bucket), base["domains"][d][bucket]
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
    metric = {t: next(s["headline"][t]["metric"] for _, s in present if t in s["headline"]) for t in tasks}
    lines = ["## lm-evaluation-harness", "", "| run | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for name, s in present:
        cells = []
        for task in tasks:
            pick = s["headline"].get(task)
            stderr = s["tasks"].get(task, {}).get(f"{pick['metric']}_stderr") if pick else None
            cells.append("–" if pick is None else _fmt(pick["value"]) + (f" ± {stderr:.3f}" if stderr else ""))
        label = name + (f" (limit {s['limit']})" if s.get("limit") else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def split_means(summary: dict, metric: str, length: int | None) -> tuple[float | None, float | None]:
    """Mean of ``metric`` over the lengths up to ``length`` and beyond it (each length weighs its cells equally)."""
    by_length = {int(n): v[metric] for n, v in summary.get("by_length", {}).items() if metric in v}
    if length is None or not by_length:
        return None, None
    within = [v for n, v in by_length.items() if n <= length]
    beyond = [v for n, v in by_length.items() if n > length]
    return (sum(within) / len(within) if within else None, sum(beyond) / len(beyond) if beyond else None)


def _k(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def retention_lines(names: list[str], losses: list[dict | None], mmlu: list[dict | None]) -> list[str]:
    """Short-context retention against the first run: 0–4K loss delta (all domains) and MMLU delta."""
    base_loss = losses[0]["domains"]["all"]["0-4K"] if losses and losses[0] else None
    base_mmlu = mmlu[0]["macro_accuracy"] if mmlu and mmlu[0] else None
    if base_loss is None and base_mmlu is None:
        return []
    lines = [f"## Short-context retention (against {names[0]})", ""]
    for i, name in enumerate(names[1:], start=1):
        parts = []
        if base_loss is not None and losses[i]:
            delta = losses[i]["domains"]["all"]["0-4K"] - base_loss
            parts.append(f"0–4K loss {delta:+.3f}{' (significant)' if abs(delta) > SIGNIFICANT else ''}")
        if base_mmlu is not None and mmlu[i]:
            parts.append(f"MMLU {mmlu[i]['macro_accuracy'] - base_mmlu:+.1f} points")
        if parts:
            lines.append(f"- {name}: " + "; ".join(parts))
    return [*lines, ""]


def _needle_curves(summaries: list[dict | None], names: list[str], metric: str, train_length: int | None,
                   path: Path) -> None:
    """One line per run: the needle score at each length (mean over depths); the runs compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in zip(names, summaries):
        points = sorted((int(n), v[metric]) for n, v in (s or {}).get("by_length", {}).items() if metric in v)
        if points:
            ax.plot([n / 1024 for n, _ in points], [v for _, v in points], marker="o", markersize=3, label=name)
    if train_length:
        ax.axvline(train_length / 1024, color="grey", linestyle="--", linewidth=1)
        ax.annotate("training length", (train_length / 1024, 0.02), rotation=90, color="grey", fontsize=8,
                    xytext=(3, 0), textcoords="offset points")
    ax.set(xlabel="context length (K tokens)", ylabel=f"needle {metric.replace('_', ' ')} (mean over depths)",
           ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _heatmaps(runs: list[Path], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .needle import plot_heatmap

    present = [(run, name) for run, name in zip(runs, names) if (run / "needle" / "results.jsonl").is_file()]
    columns = min(len(present), 4)  # rows of four panels: readable on a page
    rows_n = -(-len(present) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(5.5 * columns, 4.2 * rows_n), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.axis("off")
    for ax, (run, name) in zip(axes.flat, present):
        rows = list(read_jsonl(run / "needle" / "results.jsonl"))
        config = json.loads((run / "needle" / "summary.json").read_text())
        plot_heatmap(rows, config.get("metric", "exact"), path, config.get("train_length"), title=name, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
