"""Read-only access to the index, through LMDB's zero-copy buffers.

Records are decoded from the memory map directly (`buffers=True`); nothing
here builds pydicom objects.  Readers never block the writer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from engine.index.database import IndexDatabase
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


class IndexReader:
    def __init__(self, db: IndexDatabase) -> None:
        self._db = db
        self.t = db.tables

    def _get(self, table, key: str, cls):
        with self._db.env.begin(buffers=True) as txn:
            raw = txn.get(_k(key), db=table)
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

    def _children(self, table, key: str) -> list[str]:
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=table) as cur:
            if not cur.set_key(_k(key)):
                return []
            return [bytes(v).decode() for v in cur.iternext_dup()]

    def studies_of_patient(self, patient_key: str) -> list[str]:
        return self._children(self.t.patient_studies, patient_key)

    def series_of_study(self, study_instance_uid: str) -> list[str]:
        return self._children(self.t.study_series, study_instance_uid)

    def instances_of_series(self, series_instance_uid: str) -> list[str]:
        return self._children(self.t.series_instances, series_instance_uid)

    def iter_instances(self) -> Iterator[tuple[str, InstanceRecord]]:
        """All current instances, in UID order (one read transaction)."""
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.instances) as cur:
            for key, value in cur:
                yield bytes(key).decode(), InstanceRecord.decode(value)

    def studies_with_patient_id(self, patient_id: str) -> list[str]:
        return self._children(self.t.studies_by_patient_id, patient_id)

    def studies_with_accession_number(self, accession_number: str) -> list[str]:
        return self._children(self.t.studies_by_accession, accession_number)

    def studies_in_date_range(self, first: str, last: str) -> list[str]:
        """Studies whose StudyDate (YYYYMMDD) is within [first, last], both inclusive."""
        found = []
        with self._db.env.begin(buffers=True) as txn, \
                txn.cursor(db=self.t.studies_by_date) as cur:
            if not cur.set_range(_k(first)):
                return found
            for key, value in cur:
                if bytes(key).decode() > last:
                    break
                found.append(bytes(value).decode())
        return found

    def patients_with_id(self, patient_id: str) -> list[tuple[str, PatientRecord]]:
        """Patients with this PatientID, whatever their issuer (keys are ID NUL issuer)."""
        prefix = _k(patient_id) + b"\x00"
        found = []
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.patients) as cur:
            if not cur.set_range(prefix):
                return found
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                found.append((key.decode("utf-8", "surrogateescape"), PatientRecord.decode(value)))
        return found

    def iter_patients(self) -> Iterator[tuple[str, PatientRecord]]:
        """All patients by patient key (one read transaction)."""
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.patients) as cur:
            for key, value in cur:
                yield bytes(key).decode("utf-8", "surrogateescape"), PatientRecord.decode(value)

    def iter_studies(self) -> Iterator[tuple[str, StudyRecord]]:
        """All studies by Study Instance UID (one read transaction)."""
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.studies) as cur:
            for key, value in cur:
                yield bytes(key).decode(), StudyRecord.decode(value)

    def iter_conflicts(self) -> Iterator[tuple[str, ConflictRecord]]:
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.conflicts) as cur:
            for key, value in cur:
                yield bytes(key).decode().split("\x00")[0], ConflictRecord.decode(value)

    def iter_blob_hashes(self) -> Iterator[str]:
        with self._db.env.begin(buffers=True) as txn, txn.cursor(db=self.t.blobs) as cur:
            for key in cur.iternext(keys=True, values=False):
                yield bytes(key).decode()

    def stats(self) -> IndexStats:
        with self._db.env.begin() as txn:
            def count(table) -> int:
                return txn.stat(table)["entries"]
            total = int(txn.get(b"total_bytes", b"0", db=self.t.meta))
            return IndexStats(
                count(self.t.patients), count(self.t.studies), count(self.t.series),
                count(self.t.instances), count(self.t.conflicts), count(self.t.blobs), total)
