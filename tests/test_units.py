import pytest

from longmix.units import format_count, parse_count, parse_length


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5B", 5_000_000_000),
        ("5b", 5_000_000_000),
        ("500M", 500_000_000),
        ("0.5M", 500_000),
        ("4096", 4096),
        (" 12k ", 12_000),
    ],
)
def test_parse_count_decimal(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80K", 81_920), ("4k", 4096), ("128K", 131_072), ("1M", 1 << 20), ("8192", 8192)],
)
def test_parse_length_binary(text, expected):
    assert parse_length(text) == expected


@pytest.mark.parametrize("text", ["", "five", "5X", "-3", "1.5", "4KB"])
def test_bad_counts_are_rejected_with_the_text(text):
    with pytest.raises(ValueError, match="count|whole|negative"):
        parse_count(text)


def test_format_count():
    assert format_count(5e9) == "5.00B"
    assert format_count(1234) == "1.23K"
    assert format_count(12) == "12"
