"""De-identified routed copies: PS3.15 E.1.1 Basic Profile, UID remapping."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from engine.dicom.uids import is_valid_uid
from engine.routing._basic_profile import BASIC_PROFILE_ATTRIBUTES, TABLE_EDITION
from engine.routing.deidentify import (
    ACTIONS,
    BASIC_PROFILE,
    DeidentifyOptions,
    UIDMapper,
    basic_profile_action,
    deidentify,
    resolve_action,
)

# Some pydicom samples carry UIDs that break the UI grammar; reading them warns.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

SECRET = b"unit-test secret of the router"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SAMPLE_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "rtdose.dcm",
    "reportsi.dcm",
    "waveform_ecg.dcm",
    "JPEG2000.dcm",
]


@pytest.fixture
def mapper() -> UIDMapper:
    return UIDMapper(SECRET)


def sample(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return pydicom.dcmread(path, force=True)


def sample_path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return path


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def all_elements(ds: Dataset):
    """Every element at every depth, file meta included."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from meta
    yield from ds.iterall()


# --- the table ---------------------------------------------------------------


def test_table_transcribes_the_whole_basic_profile_column():
    tags = [tag for tag, _, _ in BASIC_PROFILE_ATTRIBUTES]
    assert TABLE_EDITION == "2024b"
    assert len(tags) >= 600
    assert len(set(tags)) == len(tags)
    assert tags == sorted(tags)
    assert {action for _, _, action in BASIC_PROFILE_ATTRIBUTES} <= ACTIONS


def test_table_keywords_are_the_dictionary_keywords():
    for tag, keyword, _ in BASIC_PROFILE_ATTRIBUTES:
        assert keyword == keyword_for_tag(tag), hex(tag)


@pytest.mark.parametrize(
    ("keyword", "action"),
    [
        ("PatientName", "Z"),
        ("PatientID", "Z/D"),
        ("PatientBirthDate", "Z"),
        ("PatientAddress", "X"),
        ("OtherPatientIDsSequence", "X"),
        ("AccessionNumber", "Z"),
        ("StudyDate", "Z"),
        ("SeriesDate", "X/D"),
        ("AcquisitionDateTime", "X/Z/D"),
        ("InstitutionName", "X/Z/D"),
        ("ReferringPhysicianName", "Z"),
        ("StudyInstanceUID", "U"),
        ("SeriesInstanceUID", "U"),
        ("SOPInstanceUID", "U"),
        ("FrameOfReferenceUID", "U"),
        ("ReferencedSOPInstanceUID", "U"),
        ("MediaStorageSOPInstanceUID", "U"),
        ("ReferencedImageSequence", "X/Z/U*"),
        ("SourceImageSequence", "X/Z/U*"),
        ("ReferencedStudySequence", "X/Z"),
        ("ContentSequence", "D"),
        ("OriginalAttributesSequence", "X"),
        ("DigitalSignaturesSequence", "X"),
    ],
)
def test_table_rows_match_the_standard(keyword, action):
    tag = next(t for t, kw, _ in BASIC_PROFILE_ATTRIBUTES if kw == keyword)
    assert BASIC_PROFILE[tag] == action


@pytest.mark.parametrize(
    ("compound", "simple"),
    [("Z/D", "D"), ("X/Z", "Z"), ("X/D", "D"), ("X/Z/D", "D"), ("X/Z/U*", "U"), ("C", "D")],
)
def test_compound_actions_resolve_to_what_keeps_the_object_valid(compound, simple):
    assert resolve_action(compound) == simple


def test_repeating_groups_and_private_tags_have_their_rows():
    assert basic_profile_action(0x50000005) == "X"  # Curve Dimensions
    assert basic_profile_action(0x50FE3000) == "X"
    assert basic_profile_action(0x60004000) == "X"  # Overlay Comments
    assert basic_profile_action(0x601E3000) == "X"  # Overlay Data
    assert basic_profile_action(0x00091001) == "X"  # private
    assert basic_profile_action(0x00280010) == "K"  # Rows: not in the table


# --- a synthetic dataset holding every attribute of the table ------------------

