"""Is a prepared folder whole? Sizes and checksums of its files against ``manifest.json``.

``prepare`` records every output file's size and BLAKE2b in the manifest (``files``); a rerun
of a finished folder checks them before saying "already complete", and redoes what is
damaged. :func:`verify_prepared` is the same check on demand (``longmix verify DIR``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fsutil import LOCK_FILE, file_digest, read_json
from .store import FORMAT_VERSION, MANIFEST, SPAN_FIELDS, TIMINGS, part_path

# Not covered by checksums: the settings record, the lock, the run's timings, and the tokenized
# cache (whose shards carry their own fingerprints and sizes).
_UNRECORDED = {MANIFEST, "params.json", LOCK_FILE, TIMINGS}
_CACHE = "tokenized"


@dataclass(frozen=True)
class Damage:
    path: Path  # the damaged (or missing) file
    problem: str

    def describe(self, folder: Path) -> str:
        return f"{self.path.relative_to(folder).as_posix()}: {self.problem}"


def recorded_files(folder: Path) -> list[Path]:
    """The files whose size and checksum the manifest records, in a stable order."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in _UNRECORDED
        and not p.name.endswith(".tmp")
        and p.relative_to(folder).parts[0] != _CACHE
    )


def digest_files(folder: Path, digests: Iterable[tuple[str, dict]]) -> dict[str, dict]:
    """``manifest["files"]``: relative path -> size and checksum."""
    return {Path(path).relative_to(folder).as_posix(): digest for path, digest in sorted(digests)}


def digest_job(path: str) -> tuple[str, dict]:
    """One file's digest, as a task for an executor (returns its path with it)."""
    return path, file_digest(path)


def find_damage(folder: str | Path, digest: Callable[[str], dict] = file_digest) -> list[Damage]:
    """Every missing, truncated or altered file of a finished prepared folder."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return [
            Damage(
                manifest_path,
                "missing: not a finished prepared folder (run or rerun `longmix prepare`)",
            )
        ]
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as err:
        return [Damage(manifest_path, f"unreadable ({type(err).__name__}: {err})")]
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return [
            Damage(
                manifest_path,
                f"unsupported format version {manifest.get('format_version') if isinstance(manifest, dict) else None}",
            )
        ]
    damage = _check_layout(folder, manifest)
    reported = {d.path for d in damage}
    for name, expected in sorted((manifest.get("files") or {}).items()):
        path = folder / name
        if path in reported:
            continue
        if not path.is_file():
            damage.append(Damage(path, "missing"))
        elif path.stat().st_size != expected["size"]:
            damage.append(
                Damage(
                    path, f"{path.stat().st_size} bytes, the manifest records {expected['size']}"
                )
            )
        elif digest(str(path))["blake2b"] != expected["blake2b"]:
            damage.append(Damage(path, "contents differ from the manifest's checksum"))
    return damage


def _check_layout(folder: Path, manifest: dict) -> list[Damage]:
    """What the manifest implies, checked by size alone (also for manifests without checksums)."""
    damage = []
    row_bytes = manifest["seq_len"] * np.dtype(manifest["dtype"]).itemsize
    per_part, n = manifest["sequences_per_part"], manifest["n_sequences"]
    for part, first in enumerate(range(0, n, per_part)):
        path = part_path(folder, part)
        expected = (min(first + per_part, n) - first) * row_bytes
        if not path.is_file():
            damage.append(Damage(path, "missing"))
        elif path.stat().st_size != expected:
            damage.append(Damage(path, f"{path.stat().st_size} bytes, expected {expected}"))
    for name in (*SPAN_FIELDS, "seq_offsets"):
        path = folder / "index" / f"{name}.npy"
        if not path.is_file():
            damage.append(Damage(path, "missing"))
    return damage


def check_sizes(folder: Path, manifest: dict) -> list[Damage]:
    """Every missing file, or file of another size than recorded: what :func:`find_damage` finds
    without reading contents (for a reader opening the folder)."""
    try:
        damage = _check_layout(folder, manifest)
    except (KeyError, TypeError, ValueError) as err:
        return [Damage(folder / MANIFEST, f"incomplete ({type(err).__name__}: {err})")]
    reported = {d.path for d in damage}
    for name, expected in sorted((manifest.get("files") or {}).items()):
        path = folder / name
        if path in reported:
            continue
        if not path.is_file():
            damage.append(Damage(path, "missing"))
        elif path.stat().st_size != expected.get("size"):
            damage.append(
                Damage(
                    path, f"{path.stat().st_size} bytes, the manifest records {expected['size']}"
                )
            )
    return damage


def verify_prepared(folder: str | Path) -> list[str]:
    """The problems of a prepared folder, one line each; empty when every file is whole."""
    folder = Path(folder)
    return [d.describe(folder) for d in find_damage(folder)]
