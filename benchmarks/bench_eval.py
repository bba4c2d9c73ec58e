"""Evaluation speed: one prompt at a time through HF ``generate`` against batched, cached
greedy decoding (``generate_batch``), with and without shared-prefix reuse, in one run.

    python benchmarks/bench_eval.py --model runs/smollm2-135m --out eval-bench.json
    python benchmarks/bench_eval.py --model runs/smollm2-135m --baseline eager   # CUDA graphs on/off
    python benchmarks/bench_eval.py --tiny            # CPU smoke test, tiny random model

Workloads (the prompts are built exactly as the evaluations build them):

- needle: every length × depth cell (default 1K–32K × 11 depths), ``--generate-tokens``
  greedy tokens each, cells of one length batched as ``eval needle`` does; and the same
  cells scored by teacher forcing, with and without prefix reuse;
- ruler: the synthetic tasks at ``--ruler-lengths`` × ``--samples``, each with its RULER
  answer budget.

``--baseline eager`` compares instead the batched decoding with its steps run eagerly (CUDA
graphs off) against the same with graphs (the default), skipping the slow HF baseline.

Reported per workload: seconds, cells per second, the speed-up over the baseline, and the
share of responses identical to the baseline's (bf16 on a GPU may flip a rare near-tie).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from longmix.data.tokenize import builtin_tokenizer_dir
from longmix.eval.common import parse_grid
from longmix.eval.needle import NeedleConfig, cell_builder, haystack_source, load_haystack_text
from longmix.eval.runtime import (
    EvalModel,
    answer_scores_batch,
    generate,
    generate_batch,
    load_eval_model,
)
from longmix.eval.tasks import TASKS, TaskConfig, fit_sample, load_task_inputs, resolve_tasks

NO_REUSE = 10**12  # a minimum shared prefix no prompt reaches


def tiny_model() -> EvalModel:
    """A tiny random LLaMA (fp32, CPU) with the built-in tokenizer: exercises every path quickly."""
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from longmix.train.attention import register_attention_backends

    register_attention_backends()
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "longmix_sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    tokenizer = Tokenizer.from_file(str(builtin_tokenizer_dir() / "tokenizer.json"))
    return EvalModel(model, tokenizer, torch.device("cpu"), "tiny-random", 4096)


def timed(em: EvalModel, work: Callable[[], object]) -> tuple[float, object]:
    if em.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = work()
    if em.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def compare(
    name: str,
    cells: int,
    baseline: tuple[float, list],
    variants: dict[str, tuple[float, list]],
    same: Callable[[object, object], bool],
) -> dict:
    """Seconds, cells/s, speed-up and agreement of each variant against the baseline."""
    seconds, reference = baseline
    out = {"cells": cells, "baseline": {"seconds": seconds, "cells_per_s": cells / seconds}}
    for label, (took, result) in variants.items():
        agree = sum(same(a, b) for a, b in zip(reference, result)) / max(1, len(reference))
        out[label] = {
            "seconds": took,
            "cells_per_s": cells / took,
            "speedup": seconds / took,
            "identical": agree,
        }
        print(
            f"{name:<8} {label:<26} {took:8.2f} s  {cells / took:8.2f} cells/s  {seconds / took:6.2f}× baseline "
            f"({seconds:.2f} s)  identical {agree:.0%}"
        )
    return out


@contextlib.contextmanager
def cuda_graphs(em: EvalModel, on: bool) -> Iterator[None]:
    before, em.cuda_graphs = em.cuda_graphs, on
    try:
        yield
    finally:
        em.cuda_graphs = before


def by_length(prompts: list[list[int]], run: Callable[[list[list[int]]], list]) -> list:
    """``run`` on the prompts of each length in turn, as ``eval needle`` calls it."""
    out: list = [None] * len(prompts)
    for length in sorted({len(p) for p in prompts}):
        members = [i for i, p in enumerate(prompts) if len(p) == length]
        for i, result in zip(members, run([prompts[i] for i in members])):
            out[i] = result
    return out


def bench_needle(
    em: EvalModel,
    lengths: list[int],
    depths: list[int],
    new_tokens: int,
    protocol: str,
    baseline: str = "generate",
) -> dict:
    config = NeedleConfig(
        protocol=protocol,
        lengths=tuple(lengths),
        depths=tuple(depths),
        generate_tokens=new_tokens if protocol == "longmix" else None,
    )
    build = cell_builder(em, config, haystack_source(config))
    cells = [build(n, d) for n in lengths for d in depths]
    prompts, answer = [c.prompt for c in cells], cells[0].answer or em.encode(config.answer)
    generate_batch(em, prompts[:2], 2)  # warm-up: kernels, allocator

    def batched() -> list:
        return by_length(prompts, lambda ps: generate_batch(em, ps, new_tokens))

    if baseline == "eager":
        with cuda_graphs(em, False):
            reference = timed(em, batched)
        variants = {"generate_batch+prefix+graphs": timed(em, batched)}
    else:
        reference = timed(em, lambda: [generate(em, p, new_tokens) for p in prompts])
        variants = {
            "generate_batch": timed(
                em,
                lambda: by_length(
                    prompts, lambda ps: generate_batch(em, ps, new_tokens, min_prefix=NO_REUSE)
                ),
            ),
            "generate_batch+prefix": timed(em, batched),
        }
    results = {
        "generation": compare("needle", len(cells), reference, variants, lambda a, b: a == b)
    }
    same_scores = lambda a, b: a["token_accuracy"] == b["token_accuracy"]  # noqa: E731
    results["teacher_forcing"] = compare(
        "needle-tf",
        len(cells),
        timed(
            em,
            lambda: by_length(
                prompts,
                lambda ps: answer_scores_batch(
                    em, ps, answer, config.batch_tokens, min_prefix=NO_REUSE
                ),
            ),
        ),
        {
            "prefix reuse": timed(
                em,
                lambda: by_length(
                    prompts, lambda ps: answer_scores_batch(em, ps, answer, config.batch_tokens)
                ),
            )
        },
        same_scores,
    )
    return results


def bench_ruler(
    em: EvalModel, tasks: list[str], lengths: list[int], samples: int, baseline: str = "generate"
) -> dict:
    config = TaskConfig(tasks=tuple(tasks), lengths=tuple(lengths), samples=samples)
    tasks = list(resolve_tasks(config)[0])
    inputs = load_task_inputs(config, load_haystack_text("books"), tasks)
    fitted = [
        fit_sample(em, t, n, i, inputs) for i in range(samples) for t in tasks for n in lengths
    ]
    budgets = [TASKS[sample.task].answer_tokens for sample, _ in fitted]
    prompts = [prompt for _, prompt in fitted]

    def batched() -> list:
        out: list = [None] * len(prompts)
        for budget in sorted(set(budgets)):
            members = [i for i, b in enumerate(budgets) if b == budget]
            for i, tokens in zip(
                members, generate_batch(em, [prompts[i] for i in members], budget)
            ):
                out[i] = tokens
        return out

    if baseline == "eager":
        with cuda_graphs(em, False):
            reference = timed(em, batched)
        variants = {"generate_batch+prefix+graphs": timed(em, batched)}
    else:
        reference = timed(em, lambda: [generate(em, p, b) for p, b in zip(prompts, budgets)])
        variants = {"generate_batch+prefix": timed(em, batched)}
    return {"generation": compare("ruler", len(prompts), reference, variants, lambda a, b: a == b)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="a HF model folder (e.g. SmolLM2-135M imported with `longmix model`)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="CPU smoke test with a tiny random model and small grids",
    )
    parser.add_argument("--lengths", default="1K:32K:8", help="needle lengths")
    parser.add_argument("--depths", default="0:100:11", help="needle depths")
    parser.add_argument(
        "--protocol",
        choices=("longmix", "fu"),
        default="longmix",
        help="needle protocol (fu: 50 tokens)",
    )
    parser.add_argument(
        "--generate-tokens", type=int, default=32, help="needle tokens (longmix protocol)"
    )
    parser.add_argument("--tasks", default="all")
    parser.add_argument("--ruler-lengths", default="4K,8K,16K,32K")
    parser.add_argument("--samples", type=int, default=10, help="RULER samples per task and length")
    parser.add_argument(
        "--baseline",
        choices=("generate", "eager"),
        default="generate",
        help="generate: HF generate one prompt at a time; eager: batched decoding without CUDA graphs",
    )
    parser.add_argument("--skip", choices=("needle", "ruler"), action="append", default=[])
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    if args.tiny:
        em = tiny_model()
        lengths, depths = [300, 512], [0, 50, 100]
        tasks, ruler_lengths, samples, new_tokens = ["niah_single_1", "vt"], [1024], 2, 4
    else:
        if not args.model:
            parser.error("give --model (or --tiny)")
        em = load_eval_model(args.model)
        lengths, depths = (
            parse_grid(args.lengths, lengths=True),
            parse_grid(args.depths, lengths=False),
        )
        tasks = list(TASKS) if args.tasks == "all" else args.tasks.split(",")
        ruler_lengths, samples, new_tokens = (
            parse_grid(args.ruler_lengths, lengths=True),
            args.samples,
            args.generate_tokens,
        )
    random.seed(0)
    device = torch.cuda.get_device_name(em.device) if em.device.type == "cuda" else "cpu"
    report = {
        "model": em.name,
        "device": device,
        "dtype": str(next(em.model.parameters()).dtype),
        "date": time.strftime("%Y-%m-%d"),
        "generate_tokens": new_tokens,
        "baseline": args.baseline,
    }
    if "needle" not in args.skip:
        report["needle"] = {
            "lengths": lengths,
            "depths": depths,
            "protocol": args.protocol,
            **bench_needle(em, lengths, depths, new_tokens, args.protocol, args.baseline),
        }
    if "ruler" not in args.skip:
        report["ruler"] = {
            "tasks": tasks,
            "lengths": ruler_lengths,
            "samples": samples,
            **bench_ruler(em, tasks, ruler_lengths, samples, args.baseline),
        }
    if em.device.type == "cuda":
        report["peak_gib"] = torch.cuda.max_memory_allocated(em.device) / 2**30
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
