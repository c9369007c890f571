"""Sequence matching (PS3.4 C.2.2.2.6) on pydicom datasets, without an archive."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from engine.query.matching import MatchError
from engine.query.sequence import compile_sequence_key


def code(value: str, scheme: str = "LN", meaning: str = "") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning or value.lower()
    return item


def stored(*items: Dataset) -> Dataset:
    ds = Dataset()
    ds.ProcedureCodeSequence = list(items)
    return ds


def key(*items: Dataset) -> Dataset:
    ds = Dataset()
    ds.ProcedureCodeSequence = list(items)
    return ds


def item(**keys) -> Dataset:
    ds = Dataset()
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def select(request: Dataset, archive: Dataset):
    compiled = compile_sequence_key(request["ProcedureCodeSequence"], False)
    return compiled.select(archive.get(0x00081032))  # the element, or None when absent


def test_matching_items_are_returned_with_only_the_requested_keys():
    found = select(key(item(CodeValue="CT*", CodeMeaning="")),
                   stored(code("CTHEAD"), code("MRBRAIN"), code("CTNECK")))
    assert [(i.CodeValue, i.CodeMeaning) for i in found] == [("CTHEAD", "cthead"),
                                                            ("CTNECK", "ctneck")]
    assert all("CodingSchemeDesignator" not in i for i in found)


def test_all_item_keys_must_match_within_one_stored_item():
    archive = stored(code("CTHEAD", "LN"), code("MRBRAIN", "SCT"))
    assert select(key(item(CodeValue="CTHEAD", CodingSchemeDesignator="SCT")), archive) is None
    assert len(select(key(item(CodeValue="CTHEAD", CodingSchemeDesignator="LN")), archive)) == 1


def test_no_matching_item_or_no_stored_sequence_is_no_match():
    assert select(key(item(CodeValue="XR*")), stored(code("CTHEAD"))) is None
    assert select(key(item(CodeValue="XR*")), Dataset()) is None


def test_universal_item_keys_return_every_item_and_match_an_absent_sequence():
    found = select(key(item(CodeValue="")), stored(code("A"), code("B")))
    assert [i.CodeValue for i in found] == ["A", "B"] and all(len(i) == 1 for i in found)
    assert select(key(item(CodeValue="")), Dataset()) == []


@pytest.mark.parametrize("request_items", [(), (Dataset(),)])
def test_an_empty_sequence_or_item_returns_the_entire_stored_sequence(request_items):
    found = select(key(*request_items), stored(code("A", "LN", "first"), code("B")))
    assert [(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in found] == [
        ("A", "LN", "first"), ("B", "LN", "b")]


def test_nested_sequences_match_recursively():
    def request_attributes(procedure_id: str, protocol: str) -> Dataset:
        entry = item(RequestedProcedureID=procedure_id, ScheduledProcedureStepID="S" + procedure_id)
        entry.ScheduledProtocolCodeSequence = [code(protocol)]
        return entry

    archive = Dataset()
    archive.RequestAttributesSequence = [request_attributes("1", "P1"),
                                         request_attributes("2", "P2")]
    request = Dataset()
    wanted = item(RequestedProcedureID="")
    wanted.ScheduledProtocolCodeSequence = [item(CodeValue="P2")]
    request.RequestAttributesSequence = [wanted]
    compiled = compile_sequence_key(request["RequestAttributesSequence"], False)
    found = compiled.select(archive["RequestAttributesSequence"])
    assert [i.RequestedProcedureID for i in found] == ["2"]
    assert [c.CodeValue for c in found[0].ScheduledProtocolCodeSequence] == ["P2"]
    assert "ScheduledProcedureStepID" not in found[0]


def test_uid_list_matching_inside_an_item():
    request, archive = Dataset(), Dataset()
    request.ReferencedStudySequence = [item(ReferencedSOPInstanceUID=["1.2.3", "1.2.5"])]
    archive.ReferencedStudySequence = [
        item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=uid)
        for uid in ("1.2.3", "1.2.4")]
    compiled = compile_sequence_key(request["ReferencedStudySequence"], False)
    found = compiled.select(archive["ReferencedStudySequence"])
    assert [i.ReferencedSOPInstanceUID for i in found] == ["1.2.3"]


def test_a_key_with_more_than_one_item_is_refused():
    with pytest.raises(MatchError):
        compile_sequence_key(key(item(CodeValue="A"), item(CodeValue="B"))
                             ["ProcedureCodeSequence"], False)
