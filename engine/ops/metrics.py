"""Prometheus metrics: one registry per server, counters on the hot path, gauges at scrape.

Every server builds its own `CollectorRegistry` (tests start several servers in one
process; the global default registry would mix them).  Counters and histograms are
updated where things happen, from the event loop: a labelled child is looked up once
and kept (`_child`), so a C-STORE pays a few increments and one histogram
observation, a few microseconds.  Gauges that need the index or the file system
(queue depths, compression backlog, free disk, index size, active associations) are
computed when scraped by `ArchiveCollector`, each at bounded cost: LMDB table
statistics (no scan), one statvfs, and per-destination forward counts from keys
only, capped and cached for `FORWARD_COUNTS_TTL` seconds.  The exposition is built
on a thread (`exposition()` is blocking), never on the event loop.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Seconds a forward-queue count is reused before it is taken again.
FORWARD_COUNTS_TTL = 10.0
#: Keys counted per destination and table at most (a larger backlog reads as this).
FORWARD_COUNT_LIMIT = 1_000_000

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def status_label(status: int) -> str:
    """A DIMSE status as its 4 hex digits (bounded: statuses come from our own table)."""
    return f"{status & 0xFFFF:04X}"


class Metrics:
    """The server's metrics (names in the module doc of docs/SECURITY.md, "Metrics")."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.associations_accepted = Counter(
            "pacs_associations_accepted", "DICOM associations accepted", registry=r)
        self.associations_rejected = Counter(
            "pacs_associations_rejected", "DICOM associations rejected (A-ASSOCIATE-RJ), "
            "by reason", ["reason"], registry=r)
        self.associations_ended = Counter(
            "pacs_associations_ended", "Established associations ended: released or aborted",
            ["how"], registry=r)
        self.instances_received = Counter(
            "pacs_instances_received", "Instances received and stored durably (success or "
            "warning status), by front end (dimse, stow)", ["via"], registry=r)
        self.bytes_received = Counter(
            "pacs_received_bytes", "Bytes of the instances counted by "
            "pacs_instances_received_total (stored file size)", ["via"], registry=r)
        self.dimse_responses = Counter(
            "pacs_dimse_responses", "Final DIMSE responses sent, by service and status (hex)",
            ["service", "status"], registry=r)
        self.store_commit_seconds = Histogram(
            "pacs_store_commit_seconds", "C-STORE: from the last fragment to durable and "
            "indexed (fsync, rename, index commit)", buckets=_FAST, registry=r)
        self.find_seconds = Histogram(
            "pacs_find_seconds", "C-FIND: from the complete identifier to the final response",
            buckets=_SLOW, registry=r)
        self.suboperation_seconds = Histogram(
            "pacs_retrieve_suboperation_seconds", "One C-STORE sub-operation of a C-MOVE or "
            "C-GET, until the peer's response", ["service"], buckets=_FAST, registry=r)
        self.web_requests = Counter(
            "pacs_web_requests", "HTTP requests (DICOMweb, viewer, /metrics, /health) by "
            "route, method and status", ["route", "method", "status"], registry=r)
        self.web_seconds = Histogram(
            "pacs_web_request_seconds", "HTTP request duration until the response started",
            ["route"], buckets=_SLOW, registry=r)
        self.loop_lag = Gauge(
            "pacs_event_loop_lag_seconds", "Largest event-loop delay seen over the last "
            "few seconds (a timer's lateness)", registry=r)
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- hot-path helpers (event loop) ----------------------------------------------------
    def dimse(self, service: str, status: int) -> None:
        self._child(self.dimse_responses, service, status_label(status)).inc()

    def received(self, via: str, size: int) -> None:
        self._child(self.instances_received, via).inc()
        self._child(self.bytes_received, via).inc(size)

    def rejected(self, reason: str) -> None:
        self._child(self.associations_rejected, reason).inc()

    def ended(self, how: str) -> None:
        self._child(self.associations_ended, how).inc()

    def suboperation(self, service: str, seconds: float) -> None:
        self._child(self.suboperation_seconds, service).observe(seconds)

    def web_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._child(self.web_requests, route, method, str(status)).inc()
        self._child(self.web_seconds, route).observe(seconds)

    # -- scrape ---------------------------------------------------------------------------
    def add(self, collector) -> None:
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The text format (blocking: collectors read the index; call on a thread)."""
        return generate_latest(self.registry)


class CachedValue:
    """A value computed at most every `ttl` seconds; concurrent readers get the last one."""

    def __init__(self, compute: Callable[[], object], ttl: float) -> None:
        self._compute = compute
        self._ttl = ttl
        self._lock = threading.Lock()
        self._value: object = None
        self._at = -1e18

    def get(self):
        if time.monotonic() - self._at < self._ttl:
            return self._value
        if not self._lock.acquire(blocking=self._value is None):
            return self._value  # another scrape is computing it
        try:
            if time.monotonic() - self._at >= self._ttl:
                self._value = self._compute()
                self._at = time.monotonic()
            return self._value
        finally:
            self._lock.release()


@dataclass
class ScrapeSources:
    """Where the scrape-time gauges come from; None leaves a gauge out."""

    data_dir: Path
    index_stats: Callable[[], object] | None = None  # IndexReader.stats
    index_file: Path | None = None
    compression_backlog: Callable[[], int] | None = None
    #: destination → (pending, dead, down); called at most every FORWARD_COUNTS_TTL.
    forward_counts: Callable[[], dict] | None = None
    active_associations: Callable[[], int] | None = None
    audit_counts: Callable[[], tuple[int, int, int]] | None = None  # written, failed, dropped


class ArchiveCollector:
    """Gauges computed at scrape time, each at bounded cost (module doc)."""

    def __init__(self, sources: ScrapeSources) -> None:
        self.s = sources
        self._forward = CachedValue(sources.forward_counts, FORWARD_COUNTS_TTL) \
            if sources.forward_counts is not None else None

    def describe(self) -> Iterable:
        return []  # collected lazily: nothing is read when the collector is registered

    def collect(self) -> Iterable:
        s = self.s
        if s.active_associations is not None:
            yield _gauge("pacs_associations_active", "Associations open now (DICOM listener)",
                         s.active_associations())
        try:
            st = os.statvfs(s.data_dir)
            yield _gauge("pacs_disk_free_bytes", "Free bytes for the server on the data "
                         "directory's volume", st.f_bavail * st.f_frsize)
            yield _gauge("pacs_disk_size_bytes", "Size of the data directory's volume",
                         st.f_blocks * st.f_frsize)
        except OSError:
            pass
        if s.index_stats is not None:
            stats = s.index_stats()
            family = GaugeMetricFamily("pacs_index_entries", "Records in the index by level",
                                       labels=["level"])
            for level in ("patients", "studies", "series", "instances", "conflicts"):
                family.add_metric([level], getattr(stats, level))
            yield family
            yield _gauge("pacs_stored_bytes", "Bytes of the stored files the index references",
                         stats.bytes_stored)
        if s.index_file is not None:
            try:
                st = os.stat(s.index_file)
                yield _gauge("pacs_index_file_bytes", "Disk space the LMDB index file uses",
                             st.st_blocks * 512)
            except OSError:
                pass
        if s.compression_backlog is not None:
            yield _gauge("pacs_compression_backlog", "Instances waiting in the compression "
                         "stage's queue", s.compression_backlog())
        if self._forward is not None:
            counts = self._forward.get() or {}
            jobs = GaugeMetricFamily(
                "pacs_forward_queue_jobs", "Router jobs per destination and state (counted "
                f"every {FORWARD_COUNTS_TTL:.0f} s, at most {FORWARD_COUNT_LIMIT})",
                labels=["destination", "state"])
            down = GaugeMetricFamily("pacs_forward_destination_down",
                                     "1 while a destination is unreachable and backed off",
                                     labels=["destination"])
            for name, (pending, dead, is_down) in sorted(counts.items()):
                jobs.add_metric([name, "pending"], pending)
                jobs.add_metric([name, "dead"], dead)
                down.add_metric([name], 1 if is_down else 0)
            yield jobs
            yield down
        if s.audit_counts is not None:
            written, failed, dropped = s.audit_counts()
            family = GaugeMetricFamily("pacs_audit_records", "Audit records since start, by "
                                       "fate", labels=["fate"])
            family.add_metric(["written"], written)
            family.add_metric(["failed"], failed)
            family.add_metric(["dropped"], dropped)
            yield family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


__all__ = ["ArchiveCollector", "CONTENT_TYPE", "CachedValue", "FORWARD_COUNTS_TTL", "Metrics",
           "ScrapeSources", "status_label"]
