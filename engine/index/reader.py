"""Read-only access to the index, through LMDB's zero-copy buffers.

Records are decoded from the memory map directly (`buffers=True`); nothing
here builds pydicom objects.  Readers never block the writer.

`IndexReader.snapshot()` gives an `IndexSnapshot`: the same lookups bound to one
read transaction, so a query sees one consistent state of the index and pays
for one transaction, not one per lookup.  The reader's own methods each open a
short transaction of their own.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.index import compression_state, external, forward_queue
from engine.index.database import IndexDatabase
from engine.index.secondary import index_key
from engine.index.records import (
    BlobRecord, ConflictRecord, InstanceRecord, PatientRecord, SeriesRecord, StudyRecord)


@dataclass(frozen=True)
class IndexStats:
    patients: int
    studies: int
    series: int
    instances: int
    conflicts: int
    blobs: int
    #: Bytes of all stored objects referenced by the index (current and conflicts).
    bytes_stored: int


def _k(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class IndexSnapshot:
    """Lookups inside one read transaction (valid while the transaction is open).

    Records are decoded (copied) out of LMDB's buffers before they are returned,
    so they outlive the transaction; iterators must be consumed inside it.
    """

    __slots__ = ("txn", "t", "_get_raw")

    def __init__(self, txn, tables) -> None:
        self.txn = txn
        self.t = tables
        self._get_raw = txn.get

    def _get(self, table, key: str, cls):
        raw = self._get_raw(_k(key), db=table)
        return None if raw is None else cls.decode(raw)

    def instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        return self._get(self.t.instances, sop_instance_uid, InstanceRecord)

    def series(self, series_instance_uid: str) -> SeriesRecord | None:
        return self._get(self.t.series, series_instance_uid, SeriesRecord)

    def study(self, study_instance_uid: str) -> StudyRecord | None:
        return self._get(self.t.studies, study_instance_uid, StudyRecord)

    def patient(self, patient_key: str) -> PatientRecord | None:
        return self._get(self.t.patients, patient_key, PatientRecord)

    def blob(self, content_hash: str) -> BlobRecord | None:
        return self._get(self.t.blobs, content_hash, BlobRecord)

    def external_path(self, content_hash: str) -> Path | None:
        """Where an in-place import left this content (None: it is in the blob store)."""
        return external.path(self.txn, self.t, content_hash)

    def _children_of_key(self, table, key: bytes) -> list[str]:
        with self.txn.cursor(db=table) as cur:
            if not cur.set_key(key):
                return []
            return [bytes(v).decode("utf-8", "surrogateescape") for v in cur.iternext_dup()]

    def _children(self, table, key: str) -> list[str]:
        return self._children_of_key(table, _k(key))

    def studies_of_patient(self, patient_key: str) -> list[str]:
        return self._children(self.t.patient_studies, patient_key)

    def series_of_study(self, study_instance_uid: str) -> list[str]:
        return self._children(self.t.study_series, study_instance_uid)

    def instances_of_series(self, series_instance_uid: str) -> list[str]:
        return self._children(self.t.series_instances, series_instance_uid)

    def iter_instances(self) -> Iterator[tuple[str, InstanceRecord]]:
        """All current instances, in UID order."""
        with self.txn.cursor(db=self.t.instances) as cur:
            for key, value in cur:
                yield bytes(key).decode(), InstanceRecord.decode(value)

    # -- study-level secondary indexes (supersets: callers still match) ------------------
    def studies_with_patient_id(self, patient_id: str) -> list[str]:
        return self._children_of_key(self.t.studies_by_patient_id, index_key(patient_id))

    def studies_with_accession_number(self, accession_number: str) -> list[str]:
        return self._children_of_key(self.t.studies_by_accession, index_key(accession_number))

    # `limit`: give up (return None) rather than collect more than `limit` studies; the
    # planner uses it to read a weaker index only when it is cheap to.
    def studies_in_date_range(self, first: str, last: str,
                              limit: int | None = None) -> list[str] | None:
        """Studies whose StudyDate (YYYYMMDD) is within [first, last], both inclusive."""
        last_key = _k(last)
        return self._scan(self.t.studies_by_date, _k(first),
                          lambda key: bytes(key) <= last_key, limit)

    def studies_with_family_name(self, folded_family: str, prefix: bool,
                                 limit: int | None = None) -> list[str] | None:
        """Studies whose patient has a (folded, engine.dicom.person_name.fold) family
        name equal to, or with `prefix` starting with, `folded_family`."""
        return self._key_range(self.t.studies_by_family_name, index_key(folded_family), prefix,
                               limit)

    def studies_with_modality(self, modality: str, prefix: bool = False,
                              limit: int | None = None) -> list[str] | None:
        """Studies with `modality` (or a modality starting with it) in ModalitiesInStudy."""
        return self._key_range(self.t.studies_by_modality, index_key(modality), prefix, limit)

    def _key_range(self, table, key: bytes, prefix: bool, limit: int | None) -> list[str] | None:
        # Stored keys and `key` are cut at the same length, so a cut key still finds
        # every value that starts with (or equals) the uncut one.
        if not prefix:
            with self.txn.cursor(db=table) as cur:
                if not cur.set_key(key):
                    return []
                if limit is not None and cur.count() > limit:
                    return None
                return [bytes(v).decode("utf-8", "surrogateescape") for v in cur.iternext_dup()]
        return self._scan(table, key, lambda stored: bytes(stored).startswith(key), limit)

    def _scan(self, table, first: bytes, within, limit: int | None) -> list[str] | None:
        """Values from key `first` on, while `within(key)` holds."""
        found: list[str] = []
        with self.txn.cursor(db=table) as cur:
            if not cur.set_range(first):
                return found
            for key, value in cur:
                if not within(key):
                    break
                if limit is not None and len(found) >= limit:
                    return None
                found.append(bytes(value).decode("utf-8", "surrogateescape"))
        return found

    # -- patients ------------------------------------------------------------------------
    def patients_with_id(self, patient_id: str) -> list[tuple[str, PatientRecord]]:
        """Patients with this PatientID, whatever their issuer (keys are ID NUL issuer)."""
        prefix = _k(patient_id) + b"\x00"
        found = []
        with self.txn.cursor(db=self.t.patients) as cur:
            if not cur.set_range(prefix):
                return found
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                found.append((key.decode("utf-8", "surrogateescape"), PatientRecord.decode(value)))
        return found

    def iter_patients(self) -> Iterator[tuple[str, PatientRecord]]:
        """All patients by patient key."""
        with self.txn.cursor(db=self.t.patients) as cur:
            for key, value in cur:
                yield bytes(key).decode("utf-8", "surrogateescape"), PatientRecord.decode(value)

    def iter_studies(self) -> Iterator[tuple[str, StudyRecord]]:
        """All studies by Study Instance UID."""
        with self.txn.cursor(db=self.t.studies) as cur:
            for key, value in cur:
                yield bytes(key).decode(), StudyRecord.decode(value)


class IndexReader:
    """Read access for any thread; each method is one short read transaction."""

    def __init__(self, db: IndexDatabase) -> None:
        self._db = db
        self.t = db.tables

    @contextmanager
    def snapshot(self) -> Iterator[IndexSnapshot]:
        """One read transaction for many lookups (use it from one thread)."""
        with self._db.env.begin(buffers=True) as txn:
            yield IndexSnapshot(txn, self.t)

    def _one(self, method: str, *args):
        with self._db.env.begin(buffers=True) as txn:
            return getattr(IndexSnapshot(txn, self.t), method)(*args)

    def _each(self, method: str, *args) -> Iterator:
        with self._db.env.begin(buffers=True) as txn:
            yield from getattr(IndexSnapshot(txn, self.t), method)(*args)

    def instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        return self._one("instance", sop_instance_uid)

    def series(self, series_instance_uid: str) -> SeriesRecord | None:
        return self._one("series", series_instance_uid)

    def study(self, study_instance_uid: str) -> StudyRecord | None:
        return self._one("study", study_instance_uid)

    def patient(self, patient_key: str) -> PatientRecord | None:
        return self._one("patient", patient_key)

    def blob(self, content_hash: str) -> BlobRecord | None:
        return self._one("blob", content_hash)

    def external_path(self, content_hash: str) -> Path | None:
        """Where an in-place import left this content (None: it is in the blob store)."""
        return self._one("external_path", content_hash)

    def studies_of_patient(self, patient_key: str) -> list[str]:
        return self._one("studies_of_patient", patient_key)

    def series_of_study(self, study_instance_uid: str) -> list[str]:
        return self._one("series_of_study", study_instance_uid)

    def instances_of_series(self, series_instance_uid: str) -> list[str]:
        return self._one("instances_of_series", series_instance_uid)

    def iter_instances(self) -> Iterator[tuple[str, InstanceRecord]]:
        """All current instances, in UID order (one read transaction)."""
        return self._each("iter_instances")

    def studies_with_patient_id(self, patient_id: str) -> list[str]:
        return self._one("studies_with_patient_id", patient_id)

    def studies_with_accession_number(self, accession_number: str) -> list[str]:
        return self._one("studies_with_accession_number", accession_number)

    def studies_in_date_range(self, first: str, last: str,
                              limit: int | None = None) -> list[str] | None:
        """Studies whose StudyDate (YYYYMMDD) is within [first, last], both inclusive."""
        return self._one("studies_in_date_range", first, last, limit)

    def studies_with_family_name(self, folded_family: str, prefix: bool,
                                 limit: int | None = None) -> list[str] | None:
        return self._one("studies_with_family_name", folded_family, prefix, limit)

    def studies_with_modality(self, modality: str, prefix: bool = False,
                              limit: int | None = None) -> list[str] | None:
        return self._one("studies_with_modality", modality, prefix, limit)

    def patients_with_id(self, patient_id: str) -> list[tuple[str, PatientRecord]]:
        """Patients with this PatientID, whatever their issuer (keys are ID NUL issuer)."""
        return self._one("patients_with_id", patient_id)

    def iter_patients(self) -> Iterator[tuple[str, PatientRecord]]:
        """All patients by patient key (one read transaction)."""
        return self._each("iter_patients")

    def iter_studies(self) -> Iterator[tuple[str, StudyRecord]]:
        """All studies by Study Instance UID (one read transaction)."""
        return self._each("iter_studies")

    def iter_conflicts(self) -> Iterator[tuple[str, ConflictRecord]]:
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.conflicts) as cur:
            for key, value in cur:
                yield bytes(key).decode().split("\x00")[0], ConflictRecord.decode(value)

    def iter_blob_hashes(self) -> Iterator[str]:
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.blobs) as cur:
            for key in cur.iternext(keys=True, values=False):
                yield bytes(key).decode()

    # -- the compression stage's state (compression_state.py) -------------------------
    def _state(self, function, *args):
        with self._db.env.begin(buffers=True) as txn:
            return function(txn, self.t, *args)

    def compression_queue(self, limit: int) -> list[str]:
        return self._state(compression_state.queued, limit)

    def compression_queue_length(self) -> int:
        return self._state(compression_state.queue_length)

    def compression_failure(self, sop_instance_uid: str) -> str | None:
        return self._state(compression_state.failure, sop_instance_uid)

    def compression_failures(self) -> list[tuple[str, str]]:
        return self._state(compression_state.failures)

    def compression_cursor(self) -> str:
        return self._state(compression_state.cursor)

    def compression_totals(self) -> dict[str, compression_state.CompressionTotals]:
        return self._state(compression_state.totals_by_modality)

    # -- the router's forward queue (forward_queue.py) --------------------------------
    def forward_due(self, destination: str, now: float, limit: int,
                    skip: set[int]) -> list[forward_queue.ForwardJob]:
        return self._state(forward_queue.due, destination, now, limit, skip)

    def forward_health(self, destination: str) -> forward_queue.DestinationHealth:
        return self._state(forward_queue.destination_health, destination)

    def forward_jobs(self, destination: str | None, study_uid: str | None, limit: int
                     ) -> list[forward_queue.ForwardJob]:
        return self._state(forward_queue.jobs, destination, study_uid, limit)

    def forward_warnings(self, destination: str | None, limit: int
                         ) -> list[tuple[str, str, int, float]]:
        return self._state(forward_queue.warnings, destination, limit)

    def forward_counts(self, destinations, limit: int) -> dict[str, tuple[int, int, bool]]:
        """(pending, dead, down) per destination, each count capped at `limit` (metrics)."""
        return self._state(forward_queue.counts, destinations, limit)

    def forward_summary(self) -> dict[str, forward_queue.DestinationSummary]:
        return self._state(forward_queue.summary)

    def forward_expired(self, before: float, limit: int) -> list[str]:
        return self._state(forward_queue.expired, before, limit)

    def instances_after(self, sop_instance_uid: str, limit: int
                        ) -> list[tuple[str, InstanceRecord]]:
        """Up to `limit` instances with UIDs after `sop_instance_uid`, in UID order."""
        found: list[tuple[str, InstanceRecord]] = []
        start = sop_instance_uid.encode("utf-8", "surrogateescape")
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.instances) as cur:
            if not cur.set_range(start):
                return found
            for key, value in cur:
                uid = bytes(key).decode()
                if uid == sop_instance_uid:
                    continue
                found.append((uid, InstanceRecord.decode(value)))
                if len(found) >= limit:
                    break
        return found

    def stats(self) -> IndexStats:
        with self._db.env.begin() as txn:
            def count(table) -> int:
                return txn.stat(table)["entries"]
            total = int(txn.get(b"total_bytes", b"0", db=self.t.meta))
            return IndexStats(
                count(self.t.patients), count(self.t.studies), count(self.t.series),
                count(self.t.instances), count(self.t.conflicts), count(self.t.blobs), total)
