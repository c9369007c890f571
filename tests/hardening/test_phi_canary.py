"""Battery item 7: a PHI canary.

A representative run (stores, C-FINDs, a C-MOVE, failing stores of five kinds, a failing
C-FIND, malformed associations, DICOMweb searches, `pacs export`) with the patient name
"CANARY^PHI" and ID "CANARY-ID-1", against a server process logging at DEBUG and against
an in-process server (caplog at DEBUG). The canary may be found only in the store
(objects/), the index, and what was asked for (the export folder, the C-MOVE
destination); not in the server's log, the logs captured in-process, the export
command's output, the Error Comment (0000,0902) of any failure response, the archive's
tmp/ or a file that appeared in /tmp. The audit trail (built by another part of the
project) is ignored.
"""
from __future__ import annotations

import logging
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt

from tests.hardening.harness import (
    CT, CT_CX, FIND_CX, FIND_STUDY, MOVE_CX, MOVE_STUDY, REPO, PacsProcess, ct_dataset,
    encode, open_association, report, store_command)
from tests.hardening.test_hostile_names import TmpWatch
from tests.support import LOOPBACK, ServerThread, free_port, make_config

NAME, PID = "CANARY^PHI", "CANARY-ID-1"
#: Upper case only: the tests' own temporary paths say "test_canary_...".
NEEDLES = (b"CANARY", b"CANARY%5EPHI", "CANARY".encode("utf-16-le"))
UID_ROOT = "1.2.826.0.1.3680043.2.1125.87."

#: The test writes values pydicom warns about on purpose (the server's side is what is checked).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def has_canary(data: bytes | str) -> bool:
    data = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return any(needle in data for needle in NEEDLES)


def canary(n: int, **extra) -> Dataset:
    return ct_dataset(UID_ROOT + f"1.{n}", PatientName=NAME, PatientID=PID,
                      StudyInstanceUID=UID_ROOT + "2", SeriesInstanceUID=UID_ROOT + "3",
                      **extra)


