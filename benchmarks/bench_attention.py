"""Causal attention kernels alone (forward + backward), per SDPA backend, on the GPU.

    python benchmarks/bench_attention.py

Shapes: SmolLM2-135M (9 query heads, 3 KV heads, head dim 64) and the ~1B LLaMA (16 heads
of 128), at 32K and 64K tokens. TFLOP/s counts causal work once, forward + backward
= 3.5 × forward = 7·s²·H·D, as in the FlashAttention papers.
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {"smollm2": (9, 3, 64), "llama-1b": (16, 16, 128)}
BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def time_case(heads: int, kv: int, dim: int, seq: int, backend: str, gqa: str) -> dict:
    q = torch.randn(1, heads, seq, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, kv, seq, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, kv, seq, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def run():
        kk, vv, extra = k, v, {}
        if kv != heads:
            if gqa == "repeat":
                kk, vv = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
            else:
                extra["enable_gqa"] = True
        with sdpa_kernel([BACKENDS[backend]]):
            out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **extra)
        out.sum().backward()

    try:
        run()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            run()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 5
        return {"ms": seconds * 1e3, "tflops": 7 * seq * seq * heads * dim / seconds / 1e12}
    except Exception as err:
        return {"error": f"{type(err).__name__}: {str(err)[:120]}"}


def main() -> None:
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    for name, (heads, kv, dim) in SHAPES.items():
        for seq in (32768, 65536):
            for backend in BACKENDS:
                for gqa in ["repeat", "enable_gqa"] if kv != heads else ["none"]:
                    row = {
                        "shape": name,
                        "seq": seq,
                        "backend": backend,
                        "gqa": gqa,
                        **time_case(heads, kv, dim, seq, backend, gqa),
                    }
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
