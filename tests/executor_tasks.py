"""Tasks for executor tests: importable by name, as ``spawn`` worker processes need."""

from __future__ import annotations

import os
import time
from pathlib import Path

from longmix.fsutil import atomic_write


def write_slowly(task: tuple[str, str]) -> str:
    """By ``task[1]``: "slow" writes ``task[0]`` atomically for a minute (its pid beside it),
    "fast" returns after the slow ones started, "bad" fails then."""
    path, kind = task
    if kind == "slow":
        Path(f"{path}.pid").write_text(str(os.getpid()))
        with atomic_write(path) as sink:
            sink.write(b"partial")
            time.sleep(60)
    time.sleep(1.0)  # the slow writers are under way
    if kind == "bad":
        raise ValueError("a record the task cannot read")
    return path


def worker_pid(task: object) -> int:
    """The process that ran the task."""
    time.sleep(0.05)  # long enough for both workers to take tasks
    return os.getpid()


def fail_on_bad(task: str) -> str:
    if task == "bad":
        raise ValueError("a record the task cannot read")
    return task
