"""Battery item 2: oversized lengths.

A PDU declaring 4 GB, an A-ASSOCIATE-RQ over `max_associate_rq_length`, a P-DATA-TF
over the negotiated maximum, a PDV item longer than its PDU: each is refused at its
header. The client sends the header, then tries to push a 64 MiB body; the server's
own read counter (/proc/PID/io rchar) shows how many bytes it read past the header.

Inside datasets: element lengths 0xFFFFFFFE (wanted and unwanted elements, explicit and
implicit VR), sequences nested 1,000 deep (undefined length: refused at ingest; defined
length: ingest skips them unparsed, so they are stored, and then C-FIND sequence keys,
flat keys and WADO-RS metadata must cope with the stored file), a C-FIND identifier
nested 1,000 deep, a 64 MiB undefined-length sequence and one that is never closed.
Peak RSS (VmHWM) of the server is checked after each group.
"""
from __future__ import annotations

import socket
import struct
import time

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.hardening.harness import (
    CT, CT_CX, FIND_CX, FIND_STUDY, PacsProcess, ct_dataset, drain, encode, nested,
    open_association, pdu_types, report, top_level_elements, wait_until, with_private)
from tests.rawclient import RawAssociation
from tests.support import LOOPBACK

BODY = 64 << 20
UID_ROOT = "1.2.826.0.1.3680043.2.1125.82."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oversized")
    running = PacsProcess(root / "data", {
        "network": {"dimse_timeout": 10.0, "idle_timeout": 10.0},
        "web": {"enabled": True, "port": 0}}).start()
    yield running
    running.stop()


def push_body(sock: socket.socket, total: int, seconds: float = 5.0) -> int:
    """Try to send `total` bytes; how many the kernel took before the peer's reset."""
    sent = 0
    chunk = b"\xAB" * (1 << 20)
    sock.settimeout(0.5)
    deadline = time.monotonic() + seconds
    while sent < total and time.monotonic() < deadline:
        try:
            sent += sock.send(chunk[:min(len(chunk), total - sent)])
        except socket.timeout:
            continue  # window full: the server is not reading
        except OSError:
            break
    return sent


