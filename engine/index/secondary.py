"""Study-level secondary indexes: which keys a study contributes, kept in step.

Tables (dupsort, value = StudyInstanceUID):

    studies_by_patient_id   PatientID
    studies_by_accession    AccessionNumber
    studies_by_date         StudyDate as YYYYMMDD (ACR-NEMA ``YYYY.MM.DD`` without dots)
    studies_by_family_name  folded family name of every component group of the
                            patient's name (engine.dicom.person_name.fold)
    studies_by_modality     ModalitiesInStudy

Each value of a multi-valued attribute is a key of its own, without padding
spaces, because that is how the matchers compare (any value, stripped).

A key is cut to `MAX_KEY_BYTES` (LMDB keys are at most 511 bytes); lookups cut
their key the same way, so a long value still finds a superset.  Readers treat
every table as a superset of the matches and run all matchers on what they find.
The writer updates these keys in the transaction that writes the study record.
"""
from __future__ import annotations

import logging

from engine.dicom.person_name import family_name_keys
from engine.index.records import PatientRecord, StudyRecord

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 500
#: Table names, as in engine.index.database.Tables.
TABLES = ("studies_by_patient_id", "studies_by_accession", "studies_by_date",
          "studies_by_family_name", "studies_by_modality")


def index_key(text: str) -> bytes:
    """The table key of a value: UTF-8 (surrogate escapes kept), cut to MAX_KEY_BYTES."""
    return text.encode("utf-8", "surrogateescape")[:MAX_KEY_BYTES]


def values_of(text: str) -> set[str]:
    """The non-empty values of a (possibly multi-valued) attribute, spaces stripped."""
    return {v.strip(" ") for v in text.split("\\") if v.strip(" ")}


def date_key(study_date: str) -> str:
    date = study_date.strip(" ")
    return date.replace(".", "") if len(date) == 10 else date


def study_keys(study: StudyRecord) -> set[tuple[str, bytes]]:
    """(table, key) pairs that come from the study record itself."""
    keys = set()
    for table, text in (("studies_by_patient_id", study.patient_key.split("\x00")[0]),
                        ("studies_by_accession", study.accession_number),
                        ("studies_by_date", study.study_date),
                        ("studies_by_modality", study.modalities_in_study)):
        for value in values_of(text):
            if table == "studies_by_date":
                value = date_key(value)
            keys.add((table, index_key(value)))
    return keys


def name_keys(patient_name: str) -> set[tuple[str, bytes]]:
    """(table, key) pairs that come from the patient's name."""
    return {("studies_by_family_name", index_key(f)) for f in family_name_keys(patient_name)}


def write_keys(txn, tables, study_uid: str, keys, put: bool) -> None:
    """Add (or remove) a study's keys in the caller's write transaction."""
    value = study_uid.encode("utf-8", "surrogateescape")
    for table, key in keys:
        db = getattr(tables, table)
        if put:
            txn.put(key, value, db=db)
        else:
            txn.delete(key, value, db=db)


def update_keys(txn, tables, study_uid: str, before: set, after: set) -> None:
    """Move a study from its `before` keys to its `after` keys (only the difference)."""
    if before != after:
        write_keys(txn, tables, study_uid, before - after, put=False)
        write_keys(txn, tables, study_uid, after - before, put=True)


def rebuild(txn, tables) -> int:
    """Empty every secondary table and refill it from the study and patient records.

    Runs in the caller's write transaction (a schema upgrade), so readers see
    either the old tables or the complete new ones.  Returns the study count.
    """
    for table in TABLES:
        txn.drop(getattr(tables, table), delete=False)
    names: dict[bytes, str] = {}
    count = 0
    with txn.cursor(db=tables.studies) as cur:
        for raw_uid, raw in cur:
            study = StudyRecord.decode(raw)
            uid = bytes(raw_uid).decode("utf-8", "surrogateescape")
            pkey = study.patient_key.encode("utf-8", "surrogateescape")
            name = names.get(pkey)
            if name is None:
                patient = txn.get(pkey, db=tables.patients)
                name = PatientRecord.decode(patient).patient_name if patient is not None else ""
                names[pkey] = name
            write_keys(txn, tables, uid, study_keys(study) | name_keys(name), put=True)
            count += 1
    log.info("secondary indexes rebuilt for %d studies", count)
    return count
