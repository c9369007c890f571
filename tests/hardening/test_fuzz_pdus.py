"""Battery item 1: malformed and truncated PDUs and P-DATA.

Mutations of valid association streams (truncation, bit flips, lying length fields,
wrong PDU types, PDV items crossing PDUs, fragments out of order, dropped, duplicated
or inserted bytes) are fed

- directly to both PDU framers (compiled and pure twin) and to the acceptor state machine
  with a real negotiator: the only exception allowed is PDUError (anything else would
  escape `data_received` as a crash of the connection's callback), and both twins must
  agree;
- directly to both tag scanners, as mutated datasets: only TagScanError, both twins
  agree, no collected value longer than its bound;
- over TCP to a real `pacs serve` process while a prober does C-ECHO on other
  associations: the process survives, logs no crash, every probe succeeds, peak RSS and
  open descriptors stay bounded.

tests/unit/net/test_pdu_framing.py and tests/unit/dicom/test_tagscan.py hold the
framers' and scanners' own parity tests; this file adds structure-aware mutations, the
state machine and the real server. HARDENING_FUZZ_CASES scales the number of cases
(default 300 per direct target, 200 over the network).
"""
from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.dicom import _tagscan_c, _tagscan_py
from engine.dicom.tags import INDEXED_TAGS
from engine.errors import PDUError, TagScanError
from engine.net import _pdu_framing_c, _pdu_framing_py
from engine.net.acse import AcceptorPolicy, AssociationNegotiator, supported_contexts
from engine.net.association import AssociationMachine
from tests.hardening.harness import (
    A_RELEASE_RQ, CT_CX, ECHO_CX, PacsProcess, Prober, association_stream, ct_dataset,
    drain, encode, echo_command, nested, open_association, pdu_types, report, store_command,
    top_level_elements, wait_until, with_private)
from tests.rawclient import associate_rq_bytes
from tests.support import LOOPBACK

CASES = int(os.environ.get("HARDENING_FUZZ_CASES", "300"))
NET_CASES = max(20, CASES * 2 // 3)
SOP_UID = "1.2.826.0.1.3680043.2.1125.8.1"

#: The test writes values pydicom warns about on purpose (the server's side is what is checked).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LENGTH_LIES = (0, 1, 2, 3, 4, 5, 6, 7, 67, 68, 69, 65536, 65537, 1 << 20, (1 << 20) + 1,
               0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF)


def small_dataset() -> bytes:
    ds = ct_dataset(SOP_UID)
    del ds.PixelData
    return encode(ds)


DATASET = small_dataset()
VALID = association_stream(DATASET, SOP_UID, max_pdu=512)


# --- mutations ---------------------------------------------------------------------------
def _is_p_data(pdu: bytearray) -> bool:
    return len(pdu) >= 12 and pdu[0] == 0x04


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16)),
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
    st.tuples(st.just("pdu_length"), st.integers(0, 63), st.sampled_from(LENGTH_LIES)),
    st.tuples(st.just("pdv_length"), st.integers(0, 63), st.sampled_from(LENGTH_LIES)),
    st.tuples(st.just("type"), st.integers(0, 63), st.integers(0, 255)),
    st.tuples(st.just("swap"), st.integers(0, 63), st.integers(0, 63)),
    st.tuples(st.just("drop"), st.integers(0, 63)),
    st.tuples(st.just("dup"), st.integers(0, 63)),
    st.tuples(st.just("cross"), st.integers(0, 63), st.integers(1, 64)),
    st.tuples(st.just("context"), st.integers(0, 63), st.integers(0, 255)),
    st.tuples(st.just("control"), st.integers(0, 63), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
)


