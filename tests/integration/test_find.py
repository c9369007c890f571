"""C-FIND SCP with DCMTK findscu and pynetdicom as clients, against known data."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT, Verification)

from tests.support import LOOPBACK, run_tool
from tools.generate_data import generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"

#: (seed, profile, series, instances, overrides) of the studies every test sees.
STUDIES = [
    (1, "tiny", 2, 2, dict(PatientID="PAT1", PatientName="SMITH^JOHN", StudyDate="20240105",
                           StudyTime="101500", AccessionNumber="ACC001")),
    (2, "mr", 1, 3, dict(PatientID="PAT1", PatientName="SMITH^JOHN", StudyDate="20240212",
                         StudyTime="080000", AccessionNumber="ACC002")),
    (3, "tiny", 1, 1, dict(PatientID="PAT2", PatientName="SMYTHE^ANNA", StudyDate="20240131",
                           StudyTime="235959", AccessionNumber="ACC003")),
    (4, "sr", 1, 1, dict(PatientID="PAT3", PatientName="JONES^BOB", StudyDate="20231220",
                         StudyTime="120000", AccessionNumber="ACC004")),
]


@pytest.fixture
def archive(server):
    """The server filled with STUDIES over one pynetdicom association."""
    datasets = []
    for seed, profile, series, per_series, overrides in STUDIES:
        datasets.append(generate_study(seed, profile=profile, series=series,
                                       instances_per_series=per_series, **overrides))
    ae = AE(ae_title="FILLSCU")
    for ds in {d.SOPClassUID: d for study in datasets for d in study}.values():
        ae.add_requested_context(ds.SOPClassUID, EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
    for study in datasets:
        for ds in study:
            assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    return server, datasets


def find(port: int, model, identifier: Dataset, **ae_kwargs) -> tuple[list[Dataset], int]:
    """Run one C-FIND with pynetdicom; returns (matches, final status)."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(model)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    assert assoc.is_established
    matches, final = [], None
    for status, ds in assoc.send_c_find(identifier, model):
        if status.Status in (0xFF00, 0xFF01):
            matches.append(ds)
        else:
            final = status.Status
    assert assoc.send_c_echo().Status == 0x0000  # the association is still fine
    assoc.release()
    return matches, final


