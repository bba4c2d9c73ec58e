"""Needle-grid cost for a LLaMA-2-7B-shaped model (random weights) on one GPU.

    python benchmarks/bench_needle.py --lengths 1K:128K:8 --out needle-bench.json

Timing does not depend on the weights' values. Each cell is scored by teacher forcing:
one no-cache forward through the model body, the LM head applied to the answer
positions only. The measured seconds per cell are fitted with t(L) = a·L + b·L² and
summed over the full grid of the paper (40 lengths from 1K to 128K × 10 depths).
The baseline is the plain HF forward with full logits at the same lengths.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from longmix.data.tokenize import builtin_tokenizer_dir
from longmix.eval.common import EvalModel, parse_grid
from longmix.eval.needle import NeedleConfig, run_needle
from longmix.train.attention import register_attention_backends

LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)


def main() -> None:
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", default="1K:128K:8")
    parser.add_argument(
        "--depths",
        default="0:100:10",
        help="all depths of a length share one prefix: measure them all",
    )
    parser.add_argument("--generate-tokens", type=int, default=0, help="0: teacher forcing only")
    parser.add_argument("--baseline-lengths", default="32K,128K")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--workdir", type=Path, help="keep the per-cell results here (default: a temporary folder)"
    )
    args = parser.parse_args()
    register_attention_backends()
    # The vocabulary of our tokenizer (49,152) instead of LLaMA-2's 32,000: it only sizes the
    # embedding and the LM head, which teacher forcing applies to a few positions.
    config = LlamaConfig(vocab_size=49152, **LLAMA2_7B)
    config._attn_implementation = "longmix_sdpa"
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(config).eval()
        torch.set_default_dtype(torch.float32)
    tokenizer = Tokenizer.from_file(str(builtin_tokenizer_dir() / "tokenizer.json"))
    em = EvalModel(model, tokenizer, torch.device("cuda"), "llama2-7b-shape", 4096)
    lengths = parse_grid(args.lengths, lengths=True)
    depths = parse_grid(args.depths, lengths=False)
    # warm-up (kernel selection) on a short cell
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or scratch
        run_needle(
            em,
            NeedleConfig(
                protocol="longmix",
                lengths=(2048,),
                depths=(50,),
                generate_tokens=args.generate_tokens,
            ),
            Path(tmp),
            progress=False,
        )
        started = time.perf_counter()
        run_needle(
            em,
            NeedleConfig(
                protocol="longmix",
                lengths=tuple(lengths),
                depths=tuple(depths),
                generate_tokens=args.generate_tokens,
            ),
            Path(tmp) / "g",
            progress=False,
        )
        wall = time.perf_counter() - started
        rows = [
            json.loads(line)
            for line in (Path(tmp) / "g" / "results.jsonl").read_text().splitlines()
        ]
    peak_gib = (
        torch.cuda.max_memory_allocated() / 2**30
    )  # teacher forcing only, before the baseline
    per_length: dict[int, float] = {}
    for r in rows:  # mean over depths
        per_length.setdefault(r["length"], []).append(r["seconds"])
    per_length = {k: float(np.mean(v)) for k, v in per_length.items()}
    x = np.array(sorted(per_length), dtype=float) / 1024
    y = np.array([per_length[k] for k in sorted(per_length)])
    (a, b), *_ = np.linalg.lstsq(np.stack([x, x**2], 1), y, rcond=None)
    grid = np.round(np.linspace(1000, 128000, 40)) / 1024
    predicted = float(10 * np.sum(a * grid + b * grid**2))
    baseline = {}
    for length in parse_grid(args.baseline_lengths, lengths=True) if args.baseline_lengths else []:
        ids = torch.randint(0, 32000, (1, length), device="cuda")
        model.config._attn_implementation = "sdpa"
        with torch.no_grad():
            model(ids)  # warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(ids)  # plain HF: full logits
            torch.cuda.synchronize()
        baseline[length] = time.perf_counter() - start
        model.config._attn_implementation = "longmix_sdpa"
        torch.cuda.empty_cache()
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "lengths": len(lengths),
        "generate_tokens": args.generate_tokens,
        "depths": depths,
        "cells": len(rows),
        "seconds_by_length": per_length,
        "wall_s": wall,
        "fit_a": float(a),
        "fit_b": float(b),
        "predicted_full_grid_s": predicted,
        "measured_grid_scaled_to_10_depths_s": wall * 10 / len(depths),
        "plain_hf_forward_s": baseline,
        "peak_gib_teacher_forcing": peak_gib,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
