"""Battery item 4: association floods and slow peers.

A flood of silent sockets (more than `max_associations`, then more than
`max_associations_per_ip`), established associations up to the limit and beyond, a
descriptor-starved server, and slow peers of every kind at once: silent after connect,
an A-ASSOCIATE-RQ trickled one byte per second, a P-DATA-TF trickled inside an
association, empty command fragments forever, an idle association, a dataset that stops
arriving, a peer that stops reading our C-GET sub-operation, a half-closed socket. Each
bad socket's life is measured (until the server closes it: TCP state from TCP_INFO, so
the measurement reads nothing) and must end at its deadline (ARTIM, idle or DIMSE
timeout, plus the 0.5 s sweep); a well-behaved client, an allow-listed AE title, gets
in within a bound, and an unknown AE title is still refused 1/1/3.

TLS clients that never say hello, or stop half-way, are covered by
tests/integration/test_tls.py (test_silent_tls_clients_do_not_stall_a_login_and_are_
dropped_at_the_deadline, test_tls_client_that_never_sends_an_associate_rq_is_dropped_by_
artim): not repeated here.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import build_role

from tests.hardening.harness import (
    CT, CT_CX, ECHO_CX, EXPLICIT_LE, GET_STUDY, IMPLICIT_LE, PacsProcess, Prober,
    associate_rq_bytes, ct_dataset, encode, echo_command, open_association, report,
    store_command)
from tests.rawclient import RawAssociation
from tests.support import LOOPBACK

ARTIM, IDLE, DIMSE = 1.0, 1.5, 2.0
SWEEP = 0.5  # the listener checks deadlines twice a second
SLACK = SWEEP + 1.0  # sweep period plus scheduling on a loaded 2-core machine


def tcp_state(sock: socket.socket) -> int:
    """1 = ESTABLISHED; anything else means the server closed (FIN or RST) its side."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return tcp_state(sock) != 1
    except OSError:
        return True


def lifetime(sock: socket.socket, started: float, max_seconds: float, step=None) -> float:
    """Seconds from `started` until the server closes `sock`; `step()` runs between polls
    (a trickle); inf if it never closes within `max_seconds`."""
    deadline = started + max_seconds
    while time.monotonic() < deadline:
        if closed_by_server(sock):
            return time.monotonic() - started
        if step is not None:
            try:
                step()
            except OSError:
                return time.monotonic() - started
        else:
            time.sleep(0.05)
    return float("inf")


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def good_client_gets_in(port: int, calling: str, max_seconds: float) -> tuple[float, list]:
    """Seconds until a C-ECHO succeeds on a new association; the refusals seen before."""
    started = time.monotonic()
    refusals = []
    while time.monotonic() - started < max_seconds:
        raw = RawAssociation(port, timeout=5)
        try:
            pdu_type, pdu = raw.associate([("1.2.840.10008.1.1", [IMPLICIT_LE])],
                                          calling=calling)
            if pdu_type == 0x02:
                ok = raw.c_echo(1) == 0
                raw.release()
                if ok:
                    return time.monotonic() - started, refusals
            refusals.append(tuple(pdu[7:10]) if pdu_type == 0x03 else pdu_type)
        except OSError as exc:
            refusals.append(type(exc).__name__)
        finally:
            raw.close()
        time.sleep(0.1)
    return float("inf"), refusals


@pytest.fixture(scope="module")
def flood_server(tmp_path_factory):
    server = PacsProcess(tmp_path_factory.mktemp("flood") / "data", {"network": {
        "artim_timeout": ARTIM, "idle_timeout": IDLE, "dimse_timeout": DIMSE,
        "max_associations": 4, "max_associations_per_ip": 24,
        "allowed_calling_ae_titles": ["PROBE", "RAWSCU", "GOODSCU"]}}).start()
    yield server
    server.stop()