_SAMPLE_BY_VR = {
    "AE": "STATION1",
    "AS": "042Y",
    "AT": 0x00100010,
    "CS": "VALUE",
    "DA": "20240102",
    "DS": "1.5",
    "DT": "20240102030405",
    "FD": 1.5,
    "FL": 1.5,
    "IS": "7",
    "LO": "Identifying Text",
    "LT": "Identifying long text",
    "PN": "Doe^John",
    "SH": "ID123",
    "SL": 1,
    "SS": 1,
    "ST": "Identifying short text",
    "SV": 1,
    "TM": "030405",
    "UC": "Identifying unlimited characters",
    "UL": 1,
    "UR": "http://example.com/patient/42",
    "US": 1,
    "UT": "Identifying unlimited text",
    "UV": 1,
}
_INNER_UID = "1.2.3.4.5.999"


def _inner_item() -> Dataset:
    item = Dataset()
    item.PatientName = "Doe^Inner"  # Z
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE  # not in the table: kept
    item.ReferencedSOPInstanceUID = _INNER_UID  # U
    item.add_new(0x00090010, "LO", "ACME 1.0")  # private creator
    item.add_new(0x00091001, "LO", "hidden in a private tag")
    return item


def _full_table_dataset() -> Dataset:
    ds = Dataset()
    for index, (tag, _, _) in enumerate(BASIC_PROFILE_ATTRIBUTES):
        if tag >> 16 in (0x0000, 0x0002):
            continue  # command and file meta groups cannot sit in a dataset body
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            value = Sequence([_inner_item()])
        elif vr == "UI":
            value = f"1.2.3.4.{index + 1}"
        elif vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN"):
            value = b"\x01\x02\x03\x04\x05\x06\x07\x08"
        else:
            value = _SAMPLE_BY_VR[vr]
        ds.add_new(tag, vr, value)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    ds.add_new(0x00291001, "LO", "hidden in a private tag")
    return ds


def test_every_table_attribute_gets_its_action(mapper):
    src = _full_table_dataset()
    out = deidentify(src, mapper)
    checked = 0
    for tag, keyword, row_action in BASIC_PROFILE_ATTRIBUTES:
        if tag not in src:
            continue
        action = resolve_action(row_action)
        before = src[tag]
        if action == "X":
            assert tag not in out, keyword
        elif action == "Z":
            assert tag in out and out[tag].is_empty, keyword
        elif before.VR == "SQ":  # D or U*: items kept, the table applied inside
            items = out[tag].value
            assert len(items) == 1, keyword
            assert items[0].PatientName == ""
            assert items[0].ReferencedSOPInstanceUID == mapper.map(_INNER_UID)
            assert items[0].ReferencedSOPClassUID == CT_IMAGE_STORAGE
            assert 0x00090010 not in items[0] and 0x00091001 not in items[0]
        elif before.VR == "UI":  # U, and D on a UID
            assert out[tag].value == mapper.map(before.value), keyword
        else:
            assert action == "D", keyword
            assert not out[tag].is_empty and out[tag].value != before.value, keyword
        checked += 1
    assert checked >= 600


def test_attributes_not_in_the_table_are_kept(mapper):
    ds = sample("CT_small.dcm")
    out = deidentify(ds, mapper)
    for keyword in ("Modality", "Rows", "Columns", "PixelSpacing", "KVP", "ImageType"):
        assert out[keyword].value == ds[keyword].value


def test_deidentification_is_recorded(mapper):
    out = deidentify(sample("CT_small.dcm"), mapper)
    assert out.PatientIdentityRemoved == "YES"
    assert "Basic Profile" in out.DeidentificationMethod
    (code,) = out.DeidentificationMethodCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "113100",
        "DCM",
        "Basic Application Confidentiality Profile",
    )


def test_earlier_deidentification_methods_are_kept(mapper):
    ds = sample("CT_small.dcm")
    ds.DeidentificationMethod = "Site scrubber 2.1"
    earlier = Dataset()
    earlier.CodeValue, earlier.CodingSchemeDesignator = "113101", "DCM"
    earlier.CodeMeaning = "Clean Pixel Data Option"
    ds.DeidentificationMethodCodeSequence = [earlier]
    out = deidentify(ds, mapper)
    assert list(out.DeidentificationMethod)[0] == "Site scrubber 2.1"
    assert len(out.DeidentificationMethod) == 2
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113101", "113100"]


# --- sequences, private tags, repeating groups -----------------------------------


