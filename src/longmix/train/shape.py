"""A model's shape, as far as FLOPs and memory need it (no torch: the planner uses it)."""

from __future__ import annotations

from dataclasses import dataclass


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
