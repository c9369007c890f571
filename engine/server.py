"""Composition root and lifecycle: startup(), serve(), shutdown().

Builds every part from the one Config, in dependency order, and tears them
down in reverse: stop accepting, let in-flight stores finish, commit the index,
close.  The event-loop implementation is chosen here and nowhere else.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from engine.codec.workers import CodecWorkers
from engine.compression.policy import CompressionPolicy
from engine.compression.stage import CompressionStage
from engine.config import Config
from engine.index.database import IndexDatabase
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter
from engine.ingest.pipeline import IngestPipeline
from engine.net.acse import AcceptorPolicy
from engine.index.forward_queue import RetryPolicy
from engine.net.commitment_service import CommitmentReporter
from engine.net.forwarder import Forwarder
from engine.net.listener import DicomListener, ListenerLimits
from engine.net.peers import PeerTable
from engine.net.tls import client_context, server_context
from engine.net.services import ServiceProvider
from engine.ops.audit_log import AuditLog, AuditSink
from engine.ops.health import HealthChecker, HealthSources, LoopMonitor
from engine.ops.metrics import FORWARD_COUNT_LIMIT, ArchiveCollector, Metrics, ScrapeSources
from engine.ops.observer import Observers
from engine.query.find import FindExecutor
from engine.query.retrieve import RetrieveResolver
from engine.routing.router import RuleRouter, routing_secret
from engine.store.blob_store import FilesystemBlobStore

log = logging.getLogger(__name__)


def event_loop_factory(name: str):
    """Return a loop factory: uvloop's when asked for or ("auto") when installed."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
            return uvloop.new_event_loop
        except ImportError:
            if name == "uvloop":
                raise
    return asyncio.new_event_loop


