"""A model's shape, as far as FLOPs and memory need it (no torch: the planner uses it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputNotFoundError, InvalidInputError


def read_model_config(source: str | Path):
    """The HF config of a model folder or a config.json file, for training and for `plan` alike.

    Every way it can be unusable (missing, unreadable, not JSON, no ``model_type``) is one
    line naming the file, instead of transformers' traceback (or a Hub download attempt).
    """
    from ..errors import require_extra

    require_extra("transformers", "train", "reading a model's config.json")
    from transformers import AutoConfig

    path = Path(source)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise InputNotFoundError(
            f"{file} not found: give a HF model folder (with config.json) or a config.json file"
        )
    try:
        data = json.loads(file.read_text())
    except OSError as err:
        raise InvalidInputError(f"cannot read {file}: {err.strerror or err}") from err
    except ValueError as err:  # also bad UTF-8
        raise InvalidInputError(
            f"{file} is not valid JSON ({err}): restore or recreate it"
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise InvalidInputError(
            f"{file} has no model_type: not a HF model config (e.g. save one with "
            "transformers' LlamaConfig(...).save_pretrained(DIR))"
        )
    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InvalidInputError(f"{file}: not a usable model config: {err}") from err


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, hf_config) -> ModelShape:
        try:
            heads = hf_config.num_attention_heads
            return cls(
                layers=hf_config.num_hidden_layers,
                hidden=hf_config.hidden_size,
                heads=heads,
                kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
                head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
                intermediate=hf_config.intermediate_size,
                vocab=hf_config.vocab_size,
            )
        except AttributeError as err:  # e.g. a config of another architecture
            raise InvalidInputError(f"the model config lacks a size field: {err}") from err

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in matrix products per token, the LM head included."""
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp) + self.vocab * self.hidden

    def train_flops_per_token(self, effective_seq: float) -> float:
        """``6·N_mm + 6·L·d_attn·s_eff``: causal attention counted once (not PaLM's 12·L·d·s).

        ``s_eff`` is the sequence length for plain causal packing, ``Σ ℓᵢ² / s`` with
        document masking. Recomputation by activation checkpointing is not counted.
        """
        return 6 * self.matmul_params + 6 * self.layers * self.heads * self.head_dim * effective_seq
