"""Statistics of a mixture: per domain, before and after sampling; tables, markdown, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fsutil import atomic_write
from ..units import format_count
from .mixture import row_steps

PERCENTILES = (25, 50, 75, 90, 99)
# Length buckets of the report (tokens per document): <4K, 4-32K, 32-128K, >128K
BUCKET_EDGES = (4096, 32768, 131072)
BUCKET_NAMES = ("<4K", "4K-32K", "32K-128K", ">128K")


def mixture_stats(
    domains: np.ndarray,
    names: list[str],
    lengths: np.ndarray,
    copies: np.ndarray | None,
    threshold: int,
) -> dict:
    """Per-domain table of a mixture where document i appears ``copies[i]`` times (None:
    once each).

    Returns ``{"total": {...}, "domains": {name: {...}}}`` with documents, tokens, token
    share, long share (tokens in documents longer than ``threshold``), document-length
    percentiles, token share per length bucket, and repeat counts.
    """
    total_tokens = _token_sums(lengths, copies, threshold)[0]
    table = {"total": _row(lengths, copies, threshold, total_tokens)}  # no copy of the columns
    for code, name in enumerate(names):
        members = domains == code
        mine = None if copies is None else copies[members]
        table[name] = _row(lengths[members], mine, threshold, total_tokens)
    return {"total": table.pop("total"), "domains": table}


def _token_sums(lengths: np.ndarray, copies: np.ndarray | None, threshold: int):
    """Tokens (x copies), those of long documents, and per length bucket: exact ints, in
    steps of rows so no whole-table temporary is made."""
    total, long = 0, 0
    buckets = np.zeros(len(BUCKET_NAMES), np.int64)
    edges = np.asarray(BUCKET_EDGES)
    for step in row_steps(len(lengths)):
        part = lengths[step]
        tokens = part.astype(np.int64) if copies is None else part.astype(np.int64) * copies[step]
        total += int(tokens.sum())
        long += int(tokens[part > threshold].sum())
        # side="left": a document of exactly 4,096 tokens is not "longer than 4K".
        bucket = np.searchsorted(edges, part, side="left")
        buckets += np.bincount(bucket, weights=tokens, minlength=len(BUCKET_NAMES)).astype(np.int64)
    return total, long, buckets


def _row(lengths: np.ndarray, copies: np.ndarray | None, threshold: int, total_tokens: int) -> dict:
    n_tokens, long, buckets = _token_sums(lengths, copies, threshold)
    if copies is None:
        documents = unique = len(lengths)
        most, mean = (1, 1.0) if len(lengths) else (0, 0.0)
    else:
        documents = int(copies.sum())
        unique = int(np.count_nonzero(copies))
        most = int(copies.max()) if len(copies) else 0
        mean = documents / unique if unique else 0.0
    return {
        "documents": documents,
        "unique_documents": unique,
        "tokens": n_tokens,
        "share": n_tokens / total_tokens if total_tokens else 0.0,
        "long_share": float(long / n_tokens) if n_tokens else 0.0,
        "buckets": {
            name: float(buckets[i] / n_tokens) if n_tokens else 0.0
            for i, name in enumerate(BUCKET_NAMES)
        },
        "percentiles": _weighted_percentiles(lengths, copies),
        "max_repeats": most,
        "mean_repeats": float(mean),
    }


def _weighted_percentiles(lengths: np.ndarray, weights: np.ndarray | None) -> dict:
    """Document-length percentiles counting each document ``weights[i]`` times (None: once)."""
    if weights is None and not len(lengths) or weights is not None and not weights.any():
        return {**{f"p{p}": 0 for p in PERCENTILES}, "max": 0}
    if weights is None or (weights == 1).all():  # each once: order statistics by partition
        n = len(lengths)
        ranks = [max(1, int(np.ceil(p / 100 * n))) - 1 for p in PERCENTILES]
        ordered = np.partition(lengths, sorted({*ranks, n - 1}))
        return {
            **{f"p{p}": int(ordered[r]) for p, r in zip(PERCENTILES, ranks)},
            "max": int(ordered[-1]),
        }
    keep = weights > 0
    order = np.argsort(lengths[keep], kind="stable")
    values, counts = lengths[keep][order], weights[keep][order]
    cumulative = np.cumsum(counts)
    out = {}
    for p in PERCENTILES:
        rank = max(1, int(np.ceil(p / 100 * cumulative[-1])))
        out[f"p{p}"] = int(values[np.searchsorted(cumulative, rank)])
    out["max"] = int(values[-1])
    return out


# ---------------------------------------------------------------------------- text output


def format_table(before: dict, after: dict) -> str:
    """The terminal table: one row per domain, before -> after."""
    header = f"{'domain':<14}{'docs':>18}{'tokens':>20}{'share':>16}{'long>thr':>16}{'p50 len':>16}{'repeats':>9}"
    lines = [header, "-" * len(header)]
    names = list(after["domains"]) if after else list(before["domains"])
    for name in [*names, "total"]:
        b = before["total"] if name == "total" else before["domains"].get(name)
        a = after["total"] if name == "total" else after["domains"].get(name)
        if b is None or a is None:
            continue
        lines.append(
            f"{name:<14}"
            f"{_arrow(format_count(b['documents']), format_count(a['documents'])):>18}"
            f"{_arrow(format_count(b['tokens']), format_count(a['tokens'])):>20}"
            f"{_arrow(_pct(b['share']), _pct(a['share'])):>16}"
            f"{_arrow(_pct(b['long_share']), _pct(a['long_share'])):>16}"
            f"{_arrow(format_count(b['percentiles']['p50']), format_count(a['percentiles']['p50'])):>16}"
            f"{a['max_repeats']:>9}"
        )
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _arrow(before: str, after: str) -> str:
    return f"{before} → {after}"


def format_rejections(rejections: dict) -> str:
    if not rejections["counts"]:
        return "no documents rejected"
    lines = [f"{reason:<20}{count:>10}" for reason, count in sorted(rejections["counts"].items())]
    for example in rejections["examples"][:10]:
        where = f"{example['file']}:{example['line']}" if example["line"] else example["file"]
        lines.append(f"  e.g. {where}: {example['reason']} {example['detail']}".rstrip())
    return "\n".join(lines)


def markdown_report(stats: dict) -> str:
    """A markdown report of a prepared dataset (``report.md``)."""
    m = stats["manifest"]
    before, after = stats["before"], stats["after"]
    lines = [
        f"# Mixture report: {m['strategy']}",
        "",
        f"- corpus: {', '.join(m['inputs'])}",
        f"- tokenizer: {m['tokenizer']['name']} (vocab {m['tokenizer']['vocab_size']}, {m['dtype']})",
        f"- budget: {format_count(m['budget'])} tokens; packed: {m['n_sequences']} sequences × {m['seq_len']} = "
        f"{format_count(m['n_sequences'] * m['seq_len'])} tokens (tail dropped: {stats['packing']['tail_tokens_dropped']})",
        f"- long threshold: {m['long_threshold']} tokens; long fraction target: {m['long_fraction']:.0%}; seed {m['seed']}",
        *_sampling_lines(m),
        f"- documents read {stats['documents']['read']} = used {stats['documents']['used']} + rejected {stats['documents']['rejected']}"
        f" (file errors: {stats['documents']['file_errors']})",
        "",
    ]
    for note in stats["plan"]["notes"]:
        lines.append(f"> note: {note}")
    shortfalls = stats["plan"].get("shortfalls", [])
    if shortfalls:
        lines += [
            "",
            "## Targets not met",
            "",
            "| domain | target tokens | achieved tokens | target long share | achieved long share | why |",
            "|---|---|---|---|---|---|",
        ]
        for s in shortfalls:
            lines.append(
                f"| {s['domain']} | {format_count(s['target_tokens'])} | {format_count(s['achieved_tokens'])} | "
                f"{s['target_long_share']:.1%} | {s['achieved_long_share']:.1%} | {s['reason']} |"
            )
    lines += [
        "",
        "## Per domain, before → after",
        "",
        "| domain | documents | tokens | share | long share | p50 | p90 | max | <4K | 4K-32K | 32K-128K | >128K | max repeats |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [*after["domains"], "total"]:
        b = before["total"] if name == "total" else before["domains"][name]
        a = after["total"] if name == "total" else after["domains"][name]
        cells = [
            f"{format_count(b['documents'])} → {format_count(a['documents'])}",
            f"{format_count(b['tokens'])} → {format_count(a['tokens'])}",
            f"{b['share']:.1%} → {a['share']:.1%}",
            f"{b['long_share']:.1%} → {a['long_share']:.1%}",
            *(
                f"{format_count(b['percentiles'][k])} → {format_count(a['percentiles'][k])}"
                for k in ("p50", "p90", "max")
            ),
            *(f"{b['buckets'][k]:.0%} → {a['buckets'][k]:.0%}" for k in BUCKET_NAMES),
            str(a["max_repeats"]),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Sampling plan (per domain and length class)",
        "",
        "| domain | class | target | available | selected | repeat factor |",
        "|---|---|---|---|---|---|",
    ]
    for cell in stats["plan"]["cells"]:
        lines.append(
            f"| {cell['domain']} | {cell['class']} | {format_count(cell['target_tokens'])} | {format_count(cell['available_tokens'])}"
            f" | {format_count(cell['selected_tokens'])} | {cell['repeat_factor']:.2f} |"
        )
    lines += [
        "",
        "## Rejected documents",
        "",
        "```",
        format_rejections(stats["rejections"]),
        "```",
        "",
        "![length distribution](plots/length_distribution.png)",
        "",
        "![domain shares](plots/domain_shares.png)",
        "",
    ]
    return "\n".join(lines)


def _sampling_lines(manifest: dict) -> list[str]:
    """The sampling settings newer manifests record (older ones lack them)."""
    parts = []
    if manifest.get("short_keep") is not None:
        parts.append(
            f"short documents kept with probability {manifest['short_keep']:g} (Fu et al.'s sampling)"
        )
    if manifest.get("length_estimate") == "chars":
        parts.append("long/short by characters / 3.68")
    if manifest.get("max_repeats") is not None:
        parts.append(f"at most {manifest['max_repeats']} uses per document")
    if manifest.get("cut_to"):
        parts.append(f"documents cut into chunks of at most {manifest['cut_to']} tokens")
    return [f"- sampling: {'; '.join(parts)}"] if parts else []


# ---------------------------------------------------------------------------- plots


def import_plotting() -> None:
    """matplotlib's import (about a second); ``prepare`` runs it while the workers tokenize."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