def test_silent_socket_flood(flood_server):
    server = flood_server
    # 20 silent sockets: more than max_associations (4), fewer than the per-IP cap (24).
    silent = [connect(server.port) for _ in range(20)]
    opened = time.monotonic()
    first, refusals_first = good_client_gets_in(server.port, "GOODSCU", 5)
    # 40 more: the per-IP cap (24 connections from 127.0.0.1) is exceeded until ARTIM.
    more = [connect(server.port) for _ in range(40)]
    opened_more = time.monotonic()
    second, refusals = good_client_gets_in(server.port, "GOODSCU", ARTIM + 5)
    stranger, _ = good_client_gets_in(server.port, "STRANGER", 0.01)
    lives = [lifetime(s, opened, ARTIM + 5) for s in silent]
    lives_more = [lifetime(s, opened_more, ARTIM + 5) for s in more]
    for s in silent + more:
        s.close()
    rejected_2_3_2 = sum(r == (2, 3, 2) for r in refusals)
    report("item4 silent flood", silent_sockets=60, good_client_with_20_silent_s=f"{first:.2f}",
           good_client_with_60_silent_s=f"{second:.2f}",
           refusals_before=f"{len(refusals)} ({rejected_2_3_2} A-ASSOCIATE-RJ 2/3/2)",
           silent_socket_life_s=f"{min(lives + lives_more):.2f}-{max(lives + lives_more):.2f}",
           artim_s=ARTIM)
    assert first < 1.0 and refusals_first == []  # silent sockets hold no association slot
    assert second < ARTIM + SLACK + 0.5
    assert all(r in ((2, 3, 2), "ConnectionResetError") for r in refusals), refusals
    assert max(lives + lives_more) < ARTIM + SLACK
    assert min(lives + lives_more) > ARTIM - 0.1
    assert stranger == float("inf")  # not allow-listed: refused (1/1/3) throughout
    assert server.crash_lines() == []


def test_established_flood_over_max_associations(flood_server):
    server = flood_server
    held = [open_association(server.port) for _ in range(4)]
    opened = time.monotonic()
    raw = RawAssociation(server.port)
    started = time.monotonic()
    pdu_type, pdu = raw.associate([("1.2.840.10008.1.1", [IMPLICIT_LE])], calling="GOODSCU")
    reject_s = time.monotonic() - started
    raw.close()
    assert pdu_type == 0x03 and tuple(pdu[7:10]) == (2, 3, 2)
    waited, _ = good_client_gets_in(server.port, "GOODSCU", IDLE + 5)
    lives = [lifetime(r.sock, opened, IDLE + 5) for r in held]
    for r in held:
        r.close()
    report("item4 established flood", max_associations=4, fifth_rejected_2_3_2_in_s=
           f"{reject_s:.3f}", good_client_in_s=f"{waited:.2f}",
           idle_association_life_s=f"{min(lives):.2f}-{max(lives):.2f}", idle_timeout_s=IDLE)
    assert reject_s < 0.5
    assert waited < IDLE + SLACK + 0.5
    assert max(lives) < IDLE + SLACK and min(lives) > IDLE - 0.1


def test_descriptor_starved_server_recovers(tmp_path):
    """More connections than the server has file descriptors (RLIMIT_NOFILE 128): the
    surplus is closed at once, the rest at ARTIM, then clients get in again."""
    server = PacsProcess(tmp_path / "data", {"network": {
        "artim_timeout": ARTIM, "max_associations_per_ip": 1000}}, nofile=128).start()
    try:
        socks = [socket.create_connection((LOOPBACK, server.port), timeout=5)
                 for _ in range(300)]
        opened = time.monotonic()
        waited, refusals = good_client_gets_in(server.port, "PROBE", ARTIM + 5)
        lives = [lifetime(s, opened, ARTIM + 5) for s in socks]
        for s in socks:
            s.close()
        report("item4 descriptor starvation", connections=300, nofile=128,
               good_client_in_s=f"{waited:.2f}", refused_before=len(refusals),
               socket_life_s=f"{min(lives):.2f}-{max(lives):.2f}")
        assert waited < ARTIM + SLACK + 0.5
        assert max(lives) < ARTIM + SLACK
        assert server.alive()
        assert [line for line in server.crash_lines() if "audit" not in line] == []
    finally:
        server.stop()


# --- slow peers, all at once, while a prober keeps associating -------------------------------
@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    server = PacsProcess(tmp_path_factory.mktemp("slow") / "data", {"network": {
        "artim_timeout": ARTIM, "idle_timeout": IDLE, "dimse_timeout": DIMSE,
        "max_associations": 16, "max_associations_per_ip": 64}}).start()
    yield server
    server.stop()


def big_instance(port: int) -> Dataset:
    ds = ct_dataset("1.2.826.0.1.3680043.2.1125.84.1")
    ds.Rows, ds.Columns = 4096, 3072
    ds.PixelData = b"\x00" * (4096 * 3072 * 2)
    raw = open_association(port, timeout=60)
    assert raw.c_store(CT_CX, CT, ds.SOPInstanceUID, encode(ds)) == 0
    raw.release()
    raw.close()
    return ds


def p_data_raw(context_id: int, control: int, payload: bytes) -> bytes:
    return struct.pack(">BBIIBB", 0x04, 0, len(payload) + 6, len(payload) + 2, context_id,
                       control) + payload