HEADERS = {
    # name: (associate first?, header bytes)
    "P-DATA-TF declaring 4 GB": (True, b"\x04\x00" + struct.pack(">I", 0xFFFFFFFF)),
    "P-DATA-TF one byte over the negotiated maximum": (
        True, b"\x04\x00" + struct.pack(">I", (1 << 20) + 1)),
    "A-ASSOCIATE-RQ declaring 4 GB": (False, b"\x01\x00" + struct.pack(">I", 0xFFFFFFFF)),
    "A-ASSOCIATE-RQ one byte over max_associate_rq_length": (
        False, b"\x01\x00" + struct.pack(">I", 65537)),
    "A-RELEASE-RQ declaring 4 GB": (True, b"\x05\x00" + struct.pack(">I", 0xFFFFFFFF)),
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_oversized_pdu_is_refused_at_its_header(server, case):
    associate, header = HEADERS[case]
    if associate:
        raw = open_association(server.port)
        sock = raw.sock
    else:
        sock = socket.create_connection((LOOPBACK, server.port), timeout=5)
    rss_before = server.peak_rss_mib()
    read_before = server.bytes_read()
    sock.sendall(header)
    ending, data = drain(sock, 5, limit=10)  # the A-ABORT (10 bytes), then the close
    read_header = server.bytes_read() - read_before
    pushed = push_body(sock, BODY)
    time.sleep(0.2)
    read_past = server.bytes_read() - read_before - len(header)
    sock.close()
    report("item2 header", case=repr(case), abort=0x07 in pdu_types(data),
           server_read_past_header=read_past, body_bytes_the_kernel_took=pushed)
    assert 0x07 in pdu_types(data), case
    assert read_header == len(header)
    assert read_past == 0, f"the server read {read_past} bytes of a refused body"
    assert server.peak_rss_mib() - rss_before < 8
    assert server.alive() and server.crash_lines() == []


def test_oversized_header_followed_at_once_by_its_body(server):
    """Header and body in one stream (no waiting for the abort): the server reads at most
    what one receive call returns, then drops the connection."""
    raw = open_association(server.port)
    rss_before = server.peak_rss_mib()
    read_before = server.bytes_read()
    raw.sock.settimeout(2)
    try:  # header and the first MiB of body in one write
        raw.sock.sendall(b"\x04\x00" + struct.pack(">I", 0xFFFFFFF0) + b"\xAB" * (1 << 20))
        pushed = (1 << 20) + push_body(raw.sock, BODY - (1 << 20))
    except OSError:
        pushed = 0
    time.sleep(0.2)
    read = server.bytes_read() - read_before
    raw.close()
    report("item2 header+body streamed", server_read=read, client_pushed=pushed,
           rss_growth_mib=f"{server.peak_rss_mib() - rss_before:.1f}")
    assert read <= 1 << 20
    assert pushed < BODY
    assert server.peak_rss_mib() - rss_before < 8


def test_pdv_item_longer_than_its_pdu_is_aborted(server):
    raw = open_association(server.port)
    raw.send(struct.pack(">BBIIBB", 0x04, 0, 1000, 0xFFFFFFFF, 1, 0x03) + b"\x00" * 994)
    ending, data = drain(raw.sock, 5)
    raw.close()
    assert pdu_types(data) == [0x07] and ending == "closed"


# --- lengths inside datasets ---------------------------------------------------------------
def base(uid: str) -> Dataset:
    ds = ct_dataset(uid)
    del ds.PixelData
    return ds


def element_explicit(group: int, element: int, vr: bytes, length: int) -> bytes:
    return struct.pack("<HH2sHI", group, element, vr, 0, length)


def stream_store(port: int, uid: str, chunks, timeout: float = 60) -> int:
    raw = RawAssociation(port, timeout=timeout)
    assert raw.associate([(CT, ["1.2.840.10008.1.2.1"])])[0] == 0x02
    status = raw.c_store_stream(1, CT, uid, chunks)
    raw.release()
    raw.close()
    return status


def mib_of(byte: bytes, total: int, chunk: int = 1 << 20):
    block = byte * chunk
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield block[:n]
        sent += n


def private_offset(data: bytes) -> int:
    """Where group 0009 elements go in an encoded dataset (after group 0008)."""
    for offset, _, _ in top_level_elements(data):
        if struct.unpack_from("<H", data, offset)[0] > 0x0009:
            return offset
    return len(data)


def test_element_lengths_0xfffffffe_fail_c210_in_bounded_memory(server):
    rss_before = server.peak_rss_mib()
    statuses = {}
    # An unwanted element (private OB, before the last indexed one, so the scanner must
    # skip it) declaring 0xFFFFFFFE, followed by 16 MiB and the rest of the dataset only.
    uid = UID_ROOT + "1"
    data = encode(base(uid))
    cut = private_offset(data)
    statuses["unwanted OB 0xFFFFFFFE"] = stream_store(
        server.port, uid, [data[:cut] + element_explicit(0x0009, 0x1010, b"OB", 0xFFFFFFFE),
                           *mib_of(b"\x00", 16 << 20), data[cut:]])
    # A wanted element (Patient Name, as UN so it has a 4-byte length) declaring 0xFFFFFFFE.
    uid = UID_ROOT + "2"
    ds = base(uid)
    data = encode(ds)
    cut = data.index(b"\x10\x00\x10\x00")  # (0010,0010)
    end = cut + 8 + struct.unpack_from("<H", data, cut + 6)[0]
    statuses["wanted PN as UN 0xFFFFFFFE"] = stream_store(
        server.port, uid, [data[:cut] + element_explicit(0x0010, 0x0010, b"UN", 0xFFFFFFFE),
                           *mib_of(b"A", 4 << 20), data[end:]])
    # A short-form element claiming 0xFFFF bytes where 10 follow: runs into the next ones.
    uid = UID_ROOT + "3"
    data = encode(base(uid))
    cut = data.index(b"\x08\x00\x18\x00")  # SOP Instance UID
    statuses["short length 0xFFFF"] = stream_store(
        server.port, uid, [data[:cut + 6] + b"\xff\xff" + data[cut + 8:]])
    report("item2 element lengths", **{k.replace(" ", "_"): hex(v) for k, v in statuses.items()},
           rss_growth_mib=f"{server.peak_rss_mib() - rss_before:.1f}")
    assert set(statuses.values()) == {0xC210}, statuses
    assert server.peak_rss_mib() - rss_before < 16
    assert wait_until(lambda: list((server.data_dir / "tmp").iterdir()) == [], 5)
    assert server.alive() and server.crash_lines() == []


def nested_implicit(depth: int, tag: int = 0x00081140) -> bytes:
    value = b""
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + value + \
            struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        value = struct.pack("<HHI", tag >> 16, tag & 0xFFFF, 0xFFFFFFFF) + item + \
            struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return value


def find(raw: RawAssociation, identifier: bytes, message_id: int) -> tuple[int, int]:
    """(final status, pending responses) of a C-FIND."""
    raw.send_message(FIND_CX, {0x0002: FIND_STUDY, 0x0100: 0x0020, 0x0110: message_id,
                               0x0700: 0, 0x0800: 0}, identifier)
    pending = 0
    for _ in range(100):
        response = raw.read_response()
        status = struct.unpack("<H", response[0x0900])[0]
        if status in (0xFF00, 0xFF01):
            raw.read_response_dataset()
            pending += 1
            continue
        return status, pending
    raise AssertionError("no final C-FIND response")


def image_query(ds: Dataset, sequence_tag: int) -> bytes:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = ds.StudyInstanceUID
    q.SeriesInstanceUID = ds.SeriesInstanceUID
    q.SOPInstanceUID = ds.SOPInstanceUID
    q.add_new(sequence_tag, "SQ", [])
    return encode(q, explicit=False)


def test_sequences_nested_1000_deep(server):
    rss_before = server.peak_rss_mib()
    raw = open_association(server.port)
    figures = {}
    # Undefined length: the tag scanner refuses them at ingest.
    uid = UID_ROOT + "10"
    ds = base(uid)
    figures["store undefined-length"] = raw.c_store(
        CT_CX, CT, uid, with_private(encode(ds), nested(1000, False)))
    assert figures["store undefined-length"] == 0xC210
    # Defined length: skipped unparsed by ingest, so stored (by hash) ...
    stored = []
    for n, tag in enumerate((0x00091010, 0x00081140)):  # a private and a standard sequence
        uid = UID_ROOT + f"{11 + n}"
        ds = base(uid)
        data = with_private(encode(ds), nested(1000, True, tag=tag)) if tag >> 16 == 9 else \
            encode(ds) + nested(1000, True, tag=tag)
        figures[f"store defined-length {tag:08X}"] = raw.c_store(CT_CX, CT, uid, data)
        stored.append((ds, tag))
    # ... then read back by C-FIND sequence keys (answered, in bounded time and memory).
    started = time.monotonic()
    for n, (ds, tag) in enumerate(stored):
        status, pending = find(raw, image_query(ds, tag), 20 + n)
        figures[f"find {tag:08X}"] = f"{status:#06x}/{pending} match"
        assert status in (0x0000, 0xC000), hex(status)
    # A C-FIND identifier nested 1,000 deep.
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    status, _ = find(raw, encode(q, explicit=False) + nested_implicit(1000), 30)
    figures["find with identifier 1000 deep"] = hex(status)
    assert status in (0xC000, 0xA900)
    figures["seconds"] = f"{time.monotonic() - started:.2f}"
    raw.release()
    raw.close()
    # WADO-RS metadata of the stored files.
    base_url = f"http://{LOOPBACK}:{server.web_port()}/dicomweb"
    for ds, tag in stored:
        url = (f"{base_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}/metadata")
        response = httpx.get(url, timeout=60)
        figures[f"metadata {tag:08X}"] = response.status_code
        assert response.status_code in (200, 500), response.status_code
    growth = server.peak_rss_mib() - rss_before
    report("item2 nested 1000", **{k.replace(" ", "_"): hex(v) if k.startswith("store") else v
                                   for k, v in figures.items()},
           rss_growth_mib=f"{growth:.1f}")
    assert all(v == 0 for k, v in figures.items() if k.startswith("store defined"))
    assert growth < 64
    assert server.alive() and server.crash_lines() == []


def test_huge_undefined_length_sequence(server):
    """A private undefined-length sequence where the scanner must walk it (before the last
    indexed attribute): 64 MiB of items, closed, is stored; never closed, refused."""
    rss_before = server.peak_rss_mib()
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 1 << 20) + b"\x00" * (1 << 20)

    def chunks(uid: str, count: int, closed: bool):
        data = encode(base(uid))
        cut = private_offset(data)
        yield data[:cut] + element_explicit(0x0009, 0x1010, b"SQ", 0xFFFFFFFF)
        for _ in range(count):
            yield item
        if closed:
            yield struct.pack("<HHI", 0xFFFE, 0xE0DD, 0) + data[cut:]

    closed = stream_store(server.port, UID_ROOT + "20", chunks(UID_ROOT + "20", 64, True))
    unclosed = stream_store(server.port, UID_ROOT + "21", chunks(UID_ROOT + "21", 32, False))
    growth = server.peak_rss_mib() - rss_before
    report("item2 huge undefined-length sequence", closed_64mib=hex(closed),
           never_closed=hex(unclosed), rss_growth_mib=f"{growth:.1f}")
    assert closed == 0x0000 and unclosed == 0xC210
    assert growth < 32
    assert server.alive() and server.crash_lines() == []
