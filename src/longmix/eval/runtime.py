"""The model side of evaluation (torch): load a checkpoint with its tokenizer, teacher-forced
answer scores, greedy generation (one prompt at a time, or batched with a KV cache and
shared prefixes computed once)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .common import EvalError

T = TypeVar("T")
MIN_PREFIX = 64  # tokens: a shorter shared prefix is not worth its own forward


@dataclass
class EvalModel:
    """A causal LM ready for evaluation, with its tokenizer."""

    model: torch.nn.Module
    tokenizer: object  # tokenizers.Tokenizer
    device: torch.device
    name: str
    train_length: int | None  # the context the model was trained for (max_position_embeddings)
    # decoding steps captured as CUDA graphs and replayed (GPU only): a step of a small model is
    # otherwise bound by its ~1,000 kernel launches and the model's Python, not by the GPU
    cuda_graphs: bool = True

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load_eval_model(
    path: str | Path,
    tokenizer: str | Path | None = None,
    device: str = "auto",
    cuda_graphs: bool = True,
) -> EvalModel:
    """Load a HF checkpoint folder in bf16 (GPU) or fp32 (CPU), with longmix's attention."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..train.attention import register_attention_backends

    path = Path(path)
    if not (path / "config.json").is_file():
        raise EvalError(f"{path} is not a HF model folder (no config.json)")
    tokenizer_file = Path(tokenizer) if tokenizer else path / "tokenizer.json"
    if tokenizer_file.is_dir():
        tokenizer_file = tokenizer_file / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise EvalError(f"no tokenizer.json in {path}: pass --tokenizer")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    register_attention_backends()
    config = AutoConfig.from_pretrained(path)
    config._attn_implementation = "longmix_sdpa"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype).to(device).eval()
    return EvalModel(
        model,
        Tokenizer.from_file(str(tokenizer_file)),
        torch.device(device),
        path.name,
        getattr(config, "max_position_embeddings", None),
        cuda_graphs,
    )


@torch.no_grad()
def answer_scores(em: EvalModel, prompt: list[int], answer: list[int]) -> dict:
    """Teacher forcing: one forward over prompt + answer, no KV cache, no decoding loop.

    ``exact`` is 1 when greedy decoding would produce the answer's tokens (each is the
    argmax given the ones before); ``token_accuracy`` the fraction that are; ``logprob``
    the answer's log-probability.
    """
    return answer_scores_batch(em, [prompt], answer)[0]


@torch.no_grad()
def answer_scores_batch(
    em: EvalModel,
    prompts: list[list[int]],
    answer: list[int],
    batch_tokens: int | None = None,
    min_prefix: int = MIN_PREFIX,
) -> list[dict]:
    """:func:`answer_scores` for many prompts, batched (short prompts alone leave a GPU mostly
    idle) up to ``batch_tokens`` tokens per forward (default from free memory).

    Prompts that share a leading prefix of at least ``min_prefix`` tokens with a neighbour
    (the needle's depths of one length) run it once and only their own tokens after it, when
    their keys and values fit ``batch_tokens`` (without reuse, no cache is kept at all).
    """
    budget = batch_tokens or default_batch_tokens(em)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    prefixes = _PrefixCache(em, budget)
    target = torch.tensor(answer, device=em.device)
    scores: list[dict] = [{} for _ in prompts]
    for batch in _batches(
        prefill_groups(prompts, order, min_prefix),
        prompts,
        len(answer),
        budget,
        cache_optional=True,
    ):
        if not any(g.prefix for g in batch):
            prefixes.clear()
        for group in batch:
            length = len(prompts[group.members[0]])
            if group.prefix:
                layers = (
                    None
                    if len(group.members) == 1
                    else _new_buffers(em, len(group.members), length + len(answer))
                )
                hidden, layers = _prefill(
                    em, [p + answer for p in prompts], group, layers, prefixes, length + len(answer)
                )
                del layers
            else:
                ids = torch.tensor([prompts[i] + answer for i in group.members], device=em.device)
                hidden = em.model.model(input_ids=ids, use_cache=False).last_hidden_state
            positions = (
                torch.arange(length - 1, length + len(answer) - 1, device=em.device) - group.prefix
            )
            logits = em.model.lm_head(hidden[:, positions]).float()  # (batch, answer, vocab)
            expected = target.expand(len(group.members), -1)
            hits = logits.argmax(-1) == expected
            logprob = F.log_softmax(logits, -1).gather(2, expected[..., None]).squeeze(-1).sum(-1)
            for index, h, lp in zip(group.members, hits, logprob):
                scores[index] = {
                    "exact": float(h.all()),
                    "token_accuracy": float(h.float().mean()),
                    "logprob": float(lp),
                }
    prefixes.clear()
    return scores


