"""Tests of tools.generate_data: the synthetic studies other tests and benchmarks stand on."""
from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import BasicTextSRStorage

from tools.generate_data import (
    IMPLEMENTATION_CLASS_UID,
    PROFILES,
    TRANSFER_SYNTAXES,
    PatientInfo,
    generate_study,
    generate_tree,
    main,
    make_patient,
    write_dataset,
)

UI_GRAMMAR = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TM_GRAMMAR = re.compile(r"^([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9](\.[0-9]{1,6})?$")
IMAGE_PROFILES = [name for name, p in PROFILES.items() if p.has_pixels]


@pytest.fixture(scope="module")
def ct_tree(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("ct_tree")
    return root, generate_tree(root, studies=3, profile="tiny", series=2,
                               instances_per_series=4, seed=11)


def _read_all(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


@pytest.mark.parametrize("name", list(TRANSFER_SYNTAXES))
def test_file_rereads_with_requested_transfer_syntax(tmp_path, name):
    ds = generate_study(1, "tiny", instances_per_series=1)[0]
    path = write_dataset(ds, tmp_path / "x.dcm", name)
    raw = path.read_bytes()
    assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
    back = pydicom.dcmread(path)
    meta = back.file_meta
    assert meta.TransferSyntaxUID == TRANSFER_SYNTAXES[name]
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)


def test_big_endian_write_leaves_caller_dataset_unchanged(tmp_path):
    ds = generate_study(2, "tiny", instances_per_series=1)[0]
    before = bytes(ds.PixelData)
    write_dataset(ds, tmp_path / "be.dcm", "big")
    assert ds.PixelData == before
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES["explicit"]


@pytest.mark.parametrize("name", IMAGE_PROFILES)
def test_pixel_array_matches_profile(tmp_path, name):
    profile = PROFILES[name]
    ds = generate_study(3, name, instances_per_series=1, monochrome1_share=0.0)[0]
    back = pydicom.dcmread(write_dataset(ds, tmp_path / f"{name}.dcm"))
    pixels = back.pixel_array
    shape = (profile.rows, profile.columns)
    if profile.samples_per_pixel > 1:
        shape += (profile.samples_per_pixel,)
    if profile.frames > 1:
        shape = (profile.frames, *shape)
        assert back.NumberOfFrames == profile.frames
        assert back.PlanarConfiguration == 0
    assert pixels.shape == shape
    assert pixels.dtype == profile.pixel_dtype
    low, high = profile.stored_range
    assert low <= pixels.min() and pixels.max() <= high
    assert back.HighBit == back.BitsStored - 1 == profile.bits_stored - 1
    assert back.PixelRepresentation == profile.pixel_representation
    assert back.PhotometricInterpretation == profile.photometric_interpretation
    assert len(np.unique(pixels)) > 16  # a phantom with noise, not a flat fill


def test_pixel_data_compresses_like_an_image():
    import zlib

    ds = generate_study(4, "ct", instances_per_series=1)[0]
    assert len(zlib.compress(ds.PixelData, 6)) < 0.6 * len(ds.PixelData)


def test_uids_are_unique_and_valid_ui(ct_tree):
    datasets = _read_all(ct_tree[1])
    instance_uids = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(instance_uids)) == len(instance_uids)
    series_uids = {ds.SeriesInstanceUID for ds in datasets}
    study_uids = {ds.StudyInstanceUID for ds in datasets}
    assert len(series_uids) == 6 and len(study_uids) == 3
    assert not (series_uids & study_uids) and not (study_uids & set(instance_uids))
    for uid in [*instance_uids, *series_uids, *study_uids, IMPLEMENTATION_CLASS_UID]:
        assert len(uid) <= 64 and UI_GRAMMAR.match(uid), uid


def test_tree_layout_uses_counters(ct_tree):
    root, paths = ct_tree
    names = sorted(p.relative_to(root).as_posix() for p in paths)
    assert names[0] == "0000/000/00000.dcm" and names[-1] == "0002/001/00003.dcm"
    assert len(names) == 3 * 2 * 4


