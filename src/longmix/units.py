"""Parsing of human-friendly counts such as ``5B`` tokens or ``80K`` positions."""

from __future__ import annotations

import re

from .errors import InvalidInputError

# K/M/B/T are decimal for token budgets (5B = 5e9), but sequence lengths are
# conventionally binary (80K = 81,920, 128K = 131,072), so the caller chooses.
_DECIMAL = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BINARY = {"": 1, "K": 2**10, "M": 2**20, "B": 2**30, "G": 2**30, "T": 2**40}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)


def parse_count(value: str | int, *, binary: bool = False) -> int:
    """Parse ``"5B"``, ``"80k"``, ``"0.5M"`` or ``"4096"`` into an integer.

    ``binary=True`` reads K/M as powers of two (use it for sequence lengths).
    Raises ``ValueError`` with the offending text for anything else.
    """
    if isinstance(value, int):
        if value < 0:
            raise InvalidInputError(f"count must not be negative: {value}")
        return value
    match = _PATTERN.match(str(value))
    if not match:
        raise InvalidInputError(
            f"cannot read {value!r} as a count: use an integer or a number with a "
            "K/M/B/T suffix, e.g. 4096, 80K, 5B"
        )
    number, suffix = match.groups()
    scale = (_BINARY if binary else _DECIMAL)[suffix.upper()]
    result = float(number) * scale
    if result != int(result):
        raise InvalidInputError(f"{value!r} is not a whole number")
    return int(result)


def parse_length(value: str | int) -> int:
    """A sequence length or token threshold: ``80K`` = 81,920, ``4K`` = 4,096."""
    return parse_count(value, binary=True)


def format_count(n: float) -> str:
    """Short human form: 1234 -> '1.23K', 5e9 -> '5.00B'."""
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= limit:
            return f"{n / limit:.2f}{suffix}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"
