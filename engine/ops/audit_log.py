"""The audit trail's writer: records queued on the event loop, written by a thread.

`emit()` only appends the record (a dict) to a queue: no I/O, no serialisation,
no lock held, so it costs the hot path about a microsecond.  A writer thread takes
what is queued at least once a second (at once when the queue fills up), encodes
each record as one JSON line and appends the batch to the day's file
(`audit-YYYYMMDD.jsonl`, UTC dates, in the audit directory) in one write on an
O_APPEND descriptor, so `pacs import` / `pacs export` processes may append to the
same file beside the server; `fsync` optionally after each batch; the same lines go
to syslog when configured.  `close()` writes whatever is queued and ends the
thread.  A record that cannot be written is counted (`failed`) and reported in the
diagnostic log, without its content.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import socket
import threading
import time
from pathlib import Path

from engine.config import AuditConfig, parse_syslog_address

log = logging.getLogger(__name__)

#: Seconds between two writes at most (records wait at most this long).
FLUSH_INTERVAL = 0.5
#: Records queued beyond this are dropped (counted): a writer that cannot keep up must not
#: grow memory without bound.
MAX_QUEUED = 100_000
#: syslog: facility authpriv (10), severity notice (5) or warning (4) for failures.
_FACILITY = logging.handlers.SysLogHandler.LOG_AUTHPRIV


class AuditSink:
    """What the rest of the engine sees of the audit trail."""

    enabled = False

    def emit(self, record: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class NullAudit(AuditSink):
    """Audit off ([audit] enabled = false): records are dropped where they are made."""

    enabled = False

    def emit(self, record: dict) -> None:
        pass


class _Rfc5424Formatter(logging.Formatter):
    """ "1 TIMESTAMP HOST APP PROCID MSGID - MSG" (SysLogHandler adds the <PRI>)."""

    def __init__(self) -> None:
        super().__init__()
        self.host = socket.gethostname() or "-"
        self.pid = str(os.getpid())

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
            f".{int(record.msecs):03d}Z"
        return f"1 {stamp} {self.host} pacs-engine {self.pid} {record.msgid} - {record.msg}"


def syslog_handler(address: str) -> logging.Handler:
    transport, where = parse_syslog_address(address)
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    if transport == "unix":
        handler = logging.handlers.SysLogHandler(address=where, facility=_FACILITY)
    else:
        handler = logging.handlers.SysLogHandler(address=where, facility=_FACILITY,
                                                 socktype=kind)
    handler.append_nul = False
    # Success: notice (as IHE ATNA sends audit messages); a failure outcome: warning.
    handler.priority_map = {**handler.priority_map, "INFO": "notice"}
    handler.setFormatter(_Rfc5424Formatter())
    return handler


class AuditLog(AuditSink):
    """JSON lines in daily files (or one file), optionally to syslog; see the module doc."""

    enabled = True

    def __init__(self, path: Path, syslog: str = "", fsync: bool = False) -> None:
        path = Path(path)
        self.single_file = path.suffix == ".jsonl"
        self.directory = path.parent if self.single_file else path
        self.path = path
        self.fsync = fsync
        self.directory.mkdir(parents=True, exist_ok=True)
        self._syslog = syslog_handler(syslog) if syslog else None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._fd: int | None = None
        self._fd_name = ""
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: AuditConfig, data_dir: Path) -> AuditSink:
        if not config.enabled:
            return NullAudit()
        path = Path(config.path) if config.path else Path(data_dir) / "audit"
        return cls(path, config.syslog, config.fsync)

    # -- the event loop's side -----------------------------------------------------------
    def emit(self, record: dict) -> None:
        if self._queue.qsize() >= MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.put(record)

    def file_for(self, when: float | None = None) -> Path:
        """The file records of `when` (now) go to."""
        if self.single_file:
            return self.path
        day = time.strftime("%Y%m%d", time.gmtime(time.time() if when is None else when))
        return self.directory / f"audit-{day}.jsonl"

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until what is queued now has been written (tests, shutdown)."""
        marker = threading.Event()
        self._queue.put(marker)
        self._wake.set()
        marker.wait(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join(30)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._syslog is not None:
            self._syslog.close()

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            stopping = self._stopping
            self._write_queued()
            if stopping:
                self._write_queued()
                return

    def _write_queued(self) -> None:
        records: list[dict] = []
        markers: list[threading.Event] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, threading.Event):
                markers.append(item)
            else:
                records.append(item)
        if records:
            self._write(records)
        for marker in markers:
            marker.set()

    def _write(self, records: list[dict]) -> None:
        lines = []
        for r in records:
            try:
                lines.append(json.dumps(r, ensure_ascii=False, separators=(",", ":"),
                                        default=str))
            except (TypeError, ValueError):
                self.failed += 1
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            fd = self._open()
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
            self.written += len(lines)
        except OSError as exc:
            self.failed += len(lines)
            log.error("audit trail: %d record(s) not written to %s: %s", len(lines),
                      self._fd_name or self.directory, exc.strerror or exc)
        if self._syslog is not None:
            for line, r in zip(lines, records):
                self._to_syslog(line, r)

    def _open(self) -> int:
        name = str(self.file_for())
        if self._fd is None or name != self._fd_name:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o640)
            self._fd_name = name
        return self._fd

    def _to_syslog(self, line: str, r: dict) -> None:
        level = logging.WARNING if r.get("EventOutcomeIndicator") else logging.INFO
        entry = logging.LogRecord("pacs.audit", level, "", 0, line, None, None)
        entry.msgid = str(r.get("Event", "-")) or "-"
        try:
            self._syslog.emit(entry)  # its handleError reports to stderr, not raising
        except Exception:  # noqa: BLE001 - a syslog outage must not stop the file writer
            pass


__all__ = ["AuditLog", "AuditSink", "FLUSH_INTERVAL", "NullAudit", "syslog_handler"]
