"""How long indexing one received CT image's header takes, compiled vs pure vs pydicom.

Every stored instance is scanned once for the attributes the archive indexes,
so this per-header cost bounds ingest throughput; the target for the compiled
scanner is <= 10 us.
"""
from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from engine.dicom import _tagscan_c, _tagscan_py

INDEXED_KEYWORDS = [
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate",
    "SeriesDate", "ContentDate", "StudyTime", "SeriesTime", "ContentTime", "AccessionNumber",
    "Modality", "Manufacturer", "InstitutionName", "ReferringPhysicianName", "StationName",
    "StudyDescription", "SeriesDescription", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "BodyPartExamined", "StudyInstanceUID", "SeriesInstanceUID",
    "StudyID", "SeriesNumber", "InstanceNumber", "NumberOfFrames", "Rows", "Columns",
]
WANTED = frozenset(tag_for_keyword(k) for k in INDEXED_KEYWORDS)


def _code(value, scheme, meaning):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def build_ct() -> tuple[bytes, int]:
    """A typical single-frame CT Part 10 file; returns it and its dataset offset."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240611"
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101530.123456"
    ds.AccessionNumber = "ACC0012345"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS W CONTRAST"
    ds.ProcedureCodeSequence = [_code("CTCAP", "L", "CT chest abdomen pelvis")]
    ds.SeriesDescription = "Axial 1.25mm"
    ds.ManufacturerModelName = "Scanner 9000"
    ds.ReferencedStudySequence = [Dataset()]
    ds.ReferencedStudySequence[0].ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane^Q"
    ds.PatientID = "PID-0042"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.PatientWeight = "71.5"
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "1.2.3"
    ds.ReconstructionDiameter = "380"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "250"
    ds.Exposure = "125"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 117
    ds.ImagePositionPatient = ["-190.0", "-190.0", "-312.5"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = "-312.5"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.PixelSpacing = ["0.742188", "0.742188"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = np.zeros((512, 512), dtype="<i2").tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    meta_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL value
    return raw, 132 + 12 + meta_length


RAW, DATASET_OFFSET = build_ct()
DATASET = RAW[DATASET_OFFSET:]


def scan_header(impl):
    scanner = impl.TagScanner(True, True, WANTED)
    scanner.feed(DATASET)
    return scanner


@pytest.mark.benchmark(group="tagscan-ct-header")
@pytest.mark.parametrize("impl", [_tagscan_c, _tagscan_py], ids=["compiled", "python"])
def test_scan_ct_header(benchmark, impl):
    scanner = benchmark(scan_header, impl)
    assert scanner.done
    assert len(scanner.values) == len(WANTED) - 1  # NumberOfFrames is absent from a CT
    assert scanner.values[tag_for_keyword("PatientID")] == b"PID-0042"


@pytest.mark.benchmark(group="tagscan-ct-header")
def test_pydicom_dcmread_reference(benchmark):
    ds = benchmark(lambda: pydicom.dcmread(BytesIO(RAW), stop_before_pixels=True))
    assert ds.PatientID == "PID-0042"
