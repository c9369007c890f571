"""QIDO-RS query parameters → the C-FIND identifier."""
from __future__ import annotations

import pytest

from engine.query.find import FindQuery
from engine.query.model import STUDY_ROOT_FIND
from engine.web.errors import WebError
from engine.web.qido import build_identifier


def test_matching_and_return_keys():
    ds, warnings = build_identifier("STUDY", [
        ("PatientID", "P1"), ("00080020", "20240101-20240131"), ("includefield", "00081030"),
        ("includefield", "InstitutionName,StudyDescription"), ("fuzzymatching", "true"),
        ("limit", "5")], {})
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.PatientID == "P1" and ds.StudyDate == "20240101-20240131"
    assert "InstitutionName" in ds and not ds.InstitutionName and not ds.StudyDescription
    assert "StudyInstanceUID" in ds and not ds.StudyInstanceUID  # a default return key
    assert warnings and "fuzzy" in warnings[0]
    query = FindQuery.from_identifier(STUDY_ROOT_FIND, ds, False, relational=True)
    assert query.key("InstitutionName") is not None and not query.key("InstitutionName").indexed


def test_uid_lists_by_comma_or_repeat_and_from_the_path():
    ds, _ = build_identifier("SERIES", [("SeriesInstanceUID", "1.2.3,1.2.4"),
                                        ("SeriesInstanceUID", "1.2.5")],
                             {"StudyInstanceUID": "1.2.840.1"})
    assert list(ds.SeriesInstanceUID) == ["1.2.3", "1.2.4", "1.2.5"]
    assert ds.StudyInstanceUID == "1.2.840.1"


def test_includefield_all_returns_the_indexed_attributes_of_the_level():
    ds, _ = build_identifier("IMAGE", [("includefield", "all")], {})
    for keyword in ("PatientName", "AccessionNumber", "Modality", "InstanceNumber", "Rows"):
        assert keyword in ds


@pytest.mark.parametrize("params", [
    [("Unknown", "x")],
    [("PatientID", "a"), ("PatientID", "b")],
    [("00081032.00080100", "X")],
    [("includefield", "NotAThing")],
    [("ReferencedStudySequence", "x")],
])
def test_refused_parameters(params):
    with pytest.raises(WebError) as err:
        build_identifier("STUDY", params, {})
    assert err.value.status == 400


def test_path_uid_conflicting_with_the_query_is_refused():
    with pytest.raises(WebError):
        build_identifier("SERIES", [("StudyInstanceUID", "1.2.3")],
                         {"StudyInstanceUID": "1.2.4"})
