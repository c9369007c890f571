"""Sequence matching in C-FIND (PS3.4 C.2.2.2.6): stored over pynetdicom, queried with
pynetdicom and DCMTK findscu."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT

from tests.support import LOOPBACK, run_tool
from tools.generate_data import PatientInfo, generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"
REFERENCED_STUDY = "1.2.826.0.1.3680043.9.7.1"
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"


def item(**keys) -> Dataset:
    ds = Dataset()
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def code(value: str, meaning: str, scheme: str = "LN") -> Dataset:
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _with_sequences(study: list[Dataset], **sequences) -> list[Dataset]:
    for ds in study:
        for keyword, items in sequences.items():
            setattr(ds, keyword, items)
    return study


@pytest.fixture
def archive(server):
    """ACC_A (Latin-1 file): two procedure codes, two requests, a referenced study;
    ACC_B: one of each but no reference; ACC_C: no sequences at all."""
    a = _with_sequences(
        generate_study(1, profile="tiny", series=2, instances_per_series=1,
                       AccessionNumber="ACC_A",
                       patient=PatientInfo("P1", "Müller^Jürgen", "19600101", "M",
                                           "ISO_IR 100")),
        ProcedureCodeSequence=[code("CTHEAD", "CT Schädel"), code("CTNECK", "CT Hals")],
        RequestAttributesSequence=[
            item(RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS1"),
            item(RequestedProcedureID="RP2", ScheduledProcedureStepID="SPS2")],
        ReferencedStudySequence=[item(ReferencedSOPClassUID=DETACHED_STUDY_MANAGEMENT,
                                      ReferencedSOPInstanceUID=REFERENCED_STUDY)])
    b = _with_sequences(
        generate_study(2, profile="tiny", series=1, instances_per_series=2,
                       AccessionNumber="ACC_B"),
        ProcedureCodeSequence=[code("MRBRAIN", "MR brain")],
        RequestAttributesSequence=[item(RequestedProcedureID="RP3",
                                        ScheduledProcedureStepID="SPS3")])
    c = generate_study(3, profile="tiny", series=1, instances_per_series=1,
                       AccessionNumber="ACC_C")
    ae = AE(ae_title="FILLSCU")
    ae.add_requested_context(a[0].SOPClassUID, EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
    for ds in a + b + c:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    return server, {"ACC_A": a, "ACC_B": b, "ACC_C": c}


def find(port: int, identifier: Dataset) -> tuple[list[Dataset], int]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    matches, final = [], None
    for status, ds in assoc.send_c_find(identifier, STUDY_ROOT):
        if status.Status in (0xFF00, 0xFF01):
            matches.append(ds)
        else:
            final = status.Status
    assoc.release()
    return matches, final


def study_query(**keys) -> Dataset:
    return item(QueryRetrieveLevel="STUDY", StudyInstanceUID="", AccessionNumber="", **keys)


def by_accession(matches) -> dict[str, Dataset]:
    return {m.AccessionNumber: m for m in matches}


def test_matching_items_return_with_the_requested_keys_in_the_response_charset(archive):
    server, _ = archive
    matches, final = find(server.port, study_query(
        ProcedureCodeSequence=[item(CodeValue="CT*", CodeMeaning="")]))
    assert final == 0x0000 and list(by_accession(matches)) == ["ACC_A"]
    response = matches[0]
    assert response.SpecificCharacterSet == "ISO_IR 192"  # the file was ISO_IR 100
    assert [(i.CodeValue, i.CodeMeaning) for i in response.ProcedureCodeSequence] == [
        ("CTHEAD", "CT Schädel"), ("CTNECK", "CT Hals")]
    assert all("CodingSchemeDesignator" not in i for i in response.ProcedureCodeSequence)


def test_only_the_matching_items_of_a_sequence_are_returned(archive):
    server, _ = archive
    matches, _ = find(server.port, study_query(RequestAttributesSequence=[
        item(RequestedProcedureID="RP2", ScheduledProcedureStepID="")]))
    assert list(by_accession(matches)) == ["ACC_A"]
    assert [(i.RequestedProcedureID, i.ScheduledProcedureStepID)
            for i in matches[0].RequestAttributesSequence] == [("RP2", "SPS2")]


@pytest.mark.parametrize("key", [[], [Dataset()]], ids=["no item", "empty item"])
def test_universal_sequence_key_returns_the_entire_stored_sequence(archive, key):
    server, studies = archive
    matches, final = find(server.port, study_query(ProcedureCodeSequence=key))
    found = by_accession(matches)
    assert final == 0x0000 and set(found) == {"ACC_A", "ACC_B", "ACC_C"}
    for accession in ("ACC_A", "ACC_B"):
        stored = studies[accession][0].ProcedureCodeSequence
        assert [(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning)
                for i in found[accession].ProcedureCodeSequence] == [
            (i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in stored]
    assert len(found["ACC_C"].ProcedureCodeSequence) == 0


def test_universal_item_keys_match_studies_without_the_sequence(archive):
    server, _ = archive
    matches, _ = find(server.port, study_query(ReferencedStudySequence=[
        item(ReferencedSOPInstanceUID="")]))
    found = by_accession(matches)
    assert set(found) == {"ACC_A", "ACC_B", "ACC_C"}
    assert [i.ReferencedSOPInstanceUID for i in found["ACC_A"].ReferencedStudySequence] == [
        REFERENCED_STUDY]
    assert len(found["ACC_B"].ReferencedStudySequence) == 0


def test_uid_matching_inside_a_sequence_at_series_level(archive):
    server, studies = archive
    ds = item(QueryRetrieveLevel="SERIES",
              StudyInstanceUID=[s[0].StudyInstanceUID for s in studies.values()],
              SeriesInstanceUID="",
              ReferencedStudySequence=[item(ReferencedSOPInstanceUID=REFERENCED_STUDY)])
    matches, final = find(server.port, ds)
    assert final == 0x0000
    assert {m.SeriesInstanceUID for m in matches} == {
        d.SeriesInstanceUID for d in studies["ACC_A"]}


def test_a_sequence_key_with_two_items_is_refused(archive):
    server, _ = archive
    matches, final = find(server.port, study_query(ProcedureCodeSequence=[
        item(CodeValue="CTHEAD"), item(CodeValue="MRBRAIN")]))
    assert matches == [] and final == 0xC000


def test_findscu_sequence_key(archive, tmp_path):
    server, _ = archive
    out = tmp_path / "responses"
    out.mkdir()
    run_tool("findscu", "-S", "-aec", "PACS", "-X", "-od", str(out),
             "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
             "-k", "AccessionNumber",
             "-k", "ProcedureCodeSequence[0].CodeValue=MRBRAIN",
             "-k", "ProcedureCodeSequence[0].CodeMeaning",
             LOOPBACK, str(server.port))
    responses = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert [r.AccessionNumber for r in responses] == ["ACC_B"]
    assert [(i.CodeValue, i.CodeMeaning) for i in responses[0].ProcedureCodeSequence] == [
        ("MRBRAIN", "MR brain")]
