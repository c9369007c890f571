"""DICOM TLS and the known-peer table, against real servers on 127.0.0.1.

Every refused TLS client must be refused before a single PDU is read: no
association is numbered, logged or counted (the probe association after it is
assoc#1), and the server goes on serving.  Certificates are made per module in a
temporary directory (tests/tlscerts.py).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import socket
import ssl
import subprocess
import threading
import time
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    CTImageStorage, StorageCommitmentPushModel, StudyRootQueryRetrieveInformationModelMove,
    Verification)

from engine.config import PeerConfig, RemoteAE, SecurityConfig, TLSConfig
from tests.rawclient import RawAssociation, associate_rq_bytes
from tests.support import (
    DCMTK_ENV, LOOPBACK, ServerThread, free_port, make_config, require_tool)
from tests.tlscerts import PKI, Pair, make_pki

VERIFICATION = "1.2.840.10008.1.1"
CONTEXTS = [(VERIFICATION, ["1.2.840.10008.1.2"])]


# --- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(pki: PKI, **options) -> TLSConfig:
    return TLSConfig(**{"port": free_port(), "certificate": str(pki.server.cert),
                        "key": str(pki.server.key), "ca_file": str(pki.ca), **options})


@pytest.fixture
def start(tmp_path, pki):
    """Start servers with a [tls] (default: TLS port, client certificates required) and a
    [security] section; all stopped at teardown."""
    started = []

    def start(tls: TLSConfig | None = None, security: SecurityConfig | None = None,
              retrieve: dict | None = None, **network) -> ServerThread:
        config = make_config(tmp_path / f"data{len(started)}", retrieve=retrieve or {},
                             **network)
        config = dataclasses.replace(config, tls=tls or tls_config(pki),
                                     security=security or SecurityConfig())
        server = ServerThread(config).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def tls_port(server: ServerThread) -> int:
    assert server.server.tls_port is not None
    return server.server.tls_port


def client_context(pki: PKI, pair: Pair | None = None, **versions) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    for name, version in versions.items():
        setattr(ctx, name, version)
    return ctx


def legacy_context(pki: PKI, ciphers: str, maximum: ssl.TLSVersion,
                   minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """A client that offers what BCP 195 forbids (old protocol versions, weak suites)."""
    ctx = client_context(pki, pki.client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1, TLSv1_1
        ctx.minimum_version = minimum
        ctx.maximum_version = maximum
    ctx.set_ciphers(ciphers)
    return ctx


def tls_echo(port: int, ctx: ssl.SSLContext, calling: str = "TLSSCU") -> int | None:
    """C-ECHO with pynetdicom over TLS; the status, or None when no association."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS", tls_args=(ctx, LOOPBACK))
    if not assoc.is_established:
        return None
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


