"""Training metrics to where people look: TensorBoard and Weights & Biases (``--report-to``).

Both are optional extras, checked when the settings are read (before any model loads).
The JSON-lines log of the run folder is written by the loop whatever is chosen here.
Importable without torch or either extra.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from .. import errors

logger = logging.getLogger(__name__)

# name -> (module that must import, the extra that installs it)
REPORTERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def parse_report_to(text: str) -> tuple[str, ...]:
    """``tensorboard,wandb`` -> ("tensorboard", "wandb"); ``none`` or empty -> ()."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise ValueError(
            f"unknown {', '.join(unknown)}: choose from {', '.join(REPORTERS)} or none"
        )
    return names


def missing_extra(names: tuple[str, ...] | str) -> str | None:
    """A one-line problem when a chosen reporter's package is not installed, else None."""
    for name in parse_report_to(names) if isinstance(names, str) else names:
        module, extra = REPORTERS[name]
        if problem := errors.missing_extra(module, extra, f"--report-to {name}"):
            return f"{problem} (or drop it from --report-to)"
    return None


def wandb_mode() -> str:
    """WANDB_MODE when set; online with credentials; otherwise offline (no network needed,
    `wandb sync` uploads later)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    logged_in = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text()
    )
    return "online" if logged_in else "offline"


class Reporter:
    """``log(metrics, step)`` to every chosen backend; ``close()`` at the end. A no-op on
    ranks other than the main one and when nothing is chosen."""

    def __init__(
        self, names: tuple[str, ...], run_dir: Path, config: dict[str, Any], enabled: bool = True
    ):
        self.tensorboard = None
        self.wandb_run = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        if "tensorboard" in names:
            errors.require_extra(*REPORTERS["tensorboard"], "--report-to tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        if "wandb" in names:
            self.wandb_run = _start_wandb(run_dir, config)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        }
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(f"train/{key}", value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({f"train/{k}": v for k, v in numbers.items()}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _start_wandb(run_dir: Path, config: dict[str, Any]) -> Any:
    errors.require_extra(*REPORTERS["wandb"], "--report-to wandb")
    import wandb

    # One wandb run per run folder: a resumed training continues the same curves.
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id + "\n")
    mode = wandb_mode()
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "longmix"),
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=config,
        mode=mode,
    )
    if mode == "offline":
        logger.info(
            "wandb is offline (no WANDB_API_KEY): upload later with `wandb sync %s`",
            run_dir / "wandb",
        )
    return run
