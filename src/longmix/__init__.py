"""longmix: extend a language model's context window by continual pretraining on
per-source length-upsampled data (Fu et al. 2024, arXiv 2402.10171)."""

from .data.store import PackedDataset, PackedSequence

__version__ = "0.1.0"
__all__ = ["PackedDataset", "PackedSequence", "__version__"]
