"""Clients of the C-FIND benchmark and its queries.

Three ways to ask the same query, each timed over repeated runs:

* DCMTK findscu, one process per query (what a user runs; its start-up, the
  association and DCMTK's decoding of every response are in the time);
* one pynetdicom association reused by every query (pynetdicom's own cost per
  response is large, ~0.3-0.5 ms, and counted);
* `RawFind`, a lean SCU on one association that only frames the request and
  reads each response's status: the server's time, nearly nothing else.

Every loop is bounded in count and in time; everything talks to 127.0.0.1.
"""
from __future__ import annotations

import logging
import socket
import statistics
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from engine.bench.catalogue import StudySpec
from engine.bench.environment import AE_TITLE, CALLING_AE, DCMTK_ENV, LOOPBACK, BenchError

#: Returned (not matched) at every study-level query, on both peers: Orthanc keeps all of
#: them in its database ("main DICOM tags"), so neither peer reads a file to answer.
STUDY_RETURN_KEYS = ("StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate",
                     "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                     "StudyDescription")


@dataclass(frozen=True)
class Query:
    name: str
    level: str
    #: keyword → value; "" asks for the attribute without constraining it.
    keys: dict = field(hash=False)

    def identifier(self) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        for keyword, value in self.keys.items():
            setattr(ds, keyword, value)
        return ds


def queries(studies: list[StudySpec], month: str = "202503") -> list[Query]:
    """The benchmark's queries, with values taken from this catalogue."""
    probe = probe_study(studies)
    patient_id = studies[len(studies) // 3].patient.patient_id

    def study_level(name: str, **constraint) -> Query:
        return Query(name, "STUDY", {**{k: "" for k in STUDY_RETURN_KEYS}, **constraint})

    return [
        study_level("patient-id", PatientID=patient_id),
        study_level("accession", AccessionNumber=studies[len(studies) // 2].accession_number),
        study_level("date-month", StudyDate=f"{month}01-{month}31"),
        study_level("name-prefix", PatientName="SMI*"),
        study_level("all-studies"),
        Query("series-of-study", "SERIES", {
            "StudyInstanceUID": probe.uid, "SeriesInstanceUID": "", "Modality": "",
            "SeriesNumber": "", "SeriesDescription": ""}),
        Query("images-of-series", "IMAGE", {
            "StudyInstanceUID": probe.uid, "SeriesInstanceUID": probe.series[0].uid,
            "SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": ""}),
    ]


def expected_matches(studies: list[StudySpec], query: Query) -> int:
    """The number of matches a correct C-FIND SCP returns, from the catalogue itself.

    Only the constraints `queries()` uses are known here: single values, a date
    range, a trailing-* name prefix, the probe study's UIDs.
    """
    keys = {k: v for k, v in query.keys.items() if v}
    if query.level == "SERIES":
        return sum(len(s.series) for s in studies if s.uid == keys["StudyInstanceUID"])
    if query.level == "IMAGE":
        return sum(x.instances for s in studies if s.uid == keys["StudyInstanceUID"]
                   for x in s.series if x.uid == keys["SeriesInstanceUID"])

    def matches(study: StudySpec) -> bool:
        for key, value in keys.items():
            if key == "PatientID":
                ok = study.patient.patient_id == value
            elif key == "AccessionNumber":
                ok = study.accession_number == value
            elif key == "StudyDate":
                first, _, last = value.partition("-")
                ok = first <= study.date <= last
            elif key == "PatientName" and value.endswith("*") and "*" not in value[:-1]:
                ok = study.patient.name.startswith(value[:-1])
            else:
                raise ValueError(f"no expected count for {key}={value!r}")
            if not ok:
                return False
        return True
    return sum(1 for s in studies if matches(s))


def probe_study(studies: list[StudySpec]) -> StudySpec:
    """The study the series- and image-level queries look into (loaded whole everywhere)."""
    return studies[len(studies) // 4]


@dataclass
class Timing:
    seconds: list[float]
    matches: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _repeat(run, runs: int, budget: float) -> Timing:
    """Time `run()` (which returns the match count) up to `runs` times; at least once,
    and no new run once `budget` seconds are spent."""
    seconds: list[float] = []
    matches = 0
    while len(seconds) < runs and (not seconds or sum(seconds) < budget):
        started = time.perf_counter()
        matches = run()
        seconds.append(time.perf_counter() - started)
    return Timing(seconds, matches)


def findscu_command(findscu: str, port: int, query: Query, quiet: bool) -> list[str]:
    cmd = [findscu, "-S", "-aet", CALLING_AE, "-aec", AE_TITLE, "-to", "30", "-ta", "30",
           "-td", "600", "-k", f"QueryRetrieveLevel={query.level}"]
    if quiet:
        cmd.append("-q")
    for keyword, value in query.keys.items():  # one -k per keyword: a later one would win
        cmd += ["-k", f"{keyword}={value}" if value else keyword]
    return cmd + [LOOPBACK, str(port)]


def time_findscu(findscu: str, port: int, query: Query, runs: int, budget: float,
                 scratch: Path) -> Timing:
    """Median over up to `runs` processes (at least one; stops once `budget` s are spent).

    Timed runs are quiet (-q): DCMTK's printing of each response costs the client
    ~50 us a match, which is not the server's time.  One verbose run counts matches.
    """
    log = scratch / "findscu.log"
    with open(log, "wb") as out:
        subprocess.run(findscu_command(findscu, port, query, quiet=False), stdout=out,
                       stderr=subprocess.STDOUT, env=DCMTK_ENV, timeout=900, check=True)
    matches = log.read_text(errors="replace").count("(Pending)")
    command = findscu_command(findscu, port, query, quiet=True)

    def run() -> int:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=DCMTK_ENV, timeout=900)
        if done.returncode != 0:
            raise BenchError(f"findscu {query.name} failed: {done.stderr[-400:]!r}")
        return matches
    return _repeat(run, runs, budget)


class _ResponseLost(Exception):
    """pynetdicom's reactor dropped a response the server sent (pydicom/pynetdicom#875)."""


class Association:
    """One pynetdicom association, reused by every query (no connection setup timed).

    Under load pynetdicom's reactor can miss a response the server did send; the
    query then waits for the DIMSE timeout, the association is opened again and
    the query repeated, once (that sample includes the wait: an outlier the
    median absorbs, rather than a hung benchmark).
    """

    #: Seconds without a response before a query counts as lost (a 1M-instance
    #: universal query takes well under this).
    DIMSE_TIMEOUT = 60

    def __init__(self, port: int) -> None:
        logging.getLogger("pynetdicom").setLevel(logging.ERROR)
        self.port = port
        self._open()

    def _open(self) -> None:
        self.ae = AE(ae_title=CALLING_AE)
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self.ae.acse_timeout = self.ae.network_timeout = 600
        self.ae.dimse_timeout = self.DIMSE_TIMEOUT
        port = self.port
        self.assoc = self.ae.associate(LOOPBACK, port, ae_title=AE_TITLE)
        if not self.assoc.is_established:
            raise BenchError(f"pynetdicom could not associate with port {port}")
        # pynetdicom leaves Nagle on: its request goes out as two writes (command, then
        # identifier), and the second would wait ~40 ms for the peer's delayed ACK.
        self.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def run(self, query: Query) -> int:
        """The match count; a lost response costs one reopened association and a retry."""
        try:
            return self._run(query)
        except _ResponseLost:
            self.assoc.abort()
            self.ae.shutdown()
            self._open()
        try:
            return self._run(query)
        except _ResponseLost:
            raise BenchError(f"C-FIND {query.name}: no response twice (timeout or abort)")

    def _run(self, query: Query) -> int:
        matches = 0
        for status, _ in self.assoc.send_c_find(query.identifier(),
                                                StudyRootQueryRetrieveInformationModelFind):
            if status is None:
                raise _ResponseLost(query.name)
            if status.Status in (0xFF00, 0xFF01):
                matches += 1
            elif status.Status != 0x0000:
                raise BenchError(f"C-FIND {query.name} ended with 0x{status.Status:04X}")
        return matches

    def time(self, query: Query, runs: int, budget: float) -> Timing:
        return _repeat(lambda: self.run(query), runs, budget)

    def close(self) -> None:
        self.assoc.release()
        self.ae.shutdown()


STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_IMPLICIT_LE, _EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_ELEMENT_HEAD = struct.Struct("<HHI")  # command sets are implicit VR little endian


def _command_element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, tag, len(value)) + value


def _status(command: bytes) -> int | None:
    """Status (0000,0900) of a command set, walking its elements."""
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = _ELEMENT_HEAD.unpack_from(command, offset)
        if (group, element) == (0x0000, 0x0900):
            return struct.unpack_from("<H", command, offset + 8)[0]
        offset += 8 + length
    return None


def _uid_value(uid: str) -> bytes:
    data = uid.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


class RawFind:
    """A lean Study Root C-FIND SCU on one association (standard library sockets).

    It frames the request and, per response, reads the PDUs and finds the
    status in the command set; identifiers are not decoded.  What it times is
    the server's answer, with a few microseconds of client work per response.
    """

    def __init__(self, port: int, timeout: float = 600.0) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = self.sock.makefile("rb", buffering=1 << 20)
        self.message_id = 0
        rq = A_ASSOCIATE()
        rq.application_context_name = UID("1.2.840.10008.3.1.1.1")
        rq.calling_ae_title, rq.called_ae_title = CALLING_AE, AE_TITLE
        context = PresentationContext()
        context.context_id = 1
        context.abstract_syntax = UID(STUDY_ROOT_FIND)
        context.transfer_syntax = [UID(_EXPLICIT_LE), UID(_IMPLICIT_LE)]
        rq.presentation_context_definition_list = [context]
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = 1 << 20
        rq.user_information = [max_length]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(rq)
        self.sock.sendall(pdu.encode())
        kind, data = self._read_pdu()
        if kind != 0x02:
            raise BenchError(f"association refused (PDU type 0x{kind:02X})")
        ac = A_ASSOCIATE_AC()
        ac.decode(data)
        accepted = [c for c in ac.presentation_context if c.result == 0]
        if not accepted:
            raise BenchError("C-FIND presentation context not accepted")
        self.context_id = accepted[0].context_id
        self.implicit = accepted[0].transfer_syntax[0] == _IMPLICIT_LE

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self.stream.read(6)
        if len(header) < 6:
            raise BenchError("connection closed by the peer")
        body = self.stream.read(struct.unpack_from(">I", header, 2)[0])
        return header[0], header + body

    def _send_pdv(self, data: bytes, command: bool) -> None:
        flags = 0x03 if command else 0x02  # last fragment (+ command)
        self.sock.sendall(struct.pack(">BBIIBB", 0x04, 0, len(data) + 6, len(data) + 2,
                                      self.context_id, flags) + data)

    def run(self, query: Query) -> int:
        """Send one C-FIND-RQ, read every response; the number of pending responses."""
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, self.implicit
        write_dataset(buf, query.identifier())
        self.message_id = self.message_id % 0xFFFF + 1
        body = (_command_element(0x0002, _uid_value(STUDY_ROOT_FIND))
                + _command_element(0x0100, struct.pack("<H", 0x0020))
                + _command_element(0x0110, struct.pack("<H", self.message_id))
                + _command_element(0x0700, struct.pack("<H", 0))
                + _command_element(0x0800, struct.pack("<H", 0x0001)))
        self._send_pdv(_command_element(0x0000, struct.pack("<I", len(body))) + body, True)
        self._send_pdv(buf.getvalue(), False)
        pending = 0
        command = b""
        while True:
            kind, pdu = self._read_pdu()
            if kind != 0x04:
                raise BenchError(f"C-FIND {query.name}: PDU type 0x{kind:02X} instead of data")
            offset = 6
            while offset < len(pdu):
                length = struct.unpack_from(">I", pdu, offset)[0]
                flags = pdu[offset + 5]
                if flags & 0x01:  # a command fragment
                    command += pdu[offset + 6:offset + 4 + length]
                    if flags & 0x02:
                        status = _status(command)
                        if status is None:
                            raise BenchError(f"C-FIND {query.name}: response without status")
                        command = b""
                        if status in (0xFF00, 0xFF01):
                            pending += 1
                        elif status == 0x0000:
                            return pending
                        else:
                            raise BenchError(f"C-FIND {query.name} ended with 0x{status:04X}")
                offset += 4 + length

    def time(self, query: Query, runs: int, budget: float) -> Timing:
        return _repeat(lambda: self.run(query), runs, budget)

    def close(self) -> None:
        try:
            self.sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
            self._read_pdu()
        except (OSError, BenchError):
            pass
        self.stream.close()
        self.sock.close()
