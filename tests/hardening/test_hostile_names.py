"""Battery item 3: hostile UIDs and AE titles.

Path-like, shell-like, NUL-bearing, over-long, non-ASCII and empty values in the
A-ASSOCIATE-RQ (calling / called AE titles), the C-STORE command (Affected SOP Instance
UID), the dataset (SOP Instance, Study and Series Instance UIDs), the C-MOVE destination
and identifier, DICOMweb paths, query parameters and STOW-RS parts, and `pacs import`
file contents. Each is refused or stored by hash only; a file-system snapshot (the whole
archive and temporary directories, and what changed in /tmp) shows no new file outside
the archive's layout and no name derived from a value a peer sent: every hostile value
carries a marker that no path may contain.

tests/integration/test_bad_input.py already checks six bad Affected SOP Instance UIDs
and a bad Study Instance UID in a dataset; this file covers the rest of the surface.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.hardening.harness import (
    CT, CT_CX, MOVE_CX, MOVE_STUDY, REPO, ct_dataset, drain, encode, hostile_dataset,
    open_association, part10, patch_value, report, snapshot, unexpected_data_files)
from tests.rawclient import RawAssociation, associate_rq_bytes
from tests.support import LOOPBACK, ServerThread, free_port, make_config

MARK = "hostile" + secrets.token_hex(4)
HOSTILE = [
    "..", "/", "\\", f"../../tmp/{MARK}", f"/tmp/{MARK}", f"..\\..\\{MARK}",
    f"1.2.3\x00/../{MARK}", "1" * 65, f"$(touch /tmp/{MARK})", f"1.2.3;touch /tmp/{MARK}",
    f"`touch /tmp/{MARK}`", "１.２.３", f"1.2.{MARK}é", "", "1.2.3\n", "1.2.3 .4",
]
VALID_ROOT = "1.2.826.0.1.3680043.2.1125.83."

#: The test writes values pydicom warns about on purpose (the server's side is what is checked).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class TmpWatch:
    """What appeared in /tmp during a test: new top-level entries, and files newer than the
    start in the top-level directories that changed (a full walk of a shared /tmp is too
    slow); bounded."""

    def __init__(self, root: Path = Path("/tmp")) -> None:
        self.root = root
        self.started = time.time()
        self.before = self._top()

    def _top(self) -> dict[str, float]:
        out = {}
        for entry in os.scandir(self.root):
            try:
                out[entry.name] = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                pass
        return out

    def new_files(self, limit: int = 50_000) -> list[str]:
        after = self._top()
        found = [str(self.root / n) for n in after if n not in self.before]
        changed = [n for n, m in after.items() if n in self.before and m != self.before[n]]
        for name in changed:
            for directory, dirs, files in os.walk(self.root / name, onerror=lambda e: None):
                for entry in dirs + files:
                    path = os.path.join(directory, entry)
                    try:
                        if os.lstat(path).st_mtime >= self.started:
                            found.append(path)
                    except OSError:
                        pass
                if len(found) > limit:
                    return found
        return found


@pytest.fixture
def watched(tmp_path):
    """A server with DICOMweb and a C-MOVE destination; the snapshot taken around it."""
    watch = TmpWatch()
    data_dir = tmp_path / "data"
    before = snapshot(tmp_path)
    server = ServerThread(make_config(
        data_dir, web={}, retrieve={"destinations": {"GOODDEST": f"{LOOPBACK}:{free_port()}"}},
    )).start()
    yield server
    server.stop()
    created = snapshot(tmp_path) - before
    outside = [p for p in created if not p.startswith(str(data_dir))]
    tmp_new = watch.new_files()
    report("item3 file-system snapshot", new_in_archive=len(created) - len(outside),
           new_elsewhere_in_test_dir=len(outside), new_or_changed_in_tmp=len(tmp_new),
           with_marker=sum(MARK in p for p in [*created, *tmp_new]))
    assert [p for p in [*created, *tmp_new] if MARK in p] == []
    assert outside == []
    assert unexpected_data_files(data_dir) == []
    assert not list((REPO).glob(f"*{MARK}*")) and not list(Path("/").glob(f"*{MARK}*"))


def assert_nothing_stored(server) -> None:
    assert server.archive.reader.stats().instances == 0
    assert list(server.archive.store.iter_addresses()) == []


def statuses_of(server, cases) -> dict:
    out = {}
    raw = open_association(server.port)
    for name, (command_uid, data) in cases.items():
        try:
            out[name] = raw.c_store(CT_CX, CT, command_uid, data)
        except (ConnectionError, OSError):  # an abort would end the association
            raw.close()
            raw = open_association(server.port)
            out[name] = "aborted"
    raw.release()
    raw.close()
    return out


def test_hostile_uids_in_command_and_dataset_are_refused(watched):
    cases = {}
    for n, value in enumerate(HOSTILE):
        cases[f"command+dataset SOP {value!r}"] = (
            value, hostile_dataset("1.2", SOPInstanceUID=value)[1])
        cases[f"dataset SOP only {value!r}"] = (
            VALID_ROOT + f"1.{n}", hostile_dataset("1.2", SOPInstanceUID=value)[1])
        cases[f"study {value!r}"] = (VALID_ROOT + f"2.{n}", hostile_dataset(
            VALID_ROOT + f"2.{n}", StudyInstanceUID=value)[1])
        cases[f"series {value!r}"] = (VALID_ROOT + f"3.{n}", hostile_dataset(
            VALID_ROOT + f"3.{n}", SeriesInstanceUID=value)[1])
    statuses = statuses_of(watched, cases)
    refused = {name: s for name, s in statuses.items() if s in (0xC211, 0xA900, 0xC210)}
    report("item3 C-STORE UIDs", cases=len(statuses), refused=len(refused),
           by_status={hex(s): list(statuses.values()).count(s) for s in set(statuses.values())})
    assert refused == statuses, {k: v for k, v in statuses.items() if k not in refused}
    assert_nothing_stored(watched)


def associate_rq_with_titles(calling: bytes, called: bytes) -> bytes:
    rq = bytearray(associate_rq_bytes([(CT, ["1.2.840.10008.1.2.1"])]))
    rq[10:26] = called[:16].ljust(16, b" ")
    rq[26:42] = calling[:16].ljust(16, b" ")
    return bytes(rq)


TITLES = [b"../../" + MARK[:10].encode(), b"/tmp/" + MARK[:11].encode(), b"..\\..\\x",
          b"A\x00B", b"$(rm -rf /)", "é€ü".encode(), b"", b"`id`;|&<>",
          b"line1\nline2", b"\x1b[31mRED", b"%s%s%n%x"]


def test_hostile_ae_titles_are_refused_or_only_recorded_sanitized(watched, caplog):
    outcomes = {}
    stored = []
    for n, title in enumerate(TITLES):
        raw = RawAssociation(watched.port)
        raw.send(associate_rq_with_titles(title, title))
        pdu_type, pdu = raw.read_pdu()
        if pdu_type == 0x02:
            raw.peer_max_pdu = 16384
            uid = VALID_ROOT + f"4.{n}"
            ds = ct_dataset(uid)
            status = raw.c_store(1, CT, uid, encode(ds))
            outcomes[title] = f"accepted, C-STORE {status:#06x}"
            if status == 0:
                stored.append((uid, title))
            raw.release()
        else:
            outcomes[title] = {0x03: "rejected", 0x07: "aborted"}.get(pdu_type, pdu_type)
        raw.close()
    report("item3 AE titles", **{repr(t)[2:-1] or "empty": o for t, o in outcomes.items()})
    for uid, title in stored:  # recorded (file meta, index) sanitized: printable, no "\"
        record = watched.archive.reader.instance(uid)
        meta = pydicom.dcmread(watched.archive.store.path_of(record.content_hash),
                               stop_before_pixels=True).file_meta
        source = str(meta.get("SourceApplicationEntityTitle", ""))
        assert all(" " <= c <= "~" and c != "\\" for c in source) and len(source) <= 16
    # A title's control characters never reach the log (no forged lines, no escapes).
    for record in caplog.records:
        message = record.getMessage()
        assert "line1\nline2" not in message and "\x1b[31m" not in message, message


def move(raw: RawAssociation, destination: str, study_uid: str, message_id: int) -> int:
    from pydicom.dataset import Dataset
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = "9.8.7.6.5.4.3.2.1.0"
    identifier = patch_value(encode(q, explicit=False), "9.8.7.6.5.4.3.2.1.0",
                             study_uid.encode("utf-8"), explicit=False)
    raw.send_message(MOVE_CX, {0x0002: MOVE_STUDY, 0x0100: 0x0021, 0x0110: message_id,
                               0x0600: destination, 0x0700: 0, 0x0800: 0}, identifier)
    for _ in range(100):
        response = raw.read_response()
        status = struct.unpack("<H", response[0x0900])[0]
        if response.get(0x0800, b"\x01\x01") != b"\x01\x01":
            raw.read_response_dataset()  # e.g. the Failed SOP Instance UID List
        if status != 0xFF00:
            return status
    raise AssertionError("no final C-MOVE response")


def test_hostile_move_destinations_and_identifiers(watched):
    ds = ct_dataset(VALID_ROOT + "5.1")
    raw = open_association(watched.port)
    assert raw.c_store(CT_CX, CT, ds.SOPInstanceUID, encode(ds)) == 0
    statuses = {}
    for n, value in enumerate(HOSTILE + [MARK, "GOODDEST/../x", "GOODDEST\x00"]):
        statuses[f"destination {value!r}"] = move(raw, value, ds.StudyInstanceUID, 10 + n)
    for n, value in enumerate(HOSTILE):
        statuses[f"study {value!r}"] = move(raw, "GOODDEST", value, 100 + n)
    raw.release()
    raw.close()
    report("item3 C-MOVE", cases=len(statuses),
           by_status={hex(s): list(statuses.values()).count(s) for s in set(statuses.values())})
    for name, status in statuses.items():
        if name == "destination 'GOODDEST\\x00'":  # NUL is padding: the real one (down)
            assert status == 0xA702, (name, hex(status))
        elif name.startswith("destination"):
            assert status == 0xA801, (name, hex(status))
        else:  # refused, or nothing matched (no sub-operation: the destination is down)
            assert status in (0xC000, 0xA900, 0x0000), (name, hex(status))


def http(port: int, request: bytes) -> tuple[int, bytes]:
    """A raw HTTP/1.1 exchange (clients normalise `..`; this one sends what it is told)."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(request)
        _, data = drain(sock, 10, limit=1 << 22)
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


