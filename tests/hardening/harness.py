"""Machinery shared by the hardening battery (tests/hardening, issue 8).

- `PacsProcess`: `pacs serve` in a child process configured by a TOML file, its output
  going to a log file (a pipe nobody reads would block a server that logs every abort),
  with the figures the battery reports: peak RSS (VmHWM), bytes read from sockets and
  files (rchar), open file descriptors.
- `Prober`: another client doing C-ECHO on fresh associations in a loop, counting
  successes, failures and the slowest answer.
- byte builders for valid PDU streams (A-ASSOCIATE-RQ, C-ECHO, C-STORE) and datasets.
- `snapshot()`: the files under some roots, to list what a test created.

Every loop here is bounded in count and time.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from engine.net.dimse import encode_command
from engine.net.pdu_framing import encode_p_data
from tests.rawclient import RawAssociation, associate_rq_bytes
from tests.support import LOOPBACK, free_port

REPO = Path(__file__).resolve().parents[2]

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
FIND_STUDY = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_STUDY = "1.2.840.10008.5.1.4.1.2.2.2"
GET_STUDY = "1.2.840.10008.5.1.4.1.2.2.3"
#: Contexts of the raw clients: 1 = Verification, 3 = CT (explicit LE), 5 = FIND, 7 = MOVE.
CONTEXTS = [(VERIFICATION, [IMPLICIT_LE]), (CT, [EXPLICIT_LE]), (FIND_STUDY, [IMPLICIT_LE]),
            (MOVE_STUDY, [IMPLICIT_LE])]
ECHO_CX, CT_CX, FIND_CX, MOVE_CX = 1, 3, 5, 7

A_RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
A_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"

#: What a server log must never show: the battery treats each as a crash.
CRASH_MARKERS = ("Traceback", "Fatal error", "Exception in callback", "Unhandled exception",
                 "failed unexpectedly", "Segmentation fault", "Future exception was never")


# --- datasets ----------------------------------------------------------------------------
def ct_dataset(sop_instance_uid: str | None = None, **attributes) -> Dataset:
    """pydicom's CT_small with optional overrides (keywords)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if sop_instance_uid is not None:
        ds.SOPInstanceUID = sop_instance_uid
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, explicit: bool = True) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, not explicit
    write_dataset(buf, ds)
    return buf.getvalue()


def patch_value(data: bytes, placeholder: str, value: bytes, explicit: bool = True) -> bytes:
    """Put `value` (any bytes, NUL-padded to even length) where a little endian element
    (explicit VR short form, or implicit VR) holds `placeholder`: values pydicom refuses
    to write."""
    raw = placeholder.encode("ascii")
    raw += b"\x00" * (len(raw) % 2)
    value += b"\x00" * (len(value) % 2)
    size, fmt = (2, "<H") if explicit else (4, "<I")
    out, pos = bytearray(), 0
    while (found := data.find(raw, pos)) >= 0:
        if found >= size and struct.unpack_from(fmt, data, found - size)[0] == len(raw):
            out += data[pos:found - size] + struct.pack(fmt, len(value)) + value
        else:
            out += data[pos:found + len(raw)]
        pos = found + len(raw)
    return bytes(out + data[pos:])


def hostile_dataset(sop_instance_uid: str, **hostile: str) -> tuple[Dataset, bytes]:
    """CT_small with `hostile` values (keyword -> text, UTF-8) written byte for byte;
    (the dataset with placeholders, its encoded bytes with the hostile values)."""
    ds = ct_dataset(sop_instance_uid)
    placeholders = {}
    for n, (keyword, value) in enumerate(hostile.items()):
        placeholder = f"9.8.7.6.5.4.3.2.1.{n}"
        setattr(ds, keyword, placeholder)
        placeholders[placeholder] = value.encode("utf-8")
    data = encode(ds)
    for placeholder, value in placeholders.items():
        data = patch_value(data, placeholder, value)
    return ds, data


