"""`longmix plan`: per-GPU memory and training time of a long-context run, before renting GPUs.

Memory is the sum of the trainer's parts (bytes, per GPU):

- model states: fp32 weights, gradients and AdamW's two moments, 16 B/parameter,
  sharded over every rank by FSDP2 (one GPU keeps them all, plus autocast's bf16 copy
  of the weights, 2 B/parameter);
- FSDP2's gathered bf16 layers (the current and the prefetched one) and root parameters;
- checkpointed layer inputs: one hidden state per token for each checkpointed layer
  (fp32 on one GPU, where the residual stream follows the fp32 weights; bf16 under FSDP2);
- full activations of the layers that are not checkpointed, and the working set of the
  one layer being recomputed: ``2·(10·d + 3·I)`` bytes per token with torch.compile,
  1.5× that in eager mode (fitted on the 1B model without checkpointing at 32K; the
  predictions are checked against every measured run in tests/test_plan.py);
- the loss chunk: ``chunk × vocab`` logits in bf16 and fp32 plus their gradient;
- with context parallelism, the all-gathered keys and values of one layer.

Tokens are divided by the context-parallel degree (each rank holds 1/cp of a sequence).
A run fits when the total stays below the card's usable memory (what torch sees: 79.2 GiB on
an 80 GB H100) less a margin for what lives outside the caching allocator (CUDA context,
cuBLAS and NCCL workspaces); the trainer turns on expandable segments, so the allocator's
own fragmentation is the 5% counted in the total.
Time comes from the FLOPs per token (``6·N_mm + 6·L·d_attn·s``) and an MFU, by default
the one measured for our trainer (see benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputNotFoundError, InvalidInputError
from .shape import ModelShape, read_model_config

GIB = 2**30

PRESETS = {
    "llama2-7b": ModelShape(
        layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32000
    ),
    "llama2-13b": ModelShape(
        layers=40, hidden=5120, heads=40, kv_heads=40, head_dim=128, intermediate=13824, vocab=32000
    ),
    "llama-1b": ModelShape(
        layers=16, hidden=2048, heads=16, kv_heads=16, head_dim=128, intermediate=5632, vocab=32000
    ),
    "llama-134m": ModelShape(
        layers=12, hidden=768, heads=12, kv_heads=12, head_dim=64, intermediate=2048, vocab=32000
    ),
    "smollm2-135m": ModelShape(
        layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536, vocab=49152
    ),
}
TIED = {"smollm2-135m"}
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0}
# Memory torch can use on each card, GiB (torch.cuda.mem_get_info's total: 79.2 on an 80 GB H100)
USABLE_GIB = {"h100": 79.2, "h200": 139.0, "a100": 79.1}
MARGIN_GIB = (
    2.0  # kept free: CUDA context, cuBLAS and NCCL workspaces (outside the caching allocator)
)


def model_shape(model: str) -> tuple[ModelShape, bool]:
    """The shape of a preset or of a HF config (folder or config.json), and whether its
    embeddings are tied; a config is read by the same code as training reads it."""
    if model in PRESETS:
        return PRESETS[model], model in TIED
    if not Path(model).exists():
        raise InputNotFoundError(
            f"--model {model}: neither a preset ({', '.join(PRESETS)}) "
            "nor a HF model folder or config.json"
        )
    config = read_model_config(model)
    return ModelShape.of(config), bool(getattr(config, "tie_word_embeddings", False))


def check_run(run: RunShape, mfu: float, batch_tokens: int, tokens: float) -> None:
    """Refuse settings the prediction would divide by, or silently misread."""
    positive = {
        "--seq-len": run.seq_len,
        "--gpus": run.gpus,
        "--context-parallel": run.context_parallel,
        "--loss-chunk": run.loss_chunk,
        "--batch-tokens": batch_tokens,
        "--tokens": tokens,
    }
    for option, value in positive.items():
        if value <= 0:
            raise InvalidInputError(f"{option} {value}: must be positive")
    if run.checkpoint_every < 0:
        raise InvalidInputError(f"--checkpoint-every {run.checkpoint_every}: must be 0 or more")
    if run.gpus % run.context_parallel:
        raise InvalidInputError(
            f"--gpus {run.gpus} is not a multiple of --context-parallel {run.context_parallel}"
        )
    if not 0 < mfu <= 1:
        raise InvalidInputError(f"--mfu {mfu}: must be within 0..1 (e.g. 0.4)")


def usable_memory(gpu: str, gpu_memory: float | None = None) -> float:
    """The card's usable GiB: ``gpu_memory`` when given, else the known figure for ``gpu``."""
    return gpu_memory or USABLE_GIB[gpu]


@dataclass(frozen=True)
class RunShape:
    model: ModelShape
    seq_len: int
    gpus: int = 1
    context_parallel: int = 1
    checkpoint_every: int = 1  # 1: every layer recomputed; 0: none
    loss_chunk: int = 8192
    tied_embeddings: bool = False
    compiled: bool = (
        True  # torch.compile fuses elementwise ops: eager mode keeps ~1.5x more activations
    )

    @property
    def parameters(self) -> int:
        m = self.model
        embeddings = m.vocab * m.hidden * (1 if self.tied_embeddings else 2)
        per_layer = (
            m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads)
            + 3 * m.hidden * m.intermediate
            + 2 * m.hidden
        )
        return m.layers * per_layer + embeddings + m.hidden


