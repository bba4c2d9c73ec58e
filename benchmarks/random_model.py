"""A randomly initialised HF model folder of a known shape, with the built-in tokenizer.

    python benchmarks/random_model.py smollm2-135m /root/smol-random --seq-len 32K

Evaluation and training speed do not depend on the weights' values; with random weights a
model never stops early, so generation timings are an upper bound (every answer runs to its
budget).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from longmix.data.tokenize import builtin_tokenizer_dir
from longmix.train.plan import PRESETS, TIED
from longmix.units import parse_length


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shape", choices=sorted(PRESETS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seq-len", default="32K", help="max_position_embeddings")
    parser.add_argument("--rope-theta", type=float, default=1e6)
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    s = PRESETS[args.shape]
    config = LlamaConfig(
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
        vocab_size=s.vocab,
        max_position_embeddings=parse_length(args.seq_len),
        rope_theta=args.rope_theta,
        tie_word_embeddings=args.shape in TIED,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (builtin_tokenizer_dir() / name).is_file():
            shutil.copy(builtin_tokenizer_dir() / name, args.out / name)
    print(
        f"{args.shape}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {args.out}"
    )


if __name__ == "__main__":
    main()
