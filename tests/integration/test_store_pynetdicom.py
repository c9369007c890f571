"""C-ECHO and C-STORE from pynetdicom over loopback, read back from the archive."""
from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from engine.dicom.part10 import dataset_offset

LOOPBACK = "127.0.0.1"


def associate(port: int, contexts=None, ae_title="TESTSCU", called="PACS"):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    if contexts is None:
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
    else:
        for cx in contexts:
            ae.add_requested_context(*cx)
    return ae.associate(LOOPBACK, port, ae_title=called)


def stored_dataset_bytes(server, sop_instance_uid: str) -> bytes:
    record = server.archive.reader.instance(sop_instance_uid)
    assert record is not None, "instance not in the index"
    with server.archive.store.open_blob(record.content_hash) as fh:
        data = fh.read()
    assert dataset_offset(data) == record.dataset_offset
    return data[record.dataset_offset:]


def original_dataset_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read()
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    # The dataset starts right after the file meta group of the original file.
    meta_len = ds.file_meta.FileMetaInformationGroupLength
    return data[132 + 12 + meta_len:]


def test_c_echo_succeeds(server):
    assoc = associate(server.port)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


def test_c_store_keeps_dataset_bytes_identical(server):
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    # Offer only the file's own transfer syntax, so pynetdicom sends its bytes unchanged.
    assoc = associate(server.port, contexts=[(CTImageStorage, [ds.file_meta.TransferSyntaxUID])])
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    stored = stored_dataset_bytes(server, ds.SOPInstanceUID)
    assert stored == original_dataset_bytes(path)


def test_stored_file_is_valid_part10_with_source_ae(server):
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assoc = associate(server.port, ae_title="MODALITY7")
    assoc.send_c_store(ds)
    assoc.release()
    record = server.archive.reader.instance(ds.SOPInstanceUID)
    stored = pydicom.dcmread(server.archive.store.path_of(record.content_hash))
    assert stored.file_meta.SourceApplicationEntityTitle == "MODALITY7"
    # pynetdicom proposes Implicit VR Little Endian first; the file meta records what was sent.
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert stored.PatientName == ds.PatientName


def test_index_holds_hierarchy_and_counts(server):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assoc = associate(server.port)
    assoc.send_c_store(ds)
    assoc.release()
    reader = server.archive.reader
    study = reader.study(ds.StudyInstanceUID)
    series = reader.series(ds.SeriesInstanceUID)
    assert study.number_of_instances == 1 and study.number_of_series == 1
    assert study.modalities_in_study == "CT"
    assert series.modality == "CT" and series.number_of_instances == 1
    patient = reader.patient(study.patient_key)
    assert patient.patient_id == ds.PatientID
    assert patient.patient_name == str(ds.PatientName)
    assert reader.instances_of_series(ds.SeriesInstanceUID) == [ds.SOPInstanceUID]


def test_identical_resend_is_idempotent(server):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assoc = associate(server.port)
    first = assoc.send_c_store(ds)
    second = assoc.send_c_store(ds)
    assoc.release()
    assert first.Status == second.Status == 0x0000
    stats = server.archive.reader.stats()
    assert stats.instances == 1 and stats.blobs == 1 and stats.conflicts == 0
    assert sum(1 for _ in server.archive.store.iter_addresses()) == 1


def test_different_content_same_uid_is_a_recorded_conflict(server):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assoc = associate(server.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    first_hash = server.archive.reader.instance(ds.SOPInstanceUID).content_hash
    ds.SeriesDescription = "changed after the fact"
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xB000
    assert server.archive.reader.instance(ds.SOPInstanceUID).content_hash == first_hash
    conflicts = list(server.archive.reader.iter_conflicts())
    assert [uid for uid, _ in conflicts] == [ds.SOPInstanceUID]
    assert server.archive.store.exists(conflicts[0][1].content_hash)


#: pydicom test files whose dataset breaks its own transfer syntax; the archive must refuse them.
MALFORMED_TEST_FILES = {
    "SC_rgb_jpeg.dcm": "implicit VR elements inside an Explicit VR Little Endian dataset",
}


def pydicom_test_files_by_context() -> dict[tuple[str, str], list[str]]:
    """pydicom's bundled test files that form a valid C-STORE, by (SOP class, syntax)."""
    from collections import defaultdict

    from pydicom.data import get_testdata_files

    from engine.dicom.uids import STORAGE_SOP_CLASSES

    groups = defaultdict(list)
    for path in get_testdata_files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            ds.file_meta.FileMetaInformationGroupLength
            uids = (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        except Exception:
            continue
        if key[0] in STORAGE_SOP_CLASSES and all(uids):
            groups[key].append(path)
    return groups


def test_every_pydicom_test_file_is_stored_byte_identical(server):
    """Send each file's dataset bytes exactly as they are in the file (pynetdicom would
    re-encode them, so the raw client sends them): the stored bytes must be identical and
    the content address must be the hash of exactly those bytes."""
    from engine.ingest.pipeline import content_hasher
    from tests.rawclient import RawAssociation

    groups = pydicom_test_files_by_context()
    assert sum(map(len, groups.values())) > 90
    raw = RawAssociation(server.port)
    pdu_type, _ = raw.associate(list((sop, [ts]) for sop, ts in groups))
    assert pdu_type == 0x02
    store = server.archive.store
    for index, ((sop, ts), files) in enumerate(groups.items()):
        for path in files:
            original = original_dataset_bytes(path)
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            status = raw.c_store(2 * index + 1, sop, uid, original)
            if Path(path).name in MALFORMED_TEST_FILES:
                assert status == 0xC210, f"{path}: 0x{status:04X}"
                continue
            assert status in (0x0000, 0xB000), f"{path}: 0x{status:04X}"
            hasher = content_hasher(ts)
            hasher.update(original)
            address = hasher.hexdigest()
            assert store.exists(address), f"{path} not stored under its content address"
            assert store.path_of(address).read_bytes().endswith(original)
    raw.release()


@pytest.mark.parametrize("charset,name", [
    ("ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 192", "山田^太郎"),
    (["ISO 2022 IR 13", "ISO 2022 IR 87"], "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=ﾔﾏﾀﾞ^ﾀﾛｳ"),  # PS3.5 H.3.1
])
def test_patient_names_are_indexed_in_their_character_set(server, charset, name):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    assoc = associate(server.port, contexts=[(CTImageStorage, ["1.2.840.10008.1.2.1"])])
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    study = server.archive.reader.study(ds.StudyInstanceUID)
    assert server.archive.reader.patient(study.patient_key).patient_name == name
