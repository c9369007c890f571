"""Content hash throughput: blake3 (compiled, one thread) vs SHA-256 vs the pure twin.

The pure twin runs on 64 KiB only: at tens of MB/s, 64 MiB would take seconds
per round.
"""
from __future__ import annotations

import hashlib
import os

import blake3
import pytest

from engine.store import _blake3_py

BIG = 64 * 1024 * 1024
SMALL = 64 * 1024


@pytest.fixture(scope="module")
def buffers() -> dict[int, bytes]:
    big = os.urandom(BIG)
    return {BIG: big, SMALL: big[:SMALL]}


CASES = {
    "blake3-compiled": (lambda data: blake3.blake3(data, max_threads=1).digest(), BIG),
    "sha256": (lambda data: hashlib.sha256(data).digest(), BIG),
    "blake3-python": (lambda data: _blake3_py.Blake3(data).digest(), SMALL),
}


@pytest.mark.parametrize("case", CASES)
def test_bench_content_hash(benchmark, buffers, case):
    hash_once, size = CASES[case]
    data = buffers[size]
    benchmark.group = "content-hash"
    assert len(benchmark(hash_once, data)) == 32
    if benchmark.stats is not None:  # None under --benchmark-disable (smoke runs)
        median = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = round(size / median / 1e9, 4)
    benchmark.extra_info["bytes"] = size
