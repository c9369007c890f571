"""`pacs export` end to end: a real archive (served while it is exported), the real CLI,
folders checked with pydicom's FileSet and DCMTK, peers that are DCMTK storescp and
pynetdicom SCPs on loopback, and a round trip through `pacs import`.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet, is_conformant_file_id

from engine.config import StorageConfig
from engine.index.database import IndexDatabase
from engine.index.reader import IndexReader
from engine.migration.export_selection import Selection, select_instances
from engine.query.retrieve import RetrieveResolver
from engine.routing.deidentify import UIDMapper
from tests.integration.test_retrieve import StorageSCP, fill, run_tool_background
from tests.support import (
    LOOPBACK, ServerThread, find_tool, free_port, make_config, require_tool, run_tool)
from tools.generate_data import generate_study

REPO = Path(__file__).resolve().parents[2]
EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def pacs(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real command line, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


class Archive:
    """A served archive: study A (2 CT series), study B (MR) of patient EXPA, study C
    (patient EXPB, no Study ID) and pydicom's JPEG 2000 Lossless MR."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.config = root / "pacs.toml"
        self.config.write_text("[codec]\nworkers = 1\n[retrieve]\nconnect_timeout = 3.0\n")
        self.a = generate_study(41, profile="tiny", series=2, instances_per_series=3,
                                PatientID="EXPA", PatientName="DOE^JOHN", StudyDate="20240110")
        self.b = generate_study(42, profile="mr", series=1, instances_per_series=2,
                                PatientID="EXPA", PatientName="DOE^JOHN", StudyDate="20240220")
        self.c = generate_study(43, profile="tiny", series=1, instances_per_series=2,
                                PatientID="EXPB", StudyDate="20240115", StudyID="")
        self.j2k = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
        self.server = ServerThread(make_config(self.data_dir)).start()
        fill(self.server.port, [*self.a, *self.b, *self.c])
        fill(self.server.port, [self.j2k])  # one context per SOP class and call

    @property
    def reader(self):
        return self.server.archive.reader

    def stored(self, uid: str):
        return RetrieveResolver(self.reader, self.server.archive.store).stored(uid)

    def stored_hash(self, uid: str) -> tuple[str, str]:
        instance = self.stored(uid)
        with open(instance.path, "rb") as fh:
            fh.seek(instance.dataset_offset)
            return instance.transfer_syntax_uid, hashlib.sha256(fh.read()).hexdigest()

    def export(self, *args: str) -> subprocess.CompletedProcess:
        return pacs("export", "--config", self.config, "--data-dir", self.data_dir, *args)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    served = Archive(tmp_path_factory.mktemp("export"))
    yield served
    served.server.stop()


def uids(datasets) -> set[str]:
    return {ds.SOPInstanceUID for ds in datasets}


def file_hash(path: Path) -> tuple[str, str]:
    """(transfer syntax, sha256 of the dataset bytes after the file meta) of a Part 10 file."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    offset = 132 + 12 + meta.FileMetaInformationGroupLength
    return str(meta.TransferSyntaxUID), hashlib.sha256(path.read_bytes()[offset:]).hexdigest()


def file_set(folder: Path) -> dict[str, Path]:
    """SOP Instance UID → file, read through pydicom's FileSet from the DICOMDIR."""
    fs = FileSet(folder / "DICOMDIR")
    files = {}
    for instance in fs:
        assert is_conformant_file_id(Path(instance.FileID)), instance.FileID
        path = Path(instance.path)
        assert path.is_file() and folder in path.parents
        files[str(instance.SOPInstanceUID)] = path
    return files


def dcmtk_file_ids(dicomdir: Path) -> dict[str, str]:
    """File ID → SOP Instance UID of a DICOMDIR, as DCMTK's dcmdump reads it."""
    out = run_tool("dcmdump", "+L", str(dicomdir)).stdout
    ids, current = {}, None
    for line in out.splitlines():
        if "ReferencedFileID" in line:
            current = line.split("[", 1)[1].split("]", 1)[0].replace("\\", "/")
        elif "ReferencedSOPInstanceUIDInFile" in line and current is not None:
            ids[current] = line.split("[", 1)[1].split("]", 1)[0]
            current = None
    return ids


