"""Per-domain validation loss by context position (Fu et al. 2024, Table 5 and Fig. 4).

One full-length forward per held-out sequence of a prepared folder (the LM head applied
in chunks, never the full ``seq × vocab`` logits), then the token losses are summed per
(domain, position bucket). A token's position is its index in the sequence, i.e. how
much context the model had; its domain is that of the document it belongs to.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import EvalModel

import numpy as np

from ..data.store import PackedDataset
from ..settings import setting
from .registry import evaluation

SPLIT = 4096  # the paper's 0-4K / 4K-max split


def bucket_edges(seq_len: int) -> list[int]:
    """Fine buckets for the curve: 0-512, 512-1K, 1-2K, ... doubling up to seq_len."""
    edges = [0, 512]
    while edges[-1] < seq_len:
        edges.append(min(edges[-1] * 2, seq_len))
    return edges


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
            out.append(F.cross_entropy(logits, targets[start : start + chunk], reduction="none").double().cpu())
        return torch.cat(out).numpy()


def run_loss(em: EvalModel, data: str | Path, out: Path, max_sequences: int = 64, progress: bool = True) -> dict:
    """Accumulate loss sums per domain and position bucket over the first sequences."""
    from tqdm import tqdm

    dataset = PackedDataset(data)
    seq_len = dataset.seq_len
    edges = bucket_edges(seq_len)
    domains = dataset.domains
    sums = np.zeros((len(domains), len(edges) - 1))
    counts = np.zeros_like(sums)
    started = time.perf_counter()
    n = min(max_sequences, len(dataset))
    for i in tqdm(range(n), desc="loss", unit="seq", disable=not progress):
        seq = dataset[i]
        losses = token_losses(em, seq.tokens)
        # domain of the token being predicted (position p predicts token p+1)
        owner = np.repeat([domains.index(d) for d in seq.domains], seq.doc_lengths)[1:]
        bucket = np.searchsorted(edges, np.arange(1, seq_len), side="right") - 1
        np.add.at(sums, (owner, bucket), losses)
        np.add.at(counts, (owner, bucket), 1)
    summary = summarize_loss(sums, counts, domains, edges)
    summary.update({"model": em.name, "data": str(data), "sequences": n, "seq_len": seq_len,
                    "seconds": time.perf_counter() - started})
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_loss_curve(summary, out / "loss_by_position.png")
    return summary


def summarize_loss(sums: np.ndarray, counts: np.ndarray, domains: list[str], edges: list[int]) -> dict:
    """Mean loss per domain: overall, 0–4K, 4K–max, and per fine bucket (with token counts)."""
    split = np.array(edges[:-1]) < SPLIT

    def mean(s: np.ndarray, c: np.ndarray) -> float | None:
        return float(s.sum() / c.sum()) if c.sum() else None

    table = {}
    for i, domain in enumerate([*domains, "all"]):
        s = sums.sum(0) if domain == "all" else sums[i]
        c = counts.sum(0) if domain == "all" else counts[i]
        table[domain] = {
            "loss": mean(s, c),
            "tokens": int(c.sum()),
            "0-4K": mean(s[split], c[split]),
            "4K-max": mean(s[~split], c[~split]),
            "curve": [mean(s[b : b + 1], c[b : b + 1]) for b in range(len(edges) - 1)],
            "curve_tokens": [int(x) for x in c],
        }
    return {"domains": table, "edges": edges}


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
    ax.axvline(SPLIT, color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in the sequence (tokens of context)")
    ax.set_ylabel("loss")
    ax.set_title(f"{summary.get('model', '')}: loss by position")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass(frozen=True)
class LossConfig:
    """Settings of `longmix eval loss`."""

    data: str = setting(help="held-out data: a folder written by `longmix prepare`")
    sequences: int = setting(64, check=lambda v: None if v > 0 else "must be positive",
                             help="sequences to evaluate (the first ones of the folder)")


def _describe(summary: dict) -> str:
    def show(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    return "\n".join(f"{domain:<14} loss {show(row['loss'])}  0-4K {show(row['0-4K'])}  4K-max {show(row['4K-max'])}"
                     f"  ({row['tokens']} tokens)" for domain, row in summary["domains"].items())


@evaluation("loss", LossConfig, doc="per-domain loss by context position on held-out prepared data",
            describe=_describe, order=20, uses_heldout=True)
def run_loss_eval(em: EvalModel, config: LossConfig, out: Path, progress: bool = True) -> dict:
    return run_loss(em, config.data, out, config.sequences, progress=progress)