def study_query(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def accessions(matches) -> set[str]:
    return {m.AccessionNumber for m in matches}


def test_study_level_patient_id_single_value(archive):
    server, _ = archive
    matches, final = find(server.port, STUDY_ROOT, study_query(PatientID="PAT1",
                                                                 AccessionNumber=""))
    assert final == 0x0000 and accessions(matches) == {"ACC001", "ACC002"}


def test_study_level_wildcard_on_person_name(archive):
    server, _ = archive
    matches, _ = find(server.port, STUDY_ROOT, study_query(PatientName="SMI?H*",
                                                           AccessionNumber=""))
    assert accessions(matches) == {"ACC001", "ACC002"}
    matches, _ = find(server.port, STUDY_ROOT, study_query(PatientName="SM*",
                                                           AccessionNumber=""))
    assert accessions(matches) == {"ACC001", "ACC002", "ACC003"}


def test_study_level_date_range(archive):
    server, _ = archive
    matches, _ = find(server.port, STUDY_ROOT, study_query(StudyDate="20240101-20240131",
                                                           AccessionNumber=""))
    assert accessions(matches) == {"ACC001", "ACC003"}
    matches, _ = find(server.port, STUDY_ROOT, study_query(StudyDate="-20231231",
                                                           AccessionNumber=""))
    assert accessions(matches) == {"ACC004"}


def test_universal_matching_lists_every_study_with_computed_keys(archive):
    server, datasets = archive
    matches, final = find(server.port, STUDY_ROOT, study_query(
        AccessionNumber="", ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="", PatientName=""))
    assert final == 0x0000 and len(matches) == len(STUDIES)
    by_accession = {m.AccessionNumber: m for m in matches}
    assert by_accession["ACC001"].NumberOfStudyRelatedSeries == 2
    assert by_accession["ACC001"].NumberOfStudyRelatedInstances == 4
    assert by_accession["ACC002"].ModalitiesInStudy == "MR"
    assert str(by_accession["ACC003"].PatientName) == "SMYTHE^ANNA"


def test_study_uid_list_matching(archive):
    server, datasets = archive
    wanted = [datasets[0][0].StudyInstanceUID, datasets[3][0].StudyInstanceUID]
    matches, _ = find(server.port, STUDY_ROOT, study_query(StudyInstanceUID=wanted,
                                                           AccessionNumber=""))
    assert accessions(matches) == {"ACC001", "ACC004"}


def test_series_level_within_a_study(archive):
    server, datasets = archive
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = datasets[0][0].StudyInstanceUID
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    ds.NumberOfSeriesRelatedInstances = ""
    matches, final = find(server.port, STUDY_ROOT, ds)
    expected = {d.SeriesInstanceUID for d in datasets[0]}
    assert final == 0x0000 and {m.SeriesInstanceUID for m in matches} == expected
    assert all(m.NumberOfSeriesRelatedInstances == 2 for m in matches)


def test_image_level_within_a_series_with_a_value_read_from_the_file(archive):
    server, datasets = archive
    first = datasets[1][0]
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = first.SeriesInstanceUID
    ds.SOPInstanceUID = ""
    ds.InstanceNumber = ""
    ds.ImageType = ""  # not indexed: read from the stored file
    matches, _ = find(server.port, STUDY_ROOT, ds)
    assert {m.SOPInstanceUID for m in matches} == {d.SOPInstanceUID for d in datasets[1]}
    by_uid = {m.SOPInstanceUID: m for m in matches}
    for original in datasets[1]:
        assert by_uid[original.SOPInstanceUID].InstanceNumber == original.InstanceNumber
        assert list(by_uid[original.SOPInstanceUID].ImageType) == list(original.ImageType)


def test_patient_root_patient_and_study_levels(archive):
    server, _ = archive
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = ""
    ds.PatientName = "SMITH^JOHN"
    ds.NumberOfPatientRelatedStudies = ""
    matches, _ = find(server.port, PATIENT_ROOT, ds)
    assert [(m.PatientID, m.NumberOfPatientRelatedStudies) for m in matches] == [("PAT1", 2)]
    ds = study_query(PatientID="PAT2", AccessionNumber="")
    matches, _ = find(server.port, PATIENT_ROOT, ds)
    assert accessions(matches) == {"ACC003"}


def test_invalid_level_fails_with_a900(archive):
    server, _ = archive
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"  # not a level of the Study Root model
    ds.PatientID = ""
    matches, final = find(server.port, STUDY_ROOT, ds)
    assert matches == [] and final == 0xA900


def test_series_query_without_study_uid_fails_with_c000(archive):
    server, _ = archive
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.SeriesInstanceUID = ""
    matches, final = find(server.port, STUDY_ROOT, ds)
    assert matches == [] and final == 0xC000


def test_malformed_date_range_fails_and_the_association_survives(archive):
    server, _ = archive
    matches, final = find(server.port, STUDY_ROOT, study_query(StudyDate="2024ab-"))
    assert matches == [] and final == 0xC000


def test_result_cap_returns_what_it_has_and_says_so(server_factory):
    server = server_factory(query={"max_results": 2})
    ae = AE(ae_title="FILLSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
    for seed in range(5):
        for ds in generate_study(seed, profile="tiny", series=1, instances_per_series=1):
            assoc.send_c_store(ds)
    assoc.release()
    matches, final = find(server.port, STUDY_ROOT, study_query())
    assert len(matches) == 2 and final == 0xA700


def test_c_cancel_stops_a_running_query(server_factory):
    """Request and C-CANCEL in one write: deterministic, whatever the machine's speed."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from tests.rawclient import RawAssociation

    server = server_factory()
    ae = AE(ae_title="FILLSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
    for seed in range(40):
        for ds in generate_study(seed, profile="tiny", series=1, instances_per_series=1):
            assoc.send_c_store(ds)
    assoc.release()
    raw = RawAssociation(server.port)
    assert raw.associate([(STUDY_ROOT, [EXPLICIT_LE])])[0] == 0x02
    identifier = DicomBytesIO()
    identifier.is_little_endian, identifier.is_implicit_VR = True, False
    write_dataset(identifier, study_query())
    raw.send_message(1, {0x0002: STUDY_ROOT, 0x0100: 0x0020, 0x0110: 7, 0x0700: 0,
                         0x0800: 0x0000}, identifier.getvalue())
    raw.send_message(1, {0x0100: 0x0FFF, 0x0120: 7, 0x0800: 0x0101}, None)
    statuses = []
    while not statuses or statuses[-1] in (0xFF00, 0xFF01):
        response = raw.read_response()
        statuses.append(int.from_bytes(response[0x0900], "little"))
        if response[0x0800] != b"\x01\x01":
            raw.read_response_dataset()
    assert statuses[-1] == 0xFE00
    assert statuses.count(0xFF00) < 40
    raw.release()


def test_findscu_study_query_matches_generated_data(archive, tmp_path):
    server, datasets = archive
    out = tmp_path / "responses"
    out.mkdir()
    run_tool("findscu", "-S", "-aec", "PACS", "-X", "-od", str(out),
             "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT1",
             "-k", "StudyInstanceUID", "-k", "AccessionNumber", "-k", "StudyDate",
             "-k", "NumberOfStudyRelatedInstances", LOOPBACK, str(server.port))
    responses = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert {r.AccessionNumber for r in responses} == {"ACC001", "ACC002"}
    expected = {d[0].StudyInstanceUID: len(d) for d in datasets[:2]}
    assert {r.StudyInstanceUID: int(r.NumberOfStudyRelatedInstances)
            for r in responses} == expected


def test_findscu_series_level(archive, tmp_path):
    server, datasets = archive
    out = tmp_path / "responses"
    out.mkdir()
    study = datasets[0][0].StudyInstanceUID
    run_tool("findscu", "-S", "-aec", "PACS", "-X", "-od", str(out),
             "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
             "-k", "SeriesInstanceUID", "-k", "Modality", LOOPBACK, str(server.port))
    responses = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert {r.SeriesInstanceUID for r in responses} == {d.SeriesInstanceUID
                                                        for d in datasets[0]}


def test_date_and_time_ranges_combine_into_one_range_across_midnight(archive):
    server, _ = archive
    # ACC003 is 20240131 23:59:59; a time range 2300-0100 only makes sense combined.
    matches, final = find(server.port, STUDY_ROOT, study_query(
        StudyDate="20240131-20240201", StudyTime="2300-0100", AccessionNumber=""))
    assert final == 0x0000 and accessions(matches) == {"ACC003"}


def test_key_below_the_query_level_is_not_matched(archive):
    server, _ = archive
    matches, final = find(server.port, STUDY_ROOT, study_query(PatientID="PAT1", Modality="CT",
                                                                 AccessionNumber=""))
    assert final == 0x0000 and accessions(matches) == {"ACC001", "ACC002"}
    assert all(not m.Modality for m in matches)