@torch.no_grad()
def generate(em: EvalModel, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with a KV cache; the new tokens only."""
    ids = torch.tensor([prompt], device=em.device)
    out = em.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
        use_cache=True,
    )
    return out[0, len(prompt) :].tolist()


# ---------------------------------------------------------------------------- batched, cached decoding
#
# Prompts are sorted by length and cut into batches that fit a token budget (the keys and
# values of every prompt plus its answer). Within a batch, prompts of one length are
# prefilled together without padding (the fast causal kernels); their caches are written
# into one buffer, left-padded, that the decoding steps extend in place. Prompts that share
# a long leading prefix with their neighbours (the needle's depths of one length share the
# haystack up to the earliest needle) take that prefix's keys and values from a single
# batch-1 forward, kept from group to group and only extended or cut.

EVAL_ATTENTION = "longmix_eval"


def _eval_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal attention (longmix's, fast kernels); with a boolean (batch, 1, q, k) mask, True = attend,
    the masked kernel for left-padded decoding steps."""
    from ..train.attention import BACKENDS, repeat_kv_heads

    if attention_mask is None:
        return BACKENDS["sdpa"].function(module, query, key, value, None, scaling=scaling)
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if q_len == 1 and heads != kv_heads:
        # A decoding step: the query heads that share a key/value head become that head's
        # query rows, so the masked kernel reads each cached key once. (With enable_gqa the
        # masked path falls back to the math kernel, which copies the whole cache per layer
        # and step: most of a step's time at long contexts.)
        grouped = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
        out = F.scaled_dot_product_attention(
            grouped, key, value, attn_mask=attention_mask, scale=scaling
        )
        return out.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None
    if query.is_cuda:
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            scale=scaling,
            enable_gqa=key.shape[1] != query.shape[1],
        )
    else:
        key, value = repeat_kv_heads(key, value, query.shape[1])
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling
        )
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _register_eval_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(EVAL_ATTENTION, _eval_attention)


