"""Study-level secondary indexes: kept in step with the records, rebuilt on upgrade,
read through one snapshot."""
from __future__ import annotations

import dataclasses

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.index import secondary
from engine.index.database import SCHEMA_VERSION, IndexDatabase, IndexSchemaError
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter
from tests.unit.index.test_index_writer import (  # noqa: F401  (fixtures)
    MAP_SIZE, SERIES_A1, SERIES_A2, SERIES_B1, STUDY_A, STUDY_B, entry, index, open_index)


def secondary_tables(db: IndexDatabase) -> dict[str, list]:
    out = {}
    with db.env.begin() as txn:
        for name in secondary.TABLES:
            with txn.cursor(db=getattr(db.tables, name)) as cur:
                out[name] = list(cur.iternext())
    return out


def rebuilt_tables(db: IndexDatabase) -> dict[str, list]:
    """What a rebuild from the records gives (computed in a transaction rolled back)."""
    txn = db.env.begin(write=True)
    try:
        secondary.rebuild(txn, db.tables)
        out = {}
        for name in secondary.TABLES:
            with txn.cursor(db=getattr(db.tables, name)) as cur:
                out[name] = list(cur.iternext())
        return out
    finally:
        txn.abort()


# --- family names -------------------------------------------------------------------
def test_family_name_index_holds_the_folded_family_of_every_component_group(index):
    index.apply(entry(PatientName="Müller^Jürgen=山田^太郎=やまだ^たろう"))
    reader = index.reader
    for family in ("muller", "山田", "やまた"):  # folded: accents and voicing marks dropped
        assert reader.studies_with_family_name(family, prefix=False) == [STUDY_A]
    assert reader.studies_with_family_name("mul", prefix=True) == [STUDY_A]
    assert reader.studies_with_family_name("mul", prefix=False) == []
    assert reader.studies_with_family_name("jurgen", prefix=True) == []


def test_family_name_index_uses_the_name_of_the_patient_record(index):
    """The study matches on its patient's name, which the first study set."""
    index.apply(entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1, PatientName="Doe^Jane"),
                entry("1.9.2", 2, study=STUDY_B, series=SERIES_B1, PatientName="Roe^Jane"))
    assert index.reader.studies_with_family_name("doe", prefix=False) == [STUDY_A, STUDY_B]
    assert index.reader.studies_with_family_name("roe", prefix=False) == []


def test_family_name_keys_follow_the_study_when_it_is_removed(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1, patient="OLD",
                      PatientName="Old^Name"))
    index.apply(entry("1.9.1", 2, study=STUDY_B, series=SERIES_B1, patient="NEW",
                      PatientName="New^Name"))
    assert index.reader.studies_with_family_name("old", prefix=False) == []
    assert index.reader.studies_with_family_name("new", prefix=False) == [STUDY_B]


def test_a_family_name_longer_than_an_lmdb_key_is_still_found_by_prefix(index):
    family = "N" * 800
    index.apply(entry(PatientName=f"{family}^X"))
    assert index.reader.studies_with_family_name(family.lower(), prefix=False) == [STUDY_A]
    assert index.reader.studies_with_family_name("n" * 700, prefix=True) == [STUDY_A]


# --- modalities ------------------------------------------------------------------------
def test_modality_index_gains_a_modality_when_a_series_adds_one(index):
    index.apply(entry("1.9.1", 1, series=SERIES_A1, modality="CT"))
    assert index.reader.studies_with_modality("MR") == []
    index.apply(entry("1.9.2", 2, series=SERIES_A2, modality="MR"))
    assert index.reader.studies_with_modality("CT") == [STUDY_A]
    assert index.reader.studies_with_modality("MR") == [STUDY_A]
    assert index.reader.studies_with_modality("M", prefix=True) == [STUDY_A]


def test_modality_index_drops_a_modality_its_last_series_took_away(open_index):
    index = open_index("replace")
    index.apply(entry("1.9.1", 1, series=SERIES_A1, modality="MR"),
                entry("1.9.2", 2, series=SERIES_A2, modality="CT"))
    index.apply(entry("1.9.2", 3, series=SERIES_B1, study=STUDY_B, modality="CT"))
    assert index.reader.studies_with_modality("CT") == [STUDY_B]
    assert index.reader.studies_with_modality("MR") == [STUDY_A]


def test_the_limit_gives_up_on_longer_lists(index):
    index.apply(entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1),
                entry("1.9.2", 2, study=STUDY_B, series=SERIES_B1))
    assert index.reader.studies_with_modality("CT", limit=1) is None
    assert index.reader.studies_with_modality("C", prefix=True, limit=1) is None
    assert index.reader.studies_in_date_range("20240101", "20241231", limit=1) is None
    assert len(index.reader.studies_with_modality("CT", limit=2)) == 2