class TLSRawAssociation(RawAssociation):
    """tests/rawclient's permissive client, over TLS (any calling AE title)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> None:
        super().__init__(port, timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=LOOPBACK)


def refused_attempt(port: int, ctx: ssl.SSLContext | None) -> bytes | Exception:
    """Connect (TLS when `ctx`), send an A-ASSOCIATE-RQ and return what came back: an
    exception or bytes (b"" = closed). Never blocks longer than the socket timeout."""
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    try:
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=LOOPBACK)
        sock.sendall(associate_rq_bytes(CONTEXTS))
        received = b""
        for _ in range(100):  # until the server closes (bounded)
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received
    except (ssl.SSLError, OSError) as exc:
        return exc
    finally:
        sock.close()


def logged_associations(caplog) -> list[str]:
    return re.findall(r"assoc#\d+", "\n".join(r.getMessage() for r in caplog.records
                                                if r.name.startswith("engine.net")))


def assert_refused_before_any_pdu(server: ServerThread, caplog, pki: PKI) -> None:
    """No association was numbered, logged or counted; the server still serves TLS."""
    assert server.server.listener.associations == set()
    assert logged_associations(caplog) == []
    assert tls_echo(tls_port(server), client_context(pki, pki.client)) == 0x0000
    assert logged_associations(caplog)[0] == "assoc#1"


@pytest.fixture
def net_log(caplog):
    caplog.set_level(logging.DEBUG, logger="engine.net")
    return caplog


def dcmtk_tls(name: str) -> str:
    """A DCMTK tool built with TLS support, else skip (or fail under CI, via require_tool)."""
    path = require_tool(name)
    usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
    if "--enable-tls" not in usage.stdout + usage.stderr:
        pytest.skip(f"{name} ({path}) was built without TLS support (no +tls option)")
    return path


def run_dcmtk(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([path, *args], capture_output=True, text=True, errors="replace",
                          env=DCMTK_ENV, timeout=60)


def ct_small() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


# --- clients that succeed ------------------------------------------------------------
def test_dcmtk_echoscu_over_tls(start, pki, net_log):
    echoscu = dcmtk_tls("echoscu")
    server = start()
    proc = run_dcmtk(echoscu, "-v", "+tls", str(pki.client.key), str(pki.client.cert),
                     "+cf", str(pki.ca), LOOPBACK, str(tls_port(server)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Received Echo Response (Success)" in proc.stdout + proc.stderr
    assert any("TLS connection" in r.getMessage() and "modality-1" in r.getMessage()
               for r in net_log.records)


def test_dcmtk_storescu_over_tls_stores_the_instance(start, pki):
    storescu = dcmtk_tls("storescu")
    server = start()
    proc = run_dcmtk(storescu, "+tls", str(pki.client.key), str(pki.client.cert),
                     "+cf", str(pki.ca), LOOPBACK, str(tls_port(server)),
                     get_testdata_file("CT_small.dcm"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert server.archive.reader.stats().instances == 1


def test_pynetdicom_store_over_tls_1_2_with_a_bcp195_cipher(start, pki):
    server = start()
    ctx = client_context(pki, pki.client, maximum_version=ssl.TLSVersion.TLSv1_2)
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, tls_port(server), ae_title="PACS", tls_args=(ctx, LOOPBACK))
    assert assoc.is_established
    cipher, version, _ = assoc.dul.socket.socket.cipher()
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and "GCM" in cipher
    assert assoc.send_c_store(ct_small()).Status == 0x0000
    assoc.release()
    assert server.archive.reader.stats().instances == 1


def test_plain_and_tls_listeners_side_by_side(start, pki):
    server = start()
    assert server.port != tls_port(server)
    raw = RawAssociation(server.port)
    assert raw.associate(CONTEXTS)[0] == 0x02 and raw.c_echo(1) == 0x0000
    raw.release()
    assert tls_echo(tls_port(server), client_context(pki, pki.client)) == 0x0000


def test_tls_only_has_no_plain_listener(start, pki):
    server = start(tls=tls_config(pki, plain_listener=False))
    assert server.server.port is None
    assert tls_echo(tls_port(server), client_context(pki, pki.client)) == 0x0000


def test_client_certificate_optional_when_not_required(start, pki):
    server = start(tls=tls_config(pki, require_client_certificate=False))
    assert tls_echo(tls_port(server), client_context(pki)) == 0x0000
    assert tls_echo(tls_port(server), client_context(pki, pki.client)) == 0x0000
    # ... but one that is presented must still be valid.
    result = refused_attempt(tls_port(server), client_context(pki, pki.expired))
    assert isinstance(result, Exception) or result == b"" or result[:1] == b"\x15", result


# --- clients refused before any PDU ----------------------------------------------------------
REFUSED_CLIENTS = {
    "untrusted CA": lambda pki: client_context(pki, pki.foreign),
    "expired certificate": lambda pki: client_context(pki, pki.expired),
    "no client certificate": lambda pki: client_context(pki),
    "TLS 1.0/1.1 only": lambda pki: legacy_context(pki, "DEFAULT:@SECLEVEL=0",
                                                   ssl.TLSVersion.TLSv1_1,
                                                   ssl.TLSVersion.TLSv1),
    "TLS 1.2 without forward secrecy (RSA key transport, CBC)":
        lambda pki: legacy_context(pki, "AES128-SHA:AES256-SHA:AES128-GCM-SHA256:@SECLEVEL=0",
                                   ssl.TLSVersion.TLSv1_2),
    "plain DICOM on the TLS port": lambda pki: None,
}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("case", list(REFUSED_CLIENTS))
def test_refused_client_never_reaches_the_dicom_layer(start, pki, net_log, case, loop):
    server = start(loop=loop)
    result = refused_attempt(tls_port(server), REFUSED_CLIENTS[case](pki))
    # Nothing DICOM came back: an error, a closed connection, or a TLS alert record.
    assert isinstance(result, Exception) or result == b"" or result[:1] == b"\x15", result
    assert_refused_before_any_pdu(server, net_log, pki)


@pytest.mark.parametrize("case, version", [
    ("TLS 1.0/1.1 only", "TLSv1.1"),
    ("TLS 1.2 without forward secrecy (RSA key transport, CBC)", "TLSv1.2")])
def test_the_legacy_clients_above_do_speak_their_protocol(pki, case, version):
    """Control: the refused legacy clients handshake fine with a server that allows
    them, so their refusal above is our server's policy, not a client-side failure."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    server_ctx.set_ciphers("ALL:@SECLEVEL=0")
    server_ctx.load_cert_chain(pki.server.cert, pki.server.key)
    with socket.create_server((LOOPBACK, 0)) as listening:
        listening.settimeout(10)
        result: dict = {}

        def accept_one():
            conn, _ = listening.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    result["server"] = tls.version()
            except (ssl.SSLError, OSError) as exc:
                result["server"] = exc

        thread = threading.Thread(target=accept_one, daemon=True)
        thread.start()
        with socket.create_connection(listening.getsockname(), timeout=10) as sock:
            with REFUSED_CLIENTS[case](pki).wrap_socket(sock, server_hostname=LOOPBACK) as tls:
                negotiated = tls.version()
        thread.join(10)
    assert negotiated == version and result["server"] == version


