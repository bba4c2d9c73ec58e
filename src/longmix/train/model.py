"""The model side of training: load a HF LLaMA-family model, set RoPE for the longer
context, document-masked attention, and a chunked LM head + cross-entropy.

Nothing here knows about the training loop or about distribution.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import LongmixError
from .attention import register_attention_backends
from .shape import read_model_config

ROPE_SCALINGS = ("linear", "dynamic", "yarn")


class ModelError(LongmixError):
    """A model that cannot be loaded or configured as asked."""


# ---------------------------------------------------------------------------- RoPE


def rope_settings(hf_config) -> dict:
    """The RoPE parameters of a config, for transformers 5 (``rope_parameters``) and 4."""
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict):
        return dict(params)
    out = {"rope_type": "default", "rope_theta": getattr(hf_config, "rope_theta", 10000.0)}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    out.update({("rope_type" if k == "type" else k): v for k, v in scaling.items()})
    return out


def _set_rope(hf_config, params: dict) -> None:
    if isinstance(getattr(hf_config, "rope_parameters", None), dict):
        hf_config.rope_parameters = params
        return
    hf_config.rope_theta = params["rope_theta"]
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    hf_config.rope_scaling = None if scaling.get("rope_type") == "default" else scaling


def dynamic_ntk_theta(
    theta: float, factor: float, seq_len: int, original_max: int, head_dim: int
) -> float:
    """The fixed base that HF's dynamic-NTK scaling uses at ``seq_len`` (transformers' formula)."""
    seq_len = max(seq_len, original_max)
    return theta * ((factor * seq_len / original_max) - (factor - 1)) ** (head_dim / (head_dim - 2))


def apply_rope(
    hf_config, *, theta: float | None, scaling: str | None, factor: float, seq_len: int
) -> dict:
    """Set RoPE for training at ``seq_len``; the config then loads identically in any HF version.

    ``theta`` changes the base (the paper's choice, "ABF"). ``scaling`` adds HF's linear or
    YaRN interpolation by ``factor``. Dynamic NTK is *frozen* into an equivalent fixed
    base at the training length: HF's dynamic scaling would otherwise switch back to the
    original base on short inputs, which is how the paper's released checkpoints broke on
    short prompts.
    """
    params = rope_settings(hf_config)
    original_max = int(getattr(hf_config, "max_position_embeddings", seq_len))
    if theta is not None:
        params["rope_theta"] = float(theta)
    if scaling is None:
        pass
    elif scaling == "dynamic":
        head_dim = (
            getattr(hf_config, "head_dim", None)
            or hf_config.hidden_size // hf_config.num_attention_heads
        )
        params = {
            "rope_type": "default",
            "rope_theta": dynamic_ntk_theta(
                params["rope_theta"], factor, seq_len, original_max, head_dim
            ),
        }
    elif scaling in ("linear", "yarn"):
        params = {"rope_type": scaling, "rope_theta": params["rope_theta"], "factor": float(factor)}
        if scaling == "yarn":
            params["original_max_position_embeddings"] = original_max
    else:
        raise ModelError(
            f"unknown RoPE scaling {scaling!r}: choose one of {', '.join(ROPE_SCALINGS)}"
        )
    _set_rope(hf_config, params)
    hf_config.max_position_embeddings = max(original_max, seq_len)
    return params


# ---------------------------------------------------------------------------- loading


def load_model(
    path: str | None,
    init_config,
    *,
    attention: str,
    seq_len: int,
    rope_theta: float | None,
    rope_scaling: str | None,
    rope_factor: float,
    checkpointing: int | bool,
    seed: int,
    compile_layers: bool = False,
) -> nn.Module:
    """A HF causal LM in fp32 (the master weights), RoPE set, attention backend chosen.

    ``init_config`` is a config.json path (or a config object) for random weights;
    ``checkpointing`` recomputes every N-th decoder layer in the backward pass (0: none).
    """
    if (path is None) == (init_config is None):
        raise ModelError(
            "give exactly one of --model (a HF checkpoint folder) or --init-config (a config.json)"
        )
    options = dict(
        attention=attention,
        seq_len=seq_len,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rope_factor=rope_factor,
        checkpointing=checkpointing,
        seed=seed,
        compile_layers=compile_layers,
    )
    if path is None and not isinstance(init_config, (str, Path)):
        return build_model(init_config, None, **options)
    source = Path(path or init_config)
    if not source.exists():
        raise ModelError(f"model path does not exist: {source}")
    if path is not None and not any(
        (source / name).exists()
        for name in (
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        )
    ):
        raise ModelError(
            f"{source} holds no model weights (model.safetensors or pytorch_model.bin)"
        )
    config = read_model_config(source)  # a folder or a config.json file
    return build_model(config, source if path is not None else None, **options)


def build_model(
    config,
    weights: Path | None,
    *,
    attention: str,
    seq_len: int,
    rope_theta: float | None,
    rope_scaling: str | None,
    rope_factor: float,
    checkpointing: int | bool,
    seed: int,
    compile_layers: bool = False,
) -> nn.Module:
    """The model of ``config`` (weights from ``weights``, else random), ready to train."""
    from transformers import AutoModelForCausalLM

    if getattr(config, "model_type", None) not in ("llama", "mistral", "qwen2", "qwen3"):
        raise ModelError(
            f"model type {config.model_type!r} is not of the LLaMA family (llama, mistral, qwen2, qwen3)"
        )
    apply_rope(config, theta=rope_theta, scaling=rope_scaling, factor=rope_factor, seq_len=seq_len)
    register_attention_backends()
    config._attn_implementation = f"longmix_{attention}"
    torch.manual_seed(seed)
    if weights is not None:
        model = AutoModelForCausalLM.from_pretrained(weights, config=config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config._attn_implementation = config._attn_implementation
    prepare_layers(model, checkpoint_every=int(checkpointing), compile_layers=compile_layers)
    model.config.use_cache = False
    return model


def prepare_layers(model: nn.Module, checkpoint_every: int, compile_layers: bool) -> None:
    """Compile each decoder layer (optional) and checkpoint every N-th one.

    Recomputing every layer costs about a third more compute; at lengths where memory
    allows, checkpointing only some layers buys speed. The wrapper keeps state-dict keys
    unchanged, so saving and FSDP2 are unaffected.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )

    layers = model.model.layers
    for i, layer in enumerate(layers):
        if compile_layers:
            layer.compile()
        if checkpoint_every and i % checkpoint_every == 0:
            layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


