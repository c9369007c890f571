"""The single index writer: applies entries and group-commits them.

LMDB allows one write transaction at a time, and each commit costs an fsync.
One thread owns the writes; entries from every association queue up while a
commit is in flight and go into the next transaction together (group commit).
A caller's future resolves only after the transaction holding its entry is
durably committed.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Callable, TypeVar

import lmdb

from engine.errors import OutOfResources
from engine.index import compression_state, external, forward_queue, secondary
from engine.index.database import IndexDatabase
from engine.index.entry import IndexEntry, IndexOutcome
from engine.index.records import (
    BlobRecord, ConflictRecord, InstanceRecord, PatientRecord, SeriesRecord, StudyRecord)

log = logging.getLogger(__name__)

_TOTAL_BYTES = b"total_bytes"
T = TypeVar("T")


def _k(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def patient_key(attrs: dict) -> str:
    """Patients are identified by PatientID within its issuer (PS3.4 C.6.1.1.2)."""
    return f"{attrs.get('PatientID', '')}\x00{attrs.get('IssuerOfPatientID', '')}"


def _add_to_multi(value: str, item: str) -> str:
    """Add `item` to a backslash-separated multi-value, keeping it sorted and unique."""
    if not item:
        return value
    items = set(value.split("\\")) if value else set()
    items.add(item)
    return "\\".join(sorted(items))


class IndexTransaction:
    """The record-level operations of one write transaction."""

    def __init__(self, db: IndexDatabase, txn: lmdb.Transaction) -> None:
        self.t = db.tables
        self.txn = txn

    def _get(self, table, key: str, cls):
        raw = self.txn.get(_k(key), db=table)
        return None if raw is None else cls.decode(raw)

    def _put(self, table, key: str, record) -> None:
        self.txn.put(_k(key), record.encode(), db=table)

    def add_blob_reference(self, content_hash: str, size: int, delta: int) -> None:
        blob = self._get(self.t.blobs, content_hash, BlobRecord) or BlobRecord(0, size)
        refs = blob.references + delta
        if refs <= 0:
            self.txn.delete(_k(content_hash), db=self.t.blobs)
            # An in-place import's file: forget its path (the file itself is never touched;
            # callers remove only objects/<address>, never an external path).
            external.forget(self.txn, self.t, content_hash)
        else:
            self._put(self.t.blobs, content_hash, BlobRecord(refs, size))
        total = int(self.txn.get(_TOTAL_BYTES, b"0", db=self.t.meta))
        self.txn.put(_TOTAL_BYTES, str(total + delta * size).encode(), db=self.t.meta)

    # -- the compression stage (see compression_state.py) ---------------------------
    def queue_for_compression(self, uids: list[str], cursor: str) -> None:
        compression_state.queue(self.txn, self.t, uids, cursor)

    def dequeue_compression(self, uid: str) -> None:
        compression_state.dequeue(self.txn, self.t, uid)

    def record_compression_failure(self, uid: str, reason: str) -> None:
        compression_state.record_failure(self.txn, self.t, uid, reason)

    def clear_compression_failures(self) -> int:
        return compression_state.clear_failures(self.txn, self.t)

    def swap_content(self, uid: str, expected_hash: str, new_hash: str,
                     transfer_syntax_uid: str, size: int, dataset_offset: int,
                     modality: str) -> compression_state.SwapResult:
        return compression_state.swap_content(self, uid, expected_hash, new_hash,
                                              transfer_syntax_uid, size, dataset_offset,
                                              modality)

    # -- the router's forward queue (see forward_queue.py) ----------------------------
    def forward_delivered(self, job: forward_queue.ForwardJob, now: float,
                          record_done: bool, status: int = 0) -> None:
        forward_queue.delivered(self.txn, self.t, job, now, record_done, status)

    def forward_expire(self, sop_uid: str) -> str | None:
        """Store-and-forward: remove a delivered instance; returns its file's address
        when nothing references the file any more (the caller removes it)."""
        if not forward_queue.forget_done(self.txn, self.t, sop_uid):
            return None  # forwarded again since: keep it
        return self.delete_instance(sop_uid)

    def delete_instance(self, sop_uid: str) -> str | None:
        """Remove an instance from the index; its address if its file is now unreferenced."""
        record = self._get(self.t.instances, sop_uid, InstanceRecord)
        if record is None:
            return None
        self._remove_from_hierarchy(sop_uid, record)
        self.txn.delete(_k(sop_uid), db=self.t.instances)
        compression_state.dequeue(self.txn, self.t, sop_uid)
        self.add_blob_reference(record.content_hash, record.size, -1)
        if self.txn.get(_k(record.content_hash), db=self.t.blobs) is None:
            return record.content_hash
        return None

    def forward_failed(self, job: forward_queue.ForwardJob, status: int | None, error: str,
                       now: float, policy: forward_queue.RetryPolicy
                       ) -> forward_queue.ForwardJob:
        return forward_queue.failed(self.txn, self.t, job, status, error, now, policy)

    def forward_expire_aged(self, destination: str, now: float,
                            policy: forward_queue.RetryPolicy, error: str
                            ) -> list[forward_queue.ForwardJob]:
        return forward_queue.expire_aged(self.txn, self.t, destination, now, policy, error)

    def forward_health(self, destination: str) -> forward_queue.DestinationHealth:
        return forward_queue.destination_health(self.txn, self.t, destination)

    def set_forward_health(self, destination: str,
                           health: forward_queue.DestinationHealth) -> None:
        forward_queue.set_destination_health(self.txn, self.t, destination, health)

    def forward_clear_in_flight(self) -> None:
        forward_queue.clear_in_flight(self.txn, self.t)

    def forget_quiet_studies(self, before: float) -> int:
        return forward_queue.forget_quiet_studies(self.txn, self.t, before)

    def forget_old_warnings(self, before: float) -> int:
        return forward_queue.forget_old_warnings(self.txn, self.t, before)

    def forward_retry(self, destination: str | None, study_uid: str | None,
                      now: float) -> int:
        return forward_queue.retry(self.txn, self.t, destination, study_uid, now)

    def forward_drop(self, destination: str | None, study_uid: str | None,
                     dead_only: bool) -> int:
        return forward_queue.drop(self.txn, self.t, destination, study_uid, dead_only)

    def apply(self, entry: IndexEntry, duplicate_policy: str) -> IndexOutcome:
        outcome = self._apply(entry, duplicate_policy)
        if entry.forwards and outcome in (IndexOutcome.STORED, IndexOutcome.CONFLICT_REPLACED):
            a = entry.attributes
            forward_queue.add_jobs(self.txn, self.t, entry.sop_instance_uid,
                                   a.get("StudyInstanceUID", ""), a.get("SeriesInstanceUID", ""),
                                   entry.forwards, time.time())
        return outcome

    def _apply(self, entry: IndexEntry, duplicate_policy: str) -> IndexOutcome:
        existing = self._get(self.t.instances, entry.sop_instance_uid, InstanceRecord)
        if existing is None:
            self._insert(entry)
            return IndexOutcome.STORED
        if existing.content_hash == entry.content_hash:
            return IndexOutcome.IDENTICAL
        conflict_key = f"{entry.sop_instance_uid}\x00{entry.content_hash}"
        known_conflict = self.txn.get(_k(conflict_key), db=self.t.conflicts) is not None
        if known_conflict and duplicate_policy != "replace":
            return IndexOutcome.CONFLICT_KEPT_FIRST  # this very conflict was recorded before
        if duplicate_policy == "reject":
            return IndexOutcome.REJECTED_DUPLICATE
        if duplicate_policy == "replace":
            if known_conflict:  # an older copy comes back: it becomes current again
                self.txn.delete(_k(conflict_key), db=self.t.conflicts)
                self.add_blob_reference(entry.content_hash, entry.size, -1)
            old_key = f"{entry.sop_instance_uid}\x00{existing.content_hash}"
            self._put(self.t.conflicts, old_key, ConflictRecord(
                existing.content_hash, existing.size, existing.dataset_offset,
                existing.transfer_syntax_uid, existing.received_at, existing.calling_ae_title,
                "replaced"))
            self._remove_from_hierarchy(entry.sop_instance_uid, existing)
            self.txn.delete(_k(entry.sop_instance_uid), db=self.t.instances)
            # The old blob stays referenced by its conflict record: no change to its count.
            self._insert(entry)
            return IndexOutcome.CONFLICT_REPLACED
        self._put(self.t.conflicts, conflict_key, ConflictRecord(
            entry.content_hash, entry.size, entry.dataset_offset, entry.transfer_syntax_uid,
            entry.received_at, entry.calling_ae_title, "kept-first"))
        self.add_blob_reference(entry.content_hash, entry.size, +1)
        return IndexOutcome.CONFLICT_KEPT_FIRST

    def _insert(self, entry: IndexEntry) -> None:
        a = entry.attributes
        study_uid = a.get("StudyInstanceUID", "")
        series_uid = a.get("SeriesInstanceUID", "")
        study = self._get(self.t.studies, study_uid, StudyRecord)
        if study is None:
            pkey = patient_key(a)
            patient = self._get(self.t.patients, pkey, PatientRecord)
            if patient is None:
                patient = PatientRecord(
                    a.get("PatientID", ""), a.get("IssuerOfPatientID", ""),
                    a.get("PatientName", ""), a.get("PatientBirthDate", ""),
                    a.get("PatientSex", ""), 0)
            patient = replace(patient, number_of_studies=patient.number_of_studies + 1)
            self._put(self.t.patients, pkey, patient)
            self.txn.put(_k(pkey), _k(study_uid), db=self.t.patient_studies)
            secondary.write_keys(self.txn, self.t, study_uid,
                                 secondary.name_keys(patient.patient_name), put=True)
            study = StudyRecord(
                pkey, a.get("StudyDate", ""), a.get("StudyTime", ""),
                a.get("AccessionNumber", ""), a.get("StudyID", ""),
                a.get("StudyDescription", ""), a.get("ReferringPhysicianName", ""),
                "", "", 0, 0, a.get("SpecificCharacterSet", ""))
            before: set = set()  # a new study has no record keys yet
        else:
            before = secondary.study_keys(study)
        series = self._get(self.t.series, series_uid, SeriesRecord)
        if series is None:
            series = SeriesRecord(
                study_uid, a.get("Modality", ""), str(a.get("SeriesNumber", "")),
                a.get("SeriesDescription", ""), a.get("BodyPartExamined", ""), 0)
            study = replace(study, number_of_series=study.number_of_series + 1)
            self.txn.put(_k(study_uid), _k(series_uid), db=self.t.study_series)
        series = replace(series, number_of_instances=series.number_of_instances + 1)
        study = replace(
            study, number_of_instances=study.number_of_instances + 1,
            modalities_in_study=_add_to_multi(study.modalities_in_study, a.get("Modality", "")),
            sop_classes_in_study=_add_to_multi(study.sop_classes_in_study, entry.sop_class_uid))
        self._put(self.t.series, series_uid, series)
        self._put(self.t.studies, study_uid, study)
        secondary.update_keys(self.txn, self.t, study_uid, before, secondary.study_keys(study))
        self.txn.put(_k(series_uid), _k(entry.sop_instance_uid), db=self.t.series_instances)
        self._put(self.t.instances, entry.sop_instance_uid, InstanceRecord(
            entry.sop_class_uid, study_uid, series_uid, str(a.get("InstanceNumber", "")),
            entry.transfer_syntax_uid, entry.content_hash, entry.size, entry.dataset_offset,
            entry.received_at, entry.calling_ae_title, str(a.get("NumberOfFrames", "")),
            str(a.get("Rows", "")), str(a.get("Columns", ""))))
        self.add_blob_reference(entry.content_hash, entry.size, +1)

    def _remove_from_hierarchy(self, sop_uid: str, rec: InstanceRecord) -> None:
        """Detach an instance from its series/study/patient, dropping emptied levels."""
        self.txn.delete(_k(rec.series_instance_uid), _k(sop_uid), db=self.t.series_instances)
        series = self._get(self.t.series, rec.series_instance_uid, SeriesRecord)
        study = self._get(self.t.studies, rec.study_instance_uid, StudyRecord)
        if series is None or study is None:
            return
        series = replace(series, number_of_instances=series.number_of_instances - 1)
        study = replace(study, number_of_instances=study.number_of_instances - 1)
        if series.number_of_instances <= 0:
            self.txn.delete(_k(rec.series_instance_uid), db=self.t.series)
            self.txn.delete(_k(rec.study_instance_uid), _k(rec.series_instance_uid),
                            db=self.t.study_series)
            study = replace(study, number_of_series=study.number_of_series - 1)
        else:
            self._put(self.t.series, rec.series_instance_uid, series)
        if study.number_of_instances <= 0:
            self.txn.delete(_k(rec.study_instance_uid), db=self.t.studies)
            self.txn.delete(_k(study.patient_key), _k(rec.study_instance_uid),
                            db=self.t.patient_studies)
            patient = self._get(self.t.patients, study.patient_key, PatientRecord)
            keys = secondary.study_keys(study)
            if patient is not None:
                keys |= secondary.name_keys(patient.patient_name)
            secondary.write_keys(self.txn, self.t, rec.study_instance_uid, keys, put=False)
            if patient is not None:
                if patient.number_of_studies <= 1:
                    self.txn.delete(_k(study.patient_key), db=self.t.patients)
                else:
                    self._put(self.t.patients, study.patient_key,
                              replace(patient, number_of_studies=patient.number_of_studies - 1))
        else:
            recounted = self._recount_multi(rec.study_instance_uid, study)
            self._put(self.t.studies, rec.study_instance_uid, recounted)
            secondary.update_keys(self.txn, self.t, rec.study_instance_uid,
                                  secondary.study_keys(study), secondary.study_keys(recounted))

    def _recount_multi(self, study_uid: str, study: StudyRecord) -> StudyRecord:
        """Recompute ModalitiesInStudy and SOPClassesInStudy after an instance left."""
        modalities = sop_classes = ""
        series_uids = []
        with self.txn.cursor(db=self.t.study_series) as cur:
            if cur.set_key(_k(study_uid)):
                series_uids = [bytes(v).decode() for v in cur.iternext_dup()]
        for series_uid in series_uids:
            s = self._get(self.t.series, series_uid, SeriesRecord)
            if s is not None:
                modalities = _add_to_multi(modalities, s.modality)
            with self.txn.cursor(db=self.t.series_instances) as cur:
                if cur.set_key(_k(series_uid)):
                    for sop_uid in cur.iternext_dup():
                        inst = self._get(self.t.instances, bytes(sop_uid).decode(), InstanceRecord)
                        if inst is not None:
                            sop_classes = _add_to_multi(sop_classes, inst.sop_class_uid)
        return replace(study, modalities_in_study=modalities, sop_classes_in_study=sop_classes)


class GroupCommitWriter:
    """Owns the index's write transactions on one thread and group-commits entries.

    `submit()` is called from the event loop and returns an awaitable outcome; it
    resolves after the commit that contains the entry has returned (data on disk).
    """

    def __init__(self, db: IndexDatabase, duplicate_policy: str, max_group: int) -> None:
        self._db = db
        self._policy = duplicate_policy
        self._max_group = max_group
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._stopping = False
        self.commits = 0
        self.entries_committed = 0
        #: Received instances indexed so far (background work watches it to yield to ingest).
        self.ingest_committed = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (the health check asks)."""
        return self._thread.is_alive()

    def submit(self, entry: IndexEntry) -> "asyncio.Future[IndexOutcome]":
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve(result: IndexOutcome | BaseException) -> None:
            loop.call_soon_threadsafe(_settle, future, result)

        self._queue.put((entry, resolve))
        return future

    def apply_now(self, entry: IndexEntry) -> IndexOutcome:
        """Apply and commit one entry synchronously (tools and tests, not the server)."""
        done = threading.Event()
        box: list = []

        def resolve(result):
            box.append(result)
            done.set()

        self._queue.put((entry, resolve))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def run_job(self, job: Callable[[IndexTransaction], T]) -> T:
        """Run `job(tx)` in the writer's next transaction and wait for its commit.

        For background work (the compression stage), from any thread but the
        event loop's.  The job runs in a nested transaction, so its failure
        undoes only its own changes, never those of entries committed with it.
        """
        done = threading.Event()
        box: list = []

        def resolve(result):
            box.append(result)
            done.set()

        self._queue.put((job, resolve))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def post(self, job: Callable[[IndexTransaction], object]) -> None:
        """Run `job(tx)` in the writer's next transaction without waiting for it.

        For bookkeeping whose loss in a crash costs nothing (the router's
        in-flight counts); a failure is logged.
        """
        def resolve(result):
            if isinstance(result, BaseException):
                log.error("background index job failed: %s", result)

        self._queue.put((job, resolve))

    def stop(self) -> None:
        """Commit everything queued so far, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop_after = False
            while len(batch) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop_after = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop_after:
                return

    def _commit(self, batch: list) -> None:
        outcomes: list[IndexOutcome] = []
        try:
            with self._db.env.begin(write=True) as txn:
                tx = IndexTransaction(self._db, txn)
                for entry, _ in batch:
                    if callable(entry):
                        outcomes.append(self._run_nested(txn, entry))
                    else:
                        outcomes.append(tx.apply(entry, self._policy))
        except lmdb.MapFullError as exc:
            log.error("index map full (%d entries not indexed): raise storage.index_map_size",
                      len(batch))
            error: BaseException = OutOfResources(f"index full: {exc}")
            for _, resolve in batch:
                resolve(error)
            return
        except lmdb.Error as exc:
            log.exception("index commit failed for %d entries", len(batch))
            error = OutOfResources(f"index commit failed: {exc}")
            for _, resolve in batch:
                resolve(error)
            return
        except BaseException as exc:  # a bug must not strand the waiting associations
            log.exception("index writer failed for %d entries", len(batch))
            for _, resolve in batch:
                resolve(exc)
            return
        self.commits += 1
        self.entries_committed += len(batch)
        self.ingest_committed += sum(1 for entry, _ in batch if not callable(entry))
        for (_, resolve), outcome in zip(batch, outcomes):
            resolve(outcome)


    def _run_nested(self, txn: lmdb.Transaction, job: Callable) -> object:
        """A job in a child transaction: an exception undoes its changes and is its result."""
        try:
            with self._db.env.begin(write=True, parent=txn) as child:
                return job(IndexTransaction(self._db, child))
        except lmdb.MapFullError:
            raise  # the whole transaction is out of room: every entry of the batch fails
        except Exception as exc:
            return exc


def _settle(future: asyncio.Future, result) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