def part10(ds: Dataset, dataset_bytes: bytes | None = None, sop_instance_uid: bytes | None = None
           ) -> bytes:
    """A Part 10 file (explicit VR LE) of `ds`, or of `dataset_bytes` behind the file meta
    of `ds`; the meta's Media Storage SOP Instance UID may be given as raw bytes."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = "9.8.7.6.5.4.3.2.1.99"
    meta.TransferSyntaxUID = EXPLICIT_LE
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    raw = patch_value(buf.getvalue(), "9.8.7.6.5.4.3.2.1.99",
                      sop_instance_uid if sop_instance_uid is not None
                      else str(ds.SOPInstanceUID).encode("ascii"))
    raw = raw[:8] + struct.pack("<I", len(raw) - 12) + raw[12:]  # group length again
    return b"\x00" * 128 + b"DICM" + raw + (dataset_bytes if dataset_bytes is not None
                                             else encode(ds))


def echo_command(message_id: int = 1) -> bytes:
    return encode_command({0x0002: VERIFICATION, 0x0100: 0x0030, 0x0110: message_id,
                           0x0800: 0x0101})


def store_command(sop_instance_uid: str, message_id: int = 1, sop_class: str = CT) -> bytes:
    return encode_command({0x0002: sop_class, 0x0100: 0x0001, 0x0110: message_id,
                           0x0700: 0, 0x0800: 0x0000, 0x1000: sop_instance_uid})


def p_data(context_id: int, is_command: bool, payload: bytes, max_pdu: int = 16384
           ) -> list[bytes]:
    return encode_p_data(context_id, is_command, payload, max_pdu)


def association_stream(dataset: bytes | None = None, sop_instance_uid: str = "",
                       max_pdu: int = 4096) -> list[bytes]:
    """A valid association as a list of PDUs: RQ, C-ECHO, optionally a C-STORE, RELEASE."""
    pdus = [associate_rq_bytes(CONTEXTS), *p_data(ECHO_CX, True, echo_command(1), max_pdu)]
    if dataset is not None:
        pdus += p_data(CT_CX, True, store_command(sop_instance_uid, 2), max_pdu)
        pdus += p_data(CT_CX, False, dataset, max_pdu)
    pdus.append(A_RELEASE_RQ)
    return pdus


# --- hostile dataset structures (explicit VR little endian) ---------------------------
def top_level_elements(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, header length, value length) of top-level elements, explicit VR LE."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL",
                  b"OV", b"SV", b"UV"):
            length = struct.unpack_from("<I", data, pos + 8)[0]
            out.append((pos, 12, length))
            pos += 12 + (0 if length == 0xFFFFFFFF else length)
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            out.append((pos, 8, length))
            pos += 8 + length
    return out


def nested(depth: int, defined: bool, inner: bytes = b"", tag: int = 0x00091010) -> bytes:
    """A sequence (private (0009,1010) by default) nested `depth` deep around `inner`
    (explicit VR LE)."""
    group, element = tag >> 16, tag & 0xFFFF
    value = inner
    for _ in range(depth):
        if defined:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(value)) + value
            value = struct.pack("<HH2sHI", group, element, b"SQ", 0, len(item)) + item
        else:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + value + \
                struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            value = struct.pack("<HH2sHI", group, element, b"SQ", 0, 0xFFFFFFFF) + item + \
                struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return value


def with_private(data: bytes, extra: bytes) -> bytes:
    """Insert `extra` (group 0009 elements) in tag order, after group 0008 (best effort on
    a mutated dataset: at the end when its elements cannot be walked)."""
    try:
        elements = top_level_elements(data)
    except struct.error:
        return data + extra
    for offset, _, _ in elements:
        if struct.unpack_from("<H", data, offset)[0] > 0x0009:
            return data[:offset] + extra + data[offset:]
    return data + extra


# --- a raw client's view of how an association ended ----------------------------------
def drain(sock: socket.socket, seconds: float, limit: int = 1 << 20) -> tuple[str, bytes]:
    """Read what the server sends for up to `seconds`: ("closed" | "open", bytes)."""
    received = bytearray()
    deadline = time.monotonic() + seconds
    while len(received) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return "open", bytes(received)
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return "open", bytes(received)
        except OSError:  # reset
            return "closed", bytes(received)
        if not chunk:
            return "closed", bytes(received)
        received += chunk
    return "open", bytes(received)


def pdu_types(data: bytes) -> list[int]:
    """Types of the whole PDUs in a byte string from the server."""
    types, pos = [], 0
    while pos + 6 <= len(data):
        length = struct.unpack_from(">I", data, pos + 2)[0]
        types.append(data[pos])
        pos += 6 + length
    return types


def open_association(port: int, calling: str = "RAWSCU", timeout: float = 10.0,
                     contexts=CONTEXTS) -> RawAssociation:
    raw = RawAssociation(port, timeout=timeout)
    pdu_type, _ = raw.associate(contexts, calling=calling)
    if pdu_type != 0x02:
        raw.close()
        raise ConnectionError(f"association not accepted (PDU type {pdu_type})")
    return raw


def store_status(raw: RawAssociation, ds: Dataset, command_uid: str | None = None) -> int:
    return raw.c_store(CT_CX, CT, command_uid or ds.SOPInstanceUID, encode(ds))


# --- a server process --------------------------------------------------------------------
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def write_toml(path: Path, sections: dict) -> Path:
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in options.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


#: Defaults of a battery server: short deadlines so bad sockets die quickly, little logging
#: noise, no DICOMweb unless asked, one codec worker.
BASE_CONFIG = {
    "network": {"artim_timeout": 1.0, "idle_timeout": 2.0, "dimse_timeout": 2.0},
    "storage": {"index_map_size": 1 << 30, "min_free_bytes": 0, "io_threads": 2},
    "codec": {"workers": 1},
    "web": {"enabled": False},
    "logging": {"level": "INFO"},
}


def merged(base: dict, extra: dict | None) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, options in (extra or {}).items():
        out.setdefault(section, {}).update(options)
    return out


class PacsProcess:
    """`pacs serve` as a child process; output to `log_path`."""

    def __init__(self, data_dir: Path, config: dict | None = None, port: int | None = None,
                 log_path: Path | None = None, nofile: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.config = merged(BASE_CONFIG, config)
        self.log_path = log_path or self.data_dir.parent / f"server-{self.port}.log"
        self.nofile = nofile
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 60) -> "PacsProcess":
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        config_path = write_toml(self.data_dir.parent / f"pacs-{self.port}.toml", self.config)
        self._log = open(self.log_path, "ab")
        offset = self._log.tell()  # a log appended to by an earlier run: look past it
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--config", str(config_path),
             "--data-dir", str(self.data_dir), "--host", LOOPBACK, "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
            preexec_fn=limits if nofile is not None else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()[-3000:]}")
            if "listening on" in self.log()[offset:]:
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not start: {self.log()[-3000:]}")

    # -- figures -------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key}")

    def peak_rss_mib(self) -> float:
        return self._status_kib("VmHWM") / 1024

    def rss_mib(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / (1 << 20)

    def bytes_read(self) -> int:
        """rchar: bytes the process read with read()/recv() (sockets and files)."""
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError("no rchar")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def web_port(self) -> int:
        import re
        found = re.search(r"DICOMweb on http://[^:]+:(\d+)", self.log())
        if found is None:
            raise AssertionError("no DICOMweb port in the server log")
        return int(found.group(1))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def crash_lines(self) -> list[str]:
        """Log lines that show a crash. pynetdicom logs an undecodable field of an
        A-ASSOCIATE-RQ at ERROR with a traceback (and we abort the association): that is
        the library's logging, not a crash, and is left out (see library_tracebacks)."""
        lines = self.log().splitlines()
        return [line for n, line in enumerate(lines)
                if any(marker in line for marker in CRASH_MARKERS)
                and not (line.startswith("Traceback") and n and " pynetdicom" in lines[n - 1])]

    def library_tracebacks(self) -> int:
        lines = self.log().splitlines()
        return sum(1 for n, line in enumerate(lines)
                   if line.startswith("Traceback") and n and " pynetdicom" in lines[n - 1])

    # -- stopping -----------------------------------------------------------------------
    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._close_log()

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --- the probe ---------------------------------------------------------------------------
@dataclass
class ProbeResults:
    ok: int = 0
    failed: int = 0
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)
    peak_rss_mib: float = 0.0

    @property
    def rate(self) -> float:
        total = self.ok + self.failed
        return self.ok / total if total else 0.0


