"""Crash-safe file writing: a killed run never leaves a half file that looks whole."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import LongmixError

LOCK_FILE = ".lock"
_CHUNK = 1 << 22


class OutputError(LongmixError, OSError):
    """An output that cannot be written: a file where a folder should be, no permission, a full disk."""


class FolderLockedError(LongmixError):
    """Another process is writing the same output folder."""


def describe_os_error(err: OSError, path: str | Path) -> str:
    """One line saying what failed where, and what to do about it."""
    reason = err.strerror or type(err).__name__
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        hint = "free some space (or choose another folder), then rerun the same command to resume"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the location is not writable: fix its permissions or choose another folder"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST):
        hint = "a file stands where a folder is needed: choose another folder or move the file"
    else:
        hint = "check the location, then rerun the same command to resume"
    return f"cannot write {path}: {reason}; {hint}"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to ``path.tmp`` then rename over ``path`` only if the block succeeds.

    The rename is atomic on POSIX file systems, so readers see either the old file
    or the complete new one. The data is fsynced before the rename.
    """
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: ranks may write the same file
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and not isinstance(err, LongmixError):
            raise OutputError(describe_os_error(err, path)) from err
        raise


def make_folder(folder: str | Path) -> Path:
    """``mkdir -p`` whose failures (a file in the way, no permission) are one clear line."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"{folder} is a file, not a folder: choose another folder or move the file"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(describe_os_error(err, folder)) from err
    return folder


@contextlib.contextmanager
def folder_lock(folder: str | Path, shared: bool = False) -> Iterator[Path]:
    """Hold an advisory lock on ``folder/.lock`` (created with the folder) for the block.

    Exclusive for a run that owns the folder, with its pid in the file for the message of
    whoever comes second; ``shared`` for ranks of one job array, which write it together.
    A second writer fails at once instead of corrupting the first one's files. The lock
    ends with the process, so a killed run never leaves the folder locked.
    """
    folder = make_folder(folder)
    path = folder / LOCK_FILE
    try:
        handle = open(path, "a+")  # noqa: SIM115 (closed below)
    except OSError as err:
        raise OutputError(describe_os_error(err, path)) from err
    try:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            who = f"process {holder}" if holder else "the ranks of a job array"
            raise FolderLockedError(
                f"{folder} is being written by {who}; wait for it to finish, stop it, or use another folder"
            ) from None
        except OSError as err:  # e.g. a network file system without locks
            raise OutputError(
                f"cannot lock {path}: {err.strerror or err}; use a folder on a local file system"
            ) from err
        if not shared:
            _replace_contents(handle, f"{os.getpid()}\n")
        try:
            yield folder
        finally:
            if not shared:
                _replace_contents(handle, "")  # the folder's contents never depend on who wrote it
    finally:
        handle.close()


def _replace_contents(handle: IO[str], text: str) -> None:
    with contextlib.suppress(OSError):  # the pid is only a courtesy for the message
        handle.seek(0)
        handle.truncate()
        handle.write(text)
        handle.flush()


def file_digest(path: str | Path) -> dict:
    """Size and BLAKE2b (fast, cryptographic) of a file, read in large chunks."""
    digest = hashlib.blake2b(digest_size=32)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "blake2b": digest.hexdigest()}


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