def mutate(pdus: list[bytes], mutations) -> bytes:
    """Apply structure-aware mutations to a list of PDUs; the resulting byte stream."""
    items = [bytearray(p) for p in pdus]
    tail_ops = []
    for op in mutations:
        kind = op[0]
        if not items:
            break
        i = op[1] % len(items) if kind not in ("truncate", "flip", "insert") else 0
        pdu = items[i]
        if kind == "pdu_length":
            pdu[2:6] = struct.pack(">I", op[2])
        elif kind == "pdv_length" and _is_p_data(pdu):
            pdu[6:10] = struct.pack(">I", op[2])
        elif kind == "type":
            pdu[0] = op[2]
        elif kind == "swap":
            j = op[2] % len(items)
            items[i], items[j] = items[j], items[i]
        elif kind == "drop":
            del items[i]
        elif kind == "dup":
            items.insert(i, bytearray(pdu))
        elif kind == "cross" and _is_p_data(pdu) and i + 1 < len(items):
            # The last k bytes of this PDU move to the front of the next one's body: its PDV
            # now ends beyond its PDU (and the next PDU starts inside a PDV).
            k = min(op[2], len(pdu) - 12)
            moved = pdu[len(pdu) - k:]
            del pdu[len(pdu) - k:]
            pdu[2:6] = struct.pack(">I", len(pdu) - 6)
            nxt = items[i + 1]
            nxt[6:6] = moved
            nxt[2:6] = struct.pack(">I", len(nxt) - 6)
        elif kind == "context" and _is_p_data(pdu):
            pdu[10] = op[2]
        elif kind == "control" and _is_p_data(pdu):
            pdu[11] = op[2]
        elif kind in ("truncate", "flip", "insert"):
            tail_ops.append(op)
    stream = bytearray(b"".join(items))
    for op in tail_ops:  # byte-level edits on the whole stream
        if not stream:
            break
        pos = op[1] % len(stream)
        if op[0] == "truncate":
            del stream[pos:]
        elif op[0] == "flip":
            stream[pos] ^= 1 << op[2]
        else:
            stream[pos:pos] = op[2]
    return bytes(stream)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


stream_cases = st.tuples(st.lists(mutation, min_size=1, max_size=3),
                         st.lists(st.integers(0, 1 << 16), max_size=6))


# --- direct: the two framers ----------------------------------------------------------------
def frame(module, chunks: list[bytes], max_pdu: int):
    framer = module.PDUFramer(max_pdu)
    events = []
    try:
        for chunk in chunks:
            events += [(t, c, m, bytes(p)) for t, c, m, p in framer.feed(chunk)]
    except PDUError as exc:
        return events, type(exc).__name__
    return events, None


def test_both_framers_survive_mutated_streams_and_agree():
    stats = {"cases": 0, "refused": 0}

    @settings(max_examples=CASES, suppress_health_check=list(HealthCheck))
    @given(case=stream_cases, max_pdu=st.sampled_from([68, 1024, 65536, 1 << 20, 0xFFFFFFFF]))
    def run(case, max_pdu):
        mutations, cuts = case
        chunks = split(mutate(VALID, mutations), cuts)
        # Anything but PDUError propagates and fails the test: that is the "crash".
        compiled = frame(_pdu_framing_c, chunks, max_pdu)
        pure = frame(_pdu_framing_py, chunks, max_pdu)
        assert compiled == pure
        stats["cases"] += 1
        stats["refused"] += compiled[1] is not None

    run()
    report("item1 framers (compiled + pure)", cases=stats["cases"], refused=stats["refused"],
           crashes=0)


# --- direct: the acceptor state machine with a real negotiator --------------------------
NEGOTIATOR = AssociationNegotiator(AcceptorPolicy("PACS", 1 << 20), supported_contexts())


def run_machine(module, chunks: list[bytes]) -> tuple[list[str], str | None]:
    machine = AssociationMachine(NEGOTIATOR, 65536, lambda: False)
    machine._framer = module.PDUFramer(65536)  # the twin under test
    seen = []
    try:
        for chunk in chunks:
            seen += [type(e).__name__ for e in machine.receive(chunk)]
    except PDUError as exc:
        return seen, type(exc).__name__
    return seen, None


def test_state_machine_raises_only_pdu_errors_on_mutated_associations():
    stats = {"cases": 0, "aborted": 0, "established": 0}

    @settings(max_examples=CASES, suppress_health_check=list(HealthCheck))
    @given(case=stream_cases)
    def run(case):
        mutations, cuts = case
        chunks = split(mutate(VALID, mutations), cuts)
        compiled = run_machine(_pdu_framing_c, chunks)
        pure = run_machine(_pdu_framing_py, chunks)
        assert compiled == pure
        stats["cases"] += 1
        stats["aborted"] += compiled[1] is not None
        stats["established"] += "Established" in compiled[0]

    run()
    report("item1 state machine", **stats, crashes=0)


# --- direct: the two tag scanners ---------------------------------------------------------
ELEMENTS = top_level_elements(DATASET)


dataset_mutation = st.one_of(
    st.tuples(st.just("length"), st.integers(0, 255),
              st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFE, 0xFFFFFFFF, 0x7FFFFFFF, 1 << 20])),
    st.tuples(st.just("vr"), st.integers(0, 255), st.sampled_from(
        [b"SQ", b"UN", b"OB", b"XX", b"\x00\x00", b"ob", b"UT", b"PN"])),
    st.tuples(st.just("nest"), st.integers(1, 200), st.booleans()),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16)),
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
)


