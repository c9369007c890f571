"""The LMDB index: durable inserts (one per commit, grouped) and zero-copy lookups.

Every C-STORE success waits for its index commit, so the cost of one durable
commit (fsync) bounds single-association ingest, and grouping many entries into
one transaction is what lets concurrent associations share that fsync.  The
lookups run against a 100,000-instance index built once per module.

Real fsyncs on tmp_path: figures depend on the disk as much as on the code.
"""
from __future__ import annotations

import itertools
import random
import time

import pytest

from engine.dicom.tags import BY_KEYWORD
from engine.index.database import IndexDatabase
from engine.index.entry import IndexEntry, IndexOutcome
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter, IndexTransaction

MAP_SIZE = 1 << 30
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.10.1234"
BIG_STUDIES, SERIES_PER_STUDY, INSTANCES_PER_SERIES = 500, 2, 100  # 100,000 instances
BUILD_BATCH = 5_000


def make_entry(study: int, series: int, instance: int) -> IndexEntry:
    """One CT instance; UIDs and patient derive from the three numbers."""
    study_uid = f"{UID_ROOT}.1.{study}"
    series_uid = f"{study_uid}.{series}"
    sop_uid = f"{series_uid}.{instance}"
    attributes = {
        "SpecificCharacterSet": "ISO_IR 100", "PatientID": f"PAT{study % 997:06d}",
        "PatientName": "Müller^Jürgen", "PatientBirthDate": "19591103", "PatientSex": "M",
        "StudyInstanceUID": study_uid, "StudyDate": "20240517", "StudyTime": "101500.123",
        "AccessionNumber": f"ACC{study:08d}", "StudyID": str(study),
        "StudyDescription": "CT CHEST W/O CONTRAST", "ReferringPhysicianName": "Chen^Lisa",
        "SeriesInstanceUID": series_uid, "Modality": "CT", "SeriesNumber": series + 1,
        "SeriesDescription": "AXIAL 5MM", "BodyPartExamined": "CHEST",
        "SOPClassUID": CT_IMAGE, "SOPInstanceUID": sop_uid, "InstanceNumber": instance + 1,
        "Rows": 512, "Columns": 512,
    }
    assert set(attributes) <= set(BY_KEYWORD)  # only what the archive indexes
    content_hash = f"{study:016x}{series:016x}{instance:032x}"
    return IndexEntry(sop_instance_uid=sop_uid, sop_class_uid=CT_IMAGE,
                      transfer_syntax_uid=EXPLICIT_LE, content_hash=content_hash,
                      size=525_680, dataset_offset=336,
                      received_at="2024-05-17T10:15:00.000000Z", calling_ae_title="CT01",
                      attributes=attributes)


def apply_grouped(db: IndexDatabase, entries: list[IndexEntry]) -> None:
    """All entries in one write transaction: one commit, one fsync (group commit)."""
    with db.env.begin(write=True) as txn:
        tx = IndexTransaction(db, txn)
        for entry in entries:
            tx.apply(entry, "keep-first")


def median_s(benchmark) -> float | None:
    """The median time, or None under --benchmark-disable (the body ran once, unmeasured)."""
    return benchmark.stats.stats.median if benchmark.stats else None


@pytest.fixture
def empty_db(tmp_path):
    db = IndexDatabase(tmp_path / "index", MAP_SIZE)
    yield db
    db.close()


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    """100,000 instances (500 studies x 2 series x 100), built in 5,000-entry commits."""
    db = IndexDatabase(tmp_path_factory.mktemp("index100k") / "index", MAP_SIZE)
    started = time.perf_counter()
    entries = (make_entry(st, se, i) for st in range(BIG_STUDIES)
               for se in range(SERIES_PER_STUDY) for i in range(INSTANCES_PER_SERIES))
    while batch := list(itertools.islice(entries, BUILD_BATCH)):
        apply_grouped(db, batch)
    reader = IndexReader(db)
    stats = reader.stats()
    assert stats.instances == BIG_STUDIES * SERIES_PER_STUDY * INSTANCES_PER_SERIES
    assert time.perf_counter() - started < 120, "index build far over its ~30 s budget"
    yield db, reader
    db.close()


def test_bench_index_insert_one_per_commit(benchmark, empty_db):
    """writer.apply_now: one entry, one durable LMDB commit (sync=True), via the writer thread."""
    writer = GroupCommitWriter(empty_db, "keep-first", max_group=256)
    writer.start()
    counter = itertools.count()
    outcomes = []
    try:
        benchmark.group = "index-insert"
        benchmark.pedantic(
            lambda e: outcomes.append(writer.apply_now(e)),
            setup=lambda: ((make_entry(0, 0, next(counter)),), {}),
            rounds=200, iterations=1, warmup_rounds=5)
    finally:
        writer.stop()
    assert set(outcomes) == {IndexOutcome.STORED}
    assert IndexReader(empty_db).stats().instances == len(outcomes)
    if median := median_s(benchmark):
        benchmark.extra_info["per_entry_us"] = round(median * 1e6, 1)
        benchmark.extra_info["commits_per_s"] = round(1 / median, 1)


def test_bench_index_insert_group_of_100(benchmark, empty_db):
    """100 entries (one series) in one write transaction: one commit for all."""
    group = 100
    series = itertools.count()
    benchmark.group = "index-insert"

    def one_series():
        number = next(series)
        return (empty_db, [make_entry(1, number, i) for i in range(group)]), {}

    benchmark.pedantic(apply_grouped, setup=one_series, rounds=40, iterations=1,
                       warmup_rounds=2)
    assert IndexReader(empty_db).stats().instances == group * next(series)
    benchmark.extra_info["entries_per_commit"] = group
    if median := median_s(benchmark):
        benchmark.extra_info["per_entry_us"] = round(median / group * 1e6, 1)


def test_bench_index_lookup_instance_by_sop_uid(benchmark, big_index):
    """reader.instance(uid) in a 100k index: read txn, B-tree lookup, decode from the map."""
    db, reader = big_index
    rng = random.Random(7)
    keys = [(st, se, i) for st, se, i in (
        (rng.randrange(BIG_STUDIES), rng.randrange(SERIES_PER_STUDY),
         rng.randrange(INSTANCES_PER_SERIES)) for _ in range(1000))]
    uids = itertools.cycle([make_entry(*k).sop_instance_uid for k in keys])
    benchmark.group = "index-lookup"
    record = benchmark.pedantic(lambda: reader.instance(next(uids)),
                                rounds=300, iterations=20, warmup_rounds=1)
    assert record is not None and record.sop_class_uid == CT_IMAGE
    assert record.size == 525_680
    benchmark.extra_info["index_instances"] = reader.stats().instances


def test_bench_index_iterate_series_instances(benchmark, big_index):
    """reader.instances_of_series: the 100 SOP Instance UIDs of one series (dupsort cursor)."""
    db, reader = big_index
    series_uid = make_entry(BIG_STUDIES // 2, 1, 0).attributes["SeriesInstanceUID"]
    benchmark.group = "index-lookup"
    uids = benchmark.pedantic(reader.instances_of_series, args=(series_uid,),
                              rounds=200, iterations=5, warmup_rounds=1)
    assert len(uids) == INSTANCES_PER_SERIES
    assert all(u.startswith(series_uid + ".") for u in uids)
    if median := median_s(benchmark):
        benchmark.extra_info["per_instance_us"] = round(median / INSTANCES_PER_SERIES * 1e6, 2)
