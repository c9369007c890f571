"""The C-FIND planner: index lookups for a key, and plans that never lose a match."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from engine.index.database import IndexDatabase
from engine.index.entry import IndexEntry
from engine.index.reader import IndexReader
from engine.index.writer import IndexTransaction
from engine.query import find as find_module
from engine.query import plan as plan_module
from engine.query.find import FindExecutor, FindQuery, InvalidQuery
from engine.query.model import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from engine.query.plan import family_name_lookups, modality_lookups
from engine.store.blob_store import FilesystemBlobStore


# --- lookups for one key ----------------------------------------------------------------
@pytest.mark.parametrize("key, fuzzy, lookups", [
    ("SMI*", False, [("smi", True)]),
    ("SMITH^J*", False, [("smith", False)]),
    ("SMITH", False, [("smith", False)]),
    ("SM?TH", False, [("sm", True)]),
    ("SMITH^JOHN\\JON*", False, [("smith", False), ("jon", True)]),
    ("müller*", True, [("muller", True)]),
    ("Müller*", False, [("muller", True)]),
    ("=山田*", False, [("山田", True)]),
    ("  SMITH^^^  ", False, [("smith", False)]),
])
def test_family_name_lookups(key, fuzzy, lookups):
    assert family_name_lookups(key, fuzzy) == lookups


@pytest.mark.parametrize("key", ["*", "*ITH", "?MITH", "^JOHN*", "SMITH\\*N", "==", "=*="])
def test_a_name_key_without_a_literal_family_prefix_has_no_lookup(key):
    assert family_name_lookups(key, False) is None


def test_modality_lookups():
    assert modality_lookups("CT\\M*") == [("CT", False), ("M", True)]
    assert modality_lookups("*T") is None
    assert modality_lookups("") is None


# --- plans are supersets: the same answers as a scan --------------------------------------
FAMILIES = ["SMITH", "Smith", "SMITHERS", "Müller", "MULLER", "O'Brien", "山田", "Jones", ""]
GIVEN = ["John", "JANE", "Jürgen", "太郎", ""]
MODALITIES = ["CT", "MR", "CR", "US"]


def _name(rng: random.Random) -> str:
    groups = [f"{rng.choice(FAMILIES)}^{rng.choice(GIVEN)}"]
    if rng.random() < 0.3:
        groups.append(f"{rng.choice(FAMILIES)}^{rng.choice(GIVEN)}")
    return "=".join(groups)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    db = IndexDatabase(root / "index", 1 << 26)
    rng = random.Random(11)
    with db.env.begin(write=True) as txn:
        tx = IndexTransaction(db, txn)
        for n in range(120):
            patient = rng.randrange(60)
            study = rng.randrange(90)
            date = f"2024{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
            # Values the matchers read leniently: padding, value lists, ACR-NEMA dates.
            if study % 9 == 0:
                date = f"{date[:4]}.{date[4:6]}.{date[6:]}"
            elif study % 11 == 0:
                date = f"20230101\\{date}"
            attrs = {"PatientID": f" P{patient} " if patient % 7 == 0 else f"P{patient}",
                     "PatientName": _name(random.Random(patient)),
                     "StudyInstanceUID": f"1.2.3.{study}",
                     "SeriesInstanceUID": f"1.2.3.{study}.{n % 3}",
                     "StudyDate": date, "StudyTime": f"{rng.randrange(24):02d}3000",
                     "AccessionNumber": f"A{study % 40}\\B{study % 5}" if study % 4 == 0
                     else f"A{study % 40}",
                     "Modality": rng.choice(MODALITIES)}
            tx.apply(IndexEntry(f"1.2.4.{n}", "1.2.840.10008.5.1.4.1.1.2",
                                "1.2.840.10008.1.2.1", f"{n:064x}", 10, 0, "", "T", attrs),
                     "keep-first")
    yield FindExecutor(IndexReader(db), FilesystemBlobStore(root / "store"))
    db.close()


def _answers(executor: FindExecutor, query: FindQuery, planned: bool,
             intersect_always: bool = False) -> list:
    with pytest.MonkeyPatch.context() as m:
        if intersect_always:  # exercise the intersections even on this small archive
            m.setattr(plan_module, "SMALL_ENOUGH", 0)
        if not planned:
            m.setattr(find_module, "plan_study_uids", lambda *args: None)
            m.setattr(find_module, "family_name_lookups", lambda *args: None)
        return sorted(tuple(v) for v in executor.run_values(query))


def _query(model: str, ds: Dataset, fuzzy: bool) -> FindQuery:
    try:
        return FindQuery.from_identifier(model, ds, fuzzy)
    except InvalidQuery:
        reject()  # e.g. a value list with an empty element


def _pieces(word: str) -> st.SearchStrategy:
    """Keys built from a stored word: prefix + wildcard, case changes, exact."""
    return st.tuples(st.integers(0, len(word)), st.sampled_from(["", "*", "?*", "^*"]),
                     st.sampled_from([str, str.upper, str.lower])).map(
        lambda t: t[2](word[:t[0]]) + t[1])


name_keys = st.one_of(
    st.sampled_from(FAMILIES).flatmap(_pieces),
    st.sampled_from([f"{f}^{g}" for f in FAMILIES for g in GIVEN]).flatmap(_pieces),
    st.lists(st.sampled_from(FAMILIES).flatmap(_pieces), min_size=2, max_size=3).map(
        "\\".join),
    st.sampled_from(FAMILIES).flatmap(_pieces).map(lambda k: "=" + k),
)
date_keys = st.sampled_from(["", "20240301-20240430", "20240615", "-20240201", "20241101-"])
modality_keys = st.sampled_from(["", "CT", "MR\\US", "C*", "X*", "*R"])


id_keys = st.sampled_from(["", "P14", "P3", "P0\\P14", " P21 "])
accession_keys = st.sampled_from(["", "A8", "B2", "A1\\B3"])


@settings(max_examples=300)
@given(name=name_keys, date=date_keys, modality=modality_keys, fuzzy=st.booleans(),
       time=st.sampled_from(["", "0800-1700"]), intersect_always=st.booleans(),
       patient_id=id_keys, accession=accession_keys)
def test_study_level_plans_find_what_a_scan_finds(archive, name, date, modality, fuzzy,
                                                    time, intersect_always, patient_id,
                                                    accession):
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientID = patient_id
    ds.AccessionNumber = accession
    ds.PatientName = name
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ModalitiesInStudy = modality
    query = _query(STUDY_ROOT_FIND, ds, fuzzy)
    assert _answers(archive, query, True, intersect_always) == _answers(archive, query, False)


@settings(max_examples=100)
@given(name=name_keys, fuzzy=st.booleans())
def test_patient_level_name_plans_find_what_a_scan_finds(archive, name, fuzzy):
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = ""
    ds.PatientName = name
    query = _query(PATIENT_ROOT_FIND, ds, fuzzy)
    assert _answers(archive, query, True) == _answers(archive, query, False)


def test_a_planned_query_reads_few_studies(archive):
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = "SMITHERS*"
    query = FindQuery.from_identifier(STUDY_ROOT_FIND, ds, False)
    with archive.reader.snapshot() as ix:
        candidates = find_module.plan_study_uids(ix, {"PatientName": "SMITHERS*"}, False)
        total = sum(1 for _ in ix.iter_studies())
    assert 0 < len(candidates) < total / 3
    assert len(list(archive.run_values(query))) <= len(candidates)


@settings(max_examples=200)
@given(name=name_keys, date=date_keys, modality=modality_keys, fuzzy=st.booleans(),
       level=st.sampled_from(["SERIES", "IMAGE"]),
       model=st.sampled_from([STUDY_ROOT_FIND, PATIENT_ROOT_FIND]),
       intersect_always=st.booleans(), accession=accession_keys)
def test_relational_lower_level_plans_find_what_a_scan_finds(archive, name, date, modality,
                                                             fuzzy, level, model,
                                                             intersect_always, accession):
    """No unique key above the level: candidates come from the study-level indexes."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientName = name
    ds.AccessionNumber = accession
    ds.StudyDate = date
    ds.Modality = modality
    ds.SeriesInstanceUID = ""
    try:
        query = FindQuery.from_identifier(model, ds, fuzzy, relational=True)
    except InvalidQuery:
        reject()
    assert _answers(archive, query, True, intersect_always) == _answers(archive, query, False)


def test_a_relational_query_by_series_uid_reads_only_that_study(archive):
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.SeriesInstanceUID = "1.2.3.7.1"
    ds.StudyInstanceUID = ""
    query = FindQuery.from_identifier(STUDY_ROOT_FIND, ds, False, relational=True)
    with archive.reader.snapshot() as ix:
        assert ix.series("1.2.3.7.1") is not None
        assert archive._study_uids(ix, query) == ["1.2.3.7"]
    assert [tuple(v) for v in archive.run_values(query)] == [("1.2.3.7", "1.2.3.7.1")]
