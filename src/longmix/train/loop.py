"""`longmix train`: continual pretraining of a HF LLaMA-family model at long context.

Read top to bottom: the config, the data (windows of the packed store), the loop.
Parallelism wraps the model (:mod:`longmix.train.distributed`); the loop only sums losses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from ..data.executor import progress_bar
from ..data.store import PackedDataset
from ..fsutil import atomic_write
from . import distributed
from .attention import BACKENDS
from .checkpoint import (
    data_tokenizer_folder,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_hf_model,
)
from .config import TrainConfig, TrainError
from .model import CausalLMLoss, load_model, peak_flops
from .reporting import Reporter, missing_extra
from .shape import ModelShape

__all__ = ["TrainConfig", "TrainError", "train"]

logger = logging.getLogger(__name__)

# Before CUDA starts (lazily, at the first allocation), unless the user chose: long sequences
# fragment the caching allocator (the 1B model at 256K asks 76.9 of 79.2 GiB with 14.8 GiB
# reserved but unallocated, and runs out of memory without expandable segments).
if not (os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")):
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


# ---------------------------------------------------------------------------- data


class TrainWindows:
    """The packed store seen as ``seq_len`` windows (a prepared sequence holds ≥ 1 of them).

    Sample ``g`` of the run is window ``perm_e[g mod N]`` of epoch ``e = g div N``, with a
    seeded permutation per epoch: the order depends only on (seed, step), so a resumed
    run sees the very same data.
    """

    def __init__(self, dataset: PackedDataset, seq_len: int, seed: int):
        self.dataset = dataset
        self.seq_len = seq_len
        self.per_sequence = dataset.seq_len // seq_len
        self.size = len(dataset) * self.per_sequence
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def window(self, g: int) -> int:
        epoch, position = divmod(g, self.size)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return int(self._perm[1][position])

    def sample(self, g: int) -> dict[str, np.ndarray]:
        """Tokens and the document spans clipped to the window."""
        sequence, part = divmod(self.window(g), self.per_sequence)
        seq = self.dataset[sequence]
        lo, hi = part * self.seq_len, (part + 1) * self.seq_len
        starts, ends = (
            seq.doc_starts.astype(np.int64),
            (seq.doc_starts + seq.doc_lengths).astype(np.int64),
        )
        keep = (ends > lo) & (starts < hi)
        s, e = np.maximum(starts[keep], lo) - lo, np.minimum(ends[keep], hi) - lo
        return {"tokens": seq.tokens[lo:hi].astype(np.int64), "starts": s, "lengths": e - s}


def micro_batch_tensors(
    samples: list[dict], doc_mask: bool, device: torch.device
) -> dict[str, torch.Tensor]:
    """Input ids, next-token labels, positions (and document boundaries for doc-masking).

    With document masking the micro-batch is flattened into one row of concatenated
    sequences, as varlen kernels expect; positions restart at every document.
    """
    tokens = torch.from_numpy(np.stack([s["tokens"] for s in samples]))
    labels = torch.full_like(tokens, -100)
    labels[:, :-1] = tokens[:, 1:]
    batch, length = tokens.shape
    if not doc_mask:
        positions = torch.arange(length).expand(batch, length)
        return {
            "input_ids": tokens.to(device),
            "labels": labels.to(device),
            "position_ids": positions.to(device),
        }
    lengths = np.concatenate([s["lengths"] for s in samples])
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).to(torch.int32)
    positions = torch.arange(batch * length) - torch.repeat_interleave(
        cu[:-1].long(), torch.from_numpy(lengths)
    )
    return {
        "input_ids": tokens.reshape(1, -1).to(device),
        "labels": labels.reshape(1, -1).to(device),
        "position_ids": positions.reshape(1, -1).to(device),
        "cu_seq_lens_q": cu.to(device),
        "cu_seq_lens_k": cu.to(device),
        "max_length_q": int(lengths.max()),
        "max_length_k": int(lengths.max()),
    }


def effective_attention_length(samples: list[dict], doc_mask: bool, seq_len: int) -> float:
    """``s_eff`` for the FLOP count: s for plain causal, Σℓ²/s within documents."""
    if not doc_mask:
        return float(seq_len)
    return float(np.mean([(s["lengths"].astype(np.float64) ** 2).sum() / seq_len for s in samples]))


# ---------------------------------------------------------------------------- checks


def resolve(config: TrainConfig, d: distributed.Dist, dataset: PackedDataset) -> dict:
    """Validate settings against the data and the machine; derive steps and accumulation."""
    if config.seq_len > dataset.seq_len:
        raise TrainError(
            f"--seq-len {config.seq_len} is longer than the prepared sequences ({dataset.seq_len}) "
            f"in {config.data}: prepare again with --seq-len {config.seq_len} or more"
        )
    attention = config.attention
    if attention == "auto":
        attention = ("varlen" if d.device.type == "cuda" else "loop") if config.doc_mask else "sdpa"
    choices = {name: b for name, b in BACKENDS.items() if b.selectable}
    if attention not in choices:
        raise TrainError(f"unknown attention {attention!r}: choose one of {', '.join(choices)}")
    chosen = choices[attention]
    if config.doc_mask != chosen.doc_mask:
        raise TrainError(f"attention {attention!r} does not match doc_mask={config.doc_mask}")
    if d.device.type not in chosen.devices:
        others = [
            n
            for n, b in choices.items()
            if b.doc_mask == chosen.doc_mask and d.device.type in b.devices
        ]
        need = (
            "a CUDA GPU"
            if chosen.devices == ("cuda",)
            else f"a {' or '.join(chosen.devices)} device"
        )
        raise TrainError(
            f"{attention} attention needs {need}; "
            f"on {d.device.type} use --attention {' or '.join(others)}"
        )
    if config.context_parallel > 1 and config.doc_mask:
        raise TrainError(
            "context parallelism works with plain causal packing only, not with --doc-mask"
        )
    per_micro = config.seq_len * config.micro_batch * d.dp
    if config.batch_tokens < per_micro:
        raise TrainError(
            f"batch of {config.batch_tokens} tokens is smaller than one micro-batch on all ranks "
            f"(seq_len {config.seq_len} × micro_batch {config.micro_batch} × {d.dp} data-parallel ranks)"
        )
    accumulation = round(config.batch_tokens / per_micro)
    steps = (
        config.steps or math.ceil(config.tokens / (accumulation * per_micro))
        if (config.steps or config.tokens)
        else 0
    )
    if steps <= 0:
        raise TrainError("give a training length: --tokens (e.g. 500M) or --steps")
    if config.schedule not in ("constant", "cosine"):
        raise TrainError(f"unknown schedule {config.schedule!r}: constant or cosine")
    return {
        "attention": attention,
        "accumulation": accumulation,
        "steps": steps,
        "batch_tokens": accumulation * per_micro,
    }


def check_tokenizer(config: TrainConfig, dataset: PackedDataset, vocab_size: int) -> None:
    """The data must come from the model's tokenizer: same vocabulary, ids in range."""
    info = dataset.manifest["tokenizer"]
    if info["vocab_size"] > vocab_size:
        raise TrainError(
            f"{config.data} was tokenized with a vocabulary of {info['vocab_size']} but the model has "
            f"{vocab_size} embeddings: prepare the data with the model's tokenizer"
        )
    model_tokenizer = Path(config.model or "") / "tokenizer.json"
    if config.model and model_tokenizer.is_file():
        from ..data.tokenize import vocab_digest

        if vocab_digest(model_tokenizer) != info.get("vocab_sha256"):
            raise TrainError(
                f"{config.data} was tokenized by {info['name']}, whose vocabulary differs from the "
                f"tokenizer of {config.model}: prepare the data with --tokenizer {config.model}"
            )


