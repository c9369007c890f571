"""Which instances a C-MOVE or C-GET identifier names (PS3.4 C.4.2.2.1, C.4.3.2.1).

A retrieve identifier holds the Query/Retrieve Level and the unique keys from
the top of the information model down to that level: a single value above it,
one value or a UID list at it.  Resolution walks the index from those keys
down to instances; nothing is scanned, so a retrieve costs the same in a full
archive as in an empty one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from engine.index.reader import IndexReader
from engine.query.find import InvalidQuery, LevelNotInModel, element_text
from engine.query.model import LEVELS, PATIENT_ROOT_MODELS, UNIQUE_KEY, level_index
from engine.store.blob_store import FilesystemBlobStore


@dataclass(frozen=True)
class StoredInstance:
    """One instance to send: what the C-STORE-RQ names and where its bytes are."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    dataset_offset: int
    dataset_length: int


@dataclass(frozen=True)
class RetrieveRequest:
    level: str
    #: Unique key values by keyword; the retrieve level's key may hold several.
    keys: dict[str, tuple[str, ...]]

    @classmethod
    def from_identifier(cls, model: str, ds: Dataset) -> "RetrieveRequest":
        level = str(ds.get("QueryRetrieveLevel", "")).strip().upper()
        first = 0 if model in PATIENT_ROOT_MODELS else 1
        if level not in LEVELS[first:]:
            raise LevelNotInModel(f"Query/Retrieve Level {level!r} not valid for this model")
        keys: dict[str, tuple[str, ...]] = {}
        for above in LEVELS[first:level_index(level) + 1]:
            keyword = UNIQUE_KEY[above]
            text = element_text(ds[keyword]) if keyword in ds else ""
            values = tuple(v.strip() for v in text.split("\\") if v.strip())
            if not values:
                raise InvalidQuery(f"retrieve at {level} level needs {keyword}")
            if above != level and len(values) > 1:
                raise InvalidQuery(f"{keyword} above the retrieve level must be a single value")
            if any("*" in v or "?" in v for v in values):
                raise InvalidQuery(f"{keyword}: wildcards are not allowed in a retrieve")
            keys[keyword] = values
        return cls(level, keys)


class RetrieveResolver:
    """Turns a RetrieveRequest into the list of stored instances it names."""

    def __init__(self, reader: IndexReader, store: FilesystemBlobStore) -> None:
        self.reader = reader
        self.store = store

    def _study_uids(self, request: RetrieveRequest) -> list[str]:
        if "StudyInstanceUID" in request.keys:
            uids = list(request.keys["StudyInstanceUID"])
        else:
            uids = [study_uid for patient_key, _ in
                    self.reader.patients_with_id(request.keys["PatientID"][0])
                    for study_uid in self.reader.studies_of_patient(patient_key)]
        patient_ids = request.keys.get("PatientID")
        if patient_ids is None or request.level == "PATIENT":
            return uids
        kept = []
        for uid in uids:  # Patient Root: the study must belong to that patient
            study = self.reader.study(uid)
            patient = self.reader.patient(study.patient_key) if study is not None else None
            if patient is not None and patient.patient_id == patient_ids[0]:
                kept.append(uid)
        return kept

    def _series_uids(self, request: RetrieveRequest) -> list[str]:
        studies = self._study_uids(request)
        if "SeriesInstanceUID" not in request.keys:
            return [s for study in studies for s in self.reader.series_of_study(study)]
        uids = []
        for uid in request.keys["SeriesInstanceUID"]:
            series = self.reader.series(uid)
            if series is not None and series.study_instance_uid in studies:
                uids.append(uid)
        return uids

    def _sop_uids(self, request: RetrieveRequest) -> list[str]:
        series = self._series_uids(request)
        if "SOPInstanceUID" not in request.keys:
            return [i for s in series for i in self.reader.instances_of_series(s)]
        uids = []
        for uid in request.keys["SOPInstanceUID"]:
            instance = self.reader.instance(uid)
            if instance is not None and instance.series_instance_uid in series:
                uids.append(uid)
        return uids

    def stored(self, uid: str) -> StoredInstance | None:
        """The instance as the index has it now, or None."""
        record = self.reader.instance(uid)
        if record is None:
            return None  # deleted since the walk
        path = (self.reader.external_path(record.content_hash)  # imported in place
                or self.store.path_of(record.content_hash))
        return StoredInstance(uid, record.sop_class_uid, record.transfer_syntax_uid,
                              path, record.dataset_offset, record.size - record.dataset_offset)

    def resolve(self, request: RetrieveRequest) -> list[StoredInstance]:
        found = (self.stored(uid) for uid in dict.fromkeys(self._sop_uids(request)))
        return [instance for instance in found if instance is not None]

    def studies_of(self, sop_instance_uids: list[str]) -> dict[str, tuple[str, str]]:
        """SOP Instance UID → (Study Instance UID, Patient ID), in one read transaction
        (the audit trail names what a retrieve sent by study and patient)."""
        found: dict[str, tuple[str, str]] = {}
        patients: dict[str, str] = {}
        with self.reader.snapshot() as snap:
            for uid in sop_instance_uids:
                record = snap.instance(uid)
                if record is None:
                    continue
                study = record.study_instance_uid
                if study not in patients:
                    study_record = snap.study(study)
                    patients[study] = study_record.patient_key.split("\x00", 1)[0] \
                        if study_record is not None else ""
                found[uid] = (study, patients[study])
        return found

    def refresh(self, instance: StoredInstance) -> StoredInstance | None:
        """The instance as the index has it now (its file may have been re-stored)."""
        return self.stored(instance.sop_instance_uid)


__all__ = ["RetrieveRequest", "RetrieveResolver", "StoredInstance"]
