"""Content hash: the pure-Python BLAKE3 twin against the blake3 package."""
from __future__ import annotations

import random
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.store import _blake3_py, content_hash
from tests.support import run_python

REPO = Path(__file__).resolve().parents[3]
EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
BATCH = _blake3_py.MAX_LANES * _blake3_py.CHUNK_LEN  # input the twin buffers before hashing
# The BLAKE3 test-vector input: byte i is i % 251.
PATTERN = bytes(i % 251 for i in range(3 * BATCH + 4096))

BOUNDARY_LENGTHS = sorted({
    0, 1, 63, 64, 65, 127, 128, 129, 1023, 1024, 1025, 2048, 2049, 3072, 3073, 4096, 4097,
    5120, 5121, 6144, 7168, 8192, 8193, 16384, 31744, 65536, 65537, 102400,
    BATCH - 1, BATCH, BATCH + 1, BATCH + 1024, BATCH + 1025, 2 * BATCH, 2 * BATCH + 1,
    3 * BATCH + 4096,
})


def reference(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def pure(data: bytes) -> bytes:
    return _blake3_py.Blake3(data).digest()


# --- selector -------------------------------------------------------------------
def _selected(env_value: str | None) -> str:
    return run_python("from engine.store import content_hash as m; "
                      "print(m.IMPLEMENTATION, m.ALGORITHM, type(m.new_hasher()).__module__)",
                      env_value == "1")


def test_selector_uses_blake3_package_by_default():
    assert _selected(None) == "compiled blake3 blake3.blake3"


def test_selector_uses_python_twin_when_extensions_disabled():
    assert _selected("1") == "python blake3 engine.store._blake3_py"


# --- known values ---------------------------------------------------------------
@pytest.mark.parametrize("hasher", [content_hash.new_hasher, _blake3_py.new_hasher],
                         ids=["selected", "python"])
def test_empty_input_gives_the_published_digest(hasher):
    assert hasher().hexdigest() == EMPTY_BLAKE3


@pytest.mark.parametrize("hasher", [content_hash.new_hasher, _blake3_py.new_hasher],
                         ids=["selected", "python"])
def test_interface(hasher):
    h = hasher()
    h.update(b"abc")
    h.update(bytearray(b"def"))
    h.update(memoryview(b"ghi"))
    assert len(h.digest()) == 32
    assert h.hexdigest() == h.digest().hex() == reference(b"abcdefghi").hex()


@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_pure_matches_blake3_at_chunk_and_batch_boundaries(length):
    assert pure(PATTERN[:length]) == reference(PATTERN[:length])


# --- streaming --------------------------------------------------------------------
def test_digest_leaves_the_state_unchanged():
    h = _blake3_py.Blake3()
    for piece in (PATTERN[:5000], PATTERN[5000:BATCH + 7]):
        h.update(piece)
        assert h.digest() == h.digest()
    assert h.digest() == reference(PATTERN[:BATCH + 7])


def test_mutating_an_absorbed_buffer_does_not_change_the_digest():
    data = bytearray(PATTERN[:3000])
    h = _blake3_py.Blake3()
    h.update(data)
    data[:] = bytes(len(data))
    assert h.digest() == reference(PATTERN[:3000])


def test_byte_at_a_time_matches_one_update():
    data = PATTERN[:2 * 1024 + 65]
    h = _blake3_py.Blake3()
    for i in range(len(data)):
        h.update(data[i:i + 1])
    assert h.digest() == reference(data)


def test_non_byte_format_views_hash_their_bytes():
    data = PATTERN[:4096]
    assert _blake3_py.Blake3(memoryview(data).cast("I")).digest() == reference(data)


# --- hypothesis parity --------------------------------------------------------------
lengths = st.one_of(
    st.sampled_from(BOUNDARY_LENGTHS),
    st.integers(0, 5000),
    st.sampled_from(BOUNDARY_LENGTHS).flatmap(lambda n: st.integers(max(0, n - 3), n + 3)),
)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), length=lengths)
def test_pure_matches_blake3_for_random_data_and_splits(data, length):
    if length <= 4096:
        payload = data.draw(st.binary(min_size=length, max_size=length))
    else:  # large inputs from a drawn seed, so failures still replay
        payload = random.Random(data.draw(st.integers(0, 2**32))).randbytes(length)
    sizes = data.draw(st.lists(st.one_of(st.just(0), st.integers(0, 70), st.integers(0, 3000),
                                         st.integers(0, 2 * BATCH)), max_size=20))
    ours, theirs = _blake3_py.Blake3(), blake3.blake3(max_threads=1)
    pos = 0
    for size in sizes:
        piece = payload[pos:pos + size]
        ours.update(piece)
        theirs.update(piece)
        pos += len(piece)
    ours.update(payload[pos:])
    theirs.update(payload[pos:])
    assert ours.digest() == theirs.digest() == reference(payload)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=2500), cuts=st.lists(st.integers(0, 2500), max_size=8))
def test_pure_matches_blake3_for_small_inputs_split_anywhere(payload, cuts):
    bounds = [0, *sorted(c for c in cuts if c <= len(payload)), len(payload)]
    h = _blake3_py.Blake3()
    for start, end in zip(bounds, bounds[1:]):
        h.update(payload[start:end])
    assert h.hexdigest() == reference(payload).hex()
