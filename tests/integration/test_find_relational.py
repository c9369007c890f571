"""Relational C-FIND (PS3.4 C.4.1.2.2.2), agreed by SOP Class Extended Negotiation."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT)

from tests.support import LOOPBACK
from tools.generate_data import generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"

#: (seed, profile, series, instances, overrides): SMITH has a CT and an MR study.
STUDIES = [
    (1, "tiny", 2, 2, dict(PatientID="PAT1", PatientName="SMITH^JOHN", StudyDate="20240105",
                           AccessionNumber="ACC001")),
    (2, "mr", 2, 2, dict(PatientID="PAT1", PatientName="SMITH^JOHN", StudyDate="20240212",
                         AccessionNumber="ACC002")),
    (3, "tiny", 1, 2, dict(PatientID="PAT2", PatientName="SMYTHE^ANNA", StudyDate="20240131",
                           AccessionNumber="ACC003")),
    (4, "tiny", 1, 1, dict(PatientID="PAT3", PatientName="JONES^BOB", StudyDate="20231220",
                           AccessionNumber="ACC004")),
]


@pytest.fixture
def archive(server):
    datasets = [d for seed, profile, series, n, overrides in STUDIES
                for d in generate_study(seed, profile=profile, series=series,
                                        instances_per_series=n, **overrides)]
    ae = AE(ae_title="FILLSCU")
    for sop_class in {d.SOPClassUID for d in datasets}:
        ae.add_requested_context(sop_class, EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    return server, datasets


def relational_item(model: str, info: bytes = b"\x01") -> SOPClassExtendedNegotiation:
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = model
    item.service_class_application_information = info
    return item


def find(port: int, model, identifier: Dataset, relational: bool = True):
    """(matches, final status, the acceptor's extended negotiation replies)."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(model)
    ext_neg = [relational_item(model)] if relational else None
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS", ext_neg=ext_neg)
    assert assoc.is_established
    replies = dict(assoc.acceptor.sop_class_extended)
    matches, final = [], None
    for status, ds in assoc.send_c_find(identifier, model):
        if status.Status in (0xFF00, 0xFF01):
            matches.append(ds)
        else:
            final = status.Status
    assoc.release()
    return matches, final, replies


def identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def test_the_acceptor_agrees_to_relational_queries(archive):
    server, _ = archive
    _, _, replies = find(server.port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=""))
    assert replies == {STUDY_ROOT: b"\x01"}


def test_series_level_with_study_and_patient_keys_but_no_study_uid(archive):
    server, datasets = archive
    matches, final, _ = find(server.port, STUDY_ROOT, identifier(
        "SERIES", PatientName="SMI*", Modality="CT", SeriesInstanceUID="", StudyInstanceUID=""))
    expected = {d.SeriesInstanceUID for d in datasets
                if str(d.PatientName).startswith("SMI") and d.Modality == "CT"}
    assert final == 0x0000 and len(expected) == 2
    assert {m.SeriesInstanceUID for m in matches} == expected
    study_of = {d.SeriesInstanceUID: d.StudyInstanceUID for d in datasets}
    assert all(m.StudyInstanceUID == study_of[m.SeriesInstanceUID] for m in matches)


def test_image_level_with_a_study_date_range_only(archive):
    server, datasets = archive
    matches, final, _ = find(server.port, STUDY_ROOT, identifier(
        "IMAGE", StudyDate="20240101-20240131", SOPInstanceUID="", AccessionNumber=""))
    expected = {d.SOPInstanceUID for d in datasets if "20240101" <= d.StudyDate <= "20240131"}
    assert final == 0x0000 and {m.SOPInstanceUID for m in matches} == expected
    assert {m.AccessionNumber for m in matches} == {"ACC001", "ACC003"}


def test_image_level_by_sop_instance_uid_alone_returns_its_study_and_series(archive):
    server, datasets = archive
    wanted = datasets[5]
    matches, final, _ = find(server.port, STUDY_ROOT, identifier(
        "IMAGE", SOPInstanceUID=wanted.SOPInstanceUID, StudyInstanceUID="",
        SeriesInstanceUID=""))
    assert final == 0x0000 and len(matches) == 1
    assert (matches[0].StudyInstanceUID, matches[0].SeriesInstanceUID) == (
        wanted.StudyInstanceUID, wanted.SeriesInstanceUID)


def test_series_level_by_series_uid_list_alone(archive):
    server, datasets = archive
    wanted = {datasets[0].SeriesInstanceUID, datasets[-1].SeriesInstanceUID}
    matches, final, _ = find(server.port, STUDY_ROOT, identifier(
        "SERIES", SeriesInstanceUID=sorted(wanted), StudyInstanceUID=""))
    assert final == 0x0000 and {m.SeriesInstanceUID for m in matches} == wanted


def test_patient_root_study_level_without_patient_id(archive):
    server, _ = archive
    matches, final, _ = find(server.port, PATIENT_ROOT, identifier(
        "STUDY", PatientName="SMYTHE*", AccessionNumber="", StudyInstanceUID=""))
    assert final == 0x0000 and [m.AccessionNumber for m in matches] == ["ACC003"]


def test_patient_root_series_level_with_a_patient_name_only(archive):
    server, datasets = archive
    matches, final, _ = find(server.port, PATIENT_ROOT, identifier(
        "SERIES", PatientName="SMITH^JOHN", Modality="MR", SeriesInstanceUID=""))
    expected = {d.SeriesInstanceUID for d in datasets if d.AccessionNumber == "ACC002"}
    assert final == 0x0000 and {m.SeriesInstanceUID for m in matches} == expected


def test_without_the_negotiation_the_same_query_is_refused(archive):
    server, _ = archive
    query = identifier("SERIES", PatientName="SMI*", Modality="CT", SeriesInstanceUID="")
    matches, final, replies = find(server.port, STUDY_ROOT, query, relational=False)
    assert matches == [] and final == 0xC000 and replies == {}


def test_hierarchical_queries_refuse_non_unique_keys_above_the_level(archive):
    server, datasets = archive
    query = identifier("SERIES", StudyInstanceUID=datasets[0].StudyInstanceUID,
                       PatientName="SMI*", SeriesInstanceUID="")
    matches, final, _ = find(server.port, STUDY_ROOT, query, relational=False)
    assert matches == [] and final == 0xC000
    matches, final, _ = find(server.port, STUDY_ROOT, query)
    assert final == 0x0000
    assert {m.SeriesInstanceUID for m in matches} == {
        d.SeriesInstanceUID for d in datasets if d.StudyInstanceUID == query.StudyInstanceUID}
