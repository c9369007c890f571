"""Metrics (registry, collector, cache), health checks, structured logs and redaction."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.config import ConfigError, LoggingConfig, config_from_mapping
from engine.index.database import IndexDatabase
from engine.index.forward_queue import ForwardOrder, add_jobs, counts
from engine.ops.health import HealthChecker, HealthSources, LoopMonitor
from engine.ops.logs import JsonFormatter, make_handler, redact_values
from engine.ops.metrics import ArchiveCollector, CachedValue, Metrics, ScrapeSources


@dataclass
class Stats:
    patients: int = 1
    studies: int = 2
    series: int = 3
    instances: int = 4
    conflicts: int = 0
    bytes_stored: int = 4096


def families(metrics: Metrics) -> dict:
    text = metrics.exposition().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_each_server_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.received("dimse", 100)
    assert a.registry.get_sample_value("pacs_instances_received_total", {"via": "dimse"}) == 1
    assert b.registry.get_sample_value("pacs_instances_received_total", {"via": "dimse"}) is None


def test_collector_gauges_at_scrape(tmp_path):
    metrics = Metrics()
    calls = []
    metrics.add(ArchiveCollector(ScrapeSources(
        tmp_path, index_stats=Stats, index_file=None, compression_backlog=lambda: 7,
        forward_counts=lambda: calls.append(1) or {"PEER": (5, 2, True)},
        active_associations=lambda: 3, audit_counts=lambda: (10, 1, 0))))
    found = families(metrics)
    assert found["pacs_associations_active"].samples[0].value == 3
    assert found["pacs_compression_backlog"].samples[0].value == 7
    assert found["pacs_disk_free_bytes"].samples[0].value > 0
    assert {s.labels["level"]: s.value for s in found["pacs_index_entries"].samples}[
        "instances"] == 4
    jobs = {(s.labels["destination"], s.labels["state"]): s.value
            for s in found["pacs_forward_queue_jobs"].samples}
    assert jobs == {("PEER", "pending"): 5, ("PEER", "dead"): 2}
    assert found["pacs_forward_destination_down"].samples[0].value == 1
    assert {s.labels["fate"]: s.value for s in found["pacs_audit_records"].samples} == {
        "written": 10, "failed": 1, "dropped": 0}
    families(metrics)
    assert len(calls) == 1  # forward counts cached between scrapes


def test_cached_value_refreshes_after_its_ttl():
    values = iter(range(100))
    cached = CachedValue(lambda: next(values), ttl=0.05)
    assert cached.get() == 0 and cached.get() == 0
    time.sleep(0.06)
    assert cached.get() == 1


def test_forward_counts_read_keys_only_and_stop_at_the_limit(tmp_path):
    db = IndexDatabase(tmp_path / "index", 1 << 26)
    try:
        with db.env.begin(write=True) as txn:
            for n in range(6):
                add_jobs(txn, db.tables, f"1.2.{n}", "1.1", "1.1.1",
                         (ForwardOrder("A"), ForwardOrder("B")) if n < 2 else
                         (ForwardOrder("A"),), time.time())
        with db.env.begin() as txn:
            assert counts(txn, db.tables, ["A", "B", "C"], 100) == {
                "A": (6, 0, False), "B": (2, 0, False), "C": (0, 0, False)}
            assert counts(txn, db.tables, ["A"], 4) == {"A": (4, 0, False)}
    finally:
        db.close()


def test_loop_monitor_sees_a_blocked_loop():
    async def scenario():
        monitor = LoopMonitor(interval=0.02, window=5)
        monitor.start()
        await asyncio.sleep(0.1)
        quiet = monitor.lag
        time.sleep(0.3)  # the loop is blocked
        await asyncio.sleep(0.05)
        busy = monitor.lag
        await monitor.stop()
        return quiet, busy

    quiet, busy = asyncio.run(scenario())
    assert quiet < 0.2 and busy >= 0.25


def test_health_ready_and_each_failing_check(tmp_path):
    def check(**sources):
        return asyncio.run(HealthChecker(HealthSources(tmp_path, **sources)).check())

    ready, body = check(index_probe=Stats, writer_alive=lambda: True,
                        listener_accepting=lambda: True)
    assert ready and body["status"] == "ok" and body["checks"]["index"]["instances"] == 4
    ready, body = check(min_free_bytes=1 << 62)
    assert not ready and body["checks"]["disk"]["ok"] is False and body["live"]
    ready, body = check(writer_alive=lambda: False)
    assert not ready and body["checks"]["index_writer"] == {"ok": False}
    ready, body = check(listener_accepting=lambda: False)
    assert not ready

    def broken():
        raise OSError("index gone")

    ready, body = check(index_probe=broken)
    assert not ready and body["checks"]["index"] == {"ok": False, "error": "OSError"}


def test_json_log_lines_parse_and_name_the_association():
    stream = io.StringIO()
    logger = logging.getLogger("engine.test.jsonlog")
    logger.propagate = False
    logger.addHandler(make_handler(LoggingConfig(format="json"), stream))
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("%s established: calling %s", "assoc#12", "CT1")
        logger.warning("no association here: «ünïcode»")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.handlers.clear()
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["assoc"] == "assoc#12" and first["level"] == "INFO"
    assert first["logger"] == "engine.test.jsonlog"
    assert first["message"] == "assoc#12 established: calling CT1"
    assert first["ts"].endswith("Z")
    assert "assoc" not in second and second["message"].endswith("«ünïcode»")
    assert "ValueError: boom" in third["exc"]


def test_library_messages_are_redacted_ours_are_not():
    stream = io.StringIO()
    handler = make_handler(LoggingConfig(), stream)
    for name, text in (("pydicom", "Invalid value for VR DA: 'CANARY-1970'"),
                       ("engine.net.x", "C-MOVE to unknown destination 'NOWHERE'")):
        handler.handle(logging.LogRecord(name, logging.WARNING, "", 0, text, None, None))
    out = stream.getvalue()
    assert "CANARY" not in out and "'…'" in out and "'NOWHERE'" in out


def test_redact_values():
    assert redact_values("person name 'DOE^JOHN^A^B' has more") == "person name '…' has more"
    assert redact_values('value list "A\\\\" has an empty element') == \
        "value list '…' has an empty element"
    assert redact_values(ValueError("no quotes")) == "no quotes"


def test_logging_format_is_checked():
    assert config_from_mapping({"logging": {"format": "json"}}).logging.format == "json"
    with pytest.raises(ConfigError, match="format"):
        config_from_mapping({"logging": {"format": "xml"}})
    with pytest.raises(ConfigError, match="port"):
        config_from_mapping({"metrics": {"port": 70000}})


def test_json_formatter_is_one_line_per_record():
    record = logging.LogRecord("x", logging.INFO, "", 0, "two\nlines", None, None)
    assert "\n" not in JsonFormatter().format(record)
    assert sys.stderr  # the handler writes to stderr by default