# ---------------------------------------------------------------------------- the loop


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (
        config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) a training run; returns the last log record."""
    d = distributed.init(config.context_parallel, config.device)
    out = Path(config.out)
    dataset = PackedDataset(config.data)
    plan = resolve(config, d, dataset)
    if not config.resume and (out / "checkpoints").exists() and latest_checkpoint(out) is not None:
        raise TrainError(
            f"{out} already holds checkpoints: pass --resume to continue, or use another --out"
        )
    if problem := missing_extra(config.report_to):  # before the (slow) model load
        raise TrainError(f"--report-to {','.join(config.report_to)}: {problem}")
    model = load_model(
        config.model,
        config.init_config,
        attention="cp" if config.context_parallel > 1 else plan["attention"],
        seq_len=config.seq_len,
        rope_theta=config.rope_theta,
        rope_scaling=config.rope_scaling,
        rope_factor=config.rope_factor,
        checkpointing=config.activation_checkpointing,
        seed=config.seed,
        compile_layers=config.compile and d.device.type == "cuda",
    )
    check_tokenizer(config, dataset, model.config.vocab_size)
    shape = ModelShape.of(model.config)
    if d.is_main:
        resolved = {**asdict(config), **{f"resolved_{k}": v for k, v in plan.items()}}
        with atomic_write(out / "config.yaml", "w") as handle:  # creates out, or says why not
            handle.write(yaml.safe_dump(resolved, sort_keys=False))

    module = distributed.wrap(CausalLMLoss(model, config.loss_chunk).to(d.device), d)
    optimizer = torch.optim.AdamW(
        module.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
        fused=d.device.type == "cuda",
    )
    start_step = 0
    if config.resume and (checkpoint := latest_checkpoint(out)) is not None:
        start_step = load_checkpoint(checkpoint, module, optimizer, d)
        if d.is_main:
            logger.info("resumed from %s at step %d", checkpoint, start_step)
    if config.resume and d.is_main:
        truncate_log(out / "log.jsonl", start_step)

    windows = TrainWindows(dataset, config.seq_len, config.seed)
    samples_per_step = plan["accumulation"] * config.micro_batch * d.dp
    label_tokens = samples_per_step * (
        config.seq_len - 1
    )  # every sequence's last position has no label
    use_autocast = d.world == 1 and d.device.type == "cuda"  # FSDP2 casts to bf16 itself
    peak = peak_flops(d.device) * d.world
    stop = _StopFlag()
    log = _Log(out / "log.jsonl", d.is_main)
    reporter = Reporter(config.report_to, out, asdict(config), enabled=d.is_main)
    if d.is_main:
        logger.info(
            "training %s for %d steps of %d tokens (%d micro-batches × %d ranks), %s attention, on %s",
            config.model or config.init_config,
            plan["steps"],
            plan["batch_tokens"],
            plan["accumulation"],
            d.dp,
            plan["attention"],
            d.device,
        )
    bar = progress_bar(
        total=plan["steps"],
        initial=start_step,
        desc="train",
        unit="step",
        enabled=config.progress and d.is_main,
    )
    record: dict = {}
    for step in range(start_step, plan["steps"]):
        started = time.perf_counter()
        lr = learning_rate(config, step, plan["steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=d.device)
        s_eff = []
        for micro in range(plan["accumulation"]):
            first = step * samples_per_step + (micro * d.dp + d.dp_rank) * config.micro_batch
            samples = [windows.sample(first + j) for j in range(config.micro_batch)]
            s_eff.append(effective_attention_length(samples, config.doc_mask, config.seq_len))
            batch = micro_batch_tensors(samples, config.doc_mask, d.device)
            if d.cp > 1:
                batch = _shard_for_context_parallel(batch, d)
            with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_autocast):
                loss = module(**batch)
            # Scaled so that the (averaged) gradient is that of the mean loss over every label of the step.
            (loss * d.world / label_tokens).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            module.parameters(), config.grad_clip or float("inf")
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = distributed.all_reduce_sum(loss_sum, d).item() / label_tokens
        seconds = time.perf_counter() - started
        step_tokens = samples_per_step * config.seq_len
        flops = step_tokens * shape.train_flops_per_token(float(np.mean(s_eff)))
        record = {
            "step": step + 1,
            "loss": loss_value,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": (step + 1) * step_tokens,
            "seconds": seconds,
            "tokens_per_s": step_tokens / seconds,
            "mfu": flops / seconds / peak if peak == peak else None,
            "memory_gib": torch.cuda.max_memory_allocated(d.device) / 2**30
            if d.device.type == "cuda"
            else None,
        }
        log.write(record)
        reporter.log(record, step + 1)
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss_value:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False
        )
        if on_step is not None:
            on_step(record)
        last = step + 1 == plan["steps"]
        if stop.requested or last or (config.save_every and (step + 1) % config.save_every == 0):
            saved = save_checkpoint(
                out, step + 1, module, optimizer, d, keep=config.keep_checkpoints
            )
            if d.is_main:
                logger.info("checkpoint %s", saved)
        if stop.requested and not last:
            record["stopped"] = "SIGTERM"
            if d.is_main:
                logger.warning(
                    "SIGTERM: stopped after step %d; rerun with --resume to continue", step + 1
                )
            break
    bar.close()
    stop.restore()
    if "stopped" not in record:
        tokenizer = config.model or data_tokenizer_folder(Path(config.data), dataset.manifest)
        if tokenizer is None and d.is_main:
            logger.warning(
                "the tokenizer of %s was not found: %s has no tokenizer files",
                config.data,
                out / "model",
            )
        save_hf_model(
            module, out / "model", d, config.save_dtype, source=tokenizer, max_length=config.seq_len
        )
        if d.is_main:
            plot_loss(out / "log.jsonl", out / "loss.png")
            logger.info("model saved to %s", out / "model")
    log.close()
    reporter.close()
    distributed.close(d)
    return record


def _shard_for_context_parallel(batch: dict, d: distributed.Dist) -> dict:
    """This rank's head-and-tail part of the ids, labels and (global) positions."""
    shard = {k: distributed.cp_shard(v, d.cp, d.cp_rank, dim=1) for k, v in batch.items()}
    return {**shard, "cp_size": d.cp, "cp_rank": d.cp_rank, "cp_group": d.cp_group}


