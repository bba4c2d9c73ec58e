"""The attention calls of cached evaluation, kernel against kernel (one GPU).

    python benchmarks/bench_decode_attention.py --out decode-attention.jsonl

Grouped-query shapes (SmolLM2-135M: 9 query heads on 3 key/value heads, head size 64):

- a decoding step (one query per row, a left-padding mask): ``enable_gqa`` with the mask,
  against the query heads folded onto their key/value head (what evaluation runs);
- a prompt's tokens after a cached prefix (queries fewer than keys, causal aligned
  bottom-right): ``enable_gqa`` against key/value heads repeated first.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def cuda_ms(fn, repeat: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def decode_cases(heads: int, kv: int, dim: int, rows: int, length: int) -> dict:
    q = torch.randn(rows, heads, 1, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(rows, kv, length, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mask = (
        torch.arange(length, device="cuda")[None] >= torch.randint(0, 64, (rows, 1), device="cuda")
    )[:, None, None, :]

    def gqa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    def folded():
        out = F.scaled_dot_product_attention(
            q.reshape(rows, kv, heads // kv, dim), k, v, attn_mask=mask
        )
        return out.reshape(rows, heads, 1, dim)

    assert torch.allclose(gqa().float(), folded().float(), atol=2e-2)
    return {"enable_gqa_ms": cuda_ms(gqa), "folded_ms": cuda_ms(folded)}


def suffix_cases(heads: int, kv: int, dim: int, rows: int, prefix: int, suffix: int) -> dict:
    q = torch.randn(rows, heads, suffix, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(rows, kv, prefix + suffix, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    bias = causal_lower_right(suffix, prefix + suffix)

    def gqa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)

    def repeated():
        groups = heads // kv
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), attn_mask=bias
        )

    return {"enable_gqa_ms": cuda_ms(gqa, 5), "repeated_ms": cuda_ms(repeated, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="append JSON lines here")
    args = parser.parse_args()
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    rows_out = []
    for length, rows in ((4096, 64), (16384, 32), (32768, 16), (65536, 8)):
        rows_out.append(
            {
                "case": "decode",
                "length": length,
                "rows": rows,
                **decode_cases(9, 3, 64, rows, length),
            }
        )
    for prefix, suffix in ((8192, 4096), (30000, 2768), (60000, 5536)):
        rows_out.append(
            {
                "case": "suffix",
                "prefix": prefix,
                "suffix": suffix,
                "rows": 1,
                **suffix_cases(9, 3, 64, 1, prefix, suffix),
            }
        )
    for row in rows_out:
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows_out)


if __name__ == "__main__":
    main()
