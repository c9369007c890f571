"""The LMDB environment of the index: one file pair in <data dir>/index.

Sub-databases (keys are UTF-8):

    patients          patient key (PatientID NUL Issuer)   -> PatientRecord
    studies           StudyInstanceUID                     -> StudyRecord
    series            SeriesInstanceUID                    -> SeriesRecord
    instances         SOPInstanceUID                       -> InstanceRecord
    patient_studies   patient key       (dupsort)          -> StudyInstanceUID
    studies_by_patient_id  PatientID    (dupsort)          -> StudyInstanceUID   } secondary indexes
    studies_by_accession   AccessionNumber (dupsort)       -> StudyInstanceUID   } for the C-FIND
    studies_by_date        StudyDate YYYYMMDD (dupsort)    -> StudyInstanceUID   } planner
    studies_by_family_name folded family name (dupsort)    -> StudyInstanceUID   } (see
    studies_by_modality    each of ModalitiesInStudy (dupsort) -> StudyInstanceUID } secondary.py)
    study_series      StudyInstanceUID  (dupsort)          -> SeriesInstanceUID
    series_instances  SeriesInstanceUID (dupsort)          -> SOPInstanceUID
    blobs             content hash (hex)                   -> BlobRecord
    conflicts         SOPInstanceUID NUL content hash      -> ConflictRecord
    meta              name                                 -> value (schema version, totals)
    compress_queue    SOPInstanceUID                       -> b""     } compression stage
    compress_failures SOPInstanceUID                       -> reason  } (compression_state.py)
    forward_jobs      destination NUL job id               -> job     } router queue,
    forward_due       destination NUL due time, job id     -> trigger } destination
    forward_destinations  destination                      -> health  } health and
    forward_warnings  destination NUL SOPInstanceUID       -> status  } warnings,
    forward_pending   SOPInstanceUID                       -> count   } store-and-
    forward_done      SOPInstanceUID                       -> time    } forward state
    study_activity    StudyInstanceUID                     -> time    } (forward_queue.py)
    external_files    content hash (hex)                   -> absolute path } pacs import
    import_journal    blake2b-128(source path)             -> size, mtime, hash } (external.py,
                                                                            import_journal.py)

Every update of a record and of the keys that point to it happens in one write
transaction, so the hierarchy is never seen half-updated.

Schema versions: 1 had no secondary indexes, 2 had PatientID, AccessionNumber
and StudyDate, 3 adds family names and modalities, 4 the forward queue's due
index and destination health.  Opening an index of an older version
read-write rebuilds every derived table from the records, in one transaction
with the new version number; read-only opens refuse it (they cannot write)
and say how to upgrade.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lmdb

from engine.errors import EngineError
from engine.index import forward_queue, secondary

log = logging.getLogger(__name__)

SCHEMA_VERSION = b"4"
#: Older versions whose records this version reads; opening one rebuilds the secondary tables.
UPGRADABLE_VERSIONS = (b"1", b"2", b"3")
_DUPSORT = ("patient_studies", "study_series", "series_instances", *secondary.TABLES)
_PLAIN = ("patients", "studies", "series", "instances", "blobs", "conflicts", "meta",
          "compress_queue", "compress_failures", "forward_jobs", "forward_due",
          "forward_destinations", "forward_warnings", "forward_pending", "forward_done",
          "study_activity")
#: Tables added without a schema change (empty is correct for an older index); a
#: read-only open of an index that lacks them sees None.
_OPTIONAL = ("external_files", "import_journal")


class IndexSchemaError(EngineError):
    """The index on disk was written by an incompatible schema version."""


@dataclass(frozen=True)
class Tables:
    patients: object
    studies: object
    series: object
    instances: object
    blobs: object
    conflicts: object
    meta: object
    compress_queue: object
    compress_failures: object
    forward_jobs: object
    forward_due: object
    forward_destinations: object
    forward_warnings: object
    forward_pending: object
    forward_done: object
    study_activity: object
    patient_studies: object
    study_series: object
    series_instances: object
    studies_by_patient_id: object
    studies_by_accession: object
    studies_by_date: object
    studies_by_family_name: object
    studies_by_modality: object
    external_files: object = None
    import_journal: object = None


class IndexDatabase:
    """Opens the LMDB environment and its tables; shared by the writer and readers."""

    def __init__(self, path: Path, map_size: int, readonly: bool = False) -> None:
        self.path = Path(path)
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        # sync/metasync stay on: a commit returns only once it is on disk.
        self.env = lmdb.open(
            str(self.path), map_size=map_size,
            max_dbs=len(_DUPSORT) + len(_PLAIN) + len(_OPTIONAL) + 2,
            subdir=True, readonly=readonly, sync=True, metasync=True, lock=True,
            readahead=False, max_readers=512, create=not readonly)
        handles = {}
        if readonly:
            # Handles opened inside a read transaction die with it; let lmdb open them.
            # The version comes first: an older schema may lack some tables.
            meta = self.env.open_db(b"meta", create=False)
            with self.env.begin() as txn:
                self._check_version(txn.get(b"schema_version", db=meta), readonly=True)
            for name in _PLAIN:
                handles[name] = self.env.open_db(name.encode(), create=False)
            for name in _DUPSORT:
                handles[name] = self.env.open_db(name.encode(), dupsort=True, create=False)
            for name in _OPTIONAL:
                try:
                    handles[name] = self.env.open_db(name.encode(), create=False)
                except lmdb.NotFoundError:
                    handles[name] = None
            self.tables = Tables(**handles)
            return
        with self.env.begin(write=True) as txn:
            for name in _PLAIN:
                handles[name] = self.env.open_db(name.encode(), txn=txn)
            for name in _DUPSORT:
                handles[name] = self.env.open_db(name.encode(), txn=txn, dupsort=True)
            for name in _OPTIONAL:
                handles[name] = self.env.open_db(name.encode(), txn=txn)
            self.tables = Tables(**handles)
            version = txn.get(b"schema_version", db=handles["meta"])
            if version is None:
                txn.put(b"schema_version", SCHEMA_VERSION, db=handles["meta"])
            elif version in UPGRADABLE_VERSIONS:
                log.info("index schema %s: rebuilding derived tables for schema %s",
                         version.decode(), SCHEMA_VERSION.decode())
                secondary.rebuild(txn, self.tables)
                forward_queue.rebuild_due(txn, self.tables)
                txn.put(b"schema_version", SCHEMA_VERSION, db=handles["meta"])
            else:
                self._check_version(version)

    @staticmethod
    def _check_version(version: bytes | None, readonly: bool = False) -> None:
        if version is None or version == SCHEMA_VERSION:
            return
        if readonly and version in UPGRADABLE_VERSIONS:
            raise IndexSchemaError(
                f"index schema {version.decode()} found, this version reads "
                f"{SCHEMA_VERSION.decode()}: start the server once (pacs serve) on this data "
                f"directory to rebuild the derived tables, then retry")
        raise IndexSchemaError(f"index schema {version.decode()} found, this version reads "
                               f"{SCHEMA_VERSION.decode()}")

    def close(self) -> None:
        self.env.close()
