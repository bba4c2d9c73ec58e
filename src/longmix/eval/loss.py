"""Per-domain validation loss by context (Fu et al. 2024, Table 5 and Fig. 4).

The paper does not define its 0–4K / 4K–128K split precisely. Its gaps for short-document
domains cannot come from unrelated text before a token, so a token's context here is its
own domain's text, and its bucket is how much of its own document it had seen:

- each domain is evaluated on sequences packed from that domain's held-out documents only
  (the held-out prepared folder's documents, in its order, re-packed per domain);
- a token's bucket is its offset within its own document: the tokens of its document before
  it in the evaluated sequence (a document continued from the previous sequence counts from
  the sequence start, since the model sees only that much of it);
- the second view buckets the same tokens by their position in the evaluated sequence.

Beside ``summary.json``, ``results.jsonl`` holds one row per evaluated sequence (its domain, its
index within the domain, and per bucket the summed NLL and the token count), the unit a paired
comparison of two runs resamples (:mod:`longmix.eval.compare`).

One full-length forward per sequence (the LM head applied in chunks, never the full
``seq × vocab`` logits). :data:`DEFINITION` is written into every output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .runtime import EvalModel

import numpy as np

from ..data.store import PackedDataset, PackedSequence
from ..fsutil import atomic_write
from ..settings import setting
from ..units import parse_length
from .common import EvalError
from .registry import evaluation
from .report import loss_report, loss_retention

SPLIT = 4096  # the paper's 0-4K / 4K-max split

DEFINITION = (
    "Each domain is evaluated on sequences packed from its own held-out documents only; a token's bucket is "
    "its offset within its own document (tokens of that document before it in the evaluated sequence; a "
    "document continued from the previous sequence counts from the sequence start). Second view "
    "(by_position): the same tokens bucketed by position in the evaluated sequence."
)


def bucket_edges(seq_len: int) -> list[int]:
    """Fine buckets for the curve: 0-512, 512-1K, 1-2K, ... doubling up to seq_len."""
    edges = [0, 512]
    while edges[-1] < seq_len:
        edges.append(min(edges[-1] * 2, seq_len))
    return edges


def _k(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens and tokens % 1024 == 0 else str(tokens)


def bucket_labels(splits: tuple[int, ...]) -> list[str]:
    """``(4096,)`` → ``["0-4K", "4K-max"]``: the coarse buckets' names."""
    bounds = [0, *splits]
    return [f"{_k(lo)}-{_k(hi)}" for lo, hi in zip(bounds, bounds[1:])] + [f"{_k(bounds[-1])}-max"]


def token_losses(em: EvalModel, tokens: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Next-token NLL of every position but the last (float64, length ``len(tokens) - 1``)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        ids = torch.from_numpy(tokens.astype(np.int64))[None].to(em.device)
        hidden = em.model.model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
        targets = ids[0, 1:]
        out = []
        for start in range(0, hidden.shape[0], chunk):
            logits = em.model.lm_head(hidden[start : start + chunk]).float()
            out.append(
                F.cross_entropy(logits, targets[start : start + chunk], reduction="none")
                .double()
                .cpu()
            )
        return torch.cat(out).numpy()


# ---------------------------------------------------------------------------- per-domain packing


class SequenceSource(Protocol):
    """What :func:`domain_sequences` reads: a :class:`PackedDataset`, or any look-alike."""

    seq_len: int
    domains: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> PackedSequence: ...


@dataclass
class DomainSequence:
    """A sequence of one domain's documents, with each token's context within its own document."""

    domain: str
    tokens: np.ndarray
    doc_context: np.ndarray  # per token: tokens of its own document before it in this sequence


def own_document_context(keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per token, how many tokens of its document precede it here: a document (piece) begins
    where the key changes or the offset does not continue the previous token's."""
    n = len(keys)
    starts = np.ones(n, dtype=bool)
    starts[1:] = (keys[1:] != keys[:-1]) | (offsets[1:] != offsets[:-1] + 1)
    run_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    return np.arange(n) - run_start


def domain_sequences(source: SequenceSource, per_domain: int) -> Iterator[DomainSequence]:
    """Up to ``per_domain`` sequences per domain, each ``seq_len`` tokens of that domain's
    documents in the source's order (a domain's last one may be shorter)."""
    seq_len = source.seq_len
    pending: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        d: [] for d in source.domains
    }
    made = dict.fromkeys(source.domains, 0)

    def cut(domain: str, final: bool) -> Iterator[DomainSequence]:
        parts = pending[domain]
        if not parts:
            return
        tokens, keys, offsets = (np.concatenate(column) for column in zip(*parts))
        start = 0
        while made[domain] < per_domain and (
            len(tokens) - start >= seq_len or (final and len(tokens) - start >= 2)
        ):
            end = min(start + seq_len, len(tokens))
            yield DomainSequence(
                domain, tokens[start:end], own_document_context(keys[start:end], offsets[start:end])
            )
            made[domain] += 1
            start = end
        pending[domain] = (
            [(tokens[start:], keys[start:], offsets[start:])] if start < len(tokens) else []
        )

    for i in range(len(source)):
        if all(n >= per_domain for n in made.values()):
            break
        seq = source[i]
        for start, length, domain, key, offset in zip(
            seq.doc_starts, seq.doc_lengths, seq.domains, seq.doc_keys, seq.doc_offsets
        ):
            if made[domain] >= per_domain:
                continue
            pending[domain].append(
                (
                    np.asarray(seq.tokens[start : start + length]),
                    np.full(length, key, np.uint64),
                    offset + np.arange(length, dtype=np.int64),
                )
            )
        for domain in source.domains:
            yield from cut(domain, final=False)
    for domain in source.domains:
        yield from cut(domain, final=True)


# ---------------------------------------------------------------------------- accumulation


@dataclass
class LossTotals:
    """Loss sums and token counts per (domain, fine bucket), for one view."""

    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, n_domains: int, n_buckets: int) -> LossTotals:
        return cls(np.zeros((n_domains, n_buckets)), np.zeros((n_domains, n_buckets)))

    def add(self, domain: int, edges: list[int], context: np.ndarray, losses: np.ndarray) -> None:
        bucket = np.searchsorted(edges, context, side="right") - 1
        np.add.at(self.sums[domain], bucket, losses)
        np.add.at(self.counts[domain], bucket, 1)