def slow_peers(port: int, stored: Dataset) -> dict:
    """Start every slow peer; return {name: (socket, started, limit, step)}."""
    peers = {}

    def plain() -> socket.socket:
        sock = socket.create_connection((LOOPBACK, port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def established() -> RawAssociation:
        return open_association(port)

    def trickler(sock, data: bytes, interval: float):
        state = {"at": 0, "next": time.monotonic()}

        def step():
            now = time.monotonic()
            if now >= state["next"]:
                sock.send(data[state["at"] % len(data):state["at"] % len(data) + 1])
                state["at"] += 1
                state["next"] = now + interval
            time.sleep(0.05)
        return step

    sock = plain()
    peers["silent after connect"] = (sock, time.monotonic(), ARTIM, None)
    sock = plain()
    peers["A-ASSOCIATE-RQ at 1 byte/s"] = (
        sock, time.monotonic(), ARTIM,
        trickler(sock, associate_rq_bytes([("1.2.840.10008.1.1", [IMPLICIT_LE])]), 1.0))
    raw = established()
    peers["P-DATA-TF at 4 bytes/s"] = (
        raw.sock, time.monotonic(), DIMSE,
        trickler(raw.sock, p_data_raw(ECHO_CX, 0x03, echo_command(1)), 0.25))
    raw = established()
    empty = p_data_raw(ECHO_CX, 0x01, b"")
    state = {"next": 0.0}

    def empty_fragments(sock=raw.sock):
        if time.monotonic() >= state["next"]:
            sock.send(empty)
            state["next"] = time.monotonic() + 0.25
        time.sleep(0.05)
    peers["empty command fragments 4/s"] = (raw.sock, time.monotonic(), DIMSE, empty_fragments)
    raw = established()
    peers["idle association"] = (raw.sock, time.monotonic(), IDLE, None)
    raw = established()
    data = encode(ct_dataset("1.2.826.0.1.3680043.2.1125.84.2"))
    raw.send(p_data_raw(CT_CX, 0x03, store_command("1.2.826.0.1.3680043.2.1125.84.2")))
    raw.send(p_data_raw(CT_CX, 0x00, data[:1000]))
    # Silent mid-message: whichever of the idle and DIMSE timeouts is shorter.
    peers["dataset that stops arriving"] = (raw.sock, time.monotonic(), min(IDLE, DIMSE), None)
    sock = plain()
    sock.sendall(associate_rq_bytes([("1.2.840.10008.1.1", [IMPLICIT_LE])])[:40])
    sock.shutdown(socket.SHUT_WR)
    peers["half-closed during A-ASSOCIATE-RQ"] = (sock, time.monotonic(), 0.0, None)
    # A C-GET requester that stops reading: our sub-operation's writes block.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((LOOPBACK, port))
    raw = RawAssociation.__new__(RawAssociation)
    raw.sock, raw.message_id, raw.peer_max_pdu = sock, 0, 0
    assert raw.associate([(GET_STUDY, [IMPLICIT_LE]), (CT, [EXPLICIT_LE])],
                         user_items=[build_role(CT, scp_role=True)])[0] == 0x02
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = stored.StudyInstanceUID
    raw.send_message(1, {0x0002: GET_STUDY, 0x0100: 0x0010, 0x0110: 1, 0x0700: 0,
                         0x0800: 0}, encode(q, explicit=False))
    peers["C-GET requester that stops reading"] = (sock, time.monotonic(), DIMSE, None)
    return peers


def test_slow_peers_die_at_their_deadlines(slow_server):
    server = slow_server
    stored = big_instance(server.port)
    lives: dict[str, float] = {}
    with Prober(server.port, interval=0.2, pid=server.pid) as prober:
        peers = slow_peers(server.port, stored)
        threads = []
        for name, (sock, started, limit, step) in peers.items():
            def watch(name=name, sock=sock, started=started, step=step):
                lives[name] = lifetime(sock, started, 10, step)
            threads.append(threading.Thread(target=watch, daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
    for sock, *_ in peers.values():
        sock.close()
    probes = prober.results
    report("item4 slow peers", **{name.replace(" ", "_"): f"{life:.2f}s (deadline {limit}s)"
                                  for name, (_, _, limit, _) in peers.items()
                                  for life in [lives.get(name, float("inf"))]},
           probes=f"{probes.ok}/{probes.ok + probes.failed}",
           slowest_probe_s=f"{probes.slowest:.2f}")
    for name, (_, _, limit, _) in peers.items():
        assert lives[name] < limit + SLACK, (name, lives[name])
        if limit:
            assert lives[name] > limit - 0.1, (name, lives[name])
    assert probes.failed == 0, probes.failures
    assert probes.slowest < 1.0
    assert server.crash_lines() == []