# ---------------------------------------------------------------------------- loss


def _chunk_loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Sum of next-token cross-entropy over ``(tokens, d)`` hidden states, ``chunk`` rows at a time.

    Each chunk's logits are recomputed in the backward pass (activation checkpointing),
    so at most one ``chunk × vocab`` block exists at a time instead of ``seq × vocab``.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        piece = slice(start, start + chunk)
        if hidden.requires_grad:
            total = total + checkpoint(
                _chunk_loss_sum, hidden[piece], weight, labels[piece], use_reentrant=False
            )
        else:
            total = total + _chunk_loss_sum(hidden[piece], weight, labels[piece])
    return total


class CausalLMLoss(nn.Module):
    """Wraps a HF causal LM: forward returns the summed loss without full logits.

    Being the root module matters under FSDP2: the embedding and LM-head parameters are
    gathered by this module's hooks, around both the model body and the chunked loss.
    """

    def __init__(self, model: nn.Module, loss_chunk: int):
        super().__init__()
        self.model = model
        self.loss_chunk = loss_chunk

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        **attention_kwargs,
    ) -> torch.Tensor:
        hidden = self.model.model(
            input_ids=input_ids, position_ids=position_ids, use_cache=False, **attention_kwargs
        )
        return chunked_cross_entropy(
            hidden.last_hidden_state, self.model.lm_head.weight, labels, self.loss_chunk
        )


# ---------------------------------------------------------------------------- FLOPs


H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM (the card's datasheet)


def peak_flops(device: torch.device) -> float:
    """Datasheet dense bf16 peak of the card, for MFU (H100/H200: 989 TFLOP/s)."""
    if device.type != "cuda":
        return math.nan
    name = torch.cuda.get_device_name(device)
    if "H100" in name or "H200" in name:
        return H100_BF16_PEAK
    if "A100" in name:
        return 312e12
    return math.nan
