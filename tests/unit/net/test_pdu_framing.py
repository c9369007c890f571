"""PDU framer and P-DATA-TF encoder: both twins against pynetdicom and each other."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import pdu
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from engine.errors import MalformedPDU, PDUError, PDUTooLarge
from engine.net import _pdu_framing_c, _pdu_framing_py
from tests.support import run_python

REPO = Path(__file__).resolve().parents[3]
IMPLEMENTATIONS = [pytest.param(_pdu_framing_c, id="compiled"),
                   pytest.param(_pdu_framing_py, id="python")]
MAX = 16384


# --- known-good PDUs, encoded by pynetdicom ------------------------------------
def _associate_primitive() -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "PACS"
    context = build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = MAX
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.1"
    primitive.user_information = [max_length, implementation]
    return primitive


def associate_rq() -> bytes:
    rq = pdu.A_ASSOCIATE_RQ()
    rq.from_primitive(_associate_primitive())
    return rq.encode()


def associate_ac() -> bytes:
    primitive = _associate_primitive()
    context = build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    context.context_id = 1
    context.result = 0
    primitive.presentation_context_definition_results_list = [context]
    primitive.result = 0
    ac = pdu.A_ASSOCIATE_AC()
    ac.from_primitive(primitive)
    return ac.encode()


def associate_rj() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result = 1
    primitive.result_source = 1
    primitive.diagnostic = 1
    rj = pdu.A_ASSOCIATE_RJ()
    rj.from_primitive(primitive)
    return rj.encode()


def abort() -> bytes:
    primitive = A_ABORT()
    primitive.abort_source = 0
    rq = pdu.A_ABORT_RQ()
    rq.from_primitive(primitive)
    return rq.encode()


def p_data(pdvs: list[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF with PDVs (context id, message control header, fragment)."""
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[ctx, bytes([mch]) + frag] for ctx, mch, frag in pdvs]
    tf = pdu.P_DATA_TF()
    tf.from_primitive(primitive)
    return tf.encode()


CONTROL_PDUS = {
    "A-ASSOCIATE-RQ": (0x01, associate_rq, pdu.A_ASSOCIATE_RQ),
    "A-ASSOCIATE-AC": (0x02, associate_ac, pdu.A_ASSOCIATE_AC),
    "A-ASSOCIATE-RJ": (0x03, associate_rj, pdu.A_ASSOCIATE_RJ),
    "A-RELEASE-RQ": (0x05, lambda: pdu.A_RELEASE_RQ().encode(), pdu.A_RELEASE_RQ),
    "A-RELEASE-RP": (0x06, lambda: pdu.A_RELEASE_RP().encode(), pdu.A_RELEASE_RP),
    "A-ABORT": (0x07, abort, pdu.A_ABORT_RQ),
}
PDVS = [(1, 0x03, b"\x02\x00" * 40), (3, 0x00, b"dataset fragment"), (3, 0x02, b"last")]


def header(pdu_type: int, length: int) -> bytes:
    return bytes([pdu_type, 0]) + length.to_bytes(4, "big")


def pdv(length: int, context_id: int, control: int, body: bytes = b"") -> bytes:
    return length.to_bytes(4, "big") + bytes([context_id, control]) + body


def p_data_raw(items: bytes) -> bytes:
    return header(0x04, len(items)) + items


# --- helpers --------------------------------------------------------------------
def normalize(events: list) -> list:
    """Events with fragments as bytes, so twins and chunkings compare equal."""
    return [(t, ctx, mch, bytes(payload)) for t, ctx, mch, payload in events]


def run(module, stream: bytes, cuts=(), max_pdu_length: int = MAX):
    """Feed `stream` split at `cuts`; return (all events delivered, error class)."""
    framer = module.PDUFramer(max_pdu_length)
    events: list = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(stream)), len(stream)]
    try:
        for start, end in zip(bounds, bounds[1:]):
            events += framer.feed(stream[start:end])
    except PDUError as exc:
        return normalize(events + exc.events), type(exc)
    return normalize(events), None


def feed_bytewise(framer, stream: bytes) -> list:
    events = []
    for i in range(len(stream)):
        events += framer.feed(stream[i:i + 1])
    return events


# --- selector -------------------------------------------------------------------
def _selected(env_value: str | None) -> str:
    return run_python("from engine.net import pdu_framing as m; "
                      "print(m.IMPLEMENTATION, m.PDUFramer.__module__)", env_value == "1")


def test_selector_uses_compiled_twin_by_default():
    assert _selected(None) == "compiled engine.net._pdu_framing_c"


def test_selector_uses_python_twin_when_extensions_disabled():
    assert _selected("1") == "python engine.net._pdu_framing_py"