def test_sequences_are_processed_at_every_depth(mapper):
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    leaf = _inner_item()
    leaf.InstitutionName = "General Hospital"  # X/Z/D -> D
    middle = Dataset()
    middle.SourceImageSequence = [leaf]  # X/Z/U*
    middle.OperatorsName = "Smith^Operator"  # X/Z/D -> D
    middle.PatientAddress = "1 Main Street"  # X
    top = Dataset()
    top.ReferencedImageSequence = [middle]
    ds.SourceImageSequence = [top]
    out = deidentify(ds, mapper)
    out_middle = out.SourceImageSequence[0].ReferencedImageSequence[0]
    out_leaf = out_middle.SourceImageSequence[0]
    assert "PatientAddress" not in out_middle
    assert out_middle.OperatorsName == "ANONYMIZED"
    assert out_leaf.InstitutionName == "ANONYMIZED"
    assert out_leaf.PatientName == ""
    assert out_leaf.ReferencedSOPInstanceUID == mapper.map(_INNER_UID)
    assert not [e for e in out.iterall() if e.tag.is_private]


def test_zeroed_sequence_keeps_no_items(mapper):
    ds = Dataset()
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedStudySequence = [study_ref]  # X/Z -> Z
    out = deidentify(ds, mapper)
    assert "ReferencedStudySequence" in out and len(out.ReferencedStudySequence) == 0


@pytest.mark.parametrize("name", ["nested_priv_SQ.dcm", "priv_SQ.dcm", "CT_small.dcm"])
def test_private_tags_are_removed_everywhere(name, mapper):
    ds = sample(name)
    out = deidentify(ds, mapper)
    assert [e for e in ds.iterall() if e.tag.is_private]  # the sample has some
    assert not [e for e in all_elements(out) if e.tag.is_private]


def test_private_tags_cannot_be_kept_by_override(mapper):
    ds = _inner_item()
    out = deidentify(ds, mapper, DeidentifyOptions(overrides={0x00091001: "K"}))
    assert 0x00091001 not in out


def test_curve_and_overlay_groups_are_removed(mapper):
    ds = Dataset()
    ds.add_new(0x50000005, "US", 1)  # Curve Dimensions
    ds.add_new(0x50003000, "OW", b"\x00\x01")  # Curve Data
    ds.add_new(0x60000010, "US", 4)  # Overlay Rows
    ds.add_new(0x60000011, "US", 4)  # Overlay Columns
    ds.add_new(0x60003000, "OW", b"\x00\x01")  # Overlay Data
    ds.add_new(0x60024000, "LT", "overlay drawn by Dr Smith")  # Overlay Comments
    ds.add_new(0x00280010, "US", 4)
    out = deidentify(ds, mapper)
    assert [int(e.tag) for e in out if e.tag >> 16 not in (0x0012,)] == [0x00280010]


def test_group_lengths_are_dropped(mapper):
    ds = Dataset()
    ds.add_new(0x00100000, "UL", 42)
    ds.PatientName = "Doe^John"
    out = deidentify(ds, mapper)
    assert 0x00100000 not in out and out.PatientName == ""


def test_file_meta_is_deidentified(mapper):
    ds = sample("CT_small.dcm")
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_CT1"
    out = deidentify(ds, mapper)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert "SourceApplicationEntityTitle" not in out.file_meta


# --- UIDs ------------------------------------------------------------------------


def _uid_values(ds: Dataset) -> dict[tuple[int, str], int]:
    """UID values of the table's U rows, with the tag they sat in."""
    seen: dict[tuple[int, str], int] = {}
    for elem in all_elements(ds):
        if BASIC_PROFILE.get(int(elem.tag)) == "U" and elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in values:
                seen[(int(elem.tag), str(value))] = seen.get((int(elem.tag), str(value)), 0) + 1
    return seen


@pytest.mark.parametrize("name", ["rtstruct.dcm", "rtplan.dcm", "rtdose.dcm", "reportsi.dcm"])
def test_every_uid_reference_is_remapped_consistently(name, mapper):
    ds = sample(name)
    out = deidentify(ds, mapper)
    before, after = _uid_values(ds), _uid_values(out)
    assert before
    expected = {
        (tag, value if UIDMapper.is_well_known(value) else mapper.map(value)): count
        for (tag, value), count in before.items()
    }
    assert after == expected
    # No replaced UID survives anywhere, unless an attribute the table keeps held it too
    # (reportsi.dcm: Instance Creator UID == the file meta's Implementation Class UID).
    originals = {v for _, v in before if not UIDMapper.is_well_known(v)}
    kept = {str(e.value) for e in all_elements(ds) if e.VR == "UI" and e.tag not in BASIC_PROFILE}
    assert not (originals - kept) & {str(e.value) for e in all_elements(out) if e.VR == "UI"}


