"""The import walk: what is read, what is refused, and why."""
from __future__ import annotations

import os

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from engine.migration.walker import Candidate, Skipped, distinct_roots, walk


def found(*roots, **kwargs) -> tuple[list[str], dict[str, Skipped]]:
    items = list(walk(roots, **kwargs))
    return ([i.path for i in items if isinstance(i, Candidate)],
            {i.path: i for i in items if isinstance(i, Skipped)})


def test_sorted_walk_skips_links_pipes_and_the_data_dir(tmp_path):
    tree = tmp_path / "tree"
    (tree / "b").mkdir(parents=True)
    (tree / "a").mkdir()
    (tree / "b" / "2.dcm").write_bytes(b"x")
    (tree / "a" / "1.dcm").write_bytes(b"x")
    (tmp_path / "outside.dcm").write_bytes(b"x")
    os.symlink(tmp_path / "outside.dcm", tree / "out-link")
    os.symlink(tree / "a" / "1.dcm", tree / "in-link")
    os.symlink(tmp_path, tree / "dir-link")  # would loop / escape if followed
    os.symlink(tree / "nowhere", tree / "broken")
    os.mkfifo(tree / "fifo")
    (tree / "data" / "objects").mkdir(parents=True)
    (tree / "data" / "objects" / "x").write_bytes(b"x")

    files, skipped = found(tree, exclude=[tree / "data"])
    assert files == [str(tree / "a" / "1.dcm"), str(tree / "b" / "2.dcm")]
    assert "outside the import tree" in skipped[str(tree / "out-link")].reason
    assert "outside the import tree" in skipped[str(tree / "dir-link")].reason
    assert "inside the tree" in skipped[str(tree / "in-link")].reason
    assert "broken" in skipped[str(tree / "broken")].reason
    assert "FIFO" in skipped[str(tree / "fifo")].reason
    assert "data directory" in skipped[str(tree / "data")].reason
    assert not any(s.rejected for s in skipped.values())


def test_roots_are_resolved_and_nested_roots_read_once(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "link-to-a")
    assert distinct_roots([tmp_path / "a" / "b", tmp_path / "link-to-a"]) == [
        str(tmp_path / "a")]
    files, _ = found(tmp_path / "a" / "b", tmp_path / "link-to-a")
    assert files == [str(tmp_path / "a" / "b" / "f")]


def test_missing_root_and_unreadable_directory_are_rejected(tmp_path):
    _, skipped = found(tmp_path / "nope")
    assert skipped[str(tmp_path / "nope")].rejected


def _dicomdir(path, file_ids) -> None:
    ds = Dataset()
    records = []
    for fid in file_ids:
        record = Dataset()
        record.DirectoryRecordType = "IMAGE"
        record.ReferencedFileID = fid
        records.append(record)
    ds.DirectoryRecordSequence = Sequence(records)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_dicomdir_order_case_insensitive_names_and_unsafe_ids(tmp_path):
    media = tmp_path / "cd"
    (media / "dicom").mkdir(parents=True)
    for name in ("im1", "im2", "zz-unlisted"):
        (media / "dicom" / name).write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"x")
    _dicomdir(media / "DICOMDIR", [["DICOM", "IM2"], ["DICOM", "IM1"], ["DICOM", "GONE"],
                                   ["..", "secret"], ["DICOM", "IM1"]])
    files, skipped = found(media)
    # DICOMDIR order first, then what it does not list; each file once; never DICOMDIR itself.
    assert files == [str(media / "dicom" / "im2"), str(media / "dicom" / "im1"),
                     str(media / "dicom" / "zz-unlisted")]
    assert skipped[str(media / "DICOM" / "GONE")].reason == "listed in DICOMDIR, not found"
    assert "unsafe file ID" in skipped[str(media / "DICOMDIR")].reason


def test_a_dicomdir_naming_a_symlinked_directory_is_not_followed(tmp_path):
    media = tmp_path / "cd"
    media.mkdir()
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "f").write_bytes(b"x")
    os.symlink(tmp_path / "private", media / "sub")
    _dicomdir(media / "DICOMDIR", [["SUB", "F"]])
    files, skipped = found(media)
    assert files == []
    assert "outside the import tree" in skipped[str(media / "sub")].reason


def test_unreadable_dicomdir_falls_back_to_the_walk(tmp_path):
    (tmp_path / "DICOMDIR").write_bytes(b"garbage")
    (tmp_path / "f").write_bytes(b"x")
    files, skipped = found(tmp_path)
    assert files == [str(tmp_path / "f")]
    assert "walked instead" in skipped[str(tmp_path / "DICOMDIR")].reason
