"""Continual pretraining: config (every knob) -> model (HF loading, RoPE, loss) with attention
(backends) -> distributed (FSDP2, context parallel) -> loop (read top to bottom) -> checkpoint.
plan predicts memory and time. Only ``config`` and ``plan`` import without torch.
"""

from __future__ import annotations

from typing import Any


def __getattr__(
    name: str,
) -> Any:  # `from longmix.train import train` without importing torch eagerly
    if name in ("train", "TrainConfig"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)