# --- known-good PDUs --------------------------------------------------------------
@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", CONTROL_PDUS)
def test_control_pdu_fed_whole_yields_raw_pdu(module, name):
    pdu_type, build, _ = CONTROL_PDUS[name]
    raw = build()
    events = module.PDUFramer(MAX).feed(raw)
    assert events == [(pdu_type, 0, 0, raw)]
    assert type(events[0][3]) is bytes


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", CONTROL_PDUS)
def test_control_pdu_fed_byte_by_byte_yields_raw_pdu(module, name):
    pdu_type, build, _ = CONTROL_PDUS[name]
    raw = build()
    assert feed_bytewise(module.PDUFramer(MAX), raw) == [(pdu_type, 0, 0, raw)]


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", CONTROL_PDUS)
def test_raw_round_trips_through_pynetdicom(module, name):
    _, build, cls = CONTROL_PDUS[name]
    [(_, _, _, raw)] = module.PDUFramer(MAX).feed(build())
    decoded = cls()
    decoded.decode(raw)
    assert decoded.encode() == raw


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_p_data_tf_yields_one_event_per_pdv(module):
    events = module.PDUFramer(MAX).feed(p_data(PDVS))
    assert normalize(events) == [(0x04, ctx, mch, frag) for ctx, mch, frag in PDVS]
    assert all(type(event[3]) is memoryview for event in events)


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_p_data_tf_byte_by_byte_equals_whole(module):
    stream = p_data(PDVS)
    assert normalize(feed_bytewise(module.PDUFramer(MAX), stream)) == \
        normalize(module.PDUFramer(MAX).feed(stream))


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_stream_of_every_pdu_type_in_order(module):
    pieces = [associate_rq(), associate_ac(), p_data(PDVS), pdu.A_RELEASE_RQ().encode(),
              pdu.A_RELEASE_RP().encode(), associate_rj(), abort()]
    events = module.PDUFramer(MAX).feed(b"".join(pieces))
    assert [e[0] for e in events] == [1, 2, 4, 4, 4, 5, 6, 3, 7]
    assert normalize(events) == normalize(feed_bytewise(module.PDUFramer(MAX), b"".join(pieces)))


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_reserved_control_bits_are_masked(module):
    [event] = module.PDUFramer(MAX).feed(p_data_raw(pdv(3, 1, 0xFF, b"x")))
    assert event[:3] == (0x04, 1, 0x03)


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_reserved_header_byte_is_ignored(module):
    raw = b"\x05\xAA" + pdu.A_RELEASE_RQ().encode()[2:]
    assert module.PDUFramer(MAX).feed(raw) == [(0x05, 0, 0, raw)]


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_empty_feed_yields_nothing(module):
    assert module.PDUFramer(MAX).feed(b"") == []


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b))])
def test_every_bytes_like_input_gives_the_same_events(module, kind):
    stream = p_data(PDVS) + abort()
    assert normalize(module.PDUFramer(MAX).feed(kind(stream))) == \
        normalize(module.PDUFramer(MAX).feed(stream))


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_fragments_survive_mutation_of_a_mutable_input(module):
    buffer = bytearray(p_data(PDVS))
    events = module.PDUFramer(MAX).feed(buffer)
    buffer[:] = bytes(len(buffer))
    assert [bytes(e[3]) for e in events] == [frag for _, _, frag in PDVS]
    assert all(e[3].readonly for e in events)


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_fragments_of_a_split_pdu_survive_the_next_feed(module):
    stream = p_data(PDVS) * 2
    framer = module.PDUFramer(MAX)
    half = len(stream) // 2
    first = framer.feed(bytearray(stream[:30])) + framer.feed(bytearray(stream[30:half]))
    framer.feed(bytearray(stream[half:]))
    assert [bytes(e[3]) for e in first] == [frag for _, _, frag in PDVS]


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_whole_pdu_in_immutable_bytes_is_not_copied(module):
    stream = p_data(PDVS)
    events = module.PDUFramer(MAX).feed(stream)
    assert all(event[3].obj is stream for event in events)


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_non_contiguous_input_is_refused(module):
    with pytest.raises(TypeError):
        module.PDUFramer(MAX).feed(memoryview(abort() * 2)[::2])