# --- folder ----------------------------------------------------------------------------------
@pytest.mark.dcmtk
def test_study_to_folder_with_dicomdir(archive, tmp_path):
    out = tmp_path / "out"
    proc = archive.export("--study", archive.a[0].StudyInstanceUID, "--folder", out)
    assert proc.returncode == 0, proc.stderr
    assert "exported 6 of 6 instance(s)" in proc.stdout
    files = file_set(out)
    assert set(files) == uids(archive.a)  # exactly the selection
    for uid, path in files.items():  # the stored dataset bytes, in the stored syntax
        assert file_hash(path) == archive.stored_hash(uid)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary file left
    # DCMTK reads the same directory, and makes the same one from the files.
    ours = dcmtk_file_ids(out / "DICOMDIR")
    assert set(ours.values()) == uids(archive.a)
    require_tool("dcmgpdir")
    check = tmp_path / "dcmtk"
    check.mkdir()
    run_tool("dcmgpdir", "+r", "+id", str(out), "+p", "IM*", "+D", str(check / "DICOMDIR"))
    assert dcmtk_file_ids(check / "DICOMDIR") == ours
    if find_tool("dciodvfy"):  # dicom3tools, when installed: the Basic Directory IOD
        verdict = subprocess.run([find_tool("dciodvfy"), str(out / "DICOMDIR")],
                                 capture_output=True, text=True)
        assert "Error" not in verdict.stdout + verdict.stderr, verdict.stderr


@pytest.mark.dcmtk
def test_missing_type1_keys_are_invented_in_the_record_only(archive, tmp_path):
    out = tmp_path / "out"
    proc = archive.export("--patient", "EXPB", "--folder", out)  # study C has no Study ID
    assert proc.returncode == 0, proc.stderr
    files = file_set(out)
    assert set(files) == uids(archive.c)
    study_record = next(r for r in pydicom.dcmread(out / "DICOMDIR").DirectoryRecordSequence
                        if r.DirectoryRecordType == "STUDY")
    assert study_record.StudyID == "UNKNOWN"
    for uid, path in files.items():
        assert pydicom.dcmread(path).StudyID == ""
        assert file_hash(path) == archive.stored_hash(uid)
    run_tool("dcmdump", str(out / "DICOMDIR"))


def test_compressed_stays_compressed_unless_uncompressed(archive, tmp_path):
    uid = archive.j2k.SOPInstanceUID
    as_stored, plain = tmp_path / "stored", tmp_path / "plain"
    assert archive.export("-k", f"SOPInstanceUID={uid}", "--folder", as_stored).returncode == 0
    path = file_set(as_stored)[uid]
    assert file_hash(path) == archive.stored_hash(uid)
    assert file_hash(path)[0] == J2K_LOSSLESS
    proc = archive.export("-k", f"SOPInstanceUID={uid}", "--uncompressed", "--folder", plain)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copy = pydicom.dcmread(file_set(plain)[uid])
    assert copy.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert (copy.pixel_array == archive.j2k.pixel_array).all()
    assert copy.PatientName == archive.j2k.PatientName
    assert FileSet(plain / "DICOMDIR").find(SOPInstanceUID=uid)[0].TransferSyntaxUID == \
        EXPLICIT_LE


