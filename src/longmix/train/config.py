"""The settings of `longmix train`, in one object (importable without torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import LongmixError
from ..settings import SettingsError, from_mapping, read_yaml_mapping, setting
from .reporting import missing_extra, parse_report_to


class TrainError(LongmixError):
    """Settings or inputs that cannot work; raised before any GPU work starts."""


def _attention_choices() -> tuple[str, ...]:
    from .attention import BACKENDS  # torch: read only when a value is checked

    return ("auto", *(name for name, b in BACKENDS.items() if b.selectable))


def _every_nth(value: str | int | bool) -> int:
    """Checkpointing as N (every N-th layer) or, as it used to be, true (all) / false (none)."""
    text = str(value).strip().lower()
    return {"true": 1, "false": 0}[text] if text in ("true", "false") else int(text)


@dataclass
class TrainConfig:
    """Every knob of `longmix train`. Saved, resolved, as ``config.yaml`` in the run folder."""

    data: str = setting("", help="a folder written by `longmix prepare`")
    out: str = setting(
        "", help="the run folder: config.yaml, log.jsonl, checkpoints/, model/, loss.png"
    )
    model: str | None = setting(None, help="a local HF checkpoint folder (LLaMA family)")
    init_config: str | None = setting(
        None, help="or a config.json: random weights (tests, benchmarks)"
    )
    seq_len: int = setting(
        32768, unit="length", help="training length; at most the prepared sequence length"
    )
    rope_theta: float | None = setting(
        None, help="new RoPE base (the paper's method); None keeps the model's"
    )
    rope_scaling: str | None = setting(
        None,
        choices=("linear", "dynamic", "yarn"),
        help="none | linear | dynamic | yarn (dynamic is frozen at seq_len)",
    )
    rope_factor: float = setting(1.0, help="factor of the scaling above")
    lr: float = setting(2e-5, help="the paper's constant learning rate")
    schedule: str = setting(
        "constant",
        choices=("constant", "cosine"),
        help="constant | cosine (to min_lr_ratio·lr), after warmup",
    )
    warmup_steps: int = setting(0, help="optimizer steps of linear warm-up")
    min_lr_ratio: float = setting(0.1, help="cosine: the final LR as a share of --lr")
    weight_decay: float = setting(0.0, help="AdamW weight decay")
    beta1: float = setting(0.9, help="AdamW beta1")
    beta2: float = setting(0.95, help="AdamW beta2")
    grad_clip: float = setting(1.0, help="max global gradient norm; 0 turns clipping off")
    batch_tokens: int = setting(
        4 * 2**20,
        unit="binary_count",
        help="tokens per optimizer step (the paper: 4M), by gradient accumulation",
    )
    micro_batch: int = setting(1, help="sequences per forward pass on one rank")
    tokens: int = setting(
        0, unit="count", help="training budget in tokens (steps = tokens / batch_tokens) ..."
    )
    steps: int = setting(0, help="... or a number of optimizer steps")
    doc_mask: bool = setting(
        False, help="attention stays within documents (boundaries from the prepared data)"
    )
    attention: str = setting(
        "auto",
        choices=_attention_choices,
        help="auto (sdpa; with --doc-mask varlen on GPU, loop on CPU) or a backend of "
        "longmix.train.attention (sdpa, varlen, flex, loop)",
    )
    activation_checkpointing: int = setting(
        1,
        parse=_every_nth,
        parse_any=True,
        help="recompute every N-th decoder layer in backward (1: all, 0: none)",
    )
    compile: bool = setting(
        True, help="torch.compile each decoder layer (GPU only; +20-45% speed, ~1 min start-up)"
    )
    loss_chunk: int = setting(
        8192, unit="length", help="tokens per chunk of the LM head + cross-entropy"
    )
    context_parallel: int = setting(1, help="ranks that share one sequence (torchrun)")
    seed: int = setting(0, help="seed of the model's random init and the data order")
    save_every: int = setting(
        0, help="steps between checkpoints (0: only at the end and on SIGTERM)"
    )
    keep_checkpoints: int = setting(2, help="checkpoints kept on disk (older ones are deleted)")
    resume: bool = setting(False, help="continue from the latest checkpoint in `out`")
    save_dtype: str = setting(
        "bfloat16", choices=("bfloat16", "float32", "float16"), help="dtype of the final HF model"
    )
    report_to: tuple[str, ...] = setting(
        (),
        parse=parse_report_to,
        check=missing_extra,
        metavar="tensorboard,wandb",
        help="also log metrics to TensorBoard (RUN/tensorboard) and/or Weights & Biases "
        "(offline without WANDB_API_KEY); optional extras",
    )
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N")
    progress: bool = setting(True, help="show a progress bar")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        """Settings from a YAML file (names with underscores), ``overrides`` on top; checked by type."""
        try:
            return from_mapping(cls, read_yaml_mapping(path), str(path), **overrides)
        except SettingsError as err:
            raise TrainError(str(err)) from None

    def to_dict(self) -> dict:
        return asdict(self)
