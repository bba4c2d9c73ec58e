"""Training speed and memory on one GPU: longmix's trainer step against plain HF, same shapes.

    python benchmarks/bench_train.py --cases all --out results.jsonl
    python benchmarks/bench_train.py --list

Each case builds a model with random weights (speed does not depend on the values),
runs warm-up steps, then times full optimizer steps (forward, backward, AdamW) on
random tokens, batch 1, and records tokens/s, MFU and peak memory.

- ``hf``: the plain baseline: ``LlamaForCausalLM`` in bf16, SDPA, HF gradient
  checkpointing, full logits (``model(input_ids, labels=...)``), fused AdamW.
- ``longmix``: our step: fp32 master weights with bf16 autocast, fused AdamW, activation
  checkpointing of every N-th layer (``ckpt``), chunked LM head + loss, SDPA causal or a
  document-masked backend (``varlen``/``flex``, 8K-token documents).

MFU = tokens/s × (6·N_mm + 6·L·d_attn·s_eff) / 989e12 (H100 dense bf16), with s_eff = s
for causal attention and Σℓ²/s for documents; recomputation is not counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback

import torch

from longmix.train.model import CausalLMLoss, build_model, peak_flops
from longmix.train.shape import ModelShape

SHAPES = {
    # The SmolLM2-135M architecture (the reproduction model): 30 layers, d=576, 9/3 heads, tied 49K vocab.
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=1e5,
    ),
    # LLaMA 134M (d=768, 12 layers, 32K vocab) of the reference baseline table.
    "llama-134m": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    # ~1B LLaMA (953M: d=2048, 16 layers, 16 heads of 128, 32K vocab).
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
}

K = 1024
CASES = {
    "smol-32k-hf": ("smollm2-135m", 32 * K, "hf", {}),
    "smol-32k-ckpt1": ("smollm2-135m", 32 * K, "longmix", {"ckpt": 1}),
    "smol-32k-ckpt0": ("smollm2-135m", 32 * K, "longmix", {"ckpt": 0}),
    "smol-32k-ckpt0-compile": ("smollm2-135m", 32 * K, "longmix", {"ckpt": 0, "compile": True}),
    "1b-32k-hf": ("llama-1b", 32 * K, "hf", {}),
    "1b-32k-ckpt1": ("llama-1b", 32 * K, "longmix", {"ckpt": 1}),
    "1b-32k-ckpt2": ("llama-1b", 32 * K, "longmix", {"ckpt": 2}),
    "1b-32k-ckpt0": ("llama-1b", 32 * K, "longmix", {"ckpt": 0}),
    "1b-64k-ckpt1": ("llama-1b", 64 * K, "longmix", {"ckpt": 1}),
    "1b-64k-ckpt2": ("llama-1b", 64 * K, "longmix", {"ckpt": 2}),
    "1b-32k-ckpt0-compile": ("llama-1b", 32 * K, "longmix", {"ckpt": 0, "compile": True}),
    "1b-32k-ckpt2-compile": ("llama-1b", 32 * K, "longmix", {"ckpt": 2, "compile": True}),
    "1b-64k-ckpt2-compile": ("llama-1b", 64 * K, "longmix", {"ckpt": 2, "compile": True}),
    "1b-64k-ckpt1-compile": ("llama-1b", 64 * K, "longmix", {"ckpt": 1, "compile": True}),
    "1b-32k-varlen": (
        "llama-1b",
        32 * K,
        "longmix",
        {"ckpt": 2, "attention": "varlen", "compile": True},
    ),
    "1b-64k-varlen": (
        "llama-1b",
        64 * K,
        "longmix",
        {"ckpt": 2, "attention": "varlen", "compile": True},
    ),
    "1b-64k-flex": (
        "llama-1b",
        64 * K,
        "longmix",
        {"ckpt": 2, "attention": "flex", "compile": True},
    ),
    "1b-64k-ckpt3-compile": ("llama-1b", 64 * K, "longmix", {"ckpt": 3, "compile": True}),
    "1b-64k-ckpt4-compile": ("llama-1b", 64 * K, "longmix", {"ckpt": 4, "compile": True}),
    "smol-32k-ckpt2-compile": ("smollm2-135m", 32 * K, "longmix", {"ckpt": 2, "compile": True}),
    "134m-128k-hf": ("llama-134m", 128 * K, "hf", {}),
    "134m-128k-ckpt1": ("llama-134m", 128 * K, "longmix", {"ckpt": 1}),
    "smol-128k-ckpt1": ("smollm2-135m", 128 * K, "longmix", {"ckpt": 1}),
    "1b-128k-ckpt1": ("llama-1b", 128 * K, "longmix", {"ckpt": 1, "steps": 2}),
    "1b-256k-ckpt1": ("llama-1b", 256 * K, "longmix", {"ckpt": 1, "steps": 1, "warmup": 1}),
    "1b-512k-ckpt1": ("llama-1b", 512 * K, "longmix", {"ckpt": 1, "steps": 1, "warmup": 1}),
}
DOCUMENT = 8 * K  # document length of the doc-mask cases


def hf_step_factory(config, seq_len: int, device):
    from transformers import LlamaForCausalLM

    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)
    tokens = torch.randint(0, config.vocab_size, (1, seq_len), device=device)

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, float(seq_len)


def longmix_step_factory(
    config, seq_len: int, device, ckpt: int = 1, attention: str = "sdpa", compile: bool = False, **_
):
    model = build_model(
        config,
        None,
        attention=attention,
        seq_len=seq_len,
        rope_theta=None,
        rope_scaling=None,
        rope_factor=1.0,
        checkpointing=ckpt,
        seed=0,
        compile_layers=compile,
    )
    module = CausalLMLoss(model, loss_chunk=8192).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-5, fused=True)
    tokens = torch.randint(0, config.vocab_size, (1, seq_len), device=device)
    labels = torch.roll(tokens, -1, dims=1)
    kwargs: dict = {"position_ids": torch.arange(seq_len, device=device)[None]}
    s_eff = float(seq_len)
    if attention != "sdpa":
        cu = torch.arange(0, seq_len + 1, DOCUMENT, device=device, dtype=torch.int32)
        positions = torch.arange(seq_len, device=device) % DOCUMENT
        kwargs = {
            "position_ids": positions[None],
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": DOCUMENT,
            "max_length_k": DOCUMENT,
        }
        if attention == "flex":
            from longmix.train.attention import document_block_mask

            kwargs["flex_block_mask"] = document_block_mask(cu, seq_len, device)
        s_eff = DOCUMENT * DOCUMENT * (seq_len // DOCUMENT) / seq_len

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module(tokens, labels, **kwargs) / seq_len
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, s_eff


def run_case(name: str) -> dict:
    from transformers import LlamaConfig

    shape_name, seq_len, impl, options = CASES[name]
    device = torch.device("cuda")
    config = LlamaConfig(max_position_embeddings=seq_len, **SHAPES[shape_name])
    result = {"case": name, "shape": shape_name, "seq_len": seq_len, "impl": impl, **options}
    warmup, steps = options.get("warmup", 2), options.get("steps", 3)
    try:
        torch.cuda.reset_peak_memory_stats()
        factory = hf_step_factory if impl == "hf" else longmix_step_factory
        step, s_eff = factory(
            config,
            seq_len,
            device,
            **{k: v for k, v in options.items() if k not in ("warmup", "steps")},
        )
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        flops = ModelShape.of(config).train_flops_per_token(s_eff)
        result.update(
            {
                "ok": True,
                "loss": float(loss),
                "step_seconds": seconds,
                "tokens_per_s": seq_len / seconds,
                "mfu": seq_len / seconds * flops / peak_flops(device),
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "s_eff": s_eff,
            }
        )
    except torch.cuda.OutOfMemoryError:
        result.update(
            {
                "ok": False,
                "error": "out of memory",
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            }
        )
    except Exception as err:  # a broken case must not hide the others
        result.update(
            {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "trace": traceback.format_exc()[-2000:],
            }
        )
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", default="all", help="comma-separated case names, or all")
    parser.add_argument("--out", help="append JSON lines here")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, case in CASES.items():
            print(name, case)
        return
    names = list(CASES) if args.cases == "all" else args.cases.split(",")
    import transformers

    print(
        f"# {torch.cuda.get_device_name()} torch {torch.__version__} transformers {transformers.__version__}",
        flush=True,
    )
    for name in names:
        result = run_case(name)
        result.update(
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