def test_dcmtk_with_an_expired_certificate_is_refused(start, pki, net_log):
    echoscu = dcmtk_tls("echoscu")
    server = start()
    proc = run_dcmtk(echoscu, "+tls", str(pki.expired.key), str(pki.expired.cert),
                     "+cf", str(pki.ca), LOOPBACK, str(tls_port(server)))
    assert proc.returncode != 0
    assert_refused_before_any_pdu(server, net_log, pki)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_silent_tls_clients_do_not_stall_a_login_and_are_dropped_at_the_deadline(start, pki,
                                                                                  loop):
    deadline = 3.0
    server = start(tls=tls_config(pki, handshake_timeout=deadline), loop=loop)
    silent = [socket.create_connection((LOOPBACK, tls_port(server)), timeout=10)
              for _ in range(10)]
    try:
        for sock in silent[::2]:  # half start a ClientHello record and stop
            sock.sendall(b"\x16\x03\x01\x02\x00")
        opened = time.monotonic()
        assert tls_echo(tls_port(server), client_context(pki, pki.client)) == 0x0000
        assert time.monotonic() - opened < deadline  # served at once, not after the others
        for sock in silent:
            sock.settimeout(deadline + 5)
            try:
                assert sock.recv(1024)[:1] in (b"", b"\x15")  # closed (or a TLS alert)
            except ConnectionResetError:
                pass
        waited = time.monotonic() - opened
        assert deadline - 0.5 < waited < deadline + 5
    finally:
        for sock in silent:
            sock.close()
    assert tls_echo(tls_port(server), client_context(pki, pki.client)) == 0x0000


def test_tls_client_that_never_sends_an_associate_rq_is_dropped_by_artim(start, pki):
    server = start(artim_timeout=1.0)
    raw = TLSRawAssociation(tls_port(server), client_context(pki, pki.client))
    raw.sock.settimeout(8)
    opened = time.monotonic()
    try:
        assert raw.sock.recv(1024) == b""
    except (ConnectionResetError, ssl.SSLError):
        pass
    assert time.monotonic() - opened < 6