# --- every write path keeps the tables equal to a rebuild ---------------------------------
_operation = st.tuples(
    st.integers(1, 6),                        # SOP instance
    st.integers(1, 3),                        # study
    st.integers(1, 2),                        # series within the study
    st.sampled_from(["CT", "MR", "US"]),      # modality
    st.sampled_from(["P1", "P2"]),            # patient
    st.sampled_from(["Doe^Jane", "Dœ^J=ドウ^ジェーン", "ÉCOLE^A", ""]),
    st.integers(1, 4),                        # content (a different one is a conflict)
)


@pytest.mark.parametrize("policy", ["keep-first", "replace", "reject"])
@settings(max_examples=25)
@given(operations=st.lists(_operation, min_size=1, max_size=12))
def test_secondary_tables_always_equal_a_rebuild_from_the_records(tmp_path_factory, policy,
                                                                   operations):
    db = IndexDatabase(tmp_path_factory.mktemp("ix") / "index", MAP_SIZE)
    writer = GroupCommitWriter(db, policy, 64)
    writer.start()
    try:
        for sop, study, series, modality, patient, name, blob in operations:
            writer.apply_now(entry(
                f"1.2.9.{sop}", blob * 10 + sop, study=f"1.2.7.{study}",
                series=f"1.2.7.{study}.{series}", modality=modality, patient=patient,
                PatientName=name, StudyDate=f"2024010{study}", AccessionNumber=f"A{study}"))
        assert secondary_tables(db) == rebuilt_tables(db)
    finally:
        writer.stop()
        db.close()


# --- schema upgrade -----------------------------------------------------------------------
def _downgrade(path, version: bytes, tables: tuple[str, ...]) -> None:
    """Make an index look written by an older schema: `tables` empty, old version."""
    env = lmdb.open(str(path), max_dbs=32, map_size=MAP_SIZE)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            for name in tables:
                txn.drop(env.open_db(name.encode(), txn=txn, dupsort=True), delete=True)
            txn.put(b"schema_version", version, db=meta)
    finally:
        env.close()


@pytest.mark.parametrize("version, dropped", [
    (b"2", ("studies_by_family_name", "studies_by_modality")),
    (b"1", secondary.TABLES)], ids=["v2", "v1"])
def test_opening_an_older_index_read_write_rebuilds_its_secondary_indexes(
        open_index, tmp_path, version, dropped):
    index = open_index()
    index.apply(entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1, PatientName="Smith^J"),
                entry("1.9.2", 2, study=STUDY_B, series=SERIES_B1, modality="MR"))
    before = secondary_tables(index.db)
    index.writer.stop()
    index.db.close()
    _downgrade(tmp_path / "index", version, dropped)
    db = IndexDatabase(tmp_path / "index", MAP_SIZE)
    try:
        assert secondary_tables(db) == before
        with db.env.begin() as txn:
            assert txn.get(b"schema_version", db=db.tables.meta) == SCHEMA_VERSION
        assert IndexReader(db).studies_with_modality("MR") == [STUDY_B]
    finally:
        db.close()


def test_opening_an_older_index_read_only_says_how_to_upgrade(open_index, tmp_path):
    index = open_index()
    index.apply(entry())
    index.writer.stop()
    index.db.close()
    _downgrade(tmp_path / "index", b"2", ("studies_by_family_name", "studies_by_modality"))
    with pytest.raises(IndexSchemaError, match="pacs serve"):
        IndexDatabase(tmp_path / "index", MAP_SIZE, readonly=True)


# --- snapshots -----------------------------------------------------------------------------
def test_a_snapshot_sees_one_state_of_the_index(index):
    index.apply(entry("1.9.1", 1, study=STUDY_A, series=SERIES_A1))
    with index.reader.snapshot() as ix:
        assert ix.studies_with_patient_id("PAT1") == [STUDY_A]
        index.apply(entry("1.9.2", 2, study=STUDY_B, series=SERIES_B1))
        assert ix.studies_with_patient_id("PAT1") == [STUDY_A]
        assert ix.study(STUDY_B) is None
    assert index.reader.studies_with_patient_id("PAT1") == [STUDY_A, STUDY_B]


def test_a_snapshot_offers_every_lookup_of_the_reader(index):
    index.apply(entry())
    wanted = {"instance", "series", "study", "patient", "blob", "studies_of_patient",
              "series_of_study", "instances_of_series", "patients_with_id", "iter_patients",
              "iter_studies", "iter_instances", "studies_with_patient_id",
              "studies_with_accession_number", "studies_in_date_range",
              "studies_with_family_name", "studies_with_modality"}
    with index.reader.snapshot() as ix:
        assert wanted <= {name for name in dir(ix) if not name.startswith("_")}
        assert dataclasses.asdict(ix.study(STUDY_A)) == dataclasses.asdict(
            index.reader.study(STUDY_A))
