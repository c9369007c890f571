"""tools.bench_find and its archive: the same catalogue on every peer, counts that agree."""
from __future__ import annotations

import json
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from engine.index.database import IndexDatabase
from engine.index.reader import IndexReader
from tests.support import require_tool
from tools.find_archive import catalogue, fill_index, index_entries, part10_instance
from tools.find_clients import queries

REPO = Path(__file__).resolve().parents[3]


def test_a_catalogue_is_reproducible_from_its_seed():
    assert catalogue(30, 4, seed=5) == catalogue(30, 4, seed=5)
    assert catalogue(30, 4, seed=5) != catalogue(30, 4, seed=6)


def test_every_study_has_the_instances_asked_for():
    studies = catalogue(40, 7, seed=1)
    assert all(s.instances == 7 for s in studies)
    assert sum(1 for s in studies for _ in index_entries(s)) == 40 * 7


def test_the_file_for_orthanc_holds_what_the_index_holds():
    study = catalogue(5, 3, seed=2)[0]
    series = study.series[0]
    ds = pydicom.dcmread(BytesIO(part10_instance(study, series, series.instances)))
    entry = next(e for e in index_entries(study) if e.sop_instance_uid == ds.SOPInstanceUID)
    for keyword, value in entry.attributes.items():
        assert str(ds.get(keyword)) == str(value), keyword


def test_fill_index_indexes_every_instance(tmp_path):
    studies = catalogue(20, 5, seed=3)
    count, _ = fill_index(tmp_path, studies, lambda message: None)
    db = IndexDatabase(tmp_path / "index", 1 << 28, readonly=True)
    try:
        stats = IndexReader(db).stats()
    finally:
        db.close()
    assert (count, stats.instances, stats.studies) == (100, 100, 20)


def test_queries_constrain_with_values_of_the_catalogue():
    studies = catalogue(50, 2, seed=4)
    by_name = {q.name: q for q in queries(studies)}
    assert by_name["patient-id"].keys["PatientID"] in {s.patient.patient_id for s in studies}
    assert by_name["accession"].keys["AccessionNumber"] in {s.accession_number for s in studies}
    assert set(by_name["all-studies"].keys.values()) == {""}


@pytest.mark.dcmtk
@pytest.mark.slow
def test_smoke_run_agrees_on_the_matches_of_every_client(tmp_path):
    require_tool("findscu")
    proc = subprocess.run([sys.executable, "-m", "tools.bench_find", "--smoke", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
    doc = json.loads((tmp_path / "results.json").read_text())
    large = doc["pacs_large"]
    assert large["instances"] == 400 * 5
    assert large["queries"]["all-studies"]["raw"]["matches"] == 400
    for timings in large["queries"].values():  # pynetdicom's count is only reported
        assert timings["findscu"]["matches"] == timings["raw"]["matches"]
    assert (tmp_path / "report.md").read_text() in proc.stdout
