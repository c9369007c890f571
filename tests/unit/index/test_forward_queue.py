"""The router's forward queue on a real LMDB index: the due index, failures of an
instance versus a destination, dead-lettering by age, retry, and the upgrade
that builds the due index for queues written by schema 3."""
from __future__ import annotations

import pytest

from engine.index import forward_queue as fq
from engine.index.database import IndexDatabase
from engine.index.reader import IndexReader

POLICY = fq.RetryPolicy(max_attempts=3, max_age=100.0, backoff_base=1.0, backoff_max=4.0)
STUDY, OTHER_STUDY = "1.2.3", "1.2.4"


@pytest.fixture
def db(tmp_path):
    database = IndexDatabase(tmp_path / "index", 1 << 26)
    yield database
    database.close()


def write(db, function, *args):
    with db.env.begin(write=True) as txn:
        return function(txn, db.tables, *args)


def add(db, sop, now, *destinations, study=STUDY, **order):
    orders = tuple(fq.ForwardOrder(name, **order) for name in destinations)
    write(db, fq.add_jobs, sop, study, study + ".1", orders, now)


def due(db, destination, now, limit=100, skip=()):
    return [j.sop_instance_uid for j in
            IndexReader(db)._state(fq.due, destination, now, limit, set(skip))]


def test_due_in_arrival_order_per_destination_and_only_when_due(db):
    for n in range(5):
        add(db, f"1.9.{n}", 1000.0 + n, "A", "B")
    assert due(db, "A", 1002.0) == ["1.9.0", "1.9.1", "1.9.2"]
    assert due(db, "B", 2000.0, limit=2) == ["1.9.0", "1.9.1"]
    first = IndexReader(db)._state(fq.due, "A", 2000.0, 1, set())[0]
    assert due(db, "A", 2000.0, skip=[first.job_id])[0] == "1.9.1"
    assert due(db, "AB", 2000.0) == []  # a destination name is not a prefix of another's


def test_a_study_trigger_waits_for_quiet_without_holding_back_others(db):
    add(db, "1.9.1", 1000.0, "A", trigger="study", stable_seconds=60.0)
    add(db, "1.9.2", 1000.0, "A", study=OTHER_STUDY)
    add(db, "1.9.3", 1030.0, "A", trigger="study", stable_seconds=60.0)  # the study is busy
    assert due(db, "A", 1080.0) == ["1.9.2"]
    assert due(db, "A", 1091.0) == ["1.9.1", "1.9.2", "1.9.3"]


def test_an_instance_failure_backs_off_then_dead_letters(db):
    add(db, "1.9.1", 1000.0, "A")
    job = IndexReader(db)._state(fq.due, "A", 1000.0, 1, set())[0]
    job = write(db, fq.failed, job, 0xA700, "out of resources", 1000.0, POLICY)
    assert job.attempts == 1 and job.state == "pending" and job.next_attempt > 1000.0
    assert due(db, "A", 1000.0) == [] and due(db, "A", 1005.0) == ["1.9.1"]
    for _ in range(2):
        job = write(db, fq.failed, job, 0xA700, "out of resources", 1010.0, POLICY)
    assert job.state == "dead" and due(db, "A", 9999.0) == []
    summary = IndexReader(db).forward_summary()["A"]
    assert (summary.dead, summary.pending, summary.last_status) == (1, 0, 0xA700)
    assert write(db, fq.retry, "A", None, 2000.0) == 1
    assert due(db, "A", 2000.0) == ["1.9.1"]


def test_a_destination_down_past_max_age_dead_letters_without_charging(db):
    add(db, "1.9.1", 1000.0, "A")
    add(db, "1.9.2", 1050.0, "A")
    add(db, "1.9.3", 1050.0, "B")
    aged = write(db, fq.expire_aged, "A", 1120.0, POLICY, "destination down: refused")
    assert [j.sop_instance_uid for j in aged] == ["1.9.1"]
    assert aged[0].attempts == 0 and aged[0].state == "dead"
    assert due(db, "A", 1120.0) == ["1.9.2"] and due(db, "B", 1200.0) == ["1.9.3"]