def test_deidentified_folder_names_nobody(archive, tmp_path):
    out = tmp_path / "out"
    before = (archive.data_dir / "index" / "data.mdb").read_bytes()
    objects = sorted(p.name for p in (archive.data_dir / "objects").rglob("*"))
    proc = archive.export("--study", archive.a[0].StudyInstanceUID, "--deidentify",
                          "--folder", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = file_set(out)
    secret = (archive.data_dir / "routing-secret").read_text().strip()
    mapper = UIDMapper(secret)  # the router's key: the same UIDs as its copies
    assert set(files) == {mapper.map(ds.SOPInstanceUID) for ds in archive.a}
    originals = {ds.SOPInstanceUID: ds for ds in archive.a}
    identifying = [b"DOE^JOHN", b"EXPA", *(
        getattr(ds, k).encode() for ds in archive.a
        for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"))]
    for path in [*files.values(), out / "DICOMDIR"]:
        data = path.read_bytes()
        assert not [s for s in identifying if s in data], path
    for original_uid, original in originals.items():
        copy = pydicom.dcmread(files[mapper.map(original_uid)])
        assert copy.PatientIdentityRemoved == "YES"
        assert copy.PixelData == original.PixelData
    # The archive was only read: same index, same objects.
    assert (archive.data_dir / "index" / "data.mdb").read_bytes() == before
    assert sorted(p.name for p in (archive.data_dir / "objects").rglob("*")) == objects


# --- selection ---------------------------------------------------------------------------------
def selected(archive, **options) -> set[str]:
    selection = Selection.from_options(options.get("patient"), options.get("study", ()),
                                       options.get("series", ()), options.get("keys", ()))
    return {i.sop_instance_uid for i in select_instances(archive.reader,
                                                         archive.server.archive.store,
                                                         selection)}


def test_selection_matches_like_find(archive):
    a, b, c = archive.a, archive.b, archive.c
    assert selected(archive, patient="EXPA") == uids(a + b)
    assert selected(archive, keys=["PatientID=EXPA", "StudyDate=20240101-20240131"]) == uids(a)
    assert selected(archive, keys=["StudyDate=20240101-20240131"]) == uids(a + c)
    assert selected(archive, keys=["ModalitiesInStudy=CT"]) == uids(a + c)
    assert selected(archive, series=[a[0].SeriesInstanceUID]) == {
        ds.SOPInstanceUID for ds in a if ds.SeriesInstanceUID == a[0].SeriesInstanceUID}
    assert selected(archive, study=[b[0].StudyInstanceUID, c[0].StudyInstanceUID]) == uids(b + c)
    assert selected(archive, keys=["Modality=MR", "PatientID=EXPA"]) == uids(b)
    # Not in the index: read from each instance's own file.
    assert selected(archive, keys=[f"SliceLocation={a[0].SliceLocation}",
                                   f"SeriesInstanceUID={a[0].SeriesInstanceUID}"]) == {
        a[0].SOPInstanceUID}
    assert selected(archive, keys=["PatientID=*"]) == uids(a + b + c + [archive.j2k])
    assert selected(archive, patient="NOBODY") == set()


@pytest.mark.parametrize("options, message", [
    ((), "nothing selected"),
    (("-k", "NoSuchKeyword=1"), "unknown attribute keyword"),
    (("-k", "PatientID"), "expected Keyword=value"),
    (("-k", "StudyDate=2024-bad"), "StudyDate"),
    (("--study", "1.2.3.4.5.6.7.8.9"), "no stored instance matches"),
    (("--patient", "EXPA", "-k", "PatientID=EXPB"), "given both"),
])
def test_bad_selection_is_refused_and_writes_nothing(archive, tmp_path, options, message):
    out = tmp_path / "out"
    proc = archive.export(*options, "--folder", out)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not out.exists()


def test_bad_destination_is_refused(archive, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    proc = archive.export("--patient", "EXPA", "--folder", busy)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    proc = archive.export("--patient", "EXPA", "--folder", archive.data_dir / "export")
    assert proc.returncode == 2 and "must not contain each other" in proc.stderr
    assert not (archive.data_dir / "export").exists()
    proc = archive.export("--patient", "EXPA", "--to", "NOTCONFIGURED")
    assert proc.returncode == 2 and "unknown destination 'NOTCONFIGURED'" in proc.stderr
    proc = archive.export("--patient", "EXPA", "--to", "X@localhost:99999")
    assert proc.returncode == 2 and "invalid peer address" in proc.stderr


def test_unreadable_stored_file_fails_that_instance_only(tmp_path):
    study = generate_study(44, profile="tiny", series=1, instances_per_series=3)
    server = ServerThread(make_config(tmp_path / "data")).start()
    try:
        fill(server.port, study)
        broken = RetrieveResolver(server.archive.reader, server.archive.store).stored(
            study[1].SOPInstanceUID)
    finally:
        server.stop()
    broken.path.unlink()  # lost from disk (what `pacs verify` would call MISSING)
    out = tmp_path / "out"
    proc = pacs("export", "--data-dir", tmp_path / "data", "--study",
                study[0].StudyInstanceUID, "--folder", out)
    assert proc.returncode == 1
    assert f"FAILED   {study[1].SOPInstanceUID}: cannot read" in proc.stdout
    assert "exported 2 of 3 instance(s)" in proc.stdout
    assert set(file_set(out)) == {study[0].SOPInstanceUID, study[2].SOPInstanceUID}


# --- peers -----------------------------------------------------------------------------------
def test_to_pynetdicom_peer(archive):
    scp = StorageSCP("RECEIVER")
    try:
        proc = archive.export("--patient", "EXPA", "--to", f"RECEIVER@{LOOPBACK}:{scp.port}")
    finally:
        scp.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(scp.received) == uids(archive.a + archive.b)
    for original in archive.a + archive.b:
        received = scp.received[original.SOPInstanceUID]
        assert received.PixelData == original.PixelData
        assert received.PatientName == original.PatientName


def test_to_peer_uncompressed_and_deidentified(archive):
    scp = StorageSCP("RECEIVER", transfer_syntaxes=[J2K_LOSSLESS, EXPLICIT_LE])
    uid = archive.j2k.SOPInstanceUID
    try:
        proc = archive.export("-k", f"SOPInstanceUID={uid}", "--uncompressed", "--deidentify",
                              "--to", f"RECEIVER@{LOOPBACK}:{scp.port}")
    finally:
        scp.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    secret = (archive.data_dir / "routing-secret").read_text().strip()
    (received_uid, received), = scp.received.items()
    assert received_uid == UIDMapper(secret).map(uid)
    assert scp.transfer_syntaxes[received_uid] == EXPLICIT_LE
    assert (received.pixel_array == archive.j2k.pixel_array).all()
    assert received.PatientName != archive.j2k.PatientName
    assert received.StudyInstanceUID != archive.j2k.StudyInstanceUID


@pytest.mark.dcmtk
def test_to_dcmtk_storescp_by_configured_ae_title(archive, tmp_path):
    port = free_port()
    config = tmp_path / "pacs.toml"
    config.write_text(f'[retrieve]\ndestinations = {{ STORESCP = "{LOOPBACK}:{port}" }}\n')
    received = tmp_path / "received"
    received.mkdir()
    storescp = run_tool_background("storescp", "--aetitle", "STORESCP", "--output-directory",
                                   str(received), "--max-pdu", "16384", str(port))
    try:
        proc = pacs("export", "--config", config, "--data-dir", archive.data_dir,
                    "-k", "StudyDate=20240101-20240131", "--to", "STORESCP")
    finally:
        storescp.terminate()
        storescp.wait(10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = {pydicom.dcmread(p).SOPInstanceUID: p for p in received.iterdir()}
    assert set(got) == uids(archive.a + archive.c)
    for original in archive.a + archive.c:
        assert pydicom.dcmread(got[original.SOPInstanceUID]).PixelData == original.PixelData


def test_peer_refusals_are_reported_per_instance(archive):
    scp = StorageSCP("FULL", status=0xA700)
    try:
        proc = archive.export("--patient", "EXPA", "--to", f"FULL@{LOOPBACK}:{scp.port}")
    finally:
        scp.stop()
    assert proc.returncode == 1
    failed = sorted(line for line in proc.stdout.splitlines() if line.startswith("FAILED"))
    assert failed == sorted(f"FAILED   {uid}: FULL answered 0xA700"
                            for uid in uids(archive.a + archive.b))


def test_unreachable_peer_fails_every_instance(archive):
    proc = archive.export("--study", archive.b[0].StudyInstanceUID,
                          "--to", f"NOBODY@{LOOPBACK}:{free_port()}")
    assert proc.returncode == 1
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == len(archive.b)
    assert all("cannot connect to NOBODY" in line for line in failed)
    assert "exported 0 of 2 instance(s)" in proc.stdout


# --- round trip --------------------------------------------------------------------------------
def content_hashes(data_dir: Path) -> dict[str, str]:
    """SOP Instance UID → content address (BLAKE3 of transfer syntax and dataset bytes)."""
    db = IndexDatabase(data_dir / "index", StorageConfig().index_map_size, readonly=True)
    try:
        return {uid: record.content_hash for uid, record in IndexReader(db).iter_instances()}
    finally:
        db.close()


def test_round_trip_through_import(archive, tmp_path):
    out = tmp_path / "out"
    proc = archive.export("-k", "PatientID=*", "--folder", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fresh = tmp_path / "fresh"
    proc = pacs("import", "--data-dir", fresh, "--workers", "1", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    original = {uid: record.content_hash for uid, record in archive.reader.iter_instances()}
    assert content_hashes(fresh) == original
    assert len(original) == len(archive.a + archive.b + archive.c) + 1


def test_to_a_tls_destination(archive, tmp_path):
    from tests.integration.test_tls import TLSStorageSCP
    from tests.tlscerts import make_pki

    pki = make_pki(tmp_path / "pki")
    scp = TLSStorageSCP(pki, pki.server)
    config = tmp_path / "pacs.toml"
    config.write_text(
        f'[tls]\ncertificate = "{pki.server.cert}"\nkey = "{pki.server.key}"\n'
        f'ca_file = "{pki.ca}"\n[retrieve]\ndestinations = {{ TLSDEST = {{ host = '
        f'"{LOOPBACK}", port = {scp.port}, tls = true }} }}\n')
    try:
        proc = pacs("export", "--config", config, "--data-dir", archive.data_dir,
                    "--study", archive.b[0].StudyInstanceUID, "--to", "TLSDEST")
        # The same peer named by address only is plain TCP: refused by the TLS peer.
        plain = pacs("export", "--config", config, "--data-dir", archive.data_dir,
                     "--study", archive.b[0].StudyInstanceUID,
                     "--to", f"TLSDEST@{LOOPBACK}:{scp.port}")
    finally:
        scp.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(TLS)" in proc.stdout
    assert set(scp.received) == uids(archive.b)
    assert set(scp.client_cns) == {"pacs.test"}  # our certificate, as client certificate
    assert plain.returncode == 1 and "exported 0 of 2" in plain.stdout