class Destination:
    """A pynetdicom storage SCP: the C-MOVE destination."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received = 0
        ae = AE(ae_title="MOVEDEST")
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server((LOOPBACK, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        self.received += 1
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def responses(raw, limit: int = 1000) -> list[dict]:
    out = []
    for _ in range(limit):
        response = raw.read_response()
        out.append(response)
        if response.get(0x0800, b"\x01\x01") != b"\x01\x01":
            raw.read_response_dataset()
        if struct.unpack("<H", response[0x0900])[0] not in (0xFF00, 0xFF01):
            return out
    raise AssertionError("no final response")


def scenario(port: int, web_port: int) -> tuple[list[tuple[str, int, str]], int]:
    """Run everything once; (what, status, Error Comment) of each DIMSE answer and the
    number of C-FIND matches of the canary."""
    answers: list[tuple[str, int, str]] = []

    def note(what: str, response: dict) -> int:
        status = struct.unpack("<H", response[0x0900])[0]
        comment = response.get(0x0902, b"").decode("ascii", "replace")
        answers.append((what, status, comment))
        return status

    raw = open_association(port)
    for n in range(2):
        ds = canary(n)
        raw.send_message(CT_CX, {0x0002: CT, 0x0100: 1, 0x0110: 1, 0x0700: 0, 0x0800: 0,
                                 0x1000: ds.SOPInstanceUID}, encode(ds))
        assert note("store", raw.read_response()) == 0
    # Failing stores.
    failing = {
        "command/dataset mismatch": (UID_ROOT + "9.1", encode(canary(10))),
        "truncated": (UID_ROOT + "1.11", encode(canary(11))[:400]),
        "invalid study UID": (UID_ROOT + "1.12", encode(ct_dataset(
            UID_ROOT + "1.12", PatientName=NAME, PatientID=PID, StudyInstanceUID="CANARY-ID-1"))),
        "patient name over the scanner's bound": (UID_ROOT + "1.13", encode(ct_dataset(
            UID_ROOT + "1.13", PatientName=NAME * 120_000, PatientID=PID))),
        "duplicate with other content": (UID_ROOT + "1.0", encode(canary(0, InstanceNumber=999))),
    }
    for what, (uid, data) in failing.items():
        raw.send_message(CT_CX, {0x0002: CT, 0x0100: 1, 0x0110: 2, 0x0700: 0, 0x0800: 0,
                                 0x1000: uid}, data)
        note(f"store: {what}", raw.read_response())
    # C-FINDs: one that matches the canary, one that fails on a malformed key.
    matches = 0
    for what, keys in (("find", {"PatientName": "CANARY*", "PatientID": PID}),
                       ("find with a bad date", {"PatientID": PID, "StudyDate": NAME}),
                       ("find with a bad name", {"PatientName": NAME + "\\" * 70})):
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        for keyword, value in keys.items():
            setattr(q, keyword, value)
        raw.send_message(FIND_CX, {0x0002: FIND_STUDY, 0x0100: 0x20, 0x0110: 3, 0x0700: 0,
                                   0x0800: 0}, encode(q, explicit=False))
        found = responses(raw)
        note(what, found[-1])
        if what == "find":
            matches = len(found) - 1
    # C-MOVE of the canary's study, and one to an unknown destination.
    for what, destination in (("move", "MOVEDEST"), ("move to an unknown AE", "NOWHERE")):
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = UID_ROOT + "2"
        raw.send_message(MOVE_CX, {0x0002: MOVE_STUDY, 0x0100: 0x21, 0x0110: 4,
                                   0x0600: destination, 0x0700: 0, 0x0800: 0},
                         encode(q, explicit=False))
        note(what, responses(raw)[-1])
    raw.release()
    raw.close()
    # Malformed associations carrying the canary: a protocol error mid-dataset, and a
    # command set with the canary where a UID belongs.
    raw = open_association(port)
    raw.send_message(CT_CX, {0x0002: CT, 0x0100: 1, 0x0110: 5, 0x0700: 0, 0x0800: 0,
                             0x1000: UID_ROOT + "1.20"}, None)
    data = encode(canary(20))
    raw.send(struct.pack(">BBIIBB", 4, 0, 606, 602, CT_CX, 0x00) + data[:600])
    raw.send(struct.pack(">BBIIBB", 4, 0, 606, 602, CT_CX, 0x01) + data[:600])  # a "command"
    assert raw.read_pdu()[0] == 0x07
    raw.close()
    raw = open_association(port)
    raw.send_message(CT_CX, {0x0002: CT, 0x0100: 1, 0x0110: 6, 0x0700: 0, 0x0800: 0,
                             0x1000: PID}, encode(canary(21)))
    note("store: the canary as Affected SOP Instance UID", raw.read_response())
    raw.send(store_command(NAME) + b"\x00" * 8)  # not even a PDU
    raw.read_pdu()
    raw.close()
    # DICOMweb searches and a metadata request.
    base = f"http://{LOOPBACK}:{web_port}/dicomweb"
    with httpx.Client(timeout=30) as client:
        client.get(f"{base}/studies", params={"PatientName": "CANARY*"})
        client.get(f"{base}/studies", params={"PatientID": PID, "StudyDate": NAME})
        client.get(f"{base}/studies/{UID_ROOT}2/metadata")
    return answers, matches


def export(data_dir: Path, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", "export", "--data-dir", str(data_dir),
         "--patient", PID, "--folder", str(folder)],
        capture_output=True, text=True, timeout=120, cwd=REPO)


def file_has_canary(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size < (64 << 20) and \
            has_canary(path.read_bytes())
    except OSError:  # another process's file, gone or unreadable
        return False


def files_with_canary(root: Path, skip=()) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not any(part in path.parts for part in skip):
            try:
                if path.stat().st_size < (64 << 20) and has_canary(path.read_bytes()):
                    found.append(str(path))
            except OSError:
                pass
    return found


def check_comments(answers) -> None:
    leaking = [(what, hex(status), comment) for what, status, comment in answers
               if has_canary(comment)]
    assert leaking == [], leaking
    assert all(status != 0 for what, status, _ in answers if what.startswith("store: ")), \
        answers


def test_canary_stays_in_the_store_and_the_index_server_process(tmp_path):
    watch = TmpWatch()
    destination = Destination()
    data_dir = tmp_path / "data"
    server = PacsProcess(data_dir, {
        "logging": {"level": "DEBUG"}, "web": {"enabled": True, "port": 0},
        "retrieve": {"destinations": {"MOVEDEST": f"{LOOPBACK}:{destination.port}"}},
        "network": {"idle_timeout": 30.0, "dimse_timeout": 30.0}}).start()
    try:
        answers, matches = scenario(server.port, server.web_port())
        exported = export(data_dir, tmp_path / "export")
    finally:
        server.stop()
        destination.stop()
    log = server.log()
    leaking_lines = [line for line in log.splitlines() if has_canary(line)]
    archive = {part: bool(files_with_canary(data_dir / part)) for part in ("objects", "index")}
    elsewhere = [p for p in files_with_canary(data_dir, skip=("objects", "index"))
                 if "audit" not in p]
    in_tmp = [p for p in watch.new_files() if not p.startswith(str(tmp_path))
              and file_has_canary(Path(p))]
    report("item7 PHI canary (server process, DEBUG log)", dimse_answers=len(answers),
           failures=sum(1 for _, s, _ in answers if s not in (0, 0xFF00)),
           error_comments_with_canary=sum(has_canary(c) for _, _, c in answers),
           log_lines=len(log.splitlines()), log_lines_with_canary=len(leaking_lines),
           export_output_with_canary=has_canary(exported.stdout + exported.stderr),
           canary_in_objects=archive["objects"], canary_in_index=archive["index"],
           other_archive_files_with_canary=len(elsewhere), new_tmp_files_with_canary=len(in_tmp),
           moved=destination.received, find_matches=matches)
    assert matches == 1 and destination.received == 2
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert files_with_canary(tmp_path / "export")  # exported what was asked for
    assert archive == {"objects": True, "index": True}  # the positive control
    check_comments(answers)
    assert leaking_lines == [], leaking_lines[:10]
    assert not has_canary(exported.stdout + exported.stderr), exported.stdout + exported.stderr
    assert elsewhere == [] and in_tmp == []


def as_written(record: logging.LogRecord) -> str:
    """A record's text as `pacs serve` writes it: through the filters of its log handler
    (engine.ops.logs redacts quoted values of libraries' messages there). caplog sees the
    records before any handler; without that module, the raw text."""
    import copy
    try:
        from engine.config import LoggingConfig
        from engine.ops.logs import make_handler
    except ImportError:
        return record.getMessage() + (record.exc_text or "")
    record = copy.copy(record)
    make_handler(LoggingConfig()).filter(record)
    return record.getMessage() + (record.exc_text or "")


def test_canary_stays_out_of_in_process_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    destination = Destination()
    server = ServerThread(make_config(
        tmp_path / "data", web={}, idle_timeout=30.0, dimse_timeout=30.0,
        retrieve={"destinations": {"MOVEDEST": f"{LOOPBACK}:{destination.port}"}})).start()
    try:
        answers, matches = scenario(server.port, server.web_port)
    finally:
        server.stop()
        destination.stop()
    # The test's own thread is the client (its pydicom warns about the values it writes).
    server_side = [r for r in caplog.records if r.threadName != "MainThread"]
    leaking = []
    for record in server_side:
        text = as_written(record)
        if has_canary(text):
            leaking.append(f"{record.name} {record.levelname} {record.threadName} {text[:200]}")
    report("item7 PHI canary (in process, caplog DEBUG)", records=len(caplog.records),
           records_with_canary=len(leaking), error_comments_with_canary=sum(
               has_canary(c) for _, _, c in answers))
    check_comments(answers)
    assert leaking == [], leaking[:10]
