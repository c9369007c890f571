"""C-FIND execution over the index at 20,000 studies (in-process, no network).

Each round is the SCP's work for one request: plan, match, and encode every
response identifier (`FindExecutor.run_encoded`, what the C-FIND service sends).
Queries are those of the issue: PatientID exact, AccessionNumber exact,
one-month StudyDate range, PatientName `SMI*` (family-name index), all studies
(a scan).  tools/bench_find.py measures the same over the network against Orthanc.
"""
from __future__ import annotations

import random

import pytest
from pydicom.dataset import Dataset

from engine.index.database import IndexDatabase
from engine.index.entry import IndexEntry
from engine.index.reader import IndexReader
from engine.index.writer import IndexTransaction
from engine.query.find import FindExecutor, FindQuery
from engine.query.model import STUDY_ROOT_FIND
from engine.store.blob_store import FilesystemBlobStore

STUDIES = 20_000
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
FAMILY = ["SMITH", "SMITHERS", "JONES", "BROWN", "MILLER", "DAVIS", "GARCIA", "WILSON",
          "MOORE", "TAYLOR", "ANDERSON", "THOMAS", "JACKSON", "WHITE", "HARRIS", "MARTIN"]


def entries(rng: random.Random):
    for study in range(STUDIES):
        patient = rng.randrange(STUDIES // 2)
        year, month, day = rng.randrange(2015, 2027), rng.randrange(1, 13), rng.randrange(1, 29)
        attrs = {
            "PatientID": f"PAT{patient:06d}", "PatientName": f"{FAMILY[patient % 16]}^P{patient}",
            "StudyInstanceUID": f"2.25.1.{study}", "SeriesInstanceUID": f"2.25.2.{study}",
            "StudyDate": f"{year}{month:02d}{day:02d}", "StudyTime": "101500",
            "AccessionNumber": f"ACC{study:07d}", "Modality": rng.choice(["CT", "MR", "CR"]),
        }
        yield IndexEntry(f"2.25.3.{study}", CT_IMAGE, "1.2.840.10008.1.2.1", f"{study:064x}",
                         500_000, 328, "2026-01-01T00:00:00", "BENCH", attrs)


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("find")
    db = IndexDatabase(root / "index", 1 << 30)
    batch = []
    for entry in entries(random.Random(7)):
        batch.append(entry)
        if len(batch) == 2000:
            with db.env.begin(write=True) as txn:
                tx = IndexTransaction(db, txn)
                for e in batch:
                    tx.apply(e, "keep-first")
            batch = []
    yield FindExecutor(IndexReader(db), FilesystemBlobStore(root / "store"))
    db.close()


QUERIES = {
    "patient-id": {"PatientID": "PAT004242"},
    "accession": {"AccessionNumber": "ACC0012345"},
    "date-month": {"StudyDate": "20240101-20240131"},
    "name-wildcard": {"PatientName": "SMI*"},
    "all-studies": {},
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_study_level_find(benchmark, executor, name):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.AccessionNumber = ""
    for keyword, value in QUERIES[name].items():
        setattr(identifier, keyword, value)
    query = FindQuery.from_identifier(STUDY_ROOT_FIND, identifier, False)
    benchmark.group = "find-study-20k"
    count = benchmark(lambda: sum(1 for _ in executor.run_encoded(query, EXPLICIT_LE)))
    assert count >= 1
    benchmark.extra_info["matches"] = count