class _StopFlag:
    """SIGTERM (preemption, `scancel`) asks the loop to checkpoint and stop after this step."""

    def __init__(self):
        self.requested = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Log:
    """One JSON line per step (appended, so a resumed run continues the same file)."""

    def __init__(self, path: Path, enabled: bool):
        self.enabled = enabled
        self.handle = open(path, "a") if enabled else None  # noqa: SIM115 (closed in close())

    def write(self, record: dict) -> None:
        if self.enabled:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


def truncate_log(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (the checkpoint a run resumes from): the steps after it
    are run again, and a run killed hard (SIGKILL) logged them without saving them."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if (
            isinstance(record, dict)
            and isinstance(record.get("step"), int)
            and record["step"] <= step
        ):
            kept.append(line + "\n")
    with atomic_write(path, "w") as handle:
        handle.writelines(kept)


def read_log(path: Path) -> list[dict]:
    """The log of a run, keeping the last record of each step (a resumed run rewrites some)."""
    records: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["step"]] = record
    return [records[k] for k in sorted(records)]


def plot_loss(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["tokens"] / 1e6 for r in records], [r["loss"] for r in records], lw=1.5)
    ax.set_xlabel("tokens (M)")
    ax.set_ylabel("training loss")
    ax.set_title(f"{png.parent.name}: loss per step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(png) as handle:
        fig.savefig(handle, dpi=90, format="png")
    plt.close(fig)