def mutate_dataset(mutations) -> bytes:
    data = bytearray(DATASET)
    for op in mutations:
        if op[0] in ("length", "vr"):
            offset, header, _ = ELEMENTS[op[1] % len(ELEMENTS)]
            if op[0] == "vr":
                data[offset + 4:offset + 6] = op[2]
            elif header == 12:
                data[offset + 8:offset + 12] = struct.pack("<I", op[2])
            else:
                data[offset + 6:offset + 8] = struct.pack("<H", op[2] & 0xFFFF)
        elif op[0] == "nest":
            data = bytearray(with_private(bytes(data), nested(op[1], op[2])))
        elif data:
            pos = op[1] % len(data)
            if op[0] == "truncate":
                del data[pos:]
            else:
                data[pos] ^= 1 << op[2]
    return bytes(data)


def scan(module, chunks: list[bytes], max_value: int):
    scanner = module.TagScanner(True, True, INDEXED_TAGS, max_value_length=max_value)
    try:
        for chunk in chunks:
            scanner.feed(chunk)
        if not scanner.done:
            scanner.finish()
    except TagScanError:
        return "TagScanError", dict(scanner.values)
    assert all(len(v) <= max_value for v in scanner.values.values())
    return scanner.bytes_consumed, dict(scanner.values)


def test_both_tag_scanners_survive_mutated_datasets_and_agree():
    stats = {"cases": 0, "refused": 0}

    @settings(max_examples=CASES, suppress_health_check=list(HealthCheck))
    @given(mutations=st.lists(dataset_mutation, min_size=1, max_size=3),
           cuts=st.lists(st.integers(0, 1 << 16), max_size=6),
           max_value=st.sampled_from([16, 64, 1 << 20]))
    def run(mutations, cuts, max_value):
        chunks = split(mutate_dataset(mutations), cuts)
        compiled = scan(_tagscan_c, chunks, max_value)
        pure = scan(_tagscan_py, chunks, max_value)
        assert compiled[0] == pure[0]
        if compiled[0] != "TagScanError":
            assert compiled[1] == pure[1]
        stats["cases"] += 1
        stats["refused"] += compiled[0] == "TagScanError"

    run()
    report("item1 tag scanners (compiled + pure)", **stats, crashes=0)


# --- over the network, against a real server ------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    server = PacsProcess(root / "data", {
        "network": {"artim_timeout": 1.0, "idle_timeout": 1.5, "dimse_timeout": 1.5}}).start()
    yield server
    server.stop()