class Prober:
    """C-ECHO on a fresh association every `interval` s from another client, while a test
    runs; also samples the server's RSS (psutil) when given its pid."""

    def __init__(self, port: int, interval: float = 0.2, timeout: float = 5.0,
                 calling: str = "PROBE", pid: int | None = None, max_seconds: float = 600):
        self.port, self.interval, self.timeout, self.calling = port, interval, timeout, calling
        self.pid = pid
        self.max_seconds = max_seconds
        self.results = ProbeResults()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> ProbeResults:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self.results

    def probe_once(self) -> None:
        started = time.monotonic()
        try:
            raw = open_association(self.port, calling=self.calling, timeout=self.timeout)
            try:
                status = raw.c_echo(ECHO_CX)
                raw.release()
            finally:
                raw.close()
            if status != 0:
                raise ConnectionError(f"C-ECHO status 0x{status:04X}")
            self.results.ok += 1
        except Exception as exc:  # any failure of the probe is what we count
            self.results.failed += 1
            if len(self.results.failures) < 20:
                self.results.failures.append(f"{type(exc).__name__}: {exc}")
        self.results.slowest = max(self.results.slowest, time.monotonic() - started)

    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            self.probe_once()
            if self.pid is not None:
                try:
                    rss = psutil.Process(self.pid).memory_info().rss / (1 << 20)
                    self.results.peak_rss_mib = max(self.results.peak_rss_mib, rss)
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)