def new_figure(figsize: tuple[float, float]):
    """A figure drawn by Agg, outside pyplot: no global state (plots may be drawn on a
    thread) and no import of pyplot's GUI machinery."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def plot_length_distribution(
    names: list[str],
    before: tuple[np.ndarray, np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: int,
    path: Path,
) -> None:
    """Token-weighted histogram of document length per domain, before and after.

    ``before`` and ``after`` are (domain codes, lengths, copies) of their own rows: ``cut``
    makes more rows (chunks) than the corpus has documents.
    """
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = new_figure(figsize=(4 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    top = max(int(before[1].max()), 2)
    bins = np.logspace(0, np.log10(top) + 0.05, 40)
    for ax, (code, name) in zip(axes.flat, enumerate(names)):
        for (domains, lengths, weights), label in ((before, "before"), (after, "after")):
            members = domains == code
            tokens = lengths[members].astype(float) * weights[members]
            if tokens.sum() > 0:
                ax.hist(
                    lengths[members],
                    bins=bins,
                    weights=tokens / tokens.sum(),
                    histtype="step",
                    lw=1.6,
                    label=label,
                )
        ax.axvline(threshold, color="grey", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("document length (tokens)")
        ax.set_ylabel("share of domain tokens")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.suptitle(f"Where each domain's tokens come from (dashed: long threshold {threshold})")
    fig.tight_layout()
    with atomic_write(path) as sink:  # a full disk leaves no half image behind
        fig.savefig(sink, format="png", dpi=90)


def plot_domain_shares(before: dict, after: dict, path: Path) -> None:
    """Stacked bars: each domain's token share before/after, long part hatched."""
    names = list(after["domains"])
    x = np.arange(len(names))
    fig = new_figure(figsize=(max(6, 1.3 * len(names)), 4))
    ax = fig.subplots()
    for offset, stats, label, color in (
        (-0.2, before, "before", "#8da0cb"),
        (0.2, after, "after", "#fc8d62"),
    ):
        share = np.array([stats["domains"][n]["share"] for n in names])
        long = share * np.array([stats["domains"][n]["long_share"] for n in names])
        ax.bar(x + offset, share - long, 0.38, color=color, label=f"{label}: short docs")
        ax.bar(
            x + offset,
            long,
            0.38,
            bottom=share - long,
            color=color,
            hatch="///",
            edgecolor="white",
            label=f"{label}: long docs",
        )
    ax.set_xticks(x, names)
    ax.set_ylabel("share of tokens")
    ax.set_title("Domain shares before and after (hatched: documents longer than the threshold)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as sink:  # a full disk leaves no half image behind
        fig.savefig(sink, format="png", dpi=90)