def test_hierarchy_is_consistent(ct_tree):
    root, paths = ct_tree
    studies, series = defaultdict(set), defaultdict(set)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study_dir, series_dir = path.parent.parent.name, path.parent.name
        studies[study_dir].add((ds.StudyInstanceUID, ds.PatientID, str(ds.PatientName),
                                ds.StudyDate, ds.AccessionNumber, ds.StudyDescription))
        series[(study_dir, series_dir)].add((ds.SeriesInstanceUID, ds.SeriesNumber,
                                             ds.SeriesDescription, ds.Modality,
                                             ds.BodyPartExamined))
    assert all(len(values) == 1 for values in studies.values())
    assert all(len(values) == 1 for values in series.values())
    assert len({next(iter(v))[0] for v in studies.values()}) == 3


def test_series_beyond_the_protocol_get_numbered_descriptions():
    datasets = generate_study(14, "mg", series=6, instances_per_series=1, rows=64, columns=48)
    descriptions = [ds.SeriesDescription for ds in datasets]
    assert len(set(descriptions)) == 6 and descriptions[-1].endswith("(2)")
    assert [ds.SeriesNumber for ds in datasets] == [1, 2, 3, 4, 5, 6]
    assert all(ds.ImageLaterality == ds.SeriesDescription[0] for ds in datasets)


def test_ct_slices_step_along_the_series():
    datasets = generate_study(5, "ct", instances_per_series=5)
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3, 4, 5]
    locations = [float(ds.SliceLocation) for ds in datasets]
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(locations), -datasets[0].SliceThickness)
    assert np.allclose(z, locations)
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1


def test_same_seed_writes_identical_bytes(tmp_path):
    first = generate_tree(tmp_path / "a", studies=2, profile="tiny", instances_per_series=3,
                          seed=5, transfer_syntax="deflate")
    second = generate_tree(tmp_path / "b", studies=2, profile="tiny", instances_per_series=3,
                           seed=5, transfer_syntax="deflate")
    other = generate_tree(tmp_path / "c", studies=2, profile="tiny", instances_per_series=3,
                          seed=6, transfer_syntax="deflate")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert first[0].read_bytes() != other[0].read_bytes()


@pytest.mark.parametrize(("name", "target", "tolerance"),
                         [("ct", 525_000, 0.10), ("tiny", 10_000, 0.50),
                          ("large", 15_000_000, 0.15)])
def test_file_size_near_target(tmp_path, name, target, tolerance):
    ds = generate_study(6, name, instances_per_series=1)[0]
    size = write_dataset(ds, tmp_path / "x.dcm").stat().st_size
    assert abs(size - target) <= tolerance * target, size


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_non_ascii_name_round_trips_with_its_character_set(tmp_path, charset):
    patient = next(p for seed in range(2000)
                   if (p := make_patient(seed)).specific_character_set == charset)
    assert not patient.name.isascii()
    ds = generate_study(7, "tiny", instances_per_series=1, patient=patient)[0]
    back = pydicom.dcmread(write_dataset(ds, tmp_path / "x.dcm"))
    assert back.SpecificCharacterSet == charset
    assert str(back.PatientName) == patient.name
    encoding = "latin-1" if charset == "ISO_IR 100" else "utf-8"
    assert patient.name.encode(encoding) in (tmp_path / "x.dcm").read_bytes()


def test_about_one_patient_in_ten_has_a_non_ascii_name():
    patients = [make_patient(np.random.default_rng(seed)) for seed in range(1000)]
    share = sum(p.specific_character_set is not None for p in patients) / len(patients)
    assert 0.05 <= share <= 0.15
    assert all(p.name.isascii() for p in patients if p.specific_character_set is None)


