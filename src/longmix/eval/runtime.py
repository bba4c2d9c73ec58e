"""The model side of evaluation (torch): load a checkpoint with its tokenizer, teacher-forced
answer scores, greedy generation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import EvalError


@dataclass
class EvalModel:
    """A causal LM ready for evaluation, with its tokenizer."""

    model: torch.nn.Module
    tokenizer: object  # tokenizers.Tokenizer
    device: torch.device
    name: str
    train_length: int | None  # the context the model was trained for (max_position_embeddings)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load_eval_model(path: str | Path, tokenizer: str | Path | None = None, device: str = "auto") -> EvalModel:
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
    return EvalModel(model, Tokenizer.from_file(str(tokenizer_file)), torch.device(device), path.name,
                     getattr(config, "max_position_embeddings", None))


@torch.no_grad()
def answer_scores(em: EvalModel, prompt: list[int], answer: list[int]) -> dict:
    """Teacher forcing: one forward over prompt + answer, no KV cache, no decoding loop.

    ``exact`` is 1 when greedy decoding would produce the answer's tokens (each is the
    argmax given the ones before); ``token_accuracy`` the fraction that are; ``logprob``
    the answer's log-probability.
    """
    return answer_scores_batch(em, [prompt], answer)[0]


@torch.no_grad()
def answer_scores_batch(em: EvalModel, prompts: list[list[int]], answer: list[int]) -> list[dict]:
    """:func:`answer_scores` for several prompts of one length in a single batched forward
    (short prompts alone leave a GPU mostly idle)."""
    length = len(prompts[0])
    if any(len(p) != length for p in prompts):
        raise EvalError("a batch of prompts must have one length")
    ids = torch.tensor([p + answer for p in prompts], device=em.device)
    hidden = em.model.model(input_ids=ids, use_cache=False).last_hidden_state
    positions = torch.arange(length - 1, length + len(answer) - 1, device=em.device)
    logits = em.model.lm_head(hidden[:, positions]).float()  # (batch, answer, vocab)
    target = torch.tensor(answer, device=em.device).expand(len(prompts), -1)
    hits = logits.argmax(-1) == target
    logprob = F.log_softmax(logits, -1).gather(2, target[..., None]).squeeze(-1).sum(-1)
    return [{"exact": float(h.all()), "token_accuracy": float(h.float().mean()), "logprob": float(lp)}
            for h, lp in zip(hits, logprob)]


@torch.no_grad()
def generate(em: EvalModel, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with a KV cache; the new tokens only."""
    ids = torch.tensor([prompt], device=em.device)
    out = em.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=0, use_cache=True)
    return out[0, len(prompt):].tolist()
