"""Attention backends, each declared once in :data:`BACKENDS` with its name, function, whether
it keeps attention within documents, and the devices it runs on.

transformers calls them as ``longmix_<name>`` (:func:`register_attention_backends`); the
trainer's ``--attention`` choices, its checks and the docs all read the registry. To add a
backend, write one function here and decorate it with :func:`backend`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import LongmixError
from .distributed import _gather_sequence, cp_chunks


class AttentionError(LongmixError):
    """An attention call without what its backend needs (e.g. document boundaries)."""


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    function: Callable
    doc_mask: bool  # attention stays within documents (needs cu_seq_lens_q)
    devices: tuple[str, ...]  # device types it runs on
    selectable: bool  # offered as --attention (the context-parallel one is chosen by the trainer)
    doc: str


BACKENDS: dict[str, AttentionBackend] = {}


def backend(
    name: str,
    *,
    doc_mask: bool,
    doc: str,
    devices: tuple[str, ...] = ("cuda", "cpu"),
    selectable: bool = True,
) -> Callable[[Callable], Callable]:
    """Declare an attention function as backend ``name``."""

    def register(function: Callable) -> Callable:
        BACKENDS[name] = AttentionBackend(name, function, doc_mask, devices, selectable, doc)
        return function

    return register


def _doc_lengths(kwargs: dict) -> tuple[torch.Tensor, int]:
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        raise AttentionError(
            "document-masked attention needs cu_seq_lens_q (document boundaries) in the forward call"
        )
    return cu, int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))


def repeat_kv_heads(
    key: torch.Tensor, value: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention for kernels without it: repeat each KV head (dim 1) up to ``heads``."""
    groups = heads // key.shape[1]
    if groups == 1:
        return key, value
    return key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Attention kernels run in bf16: custom ops do not follow autocast by themselves."""
    if tensor.dtype == torch.float32 and tensor.is_cuda:
        return (
            torch.get_autocast_dtype("cuda")
            if torch.is_autocast_enabled("cuda")
            else torch.bfloat16
        )
    return tensor.dtype


@backend(
    "sdpa",
    doc_mask=False,
    doc="plain causal attention over the packed sequence, cuDNN first on the GPU (the paper's setting)",
)
def _causal_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs
):
    """Plain causal attention over the packed sequence, cuDNN first on the GPU.

    cuDNN is the fastest causal kernel on Hopper (about 1.8x FlashAttention-2 in
    benchmarks/) and handles grouped-query attention itself (``enable_gqa``). With a KV
    cache (evaluation) the queries are the last positions: the causal diagonal is then
    aligned bottom-right.
    """
    q_len, k_len = query.shape[2], key.shape[2]
    mask = {"is_causal": True} if q_len == k_len else {}
    if 1 < q_len < k_len:
        from torch.nn.attention.bias import causal_lower_right

        mask = {"attn_mask": causal_lower_right(q_len, k_len)}
    gqa = key.shape[1] != query.shape[1]
    if not query.is_cuda:
        key, value = repeat_kv_heads(key, value, query.shape[1])
        out = F.scaled_dot_product_attention(query, key, value, scale=scaling, **mask)
        return out.transpose(1, 2).contiguous(), None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    with sdpa_kernel(order, set_priority=True):
        out = F.scaled_dot_product_attention(
            query, key, value, scale=scaling, enable_gqa=gqa, **mask
        )
    return out.transpose(1, 2).contiguous(), None


@backend(
    "loop",
    doc_mask=True,
    doc="within documents: causal SDPA on each document in turn (reference; any device)",
)
def _loop_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Reference document masking: causal SDPA on each document separately (any device)."""
    cu, _ = _doc_lengths(kwargs)
    outputs = []
    key, value = repeat_kv_heads(key, value, query.shape[1])
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        k, v = key[:, :, a:b], value[:, :, a:b]
        outputs.append(
            F.scaled_dot_product_attention(query[:, :, a:b], k, v, is_causal=True, scale=scaling)
        )
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


_VARLEN_HAS_GQA: bool | None = None


