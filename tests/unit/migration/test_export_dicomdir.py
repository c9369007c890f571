"""The export's DICOMDIR builder: record tree, File IDs, invented keys, pydicom read-back."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet, is_conformant_file_id

from engine.migration.dicomdir import DicomDirectory, DicomDirError

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def header(patient: str, study: int, series: int, number: int, **extra) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = f"1.2.826.0.1.{study}.{series}.{number}"
    ds.PatientID, ds.PatientName = patient, "DOE^J"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"1.2.826.0.1.{study}", \
        f"1.2.826.0.1.{study}.{series}"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "7"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series, number
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def test_records_merge_and_file_ids_follow_positions(tmp_path):
    directory = DicomDirectory()
    ids = {}
    for ds in [header("P1", 1, 1, 1), header("P2", 2, 1, 1), header("P1", 1, 2, 1),
               header("P1", 1, 1, 2), header("P1", 3, 1, 1)]:
        ids[ds.SOPInstanceUID] = directory.add(ds)
    assert ids == {
        "1.2.826.0.1.1.1.1": ("PT000000", "ST000000", "SE000000", "IM000000"),
        "1.2.826.0.1.2.1.1": ("PT000001", "ST000000", "SE000000", "IM000000"),
        "1.2.826.0.1.1.2.1": ("PT000000", "ST000000", "SE000001", "IM000000"),
        "1.2.826.0.1.1.1.2": ("PT000000", "ST000000", "SE000000", "IM000001"),
        "1.2.826.0.1.3.1.1": ("PT000000", "ST000001", "SE000000", "IM000000"),
    }
    for components in ids.values():  # pydicom's FileSet checks the files exist
        path = tmp_path.joinpath(*components)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    directory.write(tmp_path)
    fs = FileSet(tmp_path / "DICOMDIR")
    assert {str(i.SOPInstanceUID): tuple(Path(i.FileID).parts) for i in fs} == ids
    assert all(is_conformant_file_id(Path(i.FileID)) for i in fs)
    assert len(fs.find(PatientID="P1")) == 4
    assert fs.find_values("StudyInstanceUID") == ["1.2.826.0.1.1", "1.2.826.0.1.3",
                                                 "1.2.826.0.1.2"]


def test_missing_type1_keys_are_invented_in_the_record_only():
    ds = header("", 1, 1, 1, StudyID="")
    del ds.StudyDate
    directory = DicomDirectory()
    directory.add(ds)
    assert ds.PatientID == "" and ds.StudyID == "" and "StudyDate" not in ds
    records = {n.record.DirectoryRecordType: n.record for n in directory._walk()}
    assert records["PATIENT"].PatientID == "UNKNOWN"
    assert records["STUDY"].StudyID == "UNKNOWN"
    assert records["STUDY"].StudyDate == "19000101"


def test_refusals_record_nothing():
    directory = DicomDirectory()
    directory.add(header("P1", 1, 1, 1))
    with pytest.raises(DicomDirError, match="already in the file-set"):
        directory.add(header("P1", 1, 1, 1))
    no_series = header("P9", 9, 1, 1)
    del no_series.SeriesInstanceUID  # a UID cannot be invented
    with pytest.raises(DicomDirError, match="SERIES"):
        directory.add(no_series)
    assert directory.count == 1
    assert [n.record.DirectoryRecordType for n in directory._walk()] == [
        "PATIENT", "STUDY", "SERIES", "IMAGE"]