def test_delivered_and_dropped_jobs_leave_no_due_key(db):
    add(db, "1.9.1", 1000.0, "A", "B")
    add(db, "1.9.2", 1000.0, "A")
    reader = IndexReader(db)
    for job in reader._state(fq.due, "A", 1000.0, 10, set()):
        write(db, fq.delivered, job, 1001.0, True)
    assert due(db, "A", 9999.0) == []
    with db.env.begin() as txn:  # 1.9.2 is done everywhere, 1.9.1 still waits for B
        assert txn.get(b"1.9.2", db=db.tables.forward_done) is not None
        assert txn.get(b"1.9.1", db=db.tables.forward_done) is None
    assert write(db, fq.drop, "B", None, False) == 1
    with db.env.begin() as txn:
        assert txn.stat(db.tables.forward_due)["entries"] == 0
        assert txn.stat(db.tables.forward_jobs)["entries"] == 0


def test_retry_moves_a_down_destinations_probe_to_now(db):
    add(db, "1.9.1", 1000.0, "A")
    write(db, fq.set_destination_health, "A",
          fq.DestinationHealth(failures=3, down_since=1000.0, next_probe=1600.0,
                               last_error="refused", in_flight=2))
    summary = IndexReader(db).forward_summary()["A"]
    assert summary.down_since == 1000.0 and summary.in_flight == 2
    write(db, fq.retry, "A", None, 1100.0)
    assert IndexReader(db).forward_health("A").next_probe == 1100.0
    write(db, fq.clear_in_flight)
    assert IndexReader(db).forward_health("A").in_flight == 0
    write(db, fq.set_destination_health, "A", fq.DestinationHealth())
    with db.env.begin() as txn:
        assert txn.stat(db.tables.forward_destinations)["entries"] == 0


def test_quiet_studies_are_forgotten(db):
    add(db, "1.9.1", 1000.0, "A", trigger="study", stable_seconds=5.0)
    add(db, "1.9.2", 5000.0, "A", study=OTHER_STUDY, trigger="series", stable_seconds=5.0)
    assert write(db, fq.forget_quiet_studies, 2000.0) == 1
    assert due(db, "A", 5006.0) == ["1.9.1", "1.9.2"]  # forgotten reads as quiet


def test_schema_3_queue_gets_its_due_index_on_upgrade(tmp_path):
    path = tmp_path / "index"
    db = IndexDatabase(path, 1 << 26)
    add(db, "1.9.1", 1000.0, "A")
    add(db, "1.9.2", 1001.0, "A", trigger="study", stable_seconds=10.0)
    with db.env.begin(write=True) as txn:  # what a schema 3 index looked like
        txn.drop(db.tables.forward_due, delete=True)
        txn.drop(db.tables.forward_destinations, delete=True)
        txn.put(b"schema_version", b"3", db=db.tables.meta)
    db.close()
    upgraded = IndexDatabase(path, 1 << 26)
    try:
        assert due(upgraded, "A", 1005.0) == ["1.9.1"]
        assert due(upgraded, "A", 1012.0) == ["1.9.1", "1.9.2"]
    finally:
        upgraded.close()


def test_warnings_are_kept_per_instance_until_old(db):
    add(db, "1.9.1", 1000.0, "A", "B")
    for job in IndexReader(db)._state(fq.due, "A", 1000.0, 10, set()):
        write(db, fq.delivered, job, 1001.0, False, 0xB007)
    for job in IndexReader(db)._state(fq.due, "B", 1000.0, 10, set()):
        write(db, fq.delivered, job, 1002.0, False, 0x0000)
    assert IndexReader(db).forward_warnings(None, 10) == [("A", "1.9.1", 0xB007, 1001.0)]
    assert write(db, fq.forget_old_warnings, 1000.0) == 0
    assert write(db, fq.forget_old_warnings, 2000.0) == 1
    assert IndexReader(db).forward_warnings("A", 10) == []


def test_due_with_an_infinite_now_lists_every_pending_job(db):
    add(db, "1.9.1", 1000.0, "A")
    assert due(db, "A", float("inf")) == ["1.9.1"]
