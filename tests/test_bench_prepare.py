"""bench_prepare.py's helpers: the worker counts it is given and the serial part it reports."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_prepare.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_prepare_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # runs nothing: the script starts under __main__
    yield module
    del sys.modules[spec.name]


def test_worker_counts_are_a_list_without_repeats(bench):
    assert bench.worker_counts("1,8,16") == [1, 8, 16]
    assert bench.worker_counts("16, 8,16,") == [16, 8]
    for bad in ("", "0,2", "x"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            bench.worker_counts(bad)


def test_serial_part_is_all_but_tokenize_and_pack(bench):
    timings = {"tokenize": 6.0, "load": 0.5, "pack": 1.0, "plots": 0.25, "total": 8.0}
    assert bench.serial_seconds(timings) == pytest.approx(1.0)
    assert bench.serial_seconds({"check": 0.1, "total": 0.2}) == pytest.approx(0.2)


def test_output_digests_cover_the_token_parts_and_stats(bench, tmp_path):
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "part-00000.bin").write_bytes(b"\x01\x02")
    (tmp_path / "stats.json").write_text("{}\n")
    digests = bench.output_digests(tmp_path)
    assert sorted(digests) == ["stats.json", "tokens/part-00000.bin"]
    assert all(len(d) == 64 for d in digests.values())