# --- file-system snapshots ------------------------------------------------------------------
def snapshot(*roots: Path, limit: int = 200_000) -> set[str]:
    """Paths of the files and directories under `roots` (links not followed; bounded)."""
    found: set[str] = set()
    for root in roots:
        for directory, dirs, files in os.walk(root, onerror=lambda e: None):
            for name in dirs + files:
                found.add(os.path.join(directory, name))
                if len(found) >= limit:
                    return found
    return found


def unexpected_data_files(data_dir: Path) -> list[str]:
    """Files in an archive that are neither the index, a content-addressed object nor a
    temporary file: what a name derived from peer input would look like."""
    import re
    address = re.compile(r"[0-9a-f]{64}")
    bad = []
    for path in Path(data_dir).rglob("*"):
        rel = path.relative_to(data_dir).parts
        if path.is_dir():
            ok = rel in (("index",), ("objects",), ("tmp",)) or \
                (len(rel) == 2 and rel[0] == "objects" and re.fullmatch(r"[0-9a-f]{3}", rel[1]))
        else:
            ok = (rel[0] == "index" and len(rel) == 2) or \
                (rel[0] == "objects" and len(rel) == 3 and address.fullmatch(rel[2]) is not None
                 and rel[2].startswith(rel[1])) or rel[0] == "tmp" or \
                (len(rel) == 1 and rel[0] in ("import.lock",)) or \
                (len(rel) >= 1 and "audit" in rel[0])  # another helper's audit trail
        if rel and "audit" in rel[0]:
            ok = True  # the audit trail's own layout (engine/ops)
        if not ok:
            bad.append(str(path))
    return bad


def report(name: str, **figures) -> str:
    """One line of figures, printed (pytest -s shows it) for docs/SECURITY.md."""
    text = f"HARDENING {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(text)
    return text
