"""The hand-written C-FIND response encoder writes what pydicom writes, byte for byte."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.query.find import FindQuery, RequestedKey, encode_identifier
from engine.query.model import STUDY_ROOT_FIND
from engine.query.response import ResponseEncoder, response_dataset

# Random values are often invalid for their VR; pydicom warns about each one.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"

# (tag, VR): indexed attributes and others a request may name (read from files).
POOL = [
    (0x00100010, "PN"), (0x00100020, "LO"), (0x00100030, "DA"), (0x00100040, "CS"),
    (0x00101010, "AS"), (0x00080020, "DA"), (0x00080030, "TM"), (0x00080050, "SH"),
    (0x00081030, "LO"), (0x00080090, "PN"), (0x00080061, "CS"), (0x00080062, "UI"),
    (0x00201206, "IS"), (0x00201208, "IS"), (0x0020000D, "UI"), (0x0020000E, "UI"),
    (0x00080060, "CS"), (0x00200011, "IS"), (0x00180050, "DS"), (0x00280010, "US"),
    (0x00280011, "US"), (0x00080054, "AE"), (0x00081190, "UR"), (0x00324000, "LT"),
    (0x00081080, "LO"), (0x00400280, "ST"), (0x00189445, "UT"), (0x00081032, "SQ"),
    (0x00080021, "DA"), (0x0008002A, "DT"), (0x00101020, "DS"), (0x00280008, "IS"),
    (0x00091010, "UC"), (0x00191010, "SL"), (0x00191012, "UL"), (0x00191014, "SS"),
    (0x00189087, "FD"), (0x00189089, "FL"),
]

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
_ASCII = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
_INT_TEXT = st.builds(lambda pre, n, post: f"{pre}{n}{post}", st.sampled_from(["", " ", "+"]),
                      st.integers(0, 999999), st.sampled_from(["", " "])) | st.integers(
    -99999, 0).map(str)
_DS_TEXT = st.builds(lambda pre, n, post: f"{pre}{n}{post}", st.sampled_from(["", " "]),
                     st.sampled_from(["1.5", "0.25", "-3", "1e2", ".5", "100.00"]),
                     st.sampled_from(["", " "]))


def _multi(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(values, min_size=1, max_size=3).map("\\".join)


def value_for(vr: str) -> st.SearchStrategy:
    if vr in ("PN", "LO", "SH", "UC"):
        return _TEXT
    if vr in ("LT", "ST", "UT"):
        return _TEXT  # backslash is data for these
    if vr == "IS":
        return st.one_of(st.just(""), st.just("  "), _multi(_INT_TEXT))
    if vr == "DS":
        return st.one_of(st.just(""), _multi(_DS_TEXT))
    if vr in ("US", "UL"):
        return st.one_of(st.just(""), st.just("abc"), st.integers(0, 65535).map(str))
    if vr in ("SS", "SL"):
        return st.one_of(st.just(""), st.integers(-32768, 32767).map(str))
    if vr in ("SQ", "FD", "FL"):
        return st.just("")
    if vr == "UI":
        return st.one_of(st.just(""), _multi(st.from_regex(r"[12]\.[0-9]{1,3}(\.[0-9]{1,5}){0,4}",
                                                           fullmatch=True)))
    return st.one_of(st.just(""), _ASCII)


@st.composite
def identifiers(draw) -> tuple[FindQuery, list[str]]:
    elements = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=14,
                             unique_by=lambda e: e[0]))
    level = draw(st.sampled_from(["STUDY", "SERIES", "IMAGE"]))
    query = FindQuery(STUDY_ROOT_FIND, level,
                      [RequestedKey(tag, "", vr, "", False) for tag, vr in elements])
    values = [draw(value_for(vr)) for _, vr in elements]
    return query, values


@settings(max_examples=500)
@given(identifiers())
def test_explicit_vr_responses_are_byte_identical_to_pydicom(identifier):
    query, values = identifier
    expected = encode_identifier(response_dataset(query, values), EXPLICIT_LE)
    assert ResponseEncoder(query, explicit_vr=True).encode(values) == expected


@settings(max_examples=500)
@given(identifiers())
def test_implicit_vr_responses_are_byte_identical_to_pydicom(identifier):
    query, values = identifier
    expected = encode_identifier(response_dataset(query, values), IMPLICIT_LE)
    assert ResponseEncoder(query, explicit_vr=False).encode(values) == expected


def test_a_non_ascii_value_adds_specific_character_set_iso_ir_192():
    query = FindQuery(STUDY_ROOT_FIND, "STUDY", [RequestedKey(0x00100010, "", "PN", "", False)])
    encoded = ResponseEncoder(query, explicit_vr=True).encode(["Müller^Jürgen"])
    assert encoded.startswith(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 192")
    assert "Müller^Jürgen".encode() in encoded


def test_an_explicit_vr_value_longer_than_64k_is_written_as_un_like_pydicom():
    query = FindQuery(STUDY_ROOT_FIND, "STUDY", [RequestedKey(0x00081030, "", "LO", "", False)])
    values = ["x" * 70_000]
    expected = encode_identifier(response_dataset(query, values), EXPLICIT_LE)
    assert ResponseEncoder(query, explicit_vr=True).encode(values) == expected


def test_a_response_with_sequence_items_is_encoded_by_pydicom_in_utf8_when_needed():
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    query = FindQuery(STUDY_ROOT_FIND, "STUDY", [
        RequestedKey(0x00080050, "AccessionNumber", "SH", "", False),
        RequestedKey(0x00081032, "ProcedureCodeSequence", "SQ", "", False)])
    code = Dataset()
    code.CodeValue = "CTHEAD"
    code.CodeMeaning = "CT Schädel"
    encoded = ResponseEncoder(query, explicit_vr=True).encode(["A1", [code]])
    assert encoded == encode_identifier(response_dataset(query, ["A1", [code]]), EXPLICIT_LE)
    decoded = read_dataset(DicomBytesIO(encoded), False, True)
    assert decoded.SpecificCharacterSet == "ISO_IR 192"
    assert decoded.ProcedureCodeSequence[0].CodeMeaning == "CT Schädel"
    assert "CT Schädel".encode() in encoded
