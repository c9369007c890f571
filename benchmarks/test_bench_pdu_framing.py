"""PDU framing throughput, compiled vs pure twin.

A stream of P-DATA-TF PDUs (~8 MiB of dataset per round) is fed in 64 KiB
pieces, as a socket read would deliver it, at a small (16 KiB) and a large
(1 MiB) negotiated maximum PDU length.
"""
from __future__ import annotations

import os

import pytest

from engine.net import _pdu_framing_c, _pdu_framing_py

PAYLOAD = 8 * 1024 * 1024
READ_SIZE = 64 * 1024


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(PAYLOAD)


@pytest.mark.parametrize("max_pdu_length", [16 * 1024, 1024 * 1024], ids=["16KiB", "1MiB"])
@pytest.mark.parametrize("module", [_pdu_framing_c, _pdu_framing_py], ids=["compiled", "python"])
def test_bench_framing(benchmark, payload, module, max_pdu_length):
    pdus = module.encode_p_data(1, False, payload, max_pdu_length)
    stream = b"".join(pdus)
    reads = [stream[i:i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]

    def frame() -> int:
        framer = module.PDUFramer(max_pdu_length)
        fragments = 0
        for data in reads:
            fragments += len(framer.feed(data))
        return fragments

    benchmark.group = f"pdu-framing max {max_pdu_length // 1024} KiB"
    assert benchmark(frame) == len(pdus)
    if benchmark.stats is not None:  # None under --benchmark-disable (smoke runs)
        median = benchmark.stats.stats.median
        benchmark.extra_info["MB/s"] = round(len(stream) / median / 1e6, 1)
    benchmark.extra_info["stream_bytes"] = len(stream)