def sequence_row(
    domain: str,
    index: int,
    edges: list[int],
    splits: tuple[int, ...],
    doc_context: np.ndarray,
    position: np.ndarray,
    losses: np.ndarray,
) -> dict:
    """One line of the loss evaluation's ``results.jsonl``: one evaluated sequence's summed NLL and
    token count per coarse bucket (by own-document offset, and by position) and per fine bucket."""
    labels = bucket_labels(splits)
    coarse = [0, *splits]

    def sums(context: np.ndarray, bounds: list[int]) -> tuple[list[float], list[int]]:
        bucket = np.searchsorted(bounds, context, side="right") - 1
        nll = np.bincount(bucket, weights=losses, minlength=len(bounds))
        tokens = np.bincount(bucket, minlength=len(bounds))
        return [float(v) for v in nll[: len(bounds)]], [int(v) for v in tokens[: len(bounds)]]

    nll, tokens = sums(doc_context, coarse)
    position_nll, position_tokens = sums(position, coarse)
    fine_nll, fine_tokens = sums(doc_context, edges[:-1])
    return {
        "domain": domain,
        "sequence": index,
        "n_tokens": int(len(losses) + 1),
        "buckets": labels,
        "nll": nll,
        "tokens": tokens,
        "position_nll": position_nll,
        "position_tokens": position_tokens,
        "fine_nll": fine_nll,
        "fine_tokens": fine_tokens,
    }


def evaluate_loss(
    source: SequenceSource,
    losses_of: Callable[[np.ndarray], np.ndarray],
    per_domain: int,
    splits: tuple[int, ...] = (SPLIT,),
    progress: bool = False,
    rows: list[dict] | None = None,
) -> dict:
    """Both views' totals over :func:`domain_sequences`; ``losses_of(tokens)`` gives the loss of
    predicting each token from the ones before it (length ``len(tokens) - 1``). With ``rows``,
    one :func:`sequence_row` per evaluated sequence is appended to it."""
    from ..data.executor import progress_bar

    edges = sorted(
        set(bucket_edges(source.seq_len)) | {s for s in splits if 0 < s < source.seq_len}
    )
    domains = list(source.domains)
    by_document = LossTotals.empty(len(domains), len(edges) - 1)
    by_position = LossTotals.empty(len(domains), len(edges) - 1)
    sequences = dict.fromkeys(domains, 0)
    total = per_domain * len(domains)
    for seq in progress_bar(
        domain_sequences(source, per_domain),
        total=total,
        desc="loss",
        unit="seq",
        enabled=progress,
    ):
        losses = np.asarray(losses_of(seq.tokens), dtype=np.float64)
        d = domains.index(seq.domain)
        # position p predicts token p+1: its context is what came before token p+1
        position = np.arange(1, len(seq.tokens))
        by_document.add(d, edges, seq.doc_context[1:], losses)
        by_position.add(d, edges, position, losses)
        if rows is not None:
            rows.append(
                sequence_row(
                    seq.domain,
                    sequences[seq.domain],
                    edges,
                    splits,
                    seq.doc_context[1:],
                    position,
                    losses,
                )
            )
        sequences[seq.domain] += 1
    return {
        "by_document": summarize_loss(by_document.sums, by_document.counts, domains, edges, splits),
        "by_position": summarize_loss(by_position.sums, by_position.counts, domains, edges, splits),
        "sequences": sequences,
    }