# --- our requestor to TLS peers ------------------------------------------------------------
class TLSStorageSCP:
    """A pynetdicom storage SCP on loopback, TLS only, requiring a client certificate."""

    def __init__(self, pki: PKI, certificate: Pair) -> None:
        self.port = free_port()
        self.received: dict[str, Dataset] = {}
        self.client_cns: list[str] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certificate.cert, certificate.key)
        ctx.load_verify_locations(pki.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ae = AE(ae_title="TLSDEST")
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        self._server = ae.start_server((LOOPBACK, self.port), block=False, ssl_context=ctx,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event):
        ds = event.dataset
        self.received[ds.SOPInstanceUID] = ds
        cert = event.assoc.dul.socket.socket.getpeercert() or {}
        self.client_cns += [v for rdn in cert.get("subject", ()) for k, v in rdn
                            if k == "commonName"]
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def c_move(port: int, study_uid: str, destination: str):
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    final = None
    for status, _ in assoc.send_c_move(identifier, destination,
                                       StudyRootQueryRetrieveInformationModelMove):
        if status and status.Status != 0xFF00:
            final = status.Status
    assoc.release()
    return final


def large_ct(like: Dataset, megabytes: int) -> Dataset:
    """A copy of `like` with ~`megabytes` MB of (patterned) pixel data and its own UID."""
    ds = like.copy()
    ds.SOPInstanceUID = like.SOPInstanceUID + ".9"
    ds.Rows = ds.Columns = side = int((megabytes * 2**20 // 2) ** 0.5)
    ds.PixelData = bytes(range(256)) * (side * side * 2 // 256) + bytes(side * side * 2 % 256)
    return ds


def test_c_move_to_a_tls_destination(start, pki):
    good, untrusted = TLSStorageSCP(pki, pki.server), TLSStorageSCP(pki, pki.foreign_server)
    try:
        server = start(retrieve={"destinations": {
            "TLSDEST": RemoteAE(LOOPBACK, good.port, tls=True),
            "UNTRUSTED": RemoteAE(LOOPBACK, untrusted.port, tls=True),
            "PLAINTOTLS": f"{LOOPBACK}:{good.port}"}})
        ds = ct_small()
        big = large_ct(ds, 8)  # streamed from its file in chunks, through the TLS layer
        ae = AE(ae_title="FILLSCU")
        ae.add_requested_context(CTImageStorage)
        ctx = client_context(pki, pki.client)
        assoc = ae.associate(LOOPBACK, tls_port(server), ae_title="PACS", tls_args=(ctx, LOOPBACK))
        assert assoc.send_c_store(ds).Status == 0x0000
        assert assoc.send_c_store(big).Status == 0x0000
        assoc.release()

        assert c_move(server.port, ds.StudyInstanceUID, "TLSDEST") == 0x0000
        assert set(good.received) == {ds.SOPInstanceUID, big.SOPInstanceUID}
        assert good.received[big.SOPInstanceUID].PixelData == big.PixelData
        assert set(good.client_cns) == {"pacs.test"}  # our certificate, as client certificate
        # A destination whose certificate does not chain to our CA gets nothing ...
        assert c_move(server.port, ds.StudyInstanceUID, "UNTRUSTED") == 0xA702
        assert untrusted.received == {}
        # ... and a TLS peer addressed without tls = true does not associate in clear.
        assert c_move(server.port, ds.StudyInstanceUID, "PLAINTOTLS") == 0xA702
        assert tls_echo(tls_port(server), client_context(pki, pki.client)) == 0x0000
    finally:
        good.stop()
        untrusted.stop()


def test_storage_commitment_report_on_a_new_tls_association(start, pki):
    """N-ACTION over TLS, released at once: the report goes on a new TLS association to
    the requester ([retrieve] destinations says tls = true), with our client certificate."""
    reports, arrived = [], threading.Event()

    def on_report(event):
        reports.append((event.event_type, event.event_information.TransactionUID))
        arrived.set()
        return 0x0000, None

    modality_port = free_port()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the modality's listener (a node cert)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    ctx.load_verify_locations(pki.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = AE(ae_title="MODALITY")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    scp = listener.start_server((LOOPBACK, modality_port), block=False, ssl_context=ctx,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        server = start(retrieve={"destinations": {
            "MODALITY": {"host": LOOPBACK, "port": modality_port, "tls": True}}})
        ds = ct_small()
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(LOOPBACK, tls_port(server), ae_title="PACS",
                             tls_args=(client_context(pki, pki.client), LOOPBACK))
        assert assoc.send_c_store(ds).Status == 0x0000
        action = Dataset()
        action.TransactionUID = "1.2.3.4.5.6"
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = \
            ds.SOPClassUID, ds.SOPInstanceUID
        action.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(action, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assoc.release()
        assert status.Status == 0x0000
        assert arrived.wait(20), "no report on a new TLS association"
        assert reports == [(1, "1.2.3.4.5.6")]
    finally:
        scp.shutdown()


# --- the known-peer table -------------------------------------------------------------------
def peer_security(pki: PKI, deny_unknown: bool = True) -> SecurityConfig:
    return SecurityConfig(deny_unknown=deny_unknown, peers=(
        PeerConfig("GOOD", ("127.0.0.0/8",)),
        PeerConfig("FARAWAY", ("10.0.0.0/8", "192.168.1.7")),
        PeerConfig("CERTED", certificate_cn="modality-1"),
        PeerConfig("PINNED", ("127.0.0.1",), certificate_sha256=pki.client2.sha256),
    ))


def associate_as(port: int, calling: str, ctx: ssl.SSLContext | None = None):
    raw = TLSRawAssociation(port, ctx) if ctx is not None else RawAssociation(port)
    try:
        pdu_type, pdu = raw.associate(CONTEXTS, calling=calling)
        if pdu_type == 0x02:
            assert raw.c_echo(1) == 0x0000
            raw.release()
            return "accepted"
        assert pdu_type == 0x03, pdu_type
        return tuple(pdu[7:10])
    finally:
        raw.close()


def test_known_peers_are_bound_to_address_and_certificate(start, pki, net_log):
    server = start(security=peer_security(pki))
    plain, secure = server.port, tls_port(server)
    modality_1 = client_context(pki, pki.client)
    modality_2 = client_context(pki, pki.client2)
    assert associate_as(plain, "GOOD") == "accepted"
    assert associate_as(secure, "GOOD", modality_1) == "accepted"
    assert associate_as(plain, "FARAWAY") == (1, 1, 3)          # wrong source address
    assert associate_as(plain, "STRANGER") == (1, 1, 3)         # unknown AE title
    assert associate_as(secure, "STRANGER", modality_1) == (1, 1, 3)
    assert associate_as(plain, "CERTED") == (1, 1, 3)           # no certificate (plain)
    assert associate_as(secure, "CERTED", modality_1) == "accepted"
    assert associate_as(secure, "CERTED", modality_2) == (1, 1, 3)   # wrong CN
    assert associate_as(secure, "PINNED", modality_2) == "accepted"
    assert associate_as(secure, "PINNED", modality_1) == (1, 1, 3)   # wrong fingerprint
    messages = "\n".join(r.getMessage() for r in net_log.records)
    assert "refused calling AE 'FARAWAY' from 127.0.0.1: does not match its known-peer " \
           "entry: source address 127.0.0.1 is not one of its addresses" in messages
    assert "refused calling AE 'STRANGER' from 127.0.0.1: calling AE title is not a " \
           "known peer" in messages
    assert "CN 'modality-2' is not 'modality-1'" in messages
    assert "fingerprint differs" in messages
    # The server keeps serving.
    assert associate_as(plain, "GOOD") == "accepted"


def test_unknown_peers_are_admitted_unless_deny_unknown(start, pki):
    server = start(security=peer_security(pki, deny_unknown=False))
    assert associate_as(server.port, "STRANGER") == "accepted"
    assert associate_as(server.port, "FARAWAY") == (1, 1, 3)   # known, but not from here
    assert associate_as(tls_port(server), "CERTED",
                        client_context(pki, pki.client2)) == (1, 1, 3)


def test_allowed_calling_ae_titles_still_work_beside_the_peer_table(start, pki):
    server = start(security=SecurityConfig(peers=(PeerConfig("CERTED",
                                                             certificate_cn="modality-1"),)),
                   allowed_calling_ae_titles=("OLDSCU",))
    assert associate_as(server.port, "OLDSCU") == "accepted"
    assert associate_as(server.port, "STRANGER") == (1, 1, 3)
    assert associate_as(tls_port(server), "CERTED", client_context(pki, pki.client)) == \
        "accepted"


def test_router_forwards_to_a_tls_destination_with_our_client_certificate(tmp_path, pki):
    from engine.config import config_from_mapping

    good = TLSStorageSCP(pki, pki.server)
    study = [ct_small()]
    config = config_from_mapping({
        "network": {"host": LOOPBACK, "port": 0},
        "storage": {"data_dir": str(tmp_path / "data"), "index_map_size": 1 << 30,
                    "min_free_bytes": 0},
        "tls": {"certificate": str(pki.server.cert), "key": str(pki.server.key),
                "ca_file": str(pki.ca)},  # no TLS listener: only our client side
        "routing": {"destinations": {"SECURE": {"type": "dicom", "ae_title": "TLSDEST",
                                                "host": LOOPBACK, "port": good.port,
                                                "tls": True}},
                    "rules": [{"name": "all", "forward": ["SECURE"]}]},
    })
    server = ServerThread(config).start()
    try:
        ae = AE(ae_title="FILLSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
        assert assoc.send_c_store(study[0]).Status == 0x0000
        assoc.release()
        deadline = time.monotonic() + 30
        while server.archive.reader.forward_summary() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not server.archive.reader.forward_summary()
    finally:
        server.stop()
        good.stop()
    assert set(good.received) == {study[0].SOPInstanceUID}
    assert set(good.client_cns) == {"pacs.test"}