def test_sop_class_uids_are_kept(mapper):
    ds = sample("rtstruct.dcm")
    out = deidentify(ds, mapper)
    assert out.SOPClassUID == ds.SOPClassUID
    ref_classes = [e.value for e in ds.iterall() if e.keyword == "ReferencedSOPClassUID"]
    assert ref_classes
    assert [e.value for e in out.iterall() if e.keyword == "ReferencedSOPClassUID"] == ref_classes


def _ct_instance(sop_instance_uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.1.1"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.2.1125.1.2"
    ds.PatientName = "Doe^John"
    return ds


def test_uids_are_consistent_across_instances_of_a_study(mapper):
    first = deidentify(_ct_instance("1.2.826.0.1.3680043.2.1125.1.1.1"), mapper)
    second = deidentify(_ct_instance("1.2.826.0.1.3680043.2.1125.1.1.2"), mapper)
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.StudyInstanceUID != "1.2.826.0.1.3680043.2.1125.1"


def test_references_inside_sequences_follow_the_referenced_instance(mapper):
    ct = _ct_instance("1.2.826.0.1.3680043.2.1125.1.1.7")
    rt = Dataset()
    rt.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    rt.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.9"
    rt.StudyInstanceUID = ct.StudyInstanceUID
    image = Dataset()
    image.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    image.ReferencedSOPInstanceUID = ct.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = ct.SeriesInstanceUID
    series.ContourImageSequence = [image]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = ct.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = ct.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    rt.ReferencedFrameOfReferenceSequence = [frame]

    ct_out, rt_out = deidentify(ct, mapper), deidentify(rt, mapper)
    frame_out = rt_out.ReferencedFrameOfReferenceSequence[0]
    study_out = frame_out.RTReferencedStudySequence[0]
    series_out = study_out.RTReferencedSeriesSequence[0]
    assert frame_out.FrameOfReferenceUID == ct_out.FrameOfReferenceUID
    assert study_out.ReferencedSOPInstanceUID == ct_out.StudyInstanceUID
    assert series_out.SeriesInstanceUID == ct_out.SeriesInstanceUID
    assert series_out.ContourImageSequence[0].ReferencedSOPInstanceUID == ct_out.SOPInstanceUID
    assert rt_out.StudyInstanceUID == ct_out.StudyInstanceUID


def test_mapping_survives_a_restart_with_the_same_secret():
    uid = "1.2.826.0.1.3680043.2.1125.1"
    assert UIDMapper(SECRET).map(uid) == UIDMapper(SECRET).map(uid)
    assert UIDMapper(SECRET.decode()).map(uid) == UIDMapper(SECRET).map(uid)
    assert UIDMapper(b"another secret").map(uid) != UIDMapper(SECRET).map(uid)


def test_well_known_uids_are_not_remapped(mapper):
    for uid in (CT_IMAGE_STORAGE, ExplicitVRLittleEndian, "1.2.840.10008.1.20.1.1"):
        assert mapper.map(uid) == uid


def test_uid_padding_is_ignored(mapper):
    assert mapper.map("1.2.3.4\x00") == mapper.map("1.2.3.4") == mapper.map("1.2.3.4 ")


def test_a_secret_is_required():
    with pytest.raises(ValueError):
        UIDMapper(b"")
    assert len(UIDMapper.new_secret()) == 32


def test_long_secrets_are_accepted():
    assert is_valid_uid(UIDMapper(b"k" * 200).map("1.2.3"))


_COMPONENT = st.one_of(st.just("0"), st.integers(1, 10**25).map(str))
_VALID_UIDS = st.lists(_COMPONENT, min_size=2, max_size=16).map(".".join).filter(
    lambda uid: len(uid) <= 64
)


@given(st.one_of(_VALID_UIDS, st.text(min_size=1, max_size=100)))
def test_mapped_uid_is_always_a_valid_uid(uid):
    mapped = UIDMapper(SECRET).map(uid)
    stripped = uid.strip("\x00 ")
    if not stripped or UIDMapper.is_well_known(stripped):
        assert mapped == stripped
        return
    assert is_valid_uid(mapped) and len(mapped) <= 64
    assert mapped.startswith("2.25.")
    assert mapped != stripped


@given(st.lists(_VALID_UIDS, min_size=2, max_size=64, unique=True))
def test_mapping_is_injective_on_samples(uids):
    mapper = UIDMapper(SECRET)
    uids = [u for u in uids if not UIDMapper.is_well_known(u)]
    assert len({mapper.map(u) for u in uids}) == len(uids)


def test_mapping_is_injective_on_a_large_sample(mapper):
    uids = [f"1.2.826.0.1.3680043.2.1125.{i}" for i in range(20_000)]
    mapped = {mapper.map(u) for u in uids}
    assert len(mapped) == len(uids) and not mapped & set(uids)


def test_mapped_uid_is_never_the_input(mapper):
    uid = mapper.map("1.2.3.4")
    assert mapper.map(uid) != uid


# --- samples: pixels, the input, writing, validation -------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm"])
def test_pixel_data_is_untouched_and_not_copied(name, mapper):
    ds = sample(name)
    out = deidentify(ds, mapper)
    assert out.PixelData == ds.PixelData
    assert out.PixelData is ds.PixelData  # shared, never copied


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_input_dataset_is_not_modified(name, mapper):
    ds = sample(name)
    before = encoded(ds) if getattr(ds, "file_meta", None) else None
    snapshot = {e.tag: str(e.value)[:200] for e in ds.iterall() if e.VR != "SQ"}
    deidentify(ds, mapper)
    assert {e.tag: str(e.value)[:200] for e in ds.iterall() if e.VR != "SQ"} == snapshot
    if before is not None:
        assert encoded(ds) == before


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_result_writes_and_reads_back(name, mapper):
    ds = sample(name)
    out = deidentify(ds, mapper)
    back = pydicom.dcmread(io.BytesIO(encoded(out)))
    assert back.SOPInstanceUID == out.SOPInstanceUID == mapper.map(ds.SOPInstanceUID)
    assert back.SOPClassUID == ds.SOPClassUID
    assert back.PatientIdentityRemoved == "YES"
    assert back.get("PatientName", "") == ""
    if "PixelData" in ds:
        assert back.PixelData == ds.PixelData
    assert not [e for e in back.iterall() if e.tag.is_private]


def test_full_table_result_writes_and_reads_back(mapper):
    out = deidentify(_full_table_dataset(), mapper)
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    back = pydicom.dcmread(io.BytesIO(encoded(out)))
    assert len(back) == len(out)
    assert back.StudyInstanceUID == out.StudyInstanceUID


def _dciodvfy_errors(path: Path | str) -> set[str]:
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    # The value in a message changes with the UIDs and dummies; the finding does not.
    return {re.sub(r"=\s*<[^>]*>", "= <>", line) for line in lines if line.startswith("Error")}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed")
@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "reportsi.dcm"],
)
def test_dciodvfy_reports_no_new_errors(name, mapper, tmp_path):
    source = sample_path(name)
    target = tmp_path / name
    pydicom.dcmwrite(target, deidentify(sample(name), mapper), enforce_file_format=True)
    assert _dciodvfy_errors(target) - _dciodvfy_errors(source) == set()