def get(port: int, path: str) -> tuple[int, bytes]:
    return http(port, f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n"
                .encode("latin-1"))


def test_hostile_dicomweb_paths_and_stow_parts(watched):
    port = watched.web_port
    ds = ct_dataset(VALID_ROOT + "6.1")
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    raw = open_association(watched.port)
    assert raw.c_store(CT_CX, CT, sop, encode(ds)) == 0
    raw.release()
    raw.close()
    instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    paths = [
        "/dicomweb/studies/../../x", f"/dicomweb/studies/../../tmp/{MARK}",
        "/dicomweb/studies/..%2F..%2Fetc%2Fpasswd", "/dicomweb/studies/%2e%2e/%2e%2e/etc/passwd",
        f"/dicomweb/studies/{study}/series/..%5C..%5C{MARK}/metadata",
        f"/dicomweb/studies/{study}%00/metadata", "/dicomweb/studies/" + "1" * 65,
        f"/dicomweb/studies/$(touch%20/tmp/{MARK})/metadata",
        "/dicomweb/studies/%EF%BC%91.%EF%BC%92/metadata",
        f"{instance}/bulkdata/../../../../etc/passwd",
        f"{instance}/bulkdata/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"{instance}/bulkdata/7FE00010/../../../etc/passwd",
        f"{instance}/frames/..%2F1", f"{instance}/frames/1,../2",
        f"/dicomweb/studies?StudyInstanceUID=../../{MARK}",
        f"/dicomweb/studies?PatientID=$(touch%20/tmp/{MARK})&includefield=../../x",
        f"/dicomweb/studies/{study}/series?SeriesInstanceUID=%00{MARK}",
        f"/dicomweb/studies/{study}/series/{series}/instances/{MARK}/rendered",
    ]
    results = {path: get(port, path) for path in paths}
    passwd = Path("/etc/passwd").read_bytes()[:32]
    for path, (status, body) in results.items():
        assert status != 500 and status != 0, (path, status, body[:300])
        assert passwd not in body, path
        if status == 200:  # only searches may succeed, and find nothing of the marker
            assert "?" in path and MARK.encode() not in body, path
    # STOW-RS: parts whose UIDs are hostile are refused one by one; nothing stored.
    boundary = "hostile-boundary"
    parts = []
    for n, value in enumerate(HOSTILE):
        if n % 2:
            ds, data = hostile_dataset("1.2", SOPInstanceUID=value)
            parts.append(part10(ds, data, value.encode("utf-8")))
        else:
            ds, data = hostile_dataset(VALID_ROOT + f"6.2.{n}", StudyInstanceUID=value)
            parts.append(part10(ds, data))
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    stow = {}
    for path in ("/dicomweb/studies", f"/dicomweb/studies/../../{MARK}",
                 f"/dicomweb/studies/{MARK}"):
        head = (f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n"
                f"Content-Type: multipart/related; type=\"application/dicom\"; "
                f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        stow[path] = http(port, head + body)[0]
    report("item3 DICOMweb", paths=len(results),
           by_status={s: [r[0] for r in results.values()].count(s)
                      for s in sorted({r[0] for r in results.values()})},
           stow={p.replace(MARK, "MARK"): s for p, s in stow.items()})
    assert stow["/dicomweb/studies"] == 409
    assert all(status in (400, 404, 405) for path, status in stow.items()
               if path != "/dicomweb/studies")
    assert watched.archive.reader.stats().instances == 1  # the valid one stored first


def test_pacs_import_of_files_with_hostile_uids(tmp_path):
    """`pacs import` (a process of its own, fresh archive): files whose UIDs are hostile are
    refused, the valid one is imported by hash; no file is named after a UID."""
    source = tmp_path / "source"
    source.mkdir()
    for n, value in enumerate(HOSTILE):
        kind = n % 3
        if kind == 0:
            ds, data = hostile_dataset("1.2", SOPInstanceUID=value)
            content = part10(ds, data, value.encode("utf-8"))
        else:
            keyword = "StudyInstanceUID" if kind == 1 else "SeriesInstanceUID"
            ds, data = hostile_dataset(VALID_ROOT + f"7.{n}", **{keyword: value})
            content = part10(ds, data)
        (source / f"f{n}.dcm").write_bytes(content)
    (source / "valid.dcm").write_bytes(part10(ct_dataset(VALID_ROOT + "7.99")))
    data_dir = tmp_path / "data"
    watch = TmpWatch()
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "import", "--data-dir", str(data_dir),
         "--workers", "1", "--settle", "0", "--report", str(tmp_path / "report.json"),
         str(source)], cwd=REPO, capture_output=True, text=True, timeout=120)
    created = snapshot(tmp_path) - before
    rows = json.loads((tmp_path / "report.json").read_text())
    files = rows.get("files", rows) if isinstance(rows, dict) else rows
    statuses = [f.get("status") for f in files] if isinstance(files, list) else []
    report("item3 pacs import", exit=proc.returncode, files=len(statuses),
           by_status={s: statuses.count(s) for s in set(statuses)})
    outside = [p for p in created if not p.startswith(str(data_dir))
               and not p.endswith("report.json")]
    assert outside == [] and [p for p in created if MARK in p] == []
    assert [p for p in watch.new_files() if MARK in p] == []
    assert unexpected_data_files(data_dir) == []
    from engine.index.database import IndexDatabase
    from engine.index.reader import IndexReader
    db = IndexDatabase(data_dir / "index", 1 << 30, readonly=True)
    try:
        uids = {uid for uid, _ in IndexReader(db).iter_instances()}
    finally:
        db.close()
    assert uids == {VALID_ROOT + "7.99"}, (uids, proc.stdout[-2000:], proc.stderr[-2000:])
