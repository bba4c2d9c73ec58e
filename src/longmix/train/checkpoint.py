"""Checkpoints (resumable, sharded with torch.distributed.checkpoint) and the final HF model.

``RUN/checkpoints/step-NNNNNN/`` holds the model and optimizer state (one shard file per
rank, written by DCP, so FSDP2 runs save without gathering) and ``trainer.json``. A
checkpoint is written into ``step-NNNNNN.tmp`` and renamed when complete: a killed save
never looks like a checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from ..errors import LongmixError
from ..fsutil import OutputError, describe_os_error, write_json
from .distributed import Dist

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


def _barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def latest_checkpoint(out: Path) -> Path | None:
    folder = Path(out) / "checkpoints"
    done = (
        sorted(
            p
            for p in folder.glob("step-*")
            if p.is_dir() and not p.name.endswith(".tmp") and (p / "trainer.json").is_file()
        )
        if folder.is_dir()
        else []
    )
    return done[-1] if done else None


def save_checkpoint(
    out: Path,
    step: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    d: Dist,
    keep: int = 2,
) -> Path:
    folder = Path(out) / "checkpoints"
    final = folder / f"step-{step:06d}"
    tmp = folder / f"step-{step:06d}.tmp"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(d)
    model_state, optimizer_state = get_state_dict(module, optimizer)
    with warnings.catch_warnings():  # a single process is a normal case here, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp))
    torch.save(
        {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp / f"rng-rank{d.rank}.pt",
    )
    _barrier(d)
    if d.is_main:
        write_json(tmp / "trainer.json", {"step": step, "world": d.world, "cp": d.cp})
        tmp.rename(final)
        for old in sorted(p for p in folder.glob("step-*") if not p.name.endswith(".tmp"))[:-keep]:
            shutil.rmtree(old)
    _barrier(d)
    return final


def load_checkpoint(
    folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Dist
) -> int:
    """Restore model, optimizer and RNG state in place; returns the step to continue from."""
    meta = json.loads((folder / "trainer.json").read_text())
    model_state, optimizer_state = get_state_dict(module, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    rng = folder / f"rng-rank{d.rank}.pt"
    if rng.is_file():
        saved = torch.load(rng, weights_only=False)
        torch.set_rng_state(saved["cpu"])
        if saved["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda"])
    return int(meta["step"])


def save_hf_model(
    module: torch.nn.Module,
    out: Path,
    d: Dist,
    dtype: str,
    source: str | Path | None,
    max_length: int | None = None,
) -> None:
    """The trained model as a plain HF checkpoint (safetensors) that AutoModelForCausalLM loads.

    The config carries the training RoPE settings (frozen, see ``model.apply_rope``), so
    the model behaves identically at any input length, and states the dtype the weights are
    stored in. The tokenizer files of ``source`` are copied beside it, with
    ``model_max_length`` set to ``max_length`` (the trained length).
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(module, options=options)
    if not d.is_main:
        _barrier(d)
        return
    hf_model = module.model
    state = {k.removeprefix("model."): v.to(getattr(torch, dtype)) for k, v in full.items()}
    config = hf_model.config
    if getattr(config, "tie_word_embeddings", False):
        state.pop(
            "lm_head.weight", None
        )  # tied: the embedding is the head (saved once, as HF does)
    previous = config._attn_implementation
    config._attn_implementation = (
        "sdpa"  # our training-time backends are not registered for other users
    )
    config.use_cache = True
    config.dtype = getattr(torch, dtype)
    # Written beside, then renamed: a killed or failed save never leaves a folder named like
    # the model that holds only some of its files.
    tmp = out.with_name(f"{out.name}.tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with _hf_progress_bars(sys.stderr.isatty()):
            hf_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        # save_pretrained records the dtype of the (float32 master) parameters, not of the state.
        state_dtype(tmp / "config.json", dtype)
        if source:
            save_tokenizer(Path(source), tmp, max_length)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, LongmixError):
            raise OutputError(describe_os_error(err, out)) from err
        raise
    finally:
        config._attn_implementation = previous
    _barrier(d)


@contextlib.contextmanager
def _hf_progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' own bars (writing shards) follow ours: drawn only on a terminal."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def state_dtype(config_json: Path, dtype: str) -> None:
    """Make ``config.json`` state ``dtype`` under both names transformers releases read."""
    config = json.loads(config_json.read_text())
    config["dtype"] = dtype
    config["torch_dtype"] = dtype
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_tokenizer(source: Path, out: Path, max_length: int | None) -> None:
    """Copy the tokenizer files of ``source`` to ``out``; ``model_max_length`` becomes the trained length."""
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    if not (out / "tokenizer.json").is_file():
        return
    settings_file = out / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    settings.setdefault(
        "tokenizer_class", "PreTrainedTokenizerFast"
    )  # a bare tokenizer.json loads as fast
    if max_length:
        settings["model_max_length"] = max_length
    settings_file.write_text(json.dumps(settings, indent=2) + "\n")


def data_tokenizer_folder(data: Path, manifest: dict) -> Path | None:
    """The folder of the tokenizer a prepared folder was made with, when it can still be found.

    Looked for in ``DATA/tokenizer/``, then where ``params.json`` says it was (only if its
    ``tokenizer.json`` is still the same file), then the built-in tokenizer.
    """
    from ..data.tokenize import BUILTIN_TOKENIZER, builtin_tokenizer_dir

    recorded = manifest.get("tokenizer", {})
    candidates = [data / "tokenizer"]
    params = data / "params.json"
    spec = json.loads(params.read_text()).get("tokenizer") if params.is_file() else None
    if spec and spec != BUILTIN_TOKENIZER:
        candidates.append(Path(spec) if Path(spec).is_dir() else Path(spec).parent)
    if recorded.get("name") == BUILTIN_TOKENIZER:
        candidates.append(builtin_tokenizer_dir())
    for folder in candidates:
        file = folder / "tokenizer.json"
        if file.is_file() and hashlib.sha256(file.read_bytes()).hexdigest() == recorded.get(
            "sha256"
        ):
            return folder
    return None