# --- options ---------------------------------------------------------------------


def test_override_changes_the_action_by_keyword_or_tag(mapper):
    ds = sample("CT_small.dcm")
    out = deidentify(ds, mapper, DeidentifyOptions(overrides={"PatientName": "K", 0x00080020: "X"}))
    assert out.PatientName == ds.PatientName
    assert "StudyDate" not in out


def test_dummy_values_replace_the_per_vr_dummy(mapper):
    ds = sample("CT_small.dcm")
    out = deidentify(ds, mapper, DeidentifyOptions(dummy_values={"PatientID": "PSEUDO-0001"}))
    assert out.PatientID == "PSEUDO-0001"


def test_clean_is_applied_as_the_option_says(mapper):
    ds = sample("CT_small.dcm")
    as_dummy = deidentify(ds, mapper, DeidentifyOptions(overrides={"Manufacturer": "C"}))
    removed = deidentify(
        ds, mapper, DeidentifyOptions(overrides={"Manufacturer": "C"}, clean_as="X")
    )
    assert as_dummy.Manufacturer == "ANONYMIZED"
    assert "Manufacturer" not in removed


@pytest.mark.parametrize(
    "options",
    [
        {"overrides": {"PatientName": "Q"}},
        {"overrides": {"NotAKeyword": "X"}},
        {"clean_as": "K"},
        {"method": "x" * 65},
    ],
)
def test_invalid_options_are_refused(options):
    with pytest.raises(ValueError):
        DeidentifyOptions(**options)