@contextlib.contextmanager
def _eval_attention_on(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` with :func:`_eval_attention` (it reads our masks; longmix_sdpa ignores masks)."""
    _register_eval_attention()
    before = model.config._attn_implementation
    model.config._attn_implementation = EVAL_ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = before


class _BufferLayer:
    """One layer's cache as a view into a preallocated buffer: an update writes in place
    (no concatenation, so no copy of the cache per token)."""

    is_sliding = False
    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int = 0):
        self.keys, self.values, self.length = keys, values, length
        self.is_initialized = True
        self.device = keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0


def _buffer_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], length: int):
    from transformers.cache_utils import Cache

    return Cache(layers=[_BufferLayer(k, v, length) for k, v in layers])


def _kv_shape(em: EvalModel) -> tuple[int, int, int, torch.dtype]:
    """Layers, key/value heads, head size and dtype of the model's cache."""
    config = em.model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = next(em.model.parameters()).dtype
    return (
        config.num_hidden_layers,
        getattr(config, "num_key_value_heads", None) or heads,
        head_dim,
        dtype,
    )


def _new_buffers(
    em: EvalModel, rows: int, capacity: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers, kv_heads, head_dim, dtype = _kv_shape(em)
    shape = (rows, kv_heads, capacity, head_dim)
    # zeros, not empty: masked padding still enters the attention as 0 × value, and NaN × 0 is NaN
    return [
        (
            torch.zeros(shape, dtype=dtype, device=em.device),
            torch.zeros(shape, dtype=dtype, device=em.device),
        )
        for _ in range(layers)
    ]


@functools.cache
def _cache_argument(body: type) -> str:
    """The name under which this transformers release's model body takes the cache."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _forward(
    em: EvalModel,
    ids: torch.Tensor,
    positions: torch.Tensor,
    cache,
    mask: torch.Tensor | None = None,
):
    """The model body on ``ids`` at ``positions``, attending to (and extending) ``cache``."""
    body = em.model.model
    cache_arg = _cache_argument(type(body))
    with _eval_attention_on(em.model):
        return body(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            **{cache_arg: cache},
        ).last_hidden_state


def default_batch_tokens(em: EvalModel) -> int:
    """Tokens of cache per batch: on a GPU, what half of the free memory holds (the cache and a
    forward's working set per token); on a CPU, 16K."""
    if em.device.type != "cuda":
        return 16384
    layers, kv_heads, head_dim, dtype = _kv_shape(em)
    size = torch.finfo(dtype).bits // 8
    config = em.model.config
    per_token = 2 * layers * kv_heads * head_dim * size + size * (
        4 * config.hidden_size + 3 * config.intermediate_size
    )
    free, _ = torch.cuda.mem_get_info(em.device)
    return int(min(2**20, max(4096, 0.5 * free / per_token)))


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


@dataclass
class _Group:
    """Prompts of one length prefilled together, after a shared prefix of ``prefix`` tokens (0: none)."""

    members: list[int]
    prefix: int


def prefill_groups(
    prompts: list[list[int]], order: list[int], min_prefix: int = MIN_PREFIX
) -> list[_Group]:
    """Consecutive prompts (in ``order``) of one length, grouped; each prompt reuses the longest
    prefix it shares with a neighbour, and joins its predecessor's group only when neither
    loses reuse by it."""
    n = len(order)
    shared_next = [
        common_prefix_length(prompts[order[i]], prompts[order[i + 1]]) for i in range(n - 1)
    ]

    def reusable(i: int) -> int:
        shared = max(shared_next[i - 1] if i > 0 else 0, shared_next[i] if i < n - 1 else 0)
        shared = min(
            shared, len(prompts[order[i]]) - 1
        )  # the last prompt token is run with the group
        return shared if shared >= min_prefix else 0

    groups: list[_Group] = []
    for i, index in enumerate(order):
        prefix = reusable(i)
        if (
            groups
            and len(prompts[order[i - 1]]) == len(prompts[index])
            and prefix == groups[-1].prefix
            and shared_next[i - 1] >= prefix
        ):
            groups[-1].members.append(index)
        else:
            groups.append(_Group([index], prefix))
    return groups


class _PrefixCache:
    """The keys and values of the last shared prefix (one row), cut or extended for the next one.

    Its buffer has room for a whole prompt and answer, so that a group of one prompt runs in
    it in place (the positions past the prefix are scratch, overwritten by the next use):
    at long lengths a second copy of the cache would not fit.
    """

    def __init__(self, em: EvalModel, batch_tokens: int):
        self.em, self.batch_tokens = em, batch_tokens
        self.tokens: list[int] = []
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.capacity = 0

    def get(self, prefix: list[int], capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Buffers (one row, ``capacity`` positions or more) holding ``prefix``'s keys and values."""
        keep = common_prefix_length(self.tokens, prefix)
        if capacity > self.capacity:
            old = (
                self.buffers if self.capacity + capacity <= self.batch_tokens else []
            )  # both must fit
            self.buffers = []
            keep = keep if old else 0
            buffers = _new_buffers(self.em, 1, capacity)
            for (k, v), (old_k, old_v) in zip(buffers, old):
                k[:, :, :keep], v[:, :, :keep] = old_k[:, :, :keep], old_v[:, :, :keep]
            del old
            self.buffers, self.capacity = buffers, capacity
        if keep < len(prefix):
            ids = torch.tensor([prefix[keep:]], device=self.em.device)
            positions = torch.arange(keep, len(prefix), device=self.em.device)[None]
            _forward(self.em, ids, positions, _buffer_cache(self.buffers, keep))
        self.tokens = list(prefix)
        return self.buffers

    def clear(self) -> None:
        self.tokens, self.buffers, self.capacity = [], [], 0


def _prefill(
    em: EvalModel,
    prompts: list[list[int]],
    group: _Group,
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None,
    prefixes: _PrefixCache,
    capacity: int,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Run ``group``'s prompts into ``layers`` (views of their rows, room for ``capacity``
    positions), or, for one prompt after a shared prefix and no ``layers``, into the prefix's
    own buffer. The hidden states of the positions after the prefix, and the layers used."""
    length, start = len(prompts[group.members[0]]), group.prefix
    if start:
        shared = prefixes.get(prompts[group.members[0]][:start], capacity)
        if layers is None:
            layers = shared
        else:
            for (k, v), (pk, pv) in zip(layers, shared):
                k[:, :, :start], v[:, :, :start] = (
                    pk[:, :, :start],
                    pv[:, :, :start],
                )  # over the group's rows
    elif layers is None:
        layers = _new_buffers(em, len(group.members), capacity)
    ids = torch.tensor([prompts[i][start:] for i in group.members], device=em.device)
    positions = torch.arange(start, length, device=em.device)[None].expand(len(group.members), -1)
    return _forward(em, ids, positions, _buffer_cache(layers, start)), layers


def _batches(
    groups: list[_Group],
    prompts: list[list[int]],
    extra: int,
    batch_tokens: int,
    cache_optional: bool = False,
) -> list[list[_Group]]:
    """Consecutive groups packed up to ``batch_tokens`` cached tokens (prompt + ``extra`` per row, and
    the shared prefix); a group larger than that is split. A prompt too long to sit next to
    its prefix goes alone (it runs in the prefix's buffer). ``cache_optional`` (teacher
    forcing needs no cache): a prompt whose cache would not fit the budget reuses no prefix."""
    out: list[list[_Group]] = []
    used = 0
    for group in groups:
        per_row = len(prompts[group.members[0]]) + extra
        prefix = 0 if cache_optional and per_row > batch_tokens else group.prefix
        rows = max(1, (batch_tokens - prefix) // per_row)
        for start in range(0, len(group.members), rows):
            part = _Group(group.members[start : start + rows], prefix)
            cost = len(part.members) * per_row
            if out and used + cost + part.prefix <= batch_tokens:
                out[-1].append(part)
                used += cost
            else:
                out.append([part])
                used = cost
    return out


def _eos_ids(em: EvalModel) -> set[int]:
    config = getattr(em.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    return set() if eos is None else set(eos if isinstance(eos, (list, tuple)) else [eos])


def stopped(text: str, stop: tuple[str, ...]) -> bool:
    """A stop string occurs in the response after its leading whitespace (base models often
    open an answer with a newline)."""
    text = text.lstrip()
    return any(s in text for s in stop)


class _HostCopy:
    """Tokens copied to the host without waiting for the work queued after them: on a GPU an
    asynchronous copy into pinned memory and an event, so that reading a step's tokens does
    not wait for the next step's forward."""

    def __init__(self, rows: int, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.buffer = torch.empty(rows, dtype=torch.long, pin_memory=True)
            self.event = torch.cuda.Event()

    def start(self, token: torch.Tensor):
        """Begin copying ``token``; the returned function waits for the copy and gives the list."""
        if not self.cuda:
            values = token.tolist()
            return lambda: values
        host = self.buffer[: len(token)]
        host.copy_(token, non_blocking=True)
        self.event.record()

        def result() -> list[int]:
            self.event.synchronize()
            return host.tolist()

        return result


def _stops_now(em: EvalModel, tokens: list[int], stop: tuple[str, ...], tail: int) -> bool:
    """:func:`stopped` for a response that did not stop before its last token: a new stop
    string ends in that token, so it lies within the last ``tail`` tokens; only then is the
    whole response decoded (the leading whitespace rule needs it)."""
    if len(tokens) > tail and not any(s in em.decode(tokens[-tail:]) for s in stop):
        return False
    return stopped(em.decode(tokens), stop)


def truncate_at_stop(
    em: EvalModel, tokens: list[int], stop: tuple[str, ...], eos: set[int] | None = None
) -> list[int]:
    """The tokens up to and including the one at which decoding stops (end of sequence or a stop string)."""
    eos = _eos_ids(em) if eos is None else eos
    for n in range(1, len(tokens) + 1):
        if tokens[n - 1] in eos or (stop and stopped(em.decode(tokens[:n]), stop)):
            return tokens[:n]
    return tokens


def iter_generate_batch(
    em: EvalModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop: tuple[str, ...] = (),
    batch_tokens: int | None = None,
    min_prefix: int = MIN_PREFIX,
) -> Iterator[list[tuple[int, list[int]]]]:
    """:func:`generate_batch` batch by batch: (prompt index, new tokens) of each finished batch."""
    if any(not p for p in prompts):
        raise EvalError("an empty prompt cannot be continued")
    if max_new_tokens <= 0:
        yield [(i, []) for i in range(len(prompts))]
        return
    budget = batch_tokens or default_batch_tokens(em)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    prefixes = _PrefixCache(em, budget)
    eos = _eos_ids(em)
    with torch.no_grad():
        for batch in _batches(
            prefill_groups(prompts, order, min_prefix), prompts, max_new_tokens, budget
        ):
            if not any(g.prefix for g in batch):
                prefixes.clear()
            yield _decode(em, prompts, batch, max_new_tokens, stop, eos, prefixes)
    prefixes.clear()


class _StepLayer:
    """One layer's cache for a decoding step whose inputs all live on the device: the step's
    keys and values are written at the column held in ``column`` (a replayed graph reads it
    anew) and attention sees the whole buffer, the columns not yet written masked out."""

    is_sliding = False
    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, column: torch.Tensor):
        self.keys, self.values, self.column = keys, values, column
        self.is_initialized = True
        self.device = keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys.index_copy_(2, self.column, key_states)
        self.values.index_copy_(2, self.column, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.keys.shape[2]  # unused: the positions and the mask are given

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0


class _DecodeStep:
    """One greedy step for every row of a batch's buffers, its state in device tensors (each
    row's last token, the buffer column to write, the rows' left padding), so that on a GPU it
    is captured once as a CUDA graph and each further step is one replay.

    Each call advances the state: ``token`` holds the rows' next tokens afterwards. The first
    call on a GPU runs eagerly (the warm-up a capture needs) and captures the graph; a capture
    that fails leaves the step eager and is not tried again in this process.
    """

    failed_capture = False

    def __init__(
        self,
        em: EvalModel,
        buffers: list[tuple[torch.Tensor, torch.Tensor]],
        pads: torch.Tensor,
        token: torch.Tensor,
        filled: int,
    ):
        from transformers.cache_utils import Cache

        self.em, self.pads = em, pads
        self.token = token.clone()
        self.column = torch.tensor([filled], device=em.device)
        self.columns = torch.arange(buffers[0][0].shape[2], device=em.device)
        self.cache = Cache(layers=[_StepLayer(k, v, self.column) for k, v in buffers])
        self.capture = (
            em.cuda_graphs and em.device.type == "cuda" and not _DecodeStep.failed_capture
        )
        self.graph = None

    def _step(self) -> None:
        column = self.column
        positions = (column - self.pads)[:, None]
        attend = (self.columns >= self.pads[:, None]) & (self.columns <= column)
        hidden = _forward(
            self.em, self.token[:, None], positions, self.cache, attend[:, None, None]
        )
        self.token.copy_(self.em.model.lm_head(hidden[:, -1]).argmax(-1))
        self.column.add_(1)

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if not self.capture:
            self._step()
            return
        self.capture = False
        side = torch.cuda.Stream(self.em.device)
        side.wait_stream(torch.cuda.current_stream(self.em.device))
        with torch.cuda.stream(side):
            self._step()  # this call's step, and the capture's warm-up
        torch.cuda.current_stream(self.em.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()  # recorded, not run
        except Exception as error:  # eager decoding gives the same tokens, only slower
            _DecodeStep.failed_capture = True
            warnings.warn(f"decoding without CUDA graphs: capture failed ({error})", stacklevel=2)
            return
        self.graph = graph


def _decode(
    em: EvalModel,
    prompts: list[list[int]],
    batch: list[_Group],
    max_new_tokens: int,
    stop: tuple[str, ...],
    eos: set[int],
    prefixes: _PrefixCache,
) -> list[tuple[int, list[int]]]:
    """Greedy decoding of one batch: prefill its groups into one left-padded buffer, then one
    token per step for every unfinished row (:class:`_DecodeStep`); once a quarter of the rows
    have finished they are dropped from the buffer (a copy of the cache, and a new step)."""
    members = [i for g in batch for i in g.members]
    longest = max(len(prompts[i]) for i in members)
    capacity = longest + max_new_tokens
    if len(members) == 1 and batch[0].prefix:  # one prompt: decode in the prefix's buffer
        hidden, buffers = _prefill(em, prompts, batch[0], None, prefixes, capacity)
        buffers = [(k[:, :, :capacity], v[:, :, :capacity]) for k, v in buffers]
        first = [em.model.lm_head(hidden[:, -1]).argmax(-1)]
    else:
        buffers = _new_buffers(em, len(members), capacity)
        first, row = [], 0
        for group in batch:
            rows, pad = (
                slice(row, row + len(group.members)),
                longest - len(prompts[group.members[0]]),
            )
            views = [(k[rows, :, pad:], v[rows, :, pad:]) for k, v in buffers]
            hidden, _ = _prefill(
                em, prompts, group, views, prefixes, len(prompts[group.members[0]]) + max_new_tokens
            )
            first.append(em.model.lm_head(hidden[:, -1]).argmax(-1))
            row += len(group.members)
    pads = torch.tensor([longest - len(prompts[i]) for i in members], device=em.device)
    step = _DecodeStep(em, buffers, pads, torch.cat(first), longest)
    outputs: dict[int, list[int]] = {i: [] for i in members}
    alive = list(members)  # prompt index of each buffer row
    finished: set[int] = set()
    tail = max((len(s) for s in stop), default=0) + 8  # tokens that can hold a new stop string
    to_host = _HostCopy(len(members), em.device)
    for n in range(max_new_tokens):
        last = n == max_new_tokens - 1
        copied = to_host.start(step.token)
        if not last:  # the next step runs on the GPU while this one's tokens are checked here
            step()
        for index, t in zip(alive, copied()):
            if index in finished:
                continue
            outputs[index].append(t)
            if t in eos or (stop and _stops_now(em, outputs[index], stop, tail)):
                finished.add(index)
        if len(finished) == len(members) or last:
            break
        done = sum(i in finished for i in alive)
        if done and 4 * done >= len(alive):
            keep = torch.tensor(
                [r for r, i in enumerate(alive) if i not in finished], device=em.device
            )
            buffers = [(k[keep], v[keep]) for k, v in buffers]
            step = _DecodeStep(em, buffers, pads[keep], step.token[keep], longest + n + 1)
            pads = pads[keep]
            alive = [i for i in alive if i not in finished]
    return [(i, outputs[i]) for i in members]


def in_order(batches: Iterable[list[tuple[int, T]]]) -> Iterator[T]:
    """Items of batches that finish out of order (index, item), each yielded in index order
    as soon as it and the ones before it are done: results files keep their order."""
    ready: dict[int, T] = {}
    written = 0
    for batch in batches:
        ready.update(batch)
        while written in ready:
            yield ready.pop(written)
            written += 1


def timed(batches: Iterable[list]) -> Iterator[tuple[list, float]]:
    """Each batch with the seconds its making took per item."""
    started = time.perf_counter()
    for batch in batches:
        yield batch, (time.perf_counter() - started) / max(1, len(batch))
        started = time.perf_counter()


def generate_batch(
    em: EvalModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop: tuple[str, ...] = (),
    batch_tokens: int | None = None,
    min_prefix: int = MIN_PREFIX,
) -> list[list[int]]:
    """Greedy decoding of many prompts with a KV cache: the new tokens of each, in order.

    The same tokens as :func:`generate` one prompt at a time, cut at the first stop (the end
    of sequence, or a ``stop`` string in the response after its leading whitespace).
    ``batch_tokens``: cached tokens per batch (prompts + answers; default from free memory);
    shared prefixes of at least ``min_prefix`` tokens are computed once.
    """
    out: list[list[int]] = [[] for _ in prompts]
    for batch in iter_generate_batch(em, prompts, max_new_tokens, stop, batch_tokens, min_prefix):
        for index, tokens in batch:
            out[index] = tokens
    return out