# --- limits -----------------------------------------------------------------------
@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_too_large_raised_from_the_header_alone(module):
    with pytest.raises(PDUTooLarge):
        module.PDUFramer(MAX).feed(header(0x04, 0xFFFFFFFF))


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_too_large_raised_at_the_sixth_header_byte(module):
    framer = module.PDUFramer(MAX)
    raw = header(0x01, MAX + 1)
    for i in range(5):
        assert framer.feed(raw[i:i + 1]) == []
    with pytest.raises(PDUTooLarge):
        framer.feed(raw[5:6])


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_length_equal_to_maximum_is_accepted(module):
    raw = p_data_raw(pdv(MAX - 4, 1, 0x02, bytes(MAX - 6)))
    assert len(module.PDUFramer(MAX).feed(raw)) == 1


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_maximum_can_be_raised_after_association(module):
    raw = p_data_raw(pdv(MAX - 4, 1, 0x02, bytes(MAX - 6)))
    framer = module.PDUFramer(1024)
    framer.max_pdu_length = MAX
    assert framer.max_pdu_length == MAX
    assert len(framer.feed(raw)) == 1


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_negative_maximum_is_refused(module):
    with pytest.raises(ValueError):
        module.PDUFramer(-1)


# --- malformed input ----------------------------------------------------------------
@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x41, 0xFF])
def test_unknown_pdu_type_raised_at_its_first_byte(module, pdu_type):
    with pytest.raises(MalformedPDU):
        module.PDUFramer(MAX).feed(bytes([pdu_type]))


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("items", [
    pdv(0, 1, 0x00),  # item length below 2
    pdv(1, 1, 0x00) + b"\x00",  # item length below 2
    pdv(10, 1, 0x00, b"abcd"),  # item overruns the PDU
    pdv(2, 1, 0x00) + b"\x00\x00\x00",  # trailing bytes that are no item
    pdv(2, 1, 0x00) + pdv(0xFFFFFFFF, 1, 0x00),  # second item overruns
], ids=["length-0", "length-1", "overrun", "trailing", "second-overruns"])
def test_bad_pdv_length_is_malformed(module, items):
    with pytest.raises(MalformedPDU):
        module.PDUFramer(MAX).feed(p_data_raw(items))


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("context_id", [0, 2, 254])
def test_even_presentation_context_id_is_malformed(module, context_id):
    with pytest.raises(MalformedPDU):
        module.PDUFramer(MAX).feed(p_data_raw(pdv(3, context_id, 0x02, b"x")))


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_p_data_tf_without_pdv_is_malformed(module):
    with pytest.raises(MalformedPDU):
        module.PDUFramer(MAX).feed(header(0x04, 0))


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("raw", [header(0x05, 0), header(0x07, 5) + bytes(5), header(0x01, 10)],
                         ids=["release-rq-empty", "abort-too-long", "associate-rq-too-short"])
def test_wrong_fixed_length_is_malformed(module, raw):
    with pytest.raises(MalformedPDU):
        module.PDUFramer(MAX).feed(raw)


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_bad_pdv_emits_nothing_of_its_pdu(module):
    good = p_data(PDVS)
    bad = p_data_raw(pdv(3, 1, 0x00, b"x") + pdv(3, 2, 0x02, b"y"))
    with pytest.raises(MalformedPDU) as info:
        module.PDUFramer(MAX).feed(good + bad)
    assert normalize(info.value.events) == [(0x04, c, m, f) for c, m, f in PDVS]


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_framer_is_unusable_after_an_error(module):
    framer = module.PDUFramer(MAX)
    with pytest.raises(PDUTooLarge):
        framer.feed(header(0x04, MAX + 1))
    with pytest.raises(MalformedPDU):
        framer.feed(abort())
    with pytest.raises(MalformedPDU):
        framer.feed(b"")