def test_patient_and_study_attributes_are_plausible(ct_tree):
    for ds in _read_all(ct_tree[1]):
        assert re.fullmatch(r"PAT\d{6}", ds.PatientID)
        assert "19300101" <= ds.PatientBirthDate <= "20201231"
        assert ds.PatientSex in {"M", "F", "O"}
        assert ds.PatientBirthDate <= ds.StudyDate and "20150101" <= ds.StudyDate <= "20261231"
        assert TM_GRAMMAR.match(ds.StudyTime) and TM_GRAMMAR.match(ds.SeriesTime)
        assert re.fullmatch(r"ACC\d+", ds.AccessionNumber) and len(ds.AccessionNumber) <= 16
        assert ds.StudyDescription and ds.StudyID


def test_patients_can_share_studies(tmp_path):
    paths = generate_tree(tmp_path, studies=5, profile="tiny", instances_per_series=1,
                          seed=3, patients=2)
    datasets = _read_all(paths)
    assert len({ds.PatientID for ds in datasets}) == 2
    assert len({ds.StudyInstanceUID for ds in datasets}) == 5
    assert len({ds.AccessionNumber for ds in datasets}) == 5


def test_given_patient_is_used_on_every_instance():
    patient = PatientInfo("PAT000042", "Doe^Jane", "19800101", "F")
    datasets = generate_study(8, "mr", series=2, instances_per_series=2, patient=patient)
    assert {(ds.PatientID, str(ds.PatientName)) for ds in datasets} == {("PAT000042", "Doe^Jane")}
    assert "SpecificCharacterSet" not in datasets[0]


def test_overrides_set_profile_fields_and_dicom_keywords():
    ds = generate_study(9, "ct", instances_per_series=1, rows=32, columns=48,
                        AccessionNumber="ACC1", InstitutionName="Test Lab")[0]
    assert ds.pixel_array.shape == (32, 48)
    assert (ds.AccessionNumber, ds.InstitutionName) == ("ACC1", "Test Lab")
    with pytest.raises(TypeError):
        generate_study(9, "ct", instances_per_series=1, NotAKeyword=1)


def test_cr_series_are_sometimes_monochrome1_and_inverted():
    by_kind = defaultdict(list)
    for ds in (ds for seed in range(4) for ds in generate_study(
            seed, "cr", series=6, instances_per_series=1, rows=128, columns=96)):
        by_kind[ds.PhotometricInterpretation].append(ds)
    assert set(by_kind) == {"MONOCHROME1", "MONOCHROME2"}
    # Direct exposure outside the body is dark on MONOCHROME2, so stored high on MONOCHROME1.
    assert by_kind["MONOCHROME1"][0].pixel_array[0, 0] > 3000
    assert by_kind["MONOCHROME2"][0].pixel_array[0, 0] < 1000


def test_sr_is_basic_text_sr_without_pixels():
    ds = generate_study(11, "sr", instances_per_series=1)[0]
    assert ds.SOPClassUID == BasicTextSRStorage and ds.Modality == "SR"
    assert "PixelData" not in ds and "Rows" not in ds
    assert ds.ValueType == "CONTAINER"
    items = ds.ContentSequence
    assert len(items) >= 3
    assert all(i.ValueType == "TEXT" and i.RelationshipType == "CONTAINS" and i.TextValue
               for i in items)


def test_us_is_multiframe_rgb():
    ds = generate_study(12, "us", instances_per_series=1, frames=3)[0]
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.NumberOfFrames) == ("RGB", 3, 3)
    assert ds.pixel_array.shape == (3, 480, 640, 3)


def test_cli_prints_one_summary_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--studies", "2", "--profile", "tiny",
                 "--instances", "3", "--transfer-syntax", "implicit"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(lines) == 1 and lines[0].startswith("wrote 6 files, ")
    assert f"{sum(p.stat().st_size for p in files)} bytes" in lines[0]
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES["implicit"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not on PATH")
@pytest.mark.parametrize("name", ["ct", "sr"])
def test_dciodvfy_finds_no_errors(tmp_path, name):
    ds = generate_study(13, name, instances_per_series=1)[0]
    path = write_dataset(ds, tmp_path / f"{name}.dcm")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if line.startswith("Error")]
    assert errors == []