def memory_breakdown(run: RunShape) -> dict[str, float]:
    """Predicted peak bytes per GPU, by part (GiB)."""
    m = run.model
    tokens = run.seq_len / run.context_parallel
    sharded = run.gpus > 1
    params = run.parameters
    layer_params = (params - m.vocab * m.hidden * (1 if run.tied_embeddings else 2)) / m.layers
    act_per_token_layer = 2 * (10 * m.hidden + 3 * m.intermediate)
    saved_per_token_layer = act_per_token_layer * (1.0 if run.compiled else 1.5)
    checkpointed = 0 if run.checkpoint_every == 0 else -(-m.layers // run.checkpoint_every)
    parts = {
        "model states (fp32 weights, grads, AdamW)": 16 * params / run.gpus,
        "bf16 compute weights": (2 * 2 * layer_params + 2 * m.vocab * m.hidden)
        if sharded
        else 2 * params,
        "checkpointed layer inputs": checkpointed * tokens * m.hidden * (2 if sharded else 4),
        "activations of layers not checkpointed": (m.layers - checkpointed)
        * tokens
        * saved_per_token_layer,
        "one layer's recompute working set": tokens * act_per_token_layer if checkpointed else 0,
        "loss chunk (logits + grad)": min(run.loss_chunk, tokens) * m.vocab * (2 + 4 + 4),
        "gathered keys/values (context parallel)": (
            2 * 2 * run.seq_len * m.kv_heads * m.head_dim * 2
        )
        if run.context_parallel > 1
        else 0,
    }
    return {k: v / GIB for k, v in parts.items()}


def predict(
    run: RunShape,
    *,
    mfu: float,
    gpu: str = "h100",
    batch_tokens: int = 4 * 2**20,
    tokens: float = 5e9,
) -> dict:
    """Memory, tokens/s and wall-clock time of a run at a given MFU."""
    parts = memory_breakdown(run)
    flops = run.model.train_flops_per_token(run.seq_len)
    per_gpu = mfu * PEAK_TFLOPS[gpu] * 1e12 / flops
    dp = run.gpus // run.context_parallel
    accumulation = max(1, round(batch_tokens / (run.seq_len * dp)))
    total = per_gpu * run.gpus
    return {
        "memory_gib": parts,
        "total_gib": sum(parts.values()) * 1.05,  # allocator fragmentation
        "flops_per_token": flops,
        "tokens_per_s_per_gpu": per_gpu,
        "tokens_per_s": total,
        "accumulation": accumulation,
        "batch_tokens": accumulation * run.seq_len * dp,
        "steps": tokens / (accumulation * run.seq_len * dp),
        "hours": tokens / total / 3600,
    }


def fits(result: dict, gpu_memory: float, margin: float = MARGIN_GIB) -> bool:
    """The predicted total stays within the usable memory less the margin."""
    return result["total_gib"] <= gpu_memory - margin


def format_prediction(
    name: str,
    run: RunShape,
    result: dict,
    gpu: str,
    gpu_memory: float,
    mfu: float,
    margin: float = MARGIN_GIB,
) -> str:
    lines = [
        f"{name}: {run.parameters / 1e9:.2f}B parameters, seq {run.seq_len}, {run.gpus} × {gpu.upper()} "
        f"({gpu_memory:.1f} GiB usable), context parallel {run.context_parallel}, checkpoint every {run.checkpoint_every}"
    ]
    for part, gib in result["memory_gib"].items():
        lines.append(f"  {part:<44}{gib:8.1f} GiB")
    verdict = "fits" if fits(result, gpu_memory, margin) else "DOES NOT FIT"
    lines.append(
        f"  {'total (+5% fragmentation)':<44}{result['total_gib']:8.1f} GiB  -> {verdict} in "
        f"{gpu_memory - margin:.1f} GiB ({gpu_memory:.1f} usable - {margin:.1f} margin for the CUDA context "
        "and workspaces)"
    )
    lines.append(
        f"  at {mfu:.0%} MFU: {result['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU, {result['tokens_per_s']:,.0f} in all; "
        f"batch {result['batch_tokens']:,} tokens ({result['accumulation']} accumulation steps), "
        f"{result['steps']:,.0f} steps, {result['hours']:.1f} h ({result['hours'] / 24:.1f} days)"
    )
    return "\n".join(lines)


def paper_configurations(mfu: float) -> list[tuple[str, RunShape, dict, str, float]]:
    """Fu et al.'s setting, LLaMA-2 7B at 80K on 8 GPUs with 4M-token batches for 5B tokens."""
    run = RunShape(PRESETS["llama2-7b"], 81920, gpus=8)
    out = []
    for gpu in ("a100", "h100"):
        memory = USABLE_GIB[gpu]
        out.append(
            (
                f"LLaMA-2 7B @ 80K, paper setting on 8×{gpu.upper()}",
                run,
                predict(run, mfu=mfu, gpu=gpu, batch_tokens=4 * 2**20, tokens=5e9),
                gpu,
                memory,
            )
        )
    return out