# --- encode_p_data ------------------------------------------------------------------
def decode_p_data(raw: bytes) -> list[tuple[int, int, bytes]]:
    tf = pdu.P_DATA_TF()
    tf.decode(raw)
    return [(item.presentation_context_id, item.presentation_data_value[0],
             item.presentation_data_value[1:]) for item in tf.presentation_data_value_items]


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("max_pdu_length", [7, 100, 16384, 0])
@pytest.mark.parametrize("size", [1, 93, 94, 95, 1000, 100_000])
@pytest.mark.parametrize("is_command", [True, False])
def test_encoded_p_data_decodes_with_pynetdicom(module, max_pdu_length, size, is_command):
    payload = os.urandom(size)
    pdus = module.encode_p_data(3, is_command, payload, max_pdu_length)
    decoded = [decode_p_data(raw) for raw in pdus]
    assert all(len(items) == 1 for items in decoded)
    flags = [items[0][1] for items in decoded]
    assert flags == [int(is_command)] * (len(pdus) - 1) + [int(is_command) | 0x02]
    assert all(items[0][0] == 3 for items in decoded)
    assert b"".join(items[0][2] for items in decoded) == payload


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("max_pdu_length", [7, 100, 16384, 0])
def test_encoded_pdu_lengths_respect_the_maximum(module, max_pdu_length):
    payload = os.urandom(50_000)
    pdus = module.encode_p_data(1, False, payload, max_pdu_length)
    assert all(type(raw) is bytes for raw in pdus)
    assert all(int.from_bytes(raw[2:6], "big") == len(raw) - 6 for raw in pdus)
    if max_pdu_length:
        assert all(len(raw) - 6 <= max_pdu_length for raw in pdus)
        assert len(pdus) == -(-len(payload) // (max_pdu_length - 6))
    else:
        assert len(pdus) == 1


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_encoded_p_data_reframes_to_the_payload(module):
    payload = os.urandom(70_000)
    stream = b"".join(module.encode_p_data(5, False, payload, MAX))
    events = module.PDUFramer(MAX).feed(stream)
    assert {e[:2] for e in events} == {(0x04, 5)}
    assert [e[2] for e in events] == [0] * (len(events) - 1) + [0x02]
    assert b"".join(bytes(e[3]) for e in events) == payload


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_empty_payload_gives_one_empty_last_fragment(module):
    pdus = module.encode_p_data(1, True, b"", MAX)
    assert pdus == [header(0x04, 6) + pdv(2, 1, 0x03)]
    assert decode_p_data(pdus[0]) == [(1, 0x03, b"")]


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
@pytest.mark.parametrize("args", [(2, b"x", MAX), (0, b"x", MAX), (257, b"x", MAX),
                                  (1, b"x", 6), (1, b"", 5), (1, b"x", -1)],
                         ids=["even-id", "zero-id", "id-over-255", "no-room", "no-room-empty",
                              "negative-max"])
def test_encode_refuses_impossible_arguments(module, args):
    context_id, payload, max_pdu_length = args
    with pytest.raises(ValueError):
        module.encode_p_data(context_id, False, payload, max_pdu_length)


@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_encode_accepts_any_bytes_like_payload(module):
    payload = os.urandom(1000)
    expected = module.encode_p_data(1, False, payload, 256)
    assert module.encode_p_data(1, False, bytearray(payload), 256) == expected
    assert module.encode_p_data(1, False, memoryview(payload), 256) == expected


# --- parity and split independence (hypothesis) ------------------------------------
def _valid_pdu():
    payloads = st.binary(max_size=300)
    p_data_tf = st.builds(
        lambda ctx, cmd, payload, limit: b"".join(
            _pdu_framing_py.encode_p_data(ctx, cmd, payload, limit)),
        st.integers(0, 127).map(lambda i: 2 * i + 1), st.booleans(), payloads,
        st.sampled_from([0, 7, 64, 200]))
    fixed = st.sampled_from([build() for _, build, _ in CONTROL_PDUS.values()])
    return st.one_of(p_data_tf, fixed)


def _mutate(stream: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(stream)
    for kind, position, value in edits:
        if not data:
            data.append(value)
            continue
        i = position % len(data)
        if kind == 0:
            data[i] = value
        elif kind == 1:
            data.insert(i, value)
        else:
            del data[i]
    return bytes(data)


valid_streams = st.lists(_valid_pdu(), max_size=6).map(b"".join)
edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)),
                 max_size=4)
cuts = st.lists(st.integers(0, 3000), max_size=12)
limits = st.sampled_from([0, 4, 6, 68, 100, 300, MAX])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(stream=st.binary(max_size=600), cuts=cuts, limit=limits)
def test_parity_on_arbitrary_bytes(stream, cuts, limit):
    assert run(_pdu_framing_c, stream, cuts, limit) == run(_pdu_framing_py, stream, cuts, limit)


@FUZZ
@given(stream=valid_streams, edits=edits, cuts=cuts, limit=limits)
def test_parity_on_mutated_valid_streams(stream, edits, cuts, limit):
    mutated = _mutate(stream, edits)
    assert run(_pdu_framing_c, mutated, cuts, limit) == run(_pdu_framing_py, mutated, cuts, limit)


@FUZZ
@given(stream=valid_streams, edits=edits, cuts=cuts, limit=limits,
       module=st.sampled_from([_pdu_framing_c, _pdu_framing_py]))
def test_outcome_does_not_depend_on_the_split(stream, edits, cuts, limit, module):
    mutated = _mutate(stream, edits)
    assert run(module, mutated, cuts, limit) == run(module, mutated, (), limit)


@FUZZ
@given(pieces=st.lists(_valid_pdu(), max_size=6), cuts=cuts,
       module=st.sampled_from([_pdu_framing_c, _pdu_framing_py]))
def test_valid_streams_frame_without_error(pieces, cuts, module):
    events, error = run(module, b"".join(pieces), cuts)
    assert error is None
    assert [e[3] for e in events if e[0] != 0x04] == [p for p in pieces if p[0] != 0x04]
