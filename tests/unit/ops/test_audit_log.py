"""The audit writer (engine/ops/audit_log.py): thread, files, flushing, syslog."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from engine.config import AuditConfig, ConfigError, config_from_mapping
from engine.ops import audit as a
from engine.ops.audit_log import FLUSH_INTERVAL, AuditLog, NullAudit


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_reach_the_daily_file_within_a_second(tmp_path):
    trail = AuditLog(tmp_path / "audit")
    try:
        started = time.monotonic()
        trail.emit({"Event": "x", "n": 1, "name": "Ünïcode^Name"})
        path = trail.file_for()
        assert path.name == time.strftime("audit-%Y%m%d.jsonl", time.gmtime())
        while not path.exists() or not path.read_text():
            assert time.monotonic() - started < 1.0 + FLUSH_INTERVAL, "not written in time"
            time.sleep(0.02)
        assert lines(path) == [{"Event": "x", "n": 1, "name": "Ünïcode^Name"}]
    finally:
        trail.close()


def test_close_writes_everything_queued_in_order(tmp_path):
    trail = AuditLog(tmp_path / "audit", fsync=True)
    for n in range(2000):
        trail.emit({"n": n})
    trail.close()
    assert [r["n"] for r in lines(trail.file_for())] == list(range(2000))
    assert trail.written == 2000 and trail.failed == 0


def test_emit_is_cheap_and_takes_no_io(tmp_path):
    trail = AuditLog(tmp_path / "audit")
    try:
        record = a.record("store", a.INSTANCES_TRANSFERRED, "C", 0, [])
        started = time.perf_counter()
        for _ in range(10000):
            trail.emit(record)
        per_call = (time.perf_counter() - started) / 10000
        assert per_call < 50e-6  # microseconds, whatever the disk does
    finally:
        trail.close()


def test_single_file_mode_and_two_writers_appending(tmp_path):
    path = tmp_path / "trail.jsonl"
    first, second = AuditLog(path), AuditLog(path)
    for n in range(300):
        (first if n % 2 else second).emit({"n": n, "pad": "x" * 200})
    first.close()
    second.close()
    assert sorted(r["n"] for r in lines(path)) == list(range(300))  # no torn lines


def test_unserialisable_record_is_counted_not_fatal(tmp_path):
    trail = AuditLog(tmp_path / "audit")
    trail.emit({"bad": float("nan"), "ok": 1})  # NaN is written (json allows it here)
    trail.emit({"set": {1, 2}})  # default=str
    trail.flush()
    trail.close()
    assert trail.failed == 0 and len(lines(trail.file_for())) == 2


def test_records_also_go_to_syslog_rfc5424(tmp_path):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    port = server.getsockname()[1]
    trail = AuditLog(tmp_path / "audit", syslog=f"udp://127.0.0.1:{port}")
    try:
        trail.emit({"Event": "store", "EventOutcomeIndicator": 0})
        trail.emit({"Event": "security", "EventOutcomeIndicator": 4})
        first = server.recv(65536).decode()
        second = server.recv(65536).decode()
    finally:
        trail.close()
        server.close()
    # <PRI>: authpriv (10) * 8 + notice (5) = 85; warning (4) = 84 for a failure.
    assert first.startswith("<85>1 ") and " pacs-engine " in first and " store - {" in first
    assert json.loads(first.split(" - ", 1)[1]) == {"Event": "store",
                                                    "EventOutcomeIndicator": 0}
    assert second.startswith("<84>1 ") and " security - " in second


def test_from_config(tmp_path):
    assert isinstance(AuditLog.from_config(AuditConfig(enabled=False), tmp_path), NullAudit)
    trail = AuditLog.from_config(AuditConfig(), tmp_path)
    try:
        assert trail.directory == tmp_path / "audit" and trail.directory.is_dir()
    finally:
        trail.close()
    other = AuditLog.from_config(AuditConfig(path=str(tmp_path / "x" / "a.jsonl")), tmp_path)
    try:
        assert other.file_for() == tmp_path / "x" / "a.jsonl"
    finally:
        other.close()


@pytest.mark.parametrize("address", ["udp://h:514", "tcp://10.0.0.1:601", "h:514", "/dev/log",
                                     "tcp://[::1]:601"])
def test_syslog_addresses_accepted(address):
    assert config_from_mapping({"audit": {"syslog": address}}).audit.syslog == address


@pytest.mark.parametrize("address", ["h", "ftp://h:1", "udp://h:0", "udp://:514"])
def test_syslog_addresses_refused(address):
    with pytest.raises(ConfigError, match="syslog"):
        config_from_mapping({"audit": {"syslog": address}})


def test_writer_thread_ends_at_close(tmp_path):
    trail = AuditLog(tmp_path / "audit")
    trail.close()
    assert not any(t.name == "audit-writer" and t.is_alive() and t is trail._thread
                   for t in threading.enumerate())
