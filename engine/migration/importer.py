"""`pacs import`: a tree of legacy files into the archive, in parallel, resumably.

The parent walks the tree, skips files the journal says are already imported
(same path, size and mtime), and hands the rest in small tasks to worker
processes (scan.py: read, hash, scan, and in copy mode store durably).  Their
results are indexed in batches, each one job in a transaction of the
archive's own GroupCommitWriter (indexing.py), with the journal rows.  So a
file counts as imported only after fsync, rename and index commit, and an
interrupted run (Ctrl-C, kill -9) loses nothing: the next run skips what was
committed and reads the rest again; a file renamed but not indexed is found
in objects/ and adopted.

Safe beside a running server on the same data dir: LMDB serialises the two
processes' write transactions, and tmp/ is left alone (the server's files in
flight live there); this process uses its own temp names, and a lock file
keeps a second import off the same archive.  Files that change while read or
were modified in the last seconds are read again at the end; a worker that
crashes on a file costs that file only.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, TextIO

from engine.config import Config
from engine.errors import EngineError
from engine.index import import_journal
from engine.index.database import IndexDatabase
from engine.index.entry import IndexEntry, IndexOutcome
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter
from engine.ingest.pipeline import Origin, sanitize_ae_title
from engine.migration import scan
from engine.migration.indexing import Pending, apply_batch
from engine.migration.report import FileReport, ImportSummary, Progress
from engine.migration.walker import Candidate, Skipped, walk
from engine.ops import audit
from engine.ops.audit_log import AuditLog
from engine.store.blob_store import FilesystemBlobStore

log = logging.getLogger(__name__)

_JOURNAL_CHUNK = 256  # candidates checked against the journal in one read transaction
_TASK_BYTES = 64 << 20  # a worker task holds at most this many bytes (or task_files files)
_SHOWN_PROBLEMS = 20


class ImportBusy(EngineError):
    """Another `pacs import` holds this data directory."""


@dataclass(frozen=True)
class ImportOptions:
    paths: tuple[Path, ...]
    #: Register files where they lie instead of copying them into objects/.
    in_place: bool = False
    #: Worker processes (0: one per available core).
    workers: int = 0
    #: Apply the configured routing rules to imported instances.
    route: bool = False
    #: The calling AE title recorded for imported instances (and written in copied files).
    ae_title: str = "IMPORT"
    report: Path | None = None
    #: Index entries per transaction job.
    batch_size: int = 512
    task_files: int = 32
    #: Files modified less than this many seconds ago are read at the end (maybe still
    #: being written); files that change while read are retried this often.
    settle_seconds: float = 2.0
    retries: int = 3


class Importer:
    def __init__(self, config: Config, options: ImportOptions,
                 stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.config = config
        self.options = options
        self.summary = ImportSummary()
        self.problems: list[tuple[str, str, str]] = []  # the first few, for the terminal
        self._stream = stream
        self._interactive = interactive
        self._stop = threading.Event()
        self._batch: list[Pending] = []
        self._commits: deque[tuple[Future, list[Pending]]] = deque()
        self._inflight: dict[Future, tuple[int, list[Candidate]]] = {}
        # Results are indexed in the order their tasks were sent (the walk's order), so
        # "keep-first" means first in the tree and an interrupted run leaves a prefix.
        self._sent = self._taken = 0
        self._ready: dict[int, list[scan.Scanned]] = {}
        self._retry: list[str] = []
        self._isolate = False  # after a worker crash: one file per task
        self._crashes = 0  # crashes in a row, alone on a fresh pool: a broken pool, not a file
        self._ae_title = sanitize_ae_title(options.ae_title)
        #: Instances indexed per study, for the audit trail (one Import record per study).
        self._imported = audit.Tallies()

    # -- entry point -----------------------------------------------------------------------
    def run(self) -> ImportSummary:
        storage = self.config.storage
        data_dir = storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        trail = AuditLog.from_config(self.config.audit, data_dir)
        try:
            with _exclusive(data_dir / "import.lock"):
                self._run_locked(data_dir, storage, start)
        finally:
            self._audit(trail)
            trail.close()
        return self.summary

    def _audit(self, trail) -> None:
        """One 110107 Import record per study imported (and one for rejected files)."""
        if not trail.enabled:
            return
        paths = [str(p) for p in self.options.paths[:20]]
        source = audit.participant(", ".join(paths)[:1024], False, audit.ROLE_SOURCE_MEDIA)
        participants = [audit.operator(),
                        audit.participant(self.config.network.ae_title, False,
                                          audit.ROLE_DESTINATION),
                        source]
        mode = "in place" if self.options.in_place else "copied"

        def make(objects, done, failed):
            return audit.record("import", audit.IMPORT, "C", audit.outcome_of(done, failed),
                                participants, objects, source_id=self.config.network.ae_title,
                                description=f"pacs import ({mode}): {done} instance(s)"
                                + (f", {failed} refused" if failed else ""))

        for r in audit.study_records(self._imported, make):
            trail.emit(r)
        summary = self.summary
        if summary.rejected or summary.fatal or summary.interrupted:
            trail.emit(audit.record(
                "import", audit.IMPORT, "C",
                audit.SERIOUS_FAILURE if summary.fatal else audit.MINOR_FAILURE, participants,
                source_id=self.config.network.ae_title,
                description=f"pacs import: {summary.rejected} file(s) rejected"
                + (f"; stopped: {summary.fatal}" if summary.fatal else "")
                + ("; interrupted" if summary.interrupted else "")))

    def _run_locked(self, data_dir: Path, storage, start: float) -> None:
        self._start_pool(data_dir)  # the workers start while the store and index open
        try:
            self.store = FilesystemBlobStore(data_dir, storage.min_free_bytes)
            self.store.open(clear_temp=False)
            for leftover in self.store.tmp.glob(f"{scan.TEMP_PREFIX}*{scan.TEMP_SUFFIX}"):
                leftover.unlink(missing_ok=True)  # ours, from an interrupted run (locked)
            self.db = IndexDatabase(data_dir / "index", storage.index_map_size)
            self.writer = GroupCommitWriter(self.db, storage.duplicate_policy,
                                            storage.group_commit_max)
            self.writer.start()
            self.reader = IndexReader(self.db)
            self.report = FileReport(self.options.report)
            try:
                with self._sigint(), Progress(self.summary, self._interactive,
                                              stream=self._stream) as progress:
                    self.progress = progress
                    self._run()
            finally:
                self.summary.elapsed = time.monotonic() - start
                self.report.close(self.summary)
                self.writer.stop()
                self.db.close()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _start_pool(self, data_dir: Path) -> None:
        options = self.options
        router = None
        if options.route and self.config.routing.rules:
            from engine.routing.router import RuleRouter

            router = RuleRouter(self.config.routing.rules, lambda names: None)
        self._router = router
        settings = scan.ScanSettings(
            str(data_dir), copy=not options.in_place, ae_title=self._ae_title,
            min_free_bytes=self.config.storage.min_free_bytes,
            extra_tags=router.extra_tags if router else (), parent_pid=os.getpid())
        self._workers = options.workers or len(os.sched_getaffinity(0))
        self._new_pool = partial(ProcessPoolExecutor, self._workers,
                                 mp_context=get_context("spawn"),
                                 initializer=scan.init_worker, initargs=(settings,))
        self._pool = self._new_pool()
        for _ in range(self._workers):  # spawned on demand: ask for all of them now
            self._pool.submit(scan.ready)

    def _run(self) -> None:
        options = self.options
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="import-commit")
        exclude = [str(self.store.root)]
        counter = threading.Thread(target=self._count, args=(exclude,), daemon=True,
                                   name="import-count")
        counter.start()
        try:
            self._walk(walk(options.paths, exclude=exclude), defer_recent=True)
            self._retry_changed()
            self._drain()
            self._flush()
            while self._commits:
                self._finish_commit(*self._commits.popleft())
        finally:
            self._stop.set()  # ends the counting walk too
            while self._commits:  # an error above: still settle what was committed
                try:
                    self._finish_commit(*self._commits.popleft())
                except Exception:  # pragma: no cover - already failing
                    log.exception("index commit failed")
            self._committer.shutdown(wait=True)

    # -- walking and dispatching -------------------------------------------------------------
    def _walk(self, found: Iterator, defer_recent: bool) -> None:
        chunk: list[Candidate] = []
        for item in found:
            if self._stop.is_set():
                break
            if isinstance(item, Skipped):
                self._problem(item.path, "rejected" if item.rejected else "skipped", item.reason)
                continue
            chunk.append(item)
            if len(chunk) >= _JOURNAL_CHUNK:
                self._dispatch(chunk, defer_recent)
                chunk = []
            self.progress.update()
        if chunk and not self._stop.is_set():
            self._dispatch(chunk, defer_recent)

    def _dispatch(self, candidates: list[Candidate], defer_recent: bool) -> None:
        """Drop files already imported and unchanged, defer fresh ones, send the rest."""
        fresh_after = time.time_ns() - int(self.options.settle_seconds * 1e9)
        todo = []
        with self.reader.snapshot() as ix:
            for c in candidates:
                row = import_journal.lookup(ix.txn, ix.t, import_journal.key(c.path))
                if row is not None and (row.size, row.mtime_ns) == (c.size, c.mtime_ns):
                    self.summary.unchanged += 1
                elif defer_recent and c.mtime_ns > fresh_after:
                    self._retry.append(c.path)
                else:
                    todo.append(c)
        task: list[Candidate] = []
        size = 0
        for c in todo:
            task.append(c)
            size += c.size
            if self._isolate or len(task) >= self.options.task_files or size >= _TASK_BYTES:
                self._submit(task)
                task, size = [], 0
        if task:
            self._submit(task)

    def _submit(self, task: list[Candidate]) -> None:
        while len(self._inflight) >= self._workers * 4:
            self._collect(block=True)
        if self._stop.is_set() and self.summary.fatal:
            return
        args = [(c.path, c.size, c.mtime_ns, c.dev, c.ino) for c in task]
        try:
            future = self._pool.submit(scan.scan_batch, args)
        except BrokenProcessPool:
            self._restart_pool()
            future = self._pool.submit(scan.scan_batch, args)
        self._inflight[future] = (self._sent, task)
        self._sent += 1

    def _collect(self, block: bool) -> None:
        if not self._inflight:
            return
        done, _ = wait(list(self._inflight), timeout=None if block else 0,
                       return_when=FIRST_COMPLETED)
        broken: list[Candidate] = []
        for future in done:
            seq, task = self._inflight.pop(future)
            try:
                self._ready[seq] = future.result()
            except BrokenProcessPool:
                self._ready[seq] = []
                broken.extend(task)
                continue
            self._crashes = 0
        while self._taken in self._ready:
            for result in self._ready.pop(self._taken):
                self._scanned(result)
            self._taken += 1
        if broken:
            self._after_crash(broken)
        if self._batch and (len(self._batch) >= self.options.batch_size or not self._inflight):
            self._flush()
        self._settle_commits()
        self.progress.update()

    def _after_crash(self, suspects: list[Candidate]) -> None:
        """A worker died (a file crashed it, or it was killed): retry its files one by one."""
        if self._isolate and len(suspects) == 1:
            self._crashes += 1
            if self._crashes >= 3:
                self.summary.fatal = "worker processes keep dying (see the log)"
                self._retry.append(suspects[0].path)
                self._stop.set()
                return
            self._problem(suspects[0].path, "rejected", "crashed the reading process")
            self._restart_pool()
            return
        for future, (seq, task) in list(self._inflight.items()):  # the pool went down
            suspects.extend(task)
            self._ready[seq] = []
            del self._inflight[future]
        log.warning("a worker process died; reading %d file(s) again one at a time",
                    len(suspects))
        self._restart_pool()
        self._isolate = True
        for c in suspects:
            if self._stop.is_set():
                self._retry.append(c.path)  # not judged: the next run reads it
                continue
            self._submit([c])
            self._collect_until_empty()
        self._isolate = False

    def _collect_until_empty(self) -> None:
        while self._inflight:
            self._collect(block=True)

    def _restart_pool(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def _drain(self) -> None:
        self._collect_until_empty()

    def _retry_changed(self) -> None:
        """Files deferred (recently modified) or that changed while read: again, later."""
        for attempt in range(self.options.retries + 1):
            self._drain()
            if not self._retry or self._stop.is_set():
                break
            paths, self._retry = self._retry, []
            last = attempt == self.options.retries
            if self._stop.wait(self.options.settle_seconds):
                self._retry = paths
                break
            candidates = []
            for path in paths:
                try:
                    st = os.lstat(path)
                except OSError as exc:
                    self._problem(path, "rejected", f"cannot stat: {exc.strerror}")
                    continue
                candidates.append(Candidate.from_stat(path, st))
            self._walk(iter(candidates), defer_recent=not last)
        self._drain()
        for path in self._retry:
            if self._stop.is_set():
                break  # interrupted: the next run reads them
            self._problem(path, "rejected", "still being written (size or modification time "
                                            "changed while it was read)")
        self._retry = []

    # -- results -------------------------------------------------------------------------------
    def _scanned(self, result: scan.Scanned) -> None:
        status = result.status
        if status == scan.OK:
            self.summary.scanned += 1
            self.summary.bytes_scanned += result.size
            self._batch.append(self._pending(result))
            if len(self._batch) >= self.options.batch_size:
                self._flush()
        elif status == scan.RETRY:
            self._retry.append(result.path)
        elif status == scan.FATAL:
            self._retry.append(result.path)  # not judged: the next run reads it
            if not self.summary.fatal:
                self.summary.fatal = result.reason
                log.error("stopping the import: %s", result.reason)
            self._stop.set()
        else:
            self.summary.scanned += 1
            self.summary.bytes_scanned += result.size
            self._problem(result.path, "rejected", result.reason)

    def _pending(self, r: scan.Scanned) -> Pending:
        forwards = ()
        if self._router is not None:
            forwards = self._router.route(Origin(self._ae_title), r.sop_class_uid,
                                          {**r.attributes, **r.extra_attributes})
        entry = IndexEntry(
            r.sop_instance_uid, r.sop_class_uid, r.transfer_syntax_uid, r.content_hash,
            r.stored_size, r.dataset_offset,
            datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            self._ae_title, r.attributes, forwards)
        return Pending(entry, r.path, import_journal.key(r.path), r.size, r.mtime_ns, r.created)

    def _problem(self, path: str, status: str, reason: str) -> None:
        if status == "rejected":
            self.summary.rejected += 1
        else:
            self.summary.skipped += 1
        # Counted by kind: the text before any detail (a path, a UID, an errno text).
        self.summary.reasons[reason.split(":")[0].split(" (")[0][:60]] += 1
        self.report.add(path, status, reason)
        if len(self.problems) < _SHOWN_PROBLEMS:
            self.problems.append((path, status, reason))

    # -- index commits ----------------------------------------------------------------------------
    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        job = partial(apply_batch, batch=batch,
                      duplicate_policy=self.config.storage.duplicate_policy,
                      in_place=self.options.in_place)
        self._commits.append((self._committer.submit(self.writer.run_job, job), batch))
        self._settle_commits()

    def _settle_commits(self) -> None:
        """Account for finished commits; at most two in flight (the writer groups them)."""
        while self._commits and (len(self._commits) > 2 or self._commits[0][0].done()):
            self._finish_commit(*self._commits.popleft())

    def _finish_commit(self, future: Future, batch: list[Pending]) -> None:
        try:
            outcomes = future.result()
        except Exception as exc:
            # Nothing of the batch is indexed or journaled; copies already renamed into
            # objects/ are adopted by the next run.  The index cannot take more: stop.
            if not self.summary.fatal:
                self.summary.fatal = f"index commit failed: {exc}"
                log.error("stopping the import: index commit failed: %s", exc)
            self._stop.set()
            return
        for item, outcome in zip(batch, outcomes):
            address = item.entry.content_hash
            attributes = item.entry.attributes
            self._imported.add(attributes.get("StudyInstanceUID", ""),
                               attributes.get("PatientID", ""), item.entry.sop_class_uid,
                               outcome is not IndexOutcome.REJECTED_DUPLICATE)
            if outcome is IndexOutcome.REJECTED_DUPLICATE:
                self._problem(item.source_path, "rejected",
                              "different content already stored under this SOP Instance UID "
                              "(storage.duplicate_policy = reject)")
                if item.created and self.reader.blob(address) is None:
                    self.store.remove(address)
                continue
            self.summary.count(outcome)
            if outcome is IndexOutcome.STORED:
                self.summary.bytes_imported += item.source_size
            if (item.created and outcome is IndexOutcome.IDENTICAL
                    and self.reader.external_path(address) is not None):
                self.store.remove(address)  # readers use the in-place file: never read

    # -- progress totals, Ctrl-C -------------------------------------------------------------------
    def _count(self, exclude: list[str]) -> None:
        files = size = 0
        try:
            for item in walk(self.options.paths, exclude=exclude, use_dicomdir=False):
                if self._stop.is_set():
                    return
                if isinstance(item, Candidate) and \
                        os.path.basename(item.path).upper() != "DICOMDIR":
                    files += 1
                    size += item.size
                    if files % 1000 == 0:
                        self.progress.counted(1000, size)
                        size = 0
            self.progress.counted(files % 1000, size)
            self.progress.counting_done()
        except Exception:  # progress only: never stop the import for it
            log.exception("counting files failed")

    @contextmanager
    def _sigint(self):
        """First Ctrl-C: finish the files in flight, commit them, stop; second: stop now."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop.is_set():
                raise KeyboardInterrupt
            self.summary.interrupted = True
            self._stop.set()

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def _exclusive(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ImportBusy(f"another pacs import is running on {path.parent}") from None
        yield
    finally:
        os.close(fd)


__all__ = ["ImportBusy", "ImportOptions", "Importer"]
