"""DICOM JSON (PS3.18 F.2): C-FIND values and stored datasets."""
from __future__ import annotations

import io

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from engine.web.dicom_json import BULK_THRESHOLD, ValueEncoder, dataset_json, parse_tag


def test_values_by_vr():
    encoder = ValueEncoder([(0x00100010, "PN"), (0x00201208, "IS"), (0x00280030, "DS"),
                            (0x00080061, "CS"), (0x00280010, "US"), (0x00081030, "LO"),
                            (0x00081040, "LO")])
    out = encoder.encode(["Doe^John=ドウ^ジョン", "12", "0.5\\0.5", "CT\\MR", "512", "", "A\\"])
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John",
                                                      "Ideographic": "ドウ^ジョン"}]}
    assert out["00201208"] == {"vr": "IS", "Value": [12]}
    assert out["00280030"] == {"vr": "DS", "Value": [0.5, 0.5]}
    assert out["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert out["00280010"] == {"vr": "US", "Value": [512]}
    assert out["00081030"] == {"vr": "LO"}  # empty: no Value
    assert out["00081040"] == {"vr": "LO", "Value": ["A", None]}


def test_values_agree_with_pydicom():
    ds = Dataset()
    ds.PatientName = "Müller^Hans"
    ds.NumberOfStudyRelatedInstances = "7"
    ds.ModalitiesInStudy = ["CT", "SR"]
    ds.StudyDate = "20240105"
    encoder = ValueEncoder([(0x00100010, "PN"), (0x00201208, "IS"), (0x00080061, "CS"),
                            (0x00080020, "DA")])
    ours = encoder.encode(["Müller^Hans", "7", "CT\\SR", "20240105"])
    assert ours == ds.to_json_dict()


def test_stored_dataset_large_binary_values_become_bulk_data_uris():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = dataset_json(ds, lambda path: "bulk/" + path)
    assert out["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk/7FE00010"}
    assert out["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    assert "00020010" not in out  # no file meta
    # Round trip through pydicom's reader of DICOM JSON.
    back = Dataset.from_json(out, lambda uri: b"")
    assert back.PatientID == ds.PatientID and back.Rows == ds.Rows


def test_small_binary_values_are_inline_and_sequences_have_paths():
    ds = Dataset()
    ds.add_new(0x00091010, "OB", b"\x01\x02")
    item = Dataset()
    item.add_new(0x00181072, "OB", b"\x00" * (BULK_THRESHOLD + 2))
    ds.add_new(0x00540016, "SQ", [Dataset(), item])
    out = dataset_json(ds, lambda path: path)
    assert out["00091010"]["InlineBinary"] == "AQI="
    assert out["00540016"]["Value"][1]["00181072"] == {"vr": "OB",
                                                       "BulkDataURI": "00540016/1/00181072"}


def test_deferred_values_are_referenced_not_read(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    buffer = io.BytesIO()
    ds.save_as(buffer)
    path = tmp_path / "ct.dcm"
    path.write_bytes(buffer.getvalue())
    deferred = pydicom.dcmread(path, defer_size=64)
    out = dataset_json(deferred, lambda p: "uri:" + p)
    assert out["7FE00010"]["BulkDataURI"] == "uri:7FE00010"


def test_parse_tag():
    assert parse_tag("PatientID") == 0x00100020
    assert parse_tag("0020000D") == 0x0020000D
    assert parse_tag("NoSuchKeyword") is None