@dataclass
class Archive:
    """The storage side of the server: blob store + index + ingest pipeline."""

    store: FilesystemBlobStore
    db: IndexDatabase
    reader: IndexReader
    writer: GroupCommitWriter
    pipeline: IngestPipeline

    @classmethod
    def open(cls, config: Config) -> "Archive":
        storage = config.storage
        store = FilesystemBlobStore(storage.data_dir, storage.min_free_bytes)
        removed = store.open()
        if removed:
            log.info("removed %d partial file(s) left by an interrupted run", removed)
        db = IndexDatabase(storage.data_dir / "index", storage.index_map_size)
        writer = GroupCommitWriter(db, storage.duplicate_policy, storage.group_commit_max)
        writer.start()
        reader = IndexReader(db)
        pipeline = IngestPipeline(store, writer, reader, storage.io_threads)
        return cls(store, db, reader, writer, pipeline)

    def close(self) -> None:
        self.pipeline.close()
        self.writer.stop()
        self.db.close()


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.archive: Archive | None = None
        self.listener: DicomListener | None = None
        self.codec: CodecWorkers | None = None
        self.compression: CompressionStage | None = None
        self.forwarder: Forwarder | None = None
        self.compression_workers: CodecWorkers | None = None
        self.port: int | None = None
        #: Port of the DICOM TLS listener, when [tls] port is set.
        self.tls_port: int | None = None
        #: Our side of outgoing TLS associations (destinations with tls = true).
        self.client_ssl = None
        #: The DICOMweb API ([web]) and its bound port.
        self.web = None
        self.web_port: int | None = None
        #: Operations (engine/ops): audit trail, metrics, health; /metrics and /health on
        #: the web server, or on their own port ([metrics] port) when [web] is disabled.
        self.audit: AuditSink | None = None
        self.metrics: Metrics | None = None
        self.observers: Observers | None = None
        self.health: HealthChecker | None = None
        self.loop_monitor: LoopMonitor | None = None
        self.ops_server = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()

    async def startup(self) -> None:
        net, tls = self.config.network, self.config.tls
        # Certificates are read first: a bad file stops the start before the archive opens.
        server_ssl = server_context(tls) if tls.port else None
        self.client_ssl = client_context(tls) if tls.ca_file else None
        self.audit = AuditLog.from_config(self.config.audit, self.config.storage.data_dir)
        self.metrics = Metrics()
        self.observers = Observers(self.audit, self.metrics, net.ae_title)
        try:
            self.archive = Archive.open(self.config)
        except BaseException:
            self.audit.close()
            raise
        policy = AcceptorPolicy(net.ae_title, net.max_pdu_length,
                                require_called_ae_title=net.require_called_ae_title)
        limits = ListenerLimits(net.max_associations, net.max_associations_per_ip,
                                net.max_associate_rq_length, net.artim_timeout,
                                net.idle_timeout, net.dimse_timeout,
                                self.config.retrieve.response_timeout)
        archive = self.archive
        codec = self.config.codec
        self.codec = CodecWorkers(codec.workers, codec.task_timeout, codec.memory_limit)
        reporter = CommitmentReporter(archive.store, archive.reader, self.config.retrieve,
                                      net.ae_title, net.max_pdu_length, self.client_ssl)
        services = ServiceProvider(
            archive.pipeline, FindExecutor(archive.reader, archive.store), self.config.query,
            RetrieveResolver(archive.reader, archive.store), self.config.retrieve, self.codec,
            net.ae_title, net.max_pdu_length, reporter, self.client_ssl)
        peers = PeerTable.from_config(self.config.security, net.allowed_calling_ae_titles)
        self.listener = DicomListener(policy, limits, services, peers, self.observers)
        self._prepare_ops()
        try:
            if tls.plain_listener:
                self.port = await self.listener.start(net.host, net.port)
            if server_ssl is not None:
                self.tls_port = await self.listener.start(net.host, tls.port, server_ssl,
                                                          tls.handshake_timeout)
            if self.config.web.enabled:
                await self._start_web()
            elif self.config.metrics.port:
                await self._start_ops_server()
        except BaseException:
            if self.web is not None:
                await self.web.stop()
                self.web = None
            await self.listener.stop(grace=0)  # a socket already listening is closed again
            self.listener = None
            self.archive.close()  # commit nothing half-open; the caller reports the error
            self.archive = None
            await self.loop_monitor.stop()
            self.audit.close()
            raise
        log.info("%s listening on %s%s%s, data in %s", net.ae_title, net.host,
                 f" port {self.port}" if self.port is not None else "",
                 f" TLS port {self.tls_port}" if self.tls_port is not None else "",
                 self.config.storage.data_dir)
        if peers.active:
            log.info("known peers: %d, unknown calling AE titles %s", len(peers.peers),
                     "refused" if peers.deny_unknown else "admitted")
        if self.config.routing.enabled:
            self._start_routing()
        if self.config.compression.enabled:
            self._start_compression()
        self.observers.application(started=True)

    def _prepare_ops(self) -> None:
        """Scrape-time gauges, the health checks and the loop monitor (engine/ops)."""
        archive, config, audit = self.archive, self.config, self.audit
        data_dir = config.storage.data_dir
        reader = archive.reader
        forward_counts = None
        if config.routing.enabled:
            names = tuple(config.routing.destinations)
            forward_counts = lambda: reader.forward_counts(names, FORWARD_COUNT_LIMIT)  # noqa: E731
        self.metrics.add(ArchiveCollector(ScrapeSources(
            data_dir, index_stats=reader.stats, index_file=data_dir / "index" / "data.mdb",
            compression_backlog=reader.compression_queue_length, forward_counts=forward_counts,
            active_associations=lambda: self.listener.active if self.listener else 0,
            audit_counts=(lambda: (audit.written, audit.failed, audit.dropped))
            if audit.enabled else None)))
        self.loop_monitor = LoopMonitor(self.metrics.loop_lag)
        self.loop_monitor.start()
        self.health = HealthChecker(HealthSources(
            data_dir, config.storage.min_free_bytes, self.loop_monitor, reader.stats,
            lambda: archive.writer.alive,
            lambda: self.listener is not None and self.listener.accepting))

    def _web_ops(self):
        from engine.web.ops_routes import WebOps

        return WebOps(self.audit, self.metrics, self.health, self.config.network.ae_title,
                      self.config.metrics.enabled)

    async def _start_ops_server(self) -> None:
        """/metrics and /health on [metrics] host:port (the web server is disabled)."""
        from engine.config import WebConfig
        from engine.web.app import WebServer
        from engine.web.ops_routes import build_ops_app

        m = self.config.metrics
        self.ops_server = WebServer(build_ops_app(self._web_ops()),
                                    WebConfig(host=m.host, port=m.port))
        self.metrics_port = await self.ops_server.start()
        log.info("metrics and health on http://%s:%d/metrics, /health", m.host,
                 self.metrics_port)

    async def _start_web(self) -> None:
        """DICOMweb (engine/web) on this loop: same archive, pipeline and codec workers."""
        from engine.web.app import WebServer, WebServices, build_app

        web, archive = self.config.web, self.archive
        services = WebServices(archive.reader, archive.store, archive.pipeline, self.codec,
                               self.config.query.max_results)
        self.web = WebServer(build_app(services, web, self._web_ops()), web)
        self.web_port = await self.web.start()
        self.metrics_port = self.web_port
        log.info("DICOMweb on http://%s:%d%s (authentication: %s)", web.host, self.web_port,
                 web.base_path or "/", web.authentication)

    def _start_routing(self) -> None:
        """Rules decide at ingest; per-destination workers deliver the durable queue."""
        routing, archive, net = self.config.routing, self.archive, self.config.network
        self.forwarder = Forwarder(
            dict(routing.destinations), archive.reader, archive.writer,
            RetrieveResolver(archive.reader, archive.store), self.codec,
            RetryPolicy(routing.max_attempts, routing.max_age, routing.backoff_base,
                        routing.backoff_max),
            net.ae_title, net.max_pdu_length, self.config.retrieve.connect_timeout,
            self.config.retrieve.response_timeout,
            routing_secret(self.config.storage.data_dir), routing.retention,
            routing.association_linger, self.client_ssl, self.observers)
        archive.pipeline.set_router(RuleRouter(routing.rules, self.forwarder.wake))
        self.forwarder.start()
        log.info("routing: %d rule(s), %d destination(s)", len(routing.rules),
                 len(routing.destinations))

    def _start_compression(self) -> None:
        """The background stage, on its own niced worker processes: ingest keeps priority."""
        codec, archive = self.config.codec, self.archive
        self.compression_workers = CodecWorkers(codec.workers, codec.task_timeout,
                                                codec.memory_limit, nice=10)
        self.compression = CompressionStage(
            archive.store, archive.reader, archive.writer,
            CompressionPolicy(self.config.compression), self.compression_workers)
        self.compression.start()
        log.info("compression stage running (%d worker processes)",
                 self.compression_workers.processes)

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        await self.serve_ready(None)

    async def serve_ready(self, ready) -> None:
        """Serve until stopped; `ready.set()` (a threading.Event) once listening."""
        await self.startup()
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        log.info("stopping: no new associations, finishing in-flight stores")
        if self.web is not None:
            await self.web.stop()  # in-flight requests get a few seconds, then are cancelled
        if self.ops_server is not None:
            await self.ops_server.stop()
        if self.listener is not None:
            await self.listener.stop()
            await self.listener.services.reporter.drain(self.config.retrieve.connect_timeout +
                                                        self.config.retrieve.response_timeout)
        if self.forwarder is not None:
            await self.forwarder.stop()  # undelivered jobs stay queued for the next start
        if self.compression is not None:
            self.compression.stop()
            self.compression_workers.close()
        if self.codec is not None:
            self.codec.close()
        if self.archive is not None:
            self.archive.close()
        if self.loop_monitor is not None:
            await self.loop_monitor.stop()
        if self.audit is not None:
            self.observers.application(started=False)
            self.audit.close()  # everything queued is written
        log.info("stopped")

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM on the configured event loop."""
        loop = event_loop_factory(self.config.network.loop)()
        asyncio.set_event_loop(loop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            loop.run_until_complete(self.serve())
        finally:
            loop.close()