@backend(
    "varlen",
    doc_mask=True,
    devices=("cuda",),
    doc="within documents: FlashAttention-2 varlen kernels (GPU)",
)
def _varlen_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs
):
    """FlashAttention-2 varlen kernels (torch.nn.attention.varlen), causal within documents."""
    global _VARLEN_HAS_GQA
    from torch.nn.attention.varlen import varlen_attn

    if _VARLEN_HAS_GQA is None:
        _VARLEN_HAS_GQA = "enable_gqa" in inspect.signature(varlen_attn).parameters
    cu, max_len = _doc_lengths(kwargs)
    batch, heads, seq, dim = query.shape
    q = query.transpose(1, 2).reshape(batch * seq, heads, dim)
    k = key.transpose(1, 2).reshape(batch * seq, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * seq, key.shape[1], dim)
    extra = {}
    if key.shape[1] != heads:
        if _VARLEN_HAS_GQA:
            extra["enable_gqa"] = True
        else:  # torch 2.11 has no GQA in varlen: repeat the KV heads
            k, v = repeat_kv_heads(k, v, heads)
    cu = cu.to(device=q.device, dtype=torch.int32)
    dtype = _compute_dtype(q)
    out = varlen_attn(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        cu,
        cu,
        max_len,
        max_len,
        scale=scaling,
        window_size=(-1, 0),
        **extra,
    )
    return out.reshape(batch, seq, heads, dim).to(query.dtype), None


_FLEX_COMPILED = None


@backend(
    "flex",
    doc_mask=True,
    doc="within documents: flex_attention with a document block mask (compiled on GPU)",
)
def _flex_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """flex_attention with a document BlockMask (compiled on GPU, eager elsewhere)."""
    global _FLEX_COMPILED
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = kwargs.get("flex_block_mask")
    if block_mask is None:
        block_mask = document_block_mask(_doc_lengths(kwargs)[0], query.shape[2], query.device)
    fn = flex_attention
    if query.is_cuda:
        if _FLEX_COMPILED is None:
            _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
        fn = _FLEX_COMPILED
    dtype = _compute_dtype(query)
    out = fn(
        query.to(dtype),
        key.to(dtype),
        value.to(dtype),
        block_mask=block_mask,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous().to(query.dtype), None


def document_block_mask(cu_seqlens: torch.Tensor, length: int, device: torch.device):
    """A flex BlockMask: causal, and only within the document of each position."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc = torch.zeros(length, dtype=torch.int32, device=device)
    doc[cu_seqlens[1:-1].to(device=device, dtype=torch.long)] = 1
    doc = doc.cumsum(0)

    def mask(b, h, q, kv):
        return (q >= kv) & (doc[q] == doc[kv])

    return create_block_mask(mask, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device)


@backend(
    "cp",
    doc_mask=False,
    devices=("cuda",),
    selectable=False,
    doc="causal attention of one context-parallel rank's queries against the gathered sequence",
)
def context_parallel_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs
):
    """Causal attention of this rank's queries against the whole sequence's keys/values.

    Keys and values are all-gathered inside the CP group (cheap with grouped-query
    attention); each of the two local query chunks attends to the prefix that ends with
    it, with the causal diagonal aligned bottom-right.
    """
    from torch.nn.attention.bias import causal_lower_right

    cp, cp_rank, group = kwargs["cp_size"], kwargs["cp_rank"], kwargs["cp_group"]
    full_key = _gather_sequence(key, cp, group)
    full_value = _gather_sequence(value, cp, group)
    length = full_key.shape[2]
    full_key, full_value = repeat_kv_heads(full_key, full_value, query.shape[1])
    outputs = []
    half = query.shape[2] // 2
    for i, (start, end) in enumerate(cp_chunks(length, cp, cp_rank)):
        q = query[:, :, i * half : (i + 1) * half]
        k, v = full_key[:, :, :end], full_value[:, :, :end]
        mask = causal_lower_right(end - start, end)
        outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register_attention_backends() -> None:
    """Make every backend known to transformers as ``longmix_<name>``.

    They are not given a mask function, so transformers builds no (dense) mask for them:
    the document boundaries travel as ``cu_seq_lens_q`` keyword arguments.
    """
    from transformers import AttentionInterface

    for item in BACKENDS.values():
        AttentionInterface.register(f"longmix_{item.name}", item.function)
