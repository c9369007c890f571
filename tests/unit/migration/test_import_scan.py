"""One file read by an import worker: address, attributes, copy layout, refusals."""
from __future__ import annotations

import os
import shutil

import pydicom
import pytest

from engine.dicom.part10 import encode_file_header
from engine.ingest.pipeline import content_hasher
from engine.migration import scan
from engine.store.blob_store import FilesystemBlobStore
from tools.generate_data import generate_study, write_dataset

SYNTAXES = ["explicit", "implicit", "deflate", "big"]


@pytest.fixture(scope="module")
def _store(tmp_path_factory):
    s = FilesystemBlobStore(tmp_path_factory.mktemp("data"))
    s.open()  # 4,096 shard directories: made once for the module
    return s


@pytest.fixture
def store(_store):
    yield _store
    for address in list(_store.iter_addresses()):
        _store.remove(address)
    for leftover in _store.tmp.iterdir():
        leftover.unlink()


def run(path, store, copy=False, **settings):
    st = os.lstat(path)
    candidate = (str(path), st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)
    config = scan.ScanSettings(str(store.root), copy=copy, ae_title="IMPORT", **settings)
    wanted = tuple(sorted(set(scan.INDEXED_TAGS) | set(config.extra_tags) | {scan._END}))
    return scan.scan_file(candidate, config, store, wanted)


def dataset_part(path) -> tuple[str, bytes, int]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    offset = 144 + ds.file_meta.FileMetaInformationGroupLength
    return str(ds.file_meta.TransferSyntaxUID), path.read_bytes()[offset:], offset


def address(ts: str, dataset: bytes) -> str:
    hasher = content_hasher(ts)
    hasher.update(dataset)
    return hasher.hexdigest()


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_in_place_scan_gives_the_network_address_and_the_indexed_values(tmp_path, store,
                                                                        syntax):
    ds = generate_study(1, profile="tiny", instances_per_series=1, PatientID="P-7",
                        AccessionNumber="ACC9")[0]
    path = write_dataset(ds, tmp_path / "f.dcm", syntax)
    result = run(path, store)
    assert result.status == scan.OK, result.reason
    ts, dataset, offset = dataset_part(path)
    assert result.transfer_syntax_uid == ts
    assert result.content_hash == address(ts, dataset)
    assert (result.dataset_offset, result.stored_size) == (offset, path.stat().st_size)
    assert result.sop_instance_uid == ds.SOPInstanceUID
    assert result.attributes["PatientID"] == "P-7"
    assert result.attributes["AccessionNumber"] == "ACC9"
    assert result.attributes["Rows"] == 64
    assert not result.created and not list(store.iter_addresses())


def test_copy_mode_stores_our_file_meta_and_the_dataset_bytes(tmp_path, store):
    ds = generate_study(2, profile="tiny", instances_per_series=1)[0]
    path = write_dataset(ds, tmp_path / "f.dcm")
    result = run(path, store, copy=True)
    assert result.status == scan.OK and result.created
    ts, dataset, _ = dataset_part(path)
    header = encode_file_header(ds.SOPClassUID, ds.SOPInstanceUID, ts, "IMPORT")
    stored = store.path_of(result.content_hash).read_bytes()
    assert stored == header + dataset
    assert (result.dataset_offset, result.stored_size) == (len(header), len(stored))
    again = run(path, store, copy=True)  # same content: the existing file is described
    assert not again.created
    assert (again.content_hash, again.dataset_offset, again.stored_size) == (
        result.content_hash, result.dataset_offset, result.stored_size)
    assert not [p for p in store.tmp.iterdir()]  # no temp left


def test_file_meta_naming_other_uids_is_copied_with_the_datasets(tmp_path, store):
    ds = generate_study(3, profile="tiny", instances_per_series=1)[0]
    path = write_dataset(ds, tmp_path / "f.dcm")
    raw = path.read_bytes()
    meta_uid = ds.SOPInstanceUID.encode()
    assert raw.count(meta_uid) == 2  # once in the meta, once in the dataset
    wrong = b"9" * len(meta_uid)
    path.write_bytes(raw.replace(meta_uid, wrong, 1))
    result = run(path, store, copy=True)
    assert result.status == scan.OK, result.reason
    stored = pydicom.dcmread(store.path_of(result.content_hash))
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert stored.SOPInstanceUID == ds.SOPInstanceUID


def test_a_file_replaced_since_the_walk_is_retried(tmp_path, store):
    ds = generate_study(4, profile="tiny", instances_per_series=1)[0]
    path = write_dataset(ds, tmp_path / "f.dcm")
    st = os.lstat(path)
    shutil.copyfile(path, tmp_path / "g.dcm")
    os.replace(tmp_path / "g.dcm", path)  # same name, another inode
    config = scan.ScanSettings(str(store.root), copy=True, ae_title="IMPORT")
    result = scan.scan_file((str(path), st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino),
                            config, store, scan.INDEXED_TAGS)
    assert result.status == scan.RETRY


@pytest.mark.parametrize("mutate, reason", [
    (lambda raw: raw[:100], "not a DICOM Part 10 file"),
    (lambda raw: raw[:140], "file ends inside its file meta"),
    (lambda raw: raw[:132] + b"\x02\x00\x00\x00\x04\x00\x00\x00" + raw[144:],
     "not in Explicit VR Little Endian"),
    (lambda raw: raw.replace(b"1.2.840.10008.1.2.1\x00", b"9.9.9.9.9.9.9.9.9.9\x00", 1),
     "transfer syntax not accepted"),
    (lambda raw: raw[:-7], "incomplete or corrupt"),
    (lambda raw: raw + b"\x00" * 3, "incomplete or corrupt"),
])
def test_refusals_give_their_reason(tmp_path, store, mutate, reason):
    ds = generate_study(5, profile="tiny", instances_per_series=1)[0]
    path = write_dataset(ds, tmp_path / "f.dcm")
    path.write_bytes(mutate(path.read_bytes()))
    result = run(path, store, copy=True)
    assert result.status == scan.REJECTED
    assert reason in result.reason, result.reason
    assert not list(store.iter_addresses()) and not list(store.tmp.iterdir())


def test_a_non_storage_sop_class_is_refused(tmp_path, store):
    ds = generate_study(6, profile="tiny", instances_per_series=1)[0]
    ds.SOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory (a DICOMDIR)
    path = write_dataset(ds, tmp_path / "f.dcm")
    result = run(path, store)
    assert result.status == scan.REJECTED
    assert "not a storage SOP class" in result.reason


def test_routing_attributes_are_extracted_when_asked(tmp_path, store):
    ds = generate_study(7, profile="tiny", instances_per_series=1)[0]
    ds.InstitutionName = "General Hospital"
    path = write_dataset(ds, tmp_path / "f.dcm")
    result = run(path, store, extra_tags=(0x00080080,))
    assert result.extra_attributes == {"InstitutionName": "General Hospital"}


def test_parse_file_meta_walks_elements_not_the_group_length(tmp_path):
    ds = generate_study(8, profile="tiny", instances_per_series=1)[0]
    path = write_dataset(ds, tmp_path / "f.dcm")
    raw = bytearray(path.read_bytes())
    true_offset = dataset_part(path)[2]
    raw[140:144] = (999).to_bytes(4, "little")  # a wrong group length
    meta = scan.parse_file_meta(bytes(raw))
    assert meta.dataset_offset == true_offset
    assert meta.sop_instance_uid == ds.SOPInstanceUID
