"""`pacs stats` and `pacs verify` on a real archive filled over DICOM."""
from __future__ import annotations

import subprocess
import sys

import pytest
from pynetdicom import AE

from tools.generate_data import generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def pacs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def filled(server):
    """A server holding 2 studies (CT and MR) sent with pynetdicom; stopped before use."""
    datasets = (generate_study(1, profile="tiny", series=2, instances_per_series=3)
                + generate_study(2, profile="mr", series=1, instances_per_series=2))
    ae = AE(ae_title="ADMINSCU")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    server.stop()
    return server.config.storage.data_dir, datasets


def test_stats_counts_the_hierarchy(filled):
    data_dir, datasets = filled
    out = pacs("stats", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stderr
    values = dict(line.split()[:2] for line in out.stdout.splitlines())
    assert values["studies"] == "2" and values["series"] == "3" and values["instances"] == "8"
    assert int(values["bytes"]) > sum(len(ds.PixelData) for ds in datasets)


def test_verify_passes_on_an_intact_archive(filled):
    data_dir, _ = filled
    out = pacs("verify", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stdout
    assert "checked 8 objects: 0 missing, 0 mismatched, 0 orphans" in out.stdout


def objects(data_dir):
    return sorted(p for p in (data_dir / "objects").rglob("*") if p.is_file())


def test_verify_reports_a_corrupted_file(filled):
    data_dir, _ = filled
    victim = objects(data_dir)[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # one bit of pixel data flipped on disk
    victim.write_bytes(bytes(data))
    out = pacs("verify", "--data-dir", str(data_dir))
    assert out.returncode == 1
    assert out.stdout.count("MISMATCH") == 1


def test_verify_reports_a_missing_file(filled):
    data_dir, _ = filled
    objects(data_dir)[0].unlink()
    out = pacs("verify", "--data-dir", str(data_dir))
    assert out.returncode == 1
    assert out.stdout.count("MISSING") == 1


def test_verify_reports_and_removes_orphans(filled):
    data_dir, _ = filled
    orphan = data_dir / "objects" / "abc" / ("abc" + "0" * 61)
    orphan.write_bytes(b"left by a crash between rename and index commit")
    out = pacs("verify", "--data-dir", str(data_dir))
    assert out.returncode == 1 and f"ORPHAN    {orphan.name}" in out.stdout
    out = pacs("verify", "--data-dir", str(data_dir), "--remove-orphans")
    assert out.returncode == 0 and not orphan.exists()


def test_stats_on_a_missing_archive_is_a_clear_error(tmp_path):
    out = pacs("stats", "--data-dir", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "no archive" in out.stderr


def test_serve_on_a_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = pacs("serve", "--host", "127.0.0.1", "--port", str(port),
                   "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2
    assert "cannot serve on 127.0.0.1" in out.stderr and "Traceback" not in out.stderr


def test_find_lists_matching_studies_as_json(filled):
    import json

    data_dir, datasets = filled
    patient_id = datasets[0].PatientID
    out = pacs("find", "--data-dir", str(data_dir), "-k", f"PatientID={patient_id}",
               "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows == [{"PatientID": patient_id, "StudyInstanceUID": datasets[0].StudyInstanceUID,
                     "NumberOfStudyRelatedInstances": "6"}]


def test_find_prints_a_table_at_series_level(filled):
    data_dir, datasets = filled
    study = datasets[0].StudyInstanceUID
    out = pacs("find", "--data-dir", str(data_dir), "--level", "SERIES",
               "-k", f"StudyInstanceUID={study}", "-k", "SeriesInstanceUID", "-k", "Modality")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["Modality", "StudyInstanceUID", "SeriesInstanceUID"]  # tag order
    assert len(lines) == 3 and "(2 matches)" in out.stderr


def test_find_with_an_invalid_query_is_a_clear_error(filled):
    data_dir, _ = filled
    out = pacs("find", "--data-dir", str(data_dir), "--level", "SERIES", "-k", "Modality=CT")
    assert out.returncode == 2 and "needs StudyInstanceUID" in out.stderr
