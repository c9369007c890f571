"""The background compression stage: sweep, queue, compress, verify, swap, remove.

For each queued instance (a durable LMDB queue, bounded, refilled by sweeps
of the index from a saved cursor):

1. a codec worker process encodes it as JPEG 2000 Lossless, decodes every
   frame again and compares it bit-exact with the original, writes the new
   file to tmp/ and fsyncs it (job.py);
2. here the new file is re-hashed from disk and must match;
3. it is renamed to its content address (directory fsync'd);
4. the index entry is swapped in one transaction, only if the instance still
   points at the file we compressed;
5. only then is the old file removed (if nothing else references it).

Any failure leaves the original current and records why (the instance is not
retried until `pacs compress --retry-failed`).  A crash at any step leaves at
worst an orphan file that `pacs verify` finds.  Ingest keeps priority: the
background stage starts an instance only when no C-STORE was indexed for half
a second, and its workers run niced.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from engine.codec.workers import CodecWorkers
from engine.errors import EngineError
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter
from engine.ingest.integrity import rehash_file
from engine.compression.job import CompressedFile, compress_stored_file
from engine.compression.policy import JPEG_2000_LOSSLESS, CompressionPolicy
from engine.store.blob_store import FilesystemBlobStore

log = logging.getLogger(__name__)

_SWEEP_BATCH = 2000  # instances read per sweep step
_QUIET = 0.5  # seconds without ingest before a background worker takes the next instance


@dataclass
class CompressionReport:
    compressed: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else 0.0


class CompressionStage:
    def __init__(self, store: FilesystemBlobStore, reader: IndexReader,
                 writer: GroupCommitWriter, policy: CompressionPolicy, workers: CodecWorkers,
                 job: Callable[..., CompressedFile] = compress_stored_file) -> None:
        self.store = store
        self.reader = reader
        self.writer = writer
        self.policy = policy
        self.workers = workers
        self.job = job  # replaceable for fault-injection tests (must be importable)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.report = CompressionReport()

    # -- background operation ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="compression", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        interval = self.policy.config.sweep_interval
        with ThreadPoolExecutor(self.workers.processes, thread_name_prefix="compress") as pool:
            while not self._stop.is_set():
                if not self.policy.in_window(datetime.now()):
                    self._stop.wait(min(interval, 60.0))
                    continue
                queued = self.reader.compression_queue(self.workers.processes * 4)
                if not queued:
                    if not self.sweep():
                        self._stop.wait(interval)
                    continue
                list(pool.map(self._process_when_quiet, queued))

    # -- by hand (pacs compress --now) -------------------------------------------------
    def run_now(self, study_uid: str | None = None,
                progress: Callable[[int], None] | None = None) -> CompressionReport:
        """Compress everything that qualifies now (or one study's instances), in parallel."""
        if study_uid is not None:
            uids = [uid for series in self.reader.series_of_study(study_uid)
                    for uid in self.reader.instances_of_series(series)]
        else:
            uids = [uid for uid, _ in self.reader.iter_instances()]
        with ThreadPoolExecutor(self.workers.processes, thread_name_prefix="compress") as pool:
            for _ in pool.map(lambda uid: self._process(uid, ignore_delay=True), uids):
                if progress is not None:
                    progress(1)
        return self.report

    # -- sweeping the index into the queue -----------------------------------------
    def sweep(self) -> int:
        """Queue due instances from the saved cursor on; returns how many were queued."""
        limit = self.policy.config.queue_limit - self.reader.compression_queue_length()
        cursor = self.reader.compression_cursor()
        now = datetime.now(timezone.utc)
        found: list[str] = []
        last = cursor
        wrapped = False
        while len(found) < limit:
            batch = self.reader.instances_after(last, _SWEEP_BATCH)
            if not batch:
                if wrapped or not cursor:
                    last = ""
                    break
                wrapped, last = True, ""
                continue
            for uid, record in batch:
                last = uid
                if wrapped and uid > cursor:
                    break
                if self._wanted(uid, record, now, ignore_delay=False):
                    found.append(uid)
                    if len(found) >= limit:
                        break
            if wrapped and last > cursor:
                break
        self.writer.run_job(lambda tx: tx.queue_for_compression(found, last))
        return len(found)

    def _wanted(self, uid: str, record, now: datetime, ignore_delay: bool) -> bool:
        if self.reader.compression_failure(uid) is not None:
            return False
        series = self.reader.series(record.series_instance_uid)
        if not self.policy.qualifies(record, series.modality if series else ""):
            return False
        return ignore_delay or self.policy.due(record, now)

    # -- one instance -----------------------------------------------------------------
    def _process_when_quiet(self, uid: str) -> None:
        """Wait while instances are being received: ingest has priority over compression.

        Niceness alone does not protect ingest here: busy cores slow its fsyncs
        whatever their priority.  So a worker starts a new instance only after
        `_QUIET` seconds without an indexed C-STORE (at most one instance per
        worker is in flight when ingest starts).
        """
        seen = self.writer.ingest_committed
        while not self._stop.wait(_QUIET):
            now = self.writer.ingest_committed
            if now == seen:
                break
            seen = now
        if not self._stop.is_set():
            self._process(uid)

    def _process(self, uid: str, ignore_delay: bool = False) -> None:
        try:
            self._compress(uid, ignore_delay)
        except Exception:  # a bug must not stop the stage; the instance is left as it was
            log.exception("compressing %s failed unexpectedly", uid)
            self._fail(uid, "internal error (see log)")

    def _compress(self, uid: str, ignore_delay: bool) -> None:
        record = self.reader.instance(uid)
        now = datetime.now(timezone.utc)
        if record is None or not self._wanted(uid, record, now, ignore_delay):
            self.writer.run_job(lambda tx: tx.dequeue_compression(uid))
            return
        # An in-place import's file is read, never changed: the compressed copy goes into
        # the store and the swap drops the external reference (writer.add_blob_reference);
        # store.remove() below only ever unlinks under objects/.
        old_path = (self.reader.external_path(record.content_hash)
                    or self.store.path_of(record.content_hash))
        try:
            result: CompressedFile = self.workers.run(
                self.job, str(old_path), record.dataset_offset, record.transfer_syntax_uid,
                JPEG_2000_LOSSLESS, record.sop_class_uid, uid, record.calling_ae_title,
                str(self.store.tmp))
        except EngineError as exc:
            self._fail(uid, str(exc))
            return
        temp = Path(result.temp_path)
        try:
            with open(temp, "rb") as fh:
                on_disk = rehash_file(fh, JPEG_2000_LOSSLESS, result.dataset_offset)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            self._fail(uid, f"compressed file unreadable: {exc}")
            return
        if on_disk != result.content_hash:
            temp.unlink(missing_ok=True)
            self._fail(uid, "compressed file on disk differs from what was verified")
            return
        if result.size >= record.size:
            temp.unlink(missing_ok=True)
            self.writer.run_job(lambda tx: tx.record_compression_failure(
                uid, "no gain: the compressed file is not smaller"))
            with self._lock:
                self.report.skipped += 1
            return
        try:
            self.store.adopt(temp, result.content_hash)
        except (OSError, EngineError) as exc:
            self._fail(uid, f"cannot store the compressed file: {exc}")
            return
        series = self.reader.series(record.series_instance_uid)
        swap = self.writer.run_job(lambda tx: tx.swap_content(
            uid, record.content_hash, result.content_hash, JPEG_2000_LOSSLESS, result.size,
            result.dataset_offset, series.modality if series else ""))
        if not swap.swapped:  # the instance changed meanwhile: keep what is current
            if swap.new_unreferenced:
                self.store.remove(result.content_hash)
            return
        if swap.old_unreferenced:
            self.store.remove(record.content_hash)
        with self._lock:
            self.report.compressed += 1
            self.report.bytes_before += record.size
            self.report.bytes_after += result.size
        log.debug("compressed %s: %d -> %d bytes", uid, record.size, result.size)

    def _fail(self, uid: str, reason: str) -> None:
        if self._stop.is_set():  # shutting down killed the worker: try again next start
            log.info("compression of %s interrupted by shutdown", uid)
            return
        log.warning("not compressing %s: %s", uid, reason)
        self.writer.run_job(lambda tx: tx.record_compression_failure(uid, reason[:200]))
        with self._lock:
            self.report.failed += 1
            self.report.failures.append((uid, reason))


__all__ = ["CompressionReport", "CompressionStage"]
