"""Bad input gets a clear error, harms nothing, and the server keeps serving."""
from __future__ import annotations

import socket
import struct
import time

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from tests.rawclient import RawAssociation

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
CONTEXTS = [(VERIFICATION, ["1.2.840.10008.1.2"]), (CT, [EXPLICIT_LE])]


def ct_dataset() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def encode(ds: pydicom.Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def connect(server) -> RawAssociation:
    raw = RawAssociation(server.port)
    pdu_type, _ = raw.associate(CONTEXTS)
    assert pdu_type == 0x02
    return raw


def assert_nothing_stored(server) -> None:
    assert server.archive.reader.stats().instances == 0
    assert list(server.archive.store.iter_addresses()) == []
    assert list(server.archive.store.tmp.iterdir()) == []


def assert_still_serving(server) -> None:
    raw = connect(server)
    assert raw.c_echo(1) == 0x0000
    assert raw.release() == 0x06
    raw.close()


@pytest.mark.parametrize("bad_uid", ["1.2.3..4", "../../tmp/x", "1.2.03", "1" * 65, "1.2\x00.3",
                                     "1.2.3; rm -rf /"])
def test_invalid_command_uid_fails_and_stores_nothing(server, bad_uid):
    raw = connect(server)
    ds = ct_dataset()
    status = raw.c_store(3, CT, bad_uid, encode(ds))
    assert status == 0xC211
    assert raw.c_echo(1) == 0x0000
    raw.release()
    assert_nothing_stored(server)


def test_invalid_study_uid_in_dataset_fails(server):
    ds = ct_dataset()
    ds.StudyInstanceUID = "../../etc"
    raw = connect(server)
    assert raw.c_store(3, CT, ds.SOPInstanceUID, encode(ds)) == 0xC211
    raw.release()
    assert_nothing_stored(server)


def test_command_dataset_uid_mismatch_fails(server):
    ds = ct_dataset()
    raw = connect(server)
    assert raw.c_store(3, CT, "1.2.3.4.5", encode(ds)) == 0xA900
    raw.release()
    assert_nothing_stored(server)


def test_unparseable_dataset_fails_with_c210(server):
    ds = ct_dataset()
    data = encode(ds)
    # Cut the dataset in the middle of an element header before the SOP Instance UID.
    raw = connect(server)
    assert raw.c_store(3, CT, ds.SOPInstanceUID, data[:37]) == 0xC210
    assert raw.c_echo(1) == 0x0000
    raw.release()
    assert_nothing_stored(server)


def test_pdu_longer_than_maximum_is_aborted_at_the_header(server):
    raw = connect(server)
    # Declare a 4 GiB P-DATA-TF and send only the header: abort must come without the body.
    raw.send(b"\x04\x00" + struct.pack(">I", 0xFFFFFFF0))
    pdu_type, pdu = raw.read_pdu()
    assert pdu_type == 0x07 and pdu[8] == 0x02  # A-ABORT from the service provider
    assert raw.read_pdu()[0] == 0  # then the connection is closed
    assert_still_serving(server)


def test_unknown_pdu_type_is_aborted(server):
    raw = connect(server)
    raw.send(b"\x09\x00\x00\x00\x00\x02\x00\x00")
    assert raw.read_pdu()[0] == 0x07
    assert_still_serving(server)


def test_pdata_before_association_is_aborted(server):
    raw = RawAssociation(server.port)
    raw.send(b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x04\x01\x03\x00\x00")
    assert raw.read_pdu()[0] == 0x07
    assert_still_serving(server)


def test_oversized_associate_rq_is_aborted(server):
    raw = RawAssociation(server.port)
    raw.send(b"\x01\x00" + struct.pack(">I", 10 * 1024 * 1024))
    assert raw.read_pdu()[0] == 0x07
    assert_still_serving(server)


def test_garbage_associate_rq_is_aborted(server):
    raw = RawAssociation(server.port)
    raw.send(b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16)
    assert raw.read_pdu()[0] == 0x07
    assert_still_serving(server)


def test_dataset_on_unaccepted_context_is_aborted(server):
    raw = connect(server)
    raw.send(b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x04\x07\x03\x00\x00")  # context 7
    assert raw.read_pdu()[0] == 0x07
    assert_still_serving(server)


def test_connection_dropped_mid_dataset_leaves_no_partial_file(server):
    ds = ct_dataset()
    data = encode(ds)
    raw = connect(server)
    raw.send_message(3, {0x0002: CT, 0x0100: 1, 0x0110: 1, 0x0700: 0, 0x0800: 0,
                         0x1000: ds.SOPInstanceUID}, None)
    from engine.net.pdu_framing import encode_p_data
    first = encode_p_data(3, False, data[: len(data) // 2], 0)[0]
    raw.send(first[:6] + first[6:10] + bytes([first[10], 0x00]) + first[12:])  # not last
    raw.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and list(server.archive.store.tmp.iterdir()):
        time.sleep(0.05)
    assert_nothing_stored(server)
    assert_still_serving(server)


def test_calling_ae_not_allowed_is_rejected_1_1_3(server_factory):
    server = server_factory(allowed_calling_ae_titles=("GOODSCU",))
    raw = RawAssociation(server.port)
    pdu_type, pdu = raw.associate(CONTEXTS, calling="BADSCU")
    assert pdu_type == 0x03 and tuple(pdu[7:10]) == (1, 1, 3)
    raw2 = RawAssociation(server.port)
    assert raw2.associate(CONTEXTS, calling="GOODSCU")[0] == 0x02


def test_wrong_called_ae_is_rejected_1_1_7(server_factory):
    server = server_factory(require_called_ae_title=True)
    raw = RawAssociation(server.port)
    pdu_type, pdu = raw.associate(CONTEXTS, called="NOTPACS")
    assert pdu_type == 0x03 and tuple(pdu[7:10]) == (1, 1, 7)


def test_association_limit_rejects_2_3_2_and_recovers(server_factory):
    server = server_factory(max_associations=2)
    held = [connect(server), connect(server)]
    raw = RawAssociation(server.port)
    pdu_type, pdu = raw.associate(CONTEXTS)
    assert pdu_type == 0x03 and tuple(pdu[7:10]) == (2, 3, 2)
    held[0].release()
    held[0].close()
    time.sleep(0.2)
    assert_still_serving(server)


def test_silent_connection_is_closed_by_artim(server_factory):
    server = server_factory(artim_timeout=0.3)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    started = time.monotonic()
    assert sock.recv(16) == b""  # server closed it
    assert time.monotonic() - started < 3
    assert_still_serving(server)


def test_idle_association_is_aborted(server_factory):
    server = server_factory(idle_timeout=0.3)
    raw = connect(server)
    pdu_type, _ = raw.read_pdu()
    assert pdu_type == 0x07


def test_low_disk_space_fails_with_a700_then_recovers(server):
    ds = ct_dataset()
    store = server.archive.store
    store.min_free_bytes = 1 << 62  # "disk full"
    store._free_checked_at = 0
    raw = connect(server)
    assert raw.c_store(3, CT, ds.SOPInstanceUID, encode(ds)) == 0xA700
    assert_nothing_stored(server)
    store.min_free_bytes = 0  # space returns
    store._free_checked_at = 0
    assert raw.c_store(3, CT, ds.SOPInstanceUID, encode(ds)) == 0x0000
    raw.release()


def test_index_map_full_fails_with_a700_never_success(server_factory):
    server = server_factory(storage={"index_map_size": 32 * 4096})
    raw = connect(server)
    ds = ct_dataset()
    statuses = []
    for i in range(400):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.{i + 1}"
        status = raw.c_store(3, CT, ds.SOPInstanceUID, encode(ds))
        statuses.append(status)
        if status != 0:
            break
    raw.release()
    assert statuses[-1] == 0xA700
    stats = server.archive.reader.stats()
    assert stats.instances == statuses.count(0)
    # Every acknowledged instance is in the index; nothing refused left a file behind.
    assert sum(1 for _ in server.archive.store.iter_addresses()) == stats.instances


def test_per_ip_connection_cap_rejects_2_3_2(server_factory):
    server = server_factory(max_associations_per_ip=2)
    held = [connect(server), connect(server)]
    raw = RawAssociation(server.port)
    pdu_type, pdu = raw.associate(CONTEXTS)
    assert pdu_type == 0x03 and tuple(pdu[7:10]) == (2, 3, 2)
    for association in held:
        association.release()
        association.close()
    time.sleep(0.2)
    assert_still_serving(server)


def test_dataset_that_stops_arriving_is_aborted_by_the_dimse_timeout(server_factory):
    server = server_factory(dimse_timeout=0.5)
    ds = ct_dataset()
    raw = connect(server)
    raw.send_message(3, {0x0002: CT, 0x0100: 1, 0x0110: 1, 0x0700: 0, 0x0800: 0,
                         0x1000: ds.SOPInstanceUID}, None)
    raw._send_fragment(3, encode(ds)[:100], last=False)  # then silence
    started = time.monotonic()
    assert raw.read_pdu()[0] == 0x07
    assert time.monotonic() - started < 5
    assert_nothing_stored(server)
    assert_still_serving(server)