def send_case(port: int, chunks: list[bytes], wait: float) -> tuple[str, list[int]]:
    """Send a mutated association; (how it ended, PDU types the server sent)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the server already dropped us
        ending, data = drain(sock, wait)
        return ending, pdu_types(data)
    finally:
        sock.close()


def test_mutated_associations_against_a_real_server(fuzz_server):
    server = fuzz_server
    baseline_rss = server.peak_rss_mib()
    baseline_fds = server.open_fds()
    outcomes = {"aborted": 0, "closed": 0, "released": 0, "left open": 0}
    stats = {"cases": 0}
    with Prober(server.port, interval=0.1, pid=server.pid) as prober:
        @settings(max_examples=NET_CASES, suppress_health_check=list(HealthCheck))
        @given(case=stream_cases)
        def run(case):
            mutations, cuts = case
            ending, types = send_case(server.port, split(mutate(VALID, mutations), cuts), 0.3)
            if 0x07 in types:
                outcomes["aborted"] += 1
            elif 0x06 in types:
                outcomes["released"] += 1
            elif ending == "closed":
                outcomes["closed"] += 1
            else:
                outcomes["left open"] += 1  # waiting for bytes a truncation removed
            stats["cases"] += 1
            assert server.alive()

        run()
    probes = prober.results
    # Connections left waiting end at their deadline: descriptors come back.
    assert wait_until(lambda: server.open_fds() <= baseline_fds + 2, 10), \
        f"{server.open_fds()} descriptors open, {baseline_fds} before"
    peak = server.peak_rss_mib()
    report("item1 network", cases=stats["cases"], crashes=len(server.crash_lines()),
           pynetdicom_decode_tracebacks_logged=server.library_tracebacks(),
           **{k.replace(" ", "_"): v for k, v in outcomes.items()},
           probes=f"{probes.ok}/{probes.ok + probes.failed}",
           slowest_probe_s=f"{probes.slowest:.2f}",
           peak_rss_mib=f"{peak:.0f} (before {baseline_rss:.0f})")
    assert server.alive()
    assert server.crash_lines() == []
    assert probes.failed == 0, probes.failures
    assert probes.ok > 0
    assert peak - baseline_rss < 64


def _p_data_raw(context_id: int, control: int, payload: bytes) -> bytes:
    return struct.pack(">BBIIBB", 0x04, 0, len(payload) + 6, len(payload) + 2, context_id,
                       control) + payload


def _pdv_crossing() -> list[bytes]:
    command = echo_command(1)
    pdu = bytearray(_p_data_raw(ECHO_CX, 0x03, command))
    head, tail = pdu[:20], pdu[20:]
    head[2:6] = struct.pack(">I", len(head) - 6)  # the PDV now overruns its PDU
    return [bytes(head), struct.pack(">BBI", 0x04, 0, len(tail)) + bytes(tail)]


STORE_COMMAND = store_command(SOP_UID, 2)
MUST_ABORT = {
    "PDV item crossing into the next PDU": _pdv_crossing(),
    "PDV item length larger than its PDU": [
        struct.pack(">BBIIBB", 0x04, 0, 20, 4000, ECHO_CX, 0x03) + b"\x00" * 14],
    "dataset fragment before its command": [_p_data_raw(CT_CX, 0x02, DATASET[:100])],
    "command fragment in the middle of a dataset": [
        _p_data_raw(CT_CX, 0x03, STORE_COMMAND), _p_data_raw(CT_CX, 0x00, DATASET[:200]),
        _p_data_raw(ECHO_CX, 0x03, echo_command(3))],
    "command fragments on two contexts": [
        _p_data_raw(ECHO_CX, 0x01, echo_command(1)[:20]),
        _p_data_raw(CT_CX, 0x03, echo_command(1)[20:])],
    "dataset on another context than its command": [
        _p_data_raw(CT_CX, 0x03, STORE_COMMAND), _p_data_raw(ECHO_CX, 0x02, DATASET)],
    "even presentation context ID": [_p_data_raw(2, 0x03, echo_command(1))],
    "context that was not proposed": [_p_data_raw(99, 0x03, echo_command(1))],
    "second A-ASSOCIATE-RQ": [associate_rq_bytes([("1.2.840.10008.1.1",
                                                   ["1.2.840.10008.1.2"])])],
    "A-RELEASE-RQ in the middle of a message": [
        _p_data_raw(CT_CX, 0x03, STORE_COMMAND), _p_data_raw(CT_CX, 0x00, DATASET[:200]),
        A_RELEASE_RQ],
    "command set that is not group 0000": [_p_data_raw(ECHO_CX, 0x03, DATASET[:120])],
    "command set over 64 KiB": [_p_data_raw(ECHO_CX, 0x01, b"\x00" * 40000),
                                _p_data_raw(ECHO_CX, 0x01, b"\x00" * 40000)],
    "PDU type 0x02 (A-ASSOCIATE-AC) from the requestor": [
        b"\x02\x00" + struct.pack(">I", 68) + b"\x00" * 68],
    "PDU type 0x08 (unknown)": [b"\x08\x00\x00\x00\x00\x04\x00\x00\x00\x00"],
    "A-RELEASE-RQ with a wrong length": [b"\x05\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00"],
    "P-DATA-TF shorter than a PDV header": [b"\x04\x00\x00\x00\x00\x02\x00\x00"],
}


@pytest.mark.parametrize("case", list(MUST_ABORT))
def test_protocol_violations_are_aborted_and_the_server_goes_on(fuzz_server, case):
    """Cases whose outcome is decided: each must get an A-ABORT and a close, quickly."""
    raw = open_association(fuzz_server.port)
    started = time.monotonic()
    try:
        for pdu in MUST_ABORT[case]:
            try:
                raw.send(pdu)
            except OSError:
                break
        ending, data = drain(raw.sock, 5)
    finally:
        raw.close()
    assert 0x07 in pdu_types(data), f"{case}: no A-ABORT, got {pdu_types(data)}"
    assert ending == "closed"
    assert time.monotonic() - started < 3
    probe = open_association(fuzz_server.port, calling="PROBE")
    assert probe.c_echo(ECHO_CX) == 0
    probe.release()
    probe.close()
    assert fuzz_server.crash_lines() == []