def summarize_loss(
    sums: np.ndarray,
    counts: np.ndarray,
    domains: list[str],
    edges: list[int],
    splits: tuple[int, ...] = (SPLIT,),
) -> dict:
    """Mean loss per domain: overall, per coarse bucket (``0-4K``, ``4K-max`` by default) and per
    fine bucket (the curve, with token counts)."""
    starts = np.array(edges[:-1])
    bounds = [0, *splits, np.inf]
    labels = bucket_labels(splits)

    def mean(s: np.ndarray, c: np.ndarray) -> float | None:
        return float(s.sum() / c.sum()) if c.sum() else None

    table = {}
    for i, domain in enumerate([*domains, "all"]):
        s = sums.sum(0) if domain == "all" else sums[i]
        c = counts.sum(0) if domain == "all" else counts[i]
        row: dict = {"loss": mean(s, c), "tokens": int(c.sum())}
        for label, lo, hi in zip(labels, bounds, bounds[1:]):
            inside = (starts >= lo) & (starts < hi)
            row[label] = mean(s[inside], c[inside])
            row[f"{label} tokens"] = int(c[inside].sum())
        row["curve"] = [mean(s[b : b + 1], c[b : b + 1]) for b in range(len(edges) - 1)]
        row["curve_tokens"] = [int(x) for x in c]
        table[domain] = row
    return {"domains": table, "edges": edges, "buckets": labels}


def run_loss(
    em: EvalModel,
    data: str | Path,
    out: Path,
    max_sequences: int = 64,
    progress: bool = True,
    splits: tuple[int, ...] = (SPLIT,),
) -> dict:
    """Loss per domain by own-document offset (and by position) on ``max_sequences`` sequences per domain."""
    dataset = PackedDataset(data)
    started = time.perf_counter()
    rows: list[dict] = []
    views = evaluate_loss(
        dataset, lambda tokens: token_losses(em, tokens), max_sequences, splits, progress, rows
    )
    summary = {
        "definition": DEFINITION,
        **views["by_document"],
        "by_position": views["by_position"],
        "split": list(splits),
        "model": em.name,
        "data": str(data),
        "sequences": views["sequences"],
        "seq_len": dataset.seq_len,
        "seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    # per sequence (the unit a paired comparison resamples), complete before the summary
    with atomic_write(out / "results.jsonl", "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_loss_curve(summary, out / "loss_by_position.png")
    return summary


def plot_loss_curve(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = summary["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig, ax = plt.subplots(figsize=(7, 4))
    for domain, row in summary["domains"].items():
        points = [(x, y) for x, y in zip(centers, row["curve"]) if y is not None]
        if points:
            ax.plot(*zip(*points), marker="o", lw=2.5 if domain == "all" else 1.2, label=domain)
    for split in summary.get("split", [SPLIT]):
        ax.axvline(split, color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("offset within the token's own document (tokens of its document before it)")
    ax.set_ylabel("loss")
    ax.set_title(
        f"{summary.get('model', '')}: loss by own-document offset, per-domain packing", fontsize=9
    )
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _parse_splits(text: str) -> tuple[int, ...]:
    return tuple(parse_length(v.strip()) for v in text.split(",") if v.strip())


def _check_splits(splits: tuple[int, ...]) -> str | None:
    if not splits or any(s <= 0 for s in splits) or list(splits) != sorted(set(splits)):
        return "give increasing positive offsets, e.g. 4K or 2K,4K,16K"
    return None


@dataclass(frozen=True)
class LossConfig:
    """Settings of `longmix eval loss`."""

    data: str = setting(help="held-out data: a folder written by `longmix prepare`")
    sequences: int = setting(
        64,
        check=lambda v: None if v > 0 else "must be positive",
        help="sequences per domain, each packed from that domain's held-out documents",
    )
    split: tuple[int, ...] = setting(
        (SPLIT,),
        parse=_parse_splits,
        check=_check_splits,
        metavar="OFFSETS",
        help="bucket edges of a token's offset within its own document: 4K gives the "
        "paper's 0-4K and 4K-max; 2K,4K,16K gives four buckets",
    )


def describe_loss(summary: dict) -> str:
    def show(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    labels = summary.get("buckets", ["0-4K", "4K-max"])
    lines = [f"Definition: {summary['definition']}"] if summary.get("definition") else []
    lines += [
        f"{domain:<14} loss {show(row['loss'])}  "
        + "  ".join(f"{b} {show(row.get(b))}" for b in labels)
        + f"  ({row['tokens']} tokens)"
        for domain, row in summary["domains"].items()
    ]
    position = summary.get("by_position")
    if position:
        row = position["domains"]["all"]
        lines.append(
            "by position in the sequence (all domains): "
            + "  ".join(f"{b} {show(row.get(b))}" for b in position.get("buckets", labels))
        )
    return "\n".join(lines)


@evaluation(
    "loss",
    LossConfig,
    doc="per-domain loss by own-document offset on held-out prepared data",
    describe=describe_loss,
    order=20,
    uses_heldout=True,
    report=loss_report,
    report_order=30,
    retention=loss_retention,
)
def run_loss_eval(em: EvalModel, config: LossConfig, out: Path, progress: bool = True) -> dict:
    if not Path(config.data).exists():
        raise EvalError(
            f"held-out data {config.data} not found: give a folder written by `longmix prepare`"
        )
    return run_loss(em, config.data, out, config.sequences, progress=progress, splits=config.split)
