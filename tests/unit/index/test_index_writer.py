"""Index writer, reader and database on a real LMDB environment in tmp_path."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from engine.errors import OutOfResources
from engine.index.database import SCHEMA_VERSION, IndexDatabase, IndexSchemaError
from engine.index.entry import IndexEntry, IndexOutcome
from engine.index.reader import IndexReader
from engine.index.records import ConflictRecord
from engine.index.writer import GroupCommitWriter, patient_key

REPO = Path(__file__).resolve().parents[3]
MAP_SIZE = 1 << 26
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

STUDY_A, STUDY_B = "1.2.826.0.1.1", "1.2.826.0.1.2"
SERIES_A1, SERIES_A2, SERIES_B1 = "1.2.826.0.1.1.1", "1.2.826.0.1.1.2", "1.2.826.0.1.2.1"
SOP = "1.2.826.0.1.1.1.1"


def content(n: int) -> str:
    """A content hash (64 lowercase hex digits) numbered n."""
    return f"{n:064x}"


def entry(sop: str = SOP, blob: int = 1, *, study: str = STUDY_A, series: str = SERIES_A1,
          patient: str = "PAT1", modality: str = "CT", sop_class: str = CT_IMAGE,
          size: int = 1000, **attributes) -> IndexEntry:
    attrs = {
        "PatientID": patient, "PatientName": "Doe^Jane", "PatientBirthDate": "19700101",
        "PatientSex": "F", "StudyInstanceUID": study, "StudyDate": "20240102",
        "StudyTime": "101500", "AccessionNumber": "ACC1", "StudyID": "S1",
        "StudyDescription": "Chest", "SeriesInstanceUID": series, "Modality": modality,
        "SeriesNumber": 3, "SeriesDescription": "Axial", "InstanceNumber": 7, "Rows": 512,
        "Columns": 256, **attributes}
    return IndexEntry(sop_instance_uid=sop, sop_class_uid=sop_class,
                      transfer_syntax_uid=EXPLICIT_LE, content_hash=content(blob), size=size,
                      dataset_offset=332, received_at=f"2024-01-02T10:15:{blob % 60:02d}Z",
                      calling_ae_title="MODALITY", attributes=attrs)


async def gather(*futures, return_exceptions: bool = False) -> list:
    """Await writer futures; a waiter the writer strands fails the test instead of hanging."""
    return await asyncio.wait_for(
        asyncio.gather(*futures, return_exceptions=return_exceptions), timeout=30)


def pkey(patient: str = "PAT1") -> str:
    return patient_key({"PatientID": patient})


@dataclasses.dataclass
class Index:
    db: IndexDatabase
    writer: GroupCommitWriter
    reader: IndexReader

    def apply(self, *entries: IndexEntry) -> list[IndexOutcome]:
        return [self.writer.apply_now(e) for e in entries]

    def snapshot(self) -> dict[str, list]:
        """Every key/value pair of every table (dupsort tables included)."""
        out = {}
        with self.db.env.begin() as txn:
            for f in dataclasses.fields(self.db.tables):
                with txn.cursor(db=getattr(self.db.tables, f.name)) as cur:
                    out[f.name] = list(cur.iternext())
        return out


@pytest.fixture
def open_index(tmp_path):
    opened: list[Index] = []

    def open_(policy: str = "keep-first", map_size: int = MAP_SIZE, max_group: int = 64,
              start: bool = True) -> Index:
        db = IndexDatabase(tmp_path / "index", map_size)
        writer = GroupCommitWriter(db, policy, max_group)
        if start:
            writer.start()
        index = Index(db, writer, IndexReader(db))
        opened.append(index)
        return index

    yield open_
    for index in reversed(opened):
        index.writer.stop()
        index.db.close()


@pytest.fixture
def index(open_index) -> Index:
    return open_index()


# --- first store ------------------------------------------------------------------
def test_first_store_returns_stored(index):
    assert index.writer.apply_now(entry()) is IndexOutcome.STORED


def test_first_store_creates_the_instance_record_from_the_entry(index):
    index.apply(entry())
    rec = index.reader.instance(SOP)
    assert (rec.sop_class_uid, rec.study_instance_uid, rec.series_instance_uid) == (
        CT_IMAGE, STUDY_A, SERIES_A1)
    assert (rec.content_hash, rec.size, rec.dataset_offset) == (content(1), 1000, 332)
    assert (rec.transfer_syntax_uid, rec.calling_ae_title) == (EXPLICIT_LE, "MODALITY")
    assert (rec.instance_number, rec.rows, rec.columns) == ("7", "512", "256")


def test_first_store_creates_patient_study_and_series_records(index):
    index.apply(entry())
    patient = index.reader.patient(pkey())
    study = index.reader.study(STUDY_A)
    series = index.reader.series(SERIES_A1)
    assert (patient.patient_id, patient.patient_name, patient.number_of_studies) == (
        "PAT1", "Doe^Jane", 1)
    assert (study.patient_key, study.accession_number, study.study_date) == (
        pkey(), "ACC1", "20240102")
    assert (study.number_of_series, study.number_of_instances) == (1, 1)
    assert (series.study_instance_uid, series.modality, series.series_number) == (
        STUDY_A, "CT", "3")
    assert series.number_of_instances == 1


def test_first_store_links_parents_to_children(index):
    index.apply(entry())
    assert index.reader.studies_of_patient(pkey()) == [STUDY_A]
    assert index.reader.series_of_study(STUDY_A) == [SERIES_A1]
    assert index.reader.instances_of_series(SERIES_A1) == [SOP]


def test_patient_key_distinguishes_the_issuer_of_patient_id(index):
    index.apply(entry("1.9.1", 1, study=STUDY_A, IssuerOfPatientID="HOSP-A"),
                entry("1.9.2", 2, study=STUDY_B, series=SERIES_B1, IssuerOfPatientID="HOSP-B"))
    assert index.reader.stats().patients == 2
    key_a = patient_key({"PatientID": "PAT1", "IssuerOfPatientID": "HOSP-A"})
    assert index.reader.studies_of_patient(key_a) == [STUDY_A]


def test_counts_follow_the_hierarchy(index):
    index.apply(
        entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1),
        entry("1.9.2", 2, study=STUDY_A, series=SERIES_A1),
        entry("1.9.3", 3, study=STUDY_A, series=SERIES_A2),
        entry("1.9.4", 4, study=STUDY_B, series=SERIES_B1),
    )
    assert index.reader.patient(pkey()).number_of_studies == 2
    study_a = index.reader.study(STUDY_A)
    assert (study_a.number_of_series, study_a.number_of_instances) == (2, 3)
    assert index.reader.series(SERIES_A1).number_of_instances == 2
    assert index.reader.series(SERIES_A2).number_of_instances == 1
    assert sorted(index.reader.series_of_study(STUDY_A)) == [SERIES_A1, SERIES_A2]
    assert sorted(index.reader.instances_of_series(SERIES_A1)) == ["1.9.1", "1.9.2"]
    assert sorted(index.reader.studies_of_patient(pkey())) == [STUDY_A, STUDY_B]
    s = index.reader.stats()
    assert (s.patients, s.studies, s.series, s.instances) == (1, 2, 3, 4)


def test_modalities_in_study_are_accumulated_sorted_and_unique(index):
    index.apply(
        entry("1.9.1", 1, series=SERIES_A1, modality="MR"),
        entry("1.9.2", 2, series=SERIES_A2, modality="CT"),
        entry("1.9.3", 3, series=SERIES_A2, modality="CT"),
    )
    assert index.reader.study(STUDY_A).modalities_in_study == "CT\\MR"


def test_sop_classes_in_study_are_accumulated_sorted_and_unique(index):
    index.apply(
        entry("1.9.1", 1, sop_class=SECONDARY_CAPTURE),
        entry("1.9.2", 2, sop_class=CT_IMAGE),
        entry("1.9.3", 3, sop_class=SECONDARY_CAPTURE),
    )
    assert index.reader.study(STUDY_A).sop_classes_in_study == (
        f"{CT_IMAGE}\\{SECONDARY_CAPTURE}")


def test_study_arriving_later_with_another_patient_id_keeps_its_first_patient(index):
    index.apply(entry("1.9.1", 1, patient="PAT1"),
                entry("1.9.2", 2, patient="PAT2", series=SERIES_A2))
    assert index.reader.study(STUDY_A).patient_key == pkey("PAT1")
    assert index.reader.patient(pkey("PAT1")).number_of_studies == 1
    assert index.reader.patient(pkey("PAT2")) is None
    assert index.reader.studies_of_patient(pkey("PAT2")) == []


def test_instances_of_one_batch_see_each_other(open_index):
    """Two entries for the same SOP in one transaction: the second sees the first."""
    index = open_index(start=False)

    async def run():
        futures = [index.writer.submit(entry(blob=1)), index.writer.submit(entry(blob=1))]
        index.writer.start()
        return await gather(*futures)

    assert asyncio.run(run()) == [IndexOutcome.STORED, IndexOutcome.IDENTICAL]
    assert index.writer.commits == 1


# --- re-sends and conflicts ---------------------------------------------------------
@pytest.mark.parametrize("policy", ["keep-first", "replace", "reject"])
def test_identical_resend_returns_identical_and_changes_nothing(open_index, policy):
    index = open_index(policy)
    index.apply(entry(blob=1))
    before = index.snapshot()
    assert index.writer.apply_now(entry(blob=1)) is IndexOutcome.IDENTICAL
    assert index.snapshot() == before


def test_keep_first_conflict_returns_conflict_kept_first(open_index):
    index = open_index("keep-first")
    index.apply(entry(blob=1))
    assert index.writer.apply_now(entry(blob=2, size=2000)) is IndexOutcome.CONFLICT_KEPT_FIRST


def test_keep_first_conflict_leaves_the_current_instance_unchanged(open_index):
    index = open_index("keep-first")
    index.apply(entry(blob=1))
    current = index.reader.instance(SOP)
    index.apply(entry(blob=2, series=SERIES_B1, study=STUDY_B))
    assert index.reader.instance(SOP) == current
    assert index.reader.study(STUDY_B) is None
    assert index.reader.study(STUDY_A).number_of_instances == 1


def test_keep_first_conflict_is_recorded_with_the_new_copy(open_index):
    index = open_index("keep-first")
    index.apply(entry(blob=1))
    index.apply(entry(blob=2, size=2000))
    assert list(index.reader.iter_conflicts()) == [(SOP, ConflictRecord(
        content(2), 2000, 332, EXPLICIT_LE, "2024-01-02T10:15:02Z", "MODALITY", "kept-first"))]


def test_keep_first_conflict_adds_a_reference_to_the_new_blob(open_index):
    index = open_index("keep-first")
    index.apply(entry(blob=1, size=1000))
    index.apply(entry(blob=2, size=2000))
    assert index.reader.blob(content(1)).references == 1
    assert index.reader.blob(content(2)).references == 1
    assert index.reader.blob(content(2)).size == 2000
    assert index.reader.stats().bytes_stored == 3000


def test_the_same_conflict_sent_twice_is_recorded_once(open_index):
    index = open_index("keep-first")
    index.apply(entry(blob=1), entry(blob=2), entry(blob=3))
    before = index.snapshot()
    index.apply(entry(blob=2))
    assert index.snapshot() == before
    assert index.reader.stats().conflicts == 2


def test_replace_makes_an_older_copy_current_again_when_it_is_resent(open_index):
    index = open_index("replace")
    index.apply(entry(blob=1), entry(blob=2), entry(blob=3))
    assert index.writer.apply_now(entry(blob=2)) is IndexOutcome.CONFLICT_REPLACED
    current = index.reader.instance(entry(blob=2).sop_instance_uid)
    assert current.content_hash == entry(blob=2).content_hash
    conflicts = {r.content_hash for _, r in index.reader.iter_conflicts()}
    assert conflicts == {entry(blob=1).content_hash, entry(blob=3).content_hash}
    stats = index.reader.stats()
    assert (stats.instances, stats.conflicts, stats.blobs) == (1, 2, 3)


def test_reject_policy_returns_rejected_duplicate_and_changes_nothing(open_index):
    index = open_index("reject")
    index.apply(entry(blob=1))
    before = index.snapshot()
    assert index.writer.apply_now(entry(blob=2)) is IndexOutcome.REJECTED_DUPLICATE
    assert index.snapshot() == before


def test_replace_policy_returns_conflict_replaced(open_index):
    index = open_index("replace")
    index.apply(entry(blob=1))
    assert index.writer.apply_now(entry(blob=2)) is IndexOutcome.CONFLICT_REPLACED


def test_replace_makes_the_new_copy_current(open_index):
    index = open_index("replace")
    index.apply(entry(blob=1, size=1000))
    index.apply(entry(blob=2, size=2000))
    rec = index.reader.instance(SOP)
    assert (rec.content_hash, rec.size) == (content(2), 2000)


def test_replace_keeps_the_old_copy_as_a_replaced_conflict(open_index):
    index = open_index("replace")
    index.apply(entry(blob=1, size=1000))
    index.apply(entry(blob=2, size=2000))
    assert list(index.reader.iter_conflicts()) == [(SOP, ConflictRecord(
        content(1), 1000, 332, EXPLICIT_LE, "2024-01-02T10:15:01Z", "MODALITY", "replaced"))]


def test_replace_keeps_a_reference_to_both_blobs(open_index):
    index = open_index("replace")
    index.apply(entry(blob=1, size=1000))
    index.apply(entry(blob=2, size=2000))
    assert index.reader.blob(content(1)).references == 1
    assert index.reader.blob(content(2)).references == 1
    assert index.reader.stats().bytes_stored == 3000


def test_replace_in_the_same_series_keeps_the_counts(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1), entry("1.9.2", 2))
    index.apply(entry("1.9.2", 3))
    assert index.reader.series(SERIES_A1).number_of_instances == 2
    study = index.reader.study(STUDY_A)
    assert (study.number_of_series, study.number_of_instances) == (1, 2)
    assert sorted(index.reader.instances_of_series(SERIES_A1)) == ["1.9.1", "1.9.2"]
    assert index.reader.patient(pkey()).number_of_studies == 1


def test_replace_of_a_lone_instance_rebuilds_its_hierarchy(open_index):
    index = open_index("replace")
    index.apply(entry(blob=1))
    index.apply(entry(blob=2))
    assert index.reader.studies_of_patient(pkey()) == [STUDY_A]
    assert index.reader.series_of_study(STUDY_A) == [SERIES_A1]
    assert index.reader.instances_of_series(SERIES_A1) == [SOP]
    assert index.reader.patient(pkey()).number_of_studies == 1
    s = index.reader.stats()
    assert (s.patients, s.studies, s.series, s.instances, s.conflicts) == (1, 1, 1, 1, 1)


def test_replace_naming_another_series_moves_the_instance(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, series=SERIES_A1), entry("1.9.2", 2, series=SERIES_A1))
    index.apply(entry("1.9.2", 3, series=SERIES_A2))
    assert index.reader.instance("1.9.2").series_instance_uid == SERIES_A2
    assert index.reader.instances_of_series(SERIES_A1) == ["1.9.1"]
    assert index.reader.instances_of_series(SERIES_A2) == ["1.9.2"]
    assert index.reader.series(SERIES_A1).number_of_instances == 1
    assert index.reader.series(SERIES_A2).number_of_instances == 1
    study = index.reader.study(STUDY_A)
    assert (study.number_of_series, study.number_of_instances) == (2, 2)


def test_replace_removes_a_series_it_empties(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, series=SERIES_A1), entry("1.9.2", 2, series=SERIES_A2))
    index.apply(entry("1.9.2", 3, series=SERIES_A1))
    assert index.reader.series(SERIES_A2) is None
    assert index.reader.series_of_study(STUDY_A) == [SERIES_A1]
    assert index.reader.instances_of_series(SERIES_A2) == []
    study = index.reader.study(STUDY_A)
    assert (study.number_of_series, study.number_of_instances) == (1, 2)


def test_replace_recomputes_modalities_in_study(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, series=SERIES_A1, modality="MR"),
                entry("1.9.2", 2, series=SERIES_A2, modality="CT"))
    index.apply(entry("1.9.2", 3, series=SERIES_B1, study=STUDY_B, modality="CT"))
    assert index.reader.study(STUDY_A).modalities_in_study == "MR"
    assert index.reader.study(STUDY_B).modalities_in_study == "CT"


def test_replace_recomputes_sop_classes_in_study(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, series=SERIES_A1, sop_class=MR_IMAGE),
                entry("1.9.2", 2, series=SERIES_A2, sop_class=CT_IMAGE))
    index.apply(entry("1.9.2", 3, series=SERIES_B1, study=STUDY_B, sop_class=CT_IMAGE))
    assert index.reader.study(STUDY_A).sop_classes_in_study == MR_IMAGE


def test_replace_naming_another_study_moves_the_instance_and_drops_the_emptied_study(
        open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1))
    index.apply(entry("1.9.1", 2, study=STUDY_B, series=SERIES_B1))
    assert index.reader.study(STUDY_A) is None
    assert index.reader.series(SERIES_A1) is None
    assert index.reader.series_of_study(STUDY_A) == []
    assert index.reader.instances_of_series(SERIES_A1) == []
    assert index.reader.studies_of_patient(pkey()) == [STUDY_B]
    assert index.reader.patient(pkey()).number_of_studies == 1
    assert index.reader.instance("1.9.1").study_instance_uid == STUDY_B


def test_replace_removes_a_patient_left_without_studies(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1, patient="OLD"))
    index.apply(entry("1.9.1", 2, study=STUDY_B, series=SERIES_B1, patient="NEW"))
    assert index.reader.patient(pkey("OLD")) is None
    assert index.reader.studies_of_patient(pkey("OLD")) == []
    assert index.reader.patient(pkey("NEW")).number_of_studies == 1
    assert index.reader.stats().patients == 1


def test_replace_keeps_a_patient_that_still_has_studies(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1),
                entry("1.9.2", 2, study=STUDY_B, series=SERIES_B1))
    index.apply(entry("1.9.2", 3, study=STUDY_A, series=SERIES_A1))
    assert index.reader.study(STUDY_B) is None
    assert index.reader.patient(pkey()).number_of_studies == 1
    assert index.reader.studies_of_patient(pkey()) == [STUDY_A]
    assert index.reader.study(STUDY_A).number_of_instances == 2


# --- blob references and totals --------------------------------------------------------
def test_bytes_stored_sums_the_sizes_of_stored_instances(index):
    index.apply(entry("1.9.1", 1, size=100), entry("1.9.2", 2, size=250))
    assert index.reader.stats().bytes_stored == 350


def test_each_stored_instance_references_its_blob_once(index):
    index.apply(entry("1.9.1", 1, size=100))
    blob = index.reader.blob(content(1))
    assert (blob.references, blob.size) == (1, 100)
    assert list(index.reader.iter_blob_hashes()) == [content(1)]


@pytest.mark.parametrize("policy", ["keep-first", "replace", "reject"])
def test_identical_resend_neither_adds_references_nor_bytes(open_index, policy):
    index = open_index(policy)
    index.apply(entry(blob=1, size=100), entry(blob=1, size=100))
    assert index.reader.blob(content(1)).references == 1
    assert index.reader.stats().bytes_stored == 100


def test_rejected_duplicate_adds_no_blob_reference(open_index):
    index = open_index("reject")
    index.apply(entry(blob=1, size=100), entry(blob=2, size=200))
    assert index.reader.blob(content(2)) is None
    assert index.reader.stats().bytes_stored == 100


def test_fresh_index_reports_zero_everything(index):
    s = index.reader.stats()
    assert dataclasses.astuple(s) == (0, 0, 0, 0, 0, 0, 0)


# --- group commit ------------------------------------------------------------------------
def test_concurrent_submits_all_resolve_and_share_commits(index):
    entries = [entry(f"1.9.{i}", i, series=f"1.2.826.0.1.1.{i % 5}") for i in range(1, 201)]

    async def run():
        return await gather(*(index.writer.submit(e) for e in entries))

    outcomes = asyncio.run(run())
    assert outcomes == [IndexOutcome.STORED] * len(entries)
    assert index.writer.entries_committed == len(entries)
    assert index.writer.commits < len(entries)
    assert index.reader.stats().instances == len(entries)


def test_queued_entries_are_committed_in_groups_of_at_most_max_group(open_index):
    index = open_index(max_group=16, start=False)
    entries = [entry(f"1.9.{i}", i) for i in range(1, 51)]

    async def run():
        futures = [index.writer.submit(e) for e in entries]
        index.writer.start()
        return await gather(*futures)

    assert asyncio.run(run()) == [IndexOutcome.STORED] * 50
    assert index.writer.commits == math.ceil(50 / 16)


def test_stop_commits_everything_queued_before_it(open_index):
    index = open_index(start=False)
    entries = [entry(f"1.9.{i}", i) for i in range(1, 11)]

    async def run():
        futures = [index.writer.submit(e) for e in entries]
        index.writer.start()
        index.writer.stop()
        return await gather(*futures)

    assert asyncio.run(run()) == [IndexOutcome.STORED] * 10
    assert index.reader.stats().instances == 10


# --- map full -------------------------------------------------------------------------
def big_entry(i: int) -> IndexEntry:
    return entry(f"1.8.{i}", 1000 + i, study=f"1.2.826.0.9.{i}", series=f"1.2.826.0.9.{i}.1",
                 StudyDescription="x" * 3000)


def test_map_full_fails_every_waiter_of_the_batch_with_out_of_resources(open_index):
    index = open_index(map_size=16 * 4096, start=False)
    entries = [big_entry(i) for i in range(64)]

    async def run():
        futures = [index.writer.submit(e) for e in entries]
        index.writer.start()
        return await gather(*futures, return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, OutOfResources) for r in results), results
    assert index.reader.stats().instances == 0


def test_map_full_keeps_entries_committed_earlier_readable(open_index):
    index = open_index(map_size=64 * 4096)  # room for a few dozen big entries
    committed = []
    with pytest.raises(OutOfResources):
        for i in range(1000):
            e = big_entry(i)
            index.writer.apply_now(e)
            committed.append(e.sop_instance_uid)
    assert committed
    for uid in committed:
        assert index.reader.instance(uid) is not None
    assert index.reader.stats().instances == len(committed)


def test_writer_keeps_serving_after_a_map_full_batch(open_index):
    index = open_index(map_size=64 * 4096)
    with pytest.raises(OutOfResources):
        index.writer.apply_now(entry("1.8.1", 1, StudyDescription="x" * 200_000))
    assert index.writer.apply_now(entry("1.8.2", 2)) is IndexOutcome.STORED


# --- database: read-only access and schema -------------------------------------------------
def test_readonly_database_reads_what_the_writer_committed(open_index, tmp_path):
    index = open_index()
    index.apply(entry("1.9.1", 1), entry("1.9.2", 2, size=500))
    index.writer.stop()
    index.db.close()
    ro = IndexDatabase(tmp_path / "index", MAP_SIZE, readonly=True)
    try:
        reader = IndexReader(ro)
        assert reader.instance("1.9.2").size == 500
        assert sorted(reader.instances_of_series(SERIES_A1)) == ["1.9.1", "1.9.2"]
        assert reader.stats().instances == 2
    finally:
        ro.close()


def test_readonly_database_in_another_process_reads_while_the_writer_is_open(index, tmp_path):
    index.apply(entry("1.9.1", 1, size=123))
    script = (
        "import sys, json\n"
        "from engine.index.database import IndexDatabase\n"
        "from engine.index.reader import IndexReader\n"
        f"db = IndexDatabase({str(tmp_path / 'index')!r}, {MAP_SIZE}, readonly=True)\n"
        "r = IndexReader(db)\n"
        "print(json.dumps([r.instance('1.9.1').size, r.stats().instances]))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert json.loads(out) == [123, 1]


def test_new_database_records_the_schema_version(tmp_path):
    db = IndexDatabase(tmp_path / "index", MAP_SIZE)
    try:
        with db.env.begin() as txn:
            assert txn.get(b"schema_version", db=db.tables.meta) == SCHEMA_VERSION
    finally:
        db.close()


def _write_schema_version(path: Path, value: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=16, map_size=MAP_SIZE)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"schema_version", value, db=meta)
    finally:
        env.close()


@pytest.mark.parametrize("readonly", [False, True], ids=["read-write", "read-only"])
def test_schema_version_mismatch_raises_index_schema_error(tmp_path, readonly):
    IndexDatabase(tmp_path / "index", MAP_SIZE).close()
    _write_schema_version(tmp_path / "index", b"999")
    with pytest.raises(IndexSchemaError, match="999"):
        IndexDatabase(tmp_path / "index", MAP_SIZE, readonly=readonly)


def test_reopening_with_the_same_schema_keeps_the_data(open_index, tmp_path):
    index = open_index()
    index.apply(entry())
    index.writer.stop()
    index.db.close()
    again = open_index()
    assert again.reader.instance(SOP).content_hash == content(1)


def test_study_secondary_indexes_follow_the_study(open_index):
    """PatientID, AccessionNumber and StudyDate keys are written with the study and
    removed with it (replace moving the only instance elsewhere empties the old study)."""
    index = open_index("replace")
    index.apply(entry(blob=1))
    reader = index.reader
    assert reader.studies_with_patient_id("PAT1") == [STUDY_A]
    assert reader.studies_with_accession_number("ACC1") == [STUDY_A]
    assert reader.studies_in_date_range("20240102", "20240102") == [STUDY_A]
    assert reader.studies_in_date_range("00000000", "99999999") == [STUDY_A]
    assert reader.studies_in_date_range("20240103", "99991231") == []
    index.apply(entry(blob=2, study="1.2.3.999", patient="OTHER", AccessionNumber="ACCX",
                      StudyDate="20010101"))
    assert reader.studies_with_patient_id("PAT1") == []
    assert reader.studies_with_accession_number("ACC1") == []
    assert reader.studies_with_patient_id("OTHER") == ["1.2.3.999"]
    assert reader.studies_in_date_range("20010101", "20240102") == ["1.2.3.999"]
