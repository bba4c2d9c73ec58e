"""The settings of `longmix train`, in one object (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from ..units import parse_count, parse_length


class TrainError(Exception):
    """Settings or inputs that cannot work; raised before any GPU work starts."""


@dataclass
class TrainConfig:
    """Every knob of `longmix train`. Saved, resolved, as ``config.yaml`` in the run folder."""

    data: str = ""  # a folder written by `longmix prepare`
    out: str = ""  # the run folder: config.yaml, log.jsonl, checkpoints/, model/, loss.png
    model: str | None = None  # a local HF checkpoint folder (LLaMA family)
    init_config: str | None = None  # or a config.json: random weights (tests, benchmarks)
    seq_len: int = 32768  # training length; at most the prepared sequence length
    rope_theta: float | None = None  # new RoPE base (the paper's method); None keeps the model's
    rope_scaling: str | None = None  # linear | dynamic | yarn (dynamic is frozen at seq_len)
    rope_factor: float = 1.0  # factor of the scaling above
    lr: float = 2e-5  # the paper's constant learning rate
    schedule: str = "constant"  # constant | cosine (to min_lr_ratio·lr), after warmup
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    batch_tokens: int = 4 * 2**20  # tokens per optimizer step (the paper: 4M), by gradient accumulation
    micro_batch: int = 1  # sequences per forward pass on one rank
    tokens: int = 0  # training budget in tokens (steps = tokens / batch_tokens) ...
    steps: int = 0  # ... or a number of optimizer steps
    doc_mask: bool = False  # attention stays within documents (boundaries from the prepared data)
    attention: str = "auto"  # sdpa | varlen | flex | loop; auto: sdpa, or varlen (GPU) / loop (CPU) with doc_mask
    activation_checkpointing: int = 1  # recompute every N-th decoder layer in backward (1: all, 0: none)
    compile: bool = True  # torch.compile each decoder layer (GPU only; +20-45% speed, ~1 min start-up)
    loss_chunk: int = 8192  # tokens per chunk of the LM head + cross-entropy
    context_parallel: int = 1  # ranks that share one sequence (torchrun)
    seed: int = 0
    save_every: int = 0  # steps between checkpoints (0: only at the end and on SIGTERM)
    keep_checkpoints: int = 2
    resume: bool = False  # continue from the latest checkpoint in `out`
    save_dtype: str = "bfloat16"  # dtype of the final HF model
    tensorboard: bool = False
    device: str = "auto"
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"{path}: unknown settings {', '.join(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**normalize_counts(data))


def normalize_counts(data: dict) -> dict:
    """Accept `32K`, `4M`, `500M` style strings for the count settings."""
    for key in ("seq_len", "loss_chunk"):
        if isinstance(data.get(key), str):
            data[key] = parse_length(data[key])
    for key in ("batch_tokens", "tokens"):
        if isinstance(data.get(key), str):
            data[key] = parse_count(data[key], binary=key == "batch_tokens")
    return data
