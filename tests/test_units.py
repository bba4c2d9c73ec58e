import pytest

from longmix.errors import InvalidInputError
from longmix.units import format_count, format_exact, parse_count, parse_length


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5B", 5_000_000_000),
        ("5b", 5_000_000_000),
        ("500M", 500_000_000),
        ("0.5M", 500_000),
        ("4096", 4096),
        (" 12k ", 12_000),
        ("1e6", 1_000_000),
        ("2.5e5", 250_000),
        ("1E+3", 1000),
    ],
)
def test_parse_count_decimal(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80K", 81_920),
        ("4k", 4096),
        ("128K", 131_072),
        ("1M", 1 << 20),
        ("8192", 8192),
        ("1e6", 1_000_000),  # the exponent is decimal even for lengths
    ],
)
def test_parse_length_binary(text, expected):
    assert parse_length(text) == expected


@pytest.mark.parametrize("text", ["", "five", "5X", "-3", "1.5", "4KB", "2.5e-1", "1e3K", "e6"])
def test_bad_counts_are_rejected_with_the_text(text):
    with pytest.raises(ValueError, match="count|whole|negative"):
        parse_count(text)


def test_format_count():
    assert format_count(5e9) == "5.00B"
    assert format_count(1234) == "1.23K"
    assert format_count(12) == "12"


@pytest.mark.parametrize("text", ["1.5", "2.5e-1", "0.3M"])
def test_a_fraction_of_a_token_is_refused_in_one_line(text):
    with pytest.raises(InvalidInputError, match="is not a whole number") as err:
        parse_length(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("n", "binary", "text"),
    [(81920, True, "80K"), (4 << 20, True, "4M"), (5 * 10**9, False, "5B"), (1000, True, "1000")],
)
def test_format_exact_reads_back(n, binary, text):
    assert format_exact(n, binary=binary) == text
    assert parse_count(text, binary=binary) == n
