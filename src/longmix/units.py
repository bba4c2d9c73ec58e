"""Parsing of human-friendly counts such as ``5B`` tokens or ``80K`` positions."""

from __future__ import annotations

import re
from decimal import Decimal

from .errors import InvalidInputError

# K/M/B/T are decimal for token budgets (5B = 5e9), but sequence lengths are
# conventionally binary (80K = 81,920, 128K = 131,072), so the caller chooses.
_DECIMAL = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BINARY = {"": 1, "K": 2**10, "M": 2**20, "B": 2**30, "G": 2**30, "T": 2**40}
# A number with a suffix ("0.5M") or in scientific form ("1e6", "2.5e5": the exponent is
# decimal), not both.
_PATTERN = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*([KMBGT]?)|(\d+(?:\.\d+)?e[+-]?\d+))\s*$", re.IGNORECASE
)


def parse_count(value: str | int, *, binary: bool = False) -> int:
    """Parse ``"5B"``, ``"80k"``, ``"0.5M"``, ``"1e6"`` or ``"4096"`` into an integer.

    ``binary=True`` reads K/M as powers of two (use it for sequence lengths).
    Raises ``InvalidInputError`` (a ``ValueError``) with the offending text for anything else,
    a count that is not whole (``1.5``, ``2.5e-1K``) included.
    """
    if isinstance(value, int):
        if value < 0:
            raise InvalidInputError(f"count must not be negative: {value}")
        return value
    match = _PATTERN.match(str(value))
    if not match:
        raise InvalidInputError(
            f"cannot read {value!r} as a count: use an integer or a number with a "
            "K/M/B/T suffix, e.g. 4096, 80K, 5B, 1e6"
        )
    number, suffix, scientific = match.groups()
    if scientific:
        number, suffix = scientific, ""
    # Decimal, not float: "0.3M" or "1.1e12" stay exact, and a fraction is found, not rounded.
    result = Decimal(number) * (_BINARY if binary else _DECIMAL)[suffix.upper()]
    if result != result.to_integral_value():
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


def format_exact(n: int, *, binary: bool = False) -> str:
    """The shortest exact form that :func:`parse_count` reads back: 81920 -> '80K' (binary),
    4194304 -> '4M' (binary), 5_000_000_000 -> '5B', 1000 -> '1000' (binary)."""
    for suffix in "TBMK":
        scale = (_BINARY if binary else _DECIMAL)[suffix]
        if n and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)
