"""Crash-safe file writing: a killed run never leaves a half file that looks whole."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to ``path.tmp`` then rename over ``path`` only if the block succeeds.

    The rename is atomic on POSIX file systems, so readers see either the old file
    or the complete new one. The data is fsynced before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: ranks may write the same file
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete ``*.tmp`` files a killed run left behind (call only when no other writer runs)."""
    removed = 0
    for tmp in Path(folder).rglob("*.tmp"):
        if tmp.is_file():
            tmp.unlink()
            removed += 1
    return removed


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as stable, human-readable JSON."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=_json_default)
        handle.write("\n")


def as_json_types(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing with stored data."""
    return json.loads(json.dumps(value, default=_json_default))


def read_json(path: str | Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def _json_default(value: Any) -> Any:
    # numpy scalars and paths appear in stats; store them as plain JSON values.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")
