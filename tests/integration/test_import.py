"""`pacs import`: real files, real LMDB, a real server and DCMTK / pynetdicom clients.

The CLI runs as a subprocess, as a migration team would run it.  Root reads
any file whatever its mode, so as root the import runs without the capabilities
that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): a mode-000 file then gives
the EACCES a migration meets on a real legacy share.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as STUDY_ROOT_GET

from engine.codec.workers import CodecWorkers
from engine.compression.policy import CompressionPolicy
from engine.compression.stage import CompressionStage
from engine.config import CompressionConfig
from engine.index.database import IndexDatabase
from engine.index.reader import IndexReader
from engine.ingest.integrity import verify_archive
from engine.ingest.pipeline import content_hasher
from tests.integration.test_storage_commitment import commit_same_association
from tests.integration.test_storage_commitment import request as commitment_request
from tests.support import LOOPBACK, ServerThread, make_config, require_tool, run_tool
from tools.generate_data import generate_study, generate_tree, write_dataset

REPO = Path(__file__).resolve().parents[2]
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


# --- helpers -------------------------------------------------------------------------
def _without_dac_override() -> None:
    """preexec_fn: a root child that file modes apply to (after exec, root's
    capabilities are its bounding set)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def pacs(*args: str, honour_modes: bool = False, timeout: float = 300
         ) -> subprocess.CompletedProcess:
    preexec = _without_dac_override if honour_modes and os.geteuid() == 0 else None
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec)


def import_tree(data_dir: Path, *paths: Path, flags: tuple[str, ...] = (),
                report: Path | None = None, honour_modes: bool = False
                ) -> subprocess.CompletedProcess:
    args = ["import", "--data-dir", str(data_dir), "--workers", "2", *flags,
            *map(str, paths)]
    if report is not None:
        args += ["--report", str(report)]
    return pacs(*args, honour_modes=honour_modes)


def read_report(path: Path) -> tuple[dict[str, tuple[str, str]], dict]:
    doc = json.loads(path.read_text())
    return {f["path"]: (f["status"], f["reason"]) for f in doc["files"]}, doc["summary"]


def dataset_bytes(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, dataset bytes after the file meta) of a Part 10 file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (str(ds.file_meta.TransferSyntaxUID),
            path.read_bytes()[144 + ds.file_meta.FileMetaInformationGroupLength:])


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def index_state(data_dir: Path) -> dict:
    """Everything the index says about instances, conflicts and blobs, minus the clock."""
    db = IndexDatabase(data_dir / "index", 1 << 30, readonly=True)
    try:
        reader = IndexReader(db)
        instances = {uid: _without_time(r) for uid, r in reader.iter_instances()}
        conflicts = sorted((uid, _without_time(r)) for uid, r in reader.iter_conflicts())
        blobs = {h: reader.blob(h) for h in reader.iter_blob_hashes()}
        return {"instances": instances, "conflicts": conflicts, "blobs": blobs,
                "studies": dict(reader.iter_studies()), "stats": reader.stats()}
    finally:
        db.close()


def _without_time(record):
    from dataclasses import replace
    return replace(record, received_at="")


def objects(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "objects").rglob("*") if p.is_file()}


def findscu(port: int, out: Path, *keys: str) -> list[Dataset]:
    out.mkdir(parents=True)
    run_tool("findscu", "-S", "-aec", "PACS", "-X", "-od", str(out),
             *[arg for key in keys for arg in ("-k", key)], LOOPBACK, str(port))
    return [pydicom.dcmread(p) for p in sorted(out.iterdir())]


def findscu_image_uids(port: int, study_uids: set[str], out: Path) -> set[str]:
    """Every SOP Instance UID the server returns for these studies (findscu, hierarchical:
    the series of each study, then the images of each series)."""
    found = set()
    for n, study in enumerate(sorted(study_uids)):
        series = findscu(port, out / f"s{n}", "QueryRetrieveLevel=SERIES",
                         f"StudyInstanceUID={study}", "SeriesInstanceUID")
        assert series, f"no series found for study {study}"
        for m, s in enumerate(series):
            images = findscu(port, out / f"s{n}-{m}", "QueryRetrieveLevel=IMAGE",
                             f"StudyInstanceUID={study}",
                             f"SeriesInstanceUID={s.SeriesInstanceUID}", "SOPInstanceUID")
            found |= {str(i.SOPInstanceUID) for i in images}
    return found


def c_get_raw(port: int, study_uid: str) -> dict[str, tuple[str, bytes]]:
    """C-GET a study with pynetdicom; {SOP Instance UID: (transfer syntax, dataset bytes)}."""
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event):
        raw = event.request.DataSet.getvalue()
        uid = str(event.request.AffectedSOPInstanceUID)
        received[uid] = (str(event.context.transfer_syntax), raw)
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    statuses = [status.Status for status, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET)]
    assoc.release()
    assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
    return received


# --- a legacy tree with bad files mixed in ------------------------------------------------
def make_bad_files(bad: Path, good: list[Path], outside: Path) -> dict[str, str]:
    """Bad files of every kind; {path: part of the reason the report must give}."""
    bad.mkdir(parents=True)
    expected = {}

    def add(name: str, reason: str) -> Path:
        expected[str(bad / name)] = reason
        return bad / name

    add("empty.dcm", "empty file").write_bytes(b"")
    whole = good[0].read_bytes()
    add("truncated.dcm", "incomplete or corrupt").write_bytes(whole[:len(whole) - 1000])
    add("notes.txt", "not a DICOM Part 10 file").write_text("not an image\n" * 20)
    ds = pydicom.dcmread(good[1])
    del ds.SOPInstanceUID
    ds.save_as(add("no-uid.dcm", "no SOP Instance UID"))
    ds = pydicom.dcmread(good[2])
    del ds.StudyInstanceUID
    ds.save_as(add("no-study.dcm", "no Study Instance UID"))
    raw = good[3].read_bytes()
    assert raw.count(b"1.2.840.10008.1.2.1\x00") == 1
    add("odd-syntax.dcm", "transfer syntax not accepted").write_bytes(
        raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.99999.9.9.9\x00"))
    unreadable = add("unreadable.dcm", "unreadable: Permission denied")
    shutil.copyfile(good[4], unreadable)
    (outside / "secret.dcm").write_bytes(good[5].read_bytes())
    os.symlink(outside / "secret.dcm", add("outside-link.dcm", "outside the import tree"))
    os.mkfifo(add("pipe.dcm", "FIFO"))
    return expected


@pytest.fixture
def legacy(tmp_path):
    """A generated tree (3 studies, 24 files), bad files beside it, one conflicting copy."""
    root = tmp_path / "legacy"
    good = generate_tree(root / "images", studies=3, profile="tiny", series=2,
                         instances_per_series=4, seed=11)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    expected = make_bad_files(root / "bad", good, outside)
    ds = pydicom.dcmread(good[6])
    ds.PatientName = "DIFFERENT^CONTENT"
    write_dataset(ds, root / "conflict" / "same-uid.dcm")
    return root, good, expected


def test_import_tree_with_bad_files_then_find_and_rerun(tmp_path, legacy):
    require_tool("findscu")
    root, good, expected = legacy
    data_dir = tmp_path / "data"
    report = tmp_path / "report.json"
    os.chmod(root / "bad" / "unreadable.dcm", 0)

    first = import_tree(data_dir, root, report=report, honour_modes=True)
    assert first.returncode == 1, first.stdout + first.stderr  # 1: some files rejected
    files, summary = read_report(report)
    for path, reason in expected.items():
        assert path in files, f"{path} missing from the report"
        assert reason in files[path][1], (path, files[path])
    assert not [p for p in files if p.startswith(str(root / "images"))]
    assert summary["imported"] == len(good)
    assert summary["conflicts"] == 1
    assert summary["rejected"] == 7  # empty, truncated, text, 2 without UIDs, syntax, EACCES
    assert summary["reasons"]["symbolic link outside the import tree"] == 1  # kinds, not paths
    assert "imported 24, duplicates 0, conflicts 1, rejected 7, skipped 2" in first.stdout

    server = ServerThread(make_config(data_dir)).start()
    try:
        studies = {str(pydicom.dcmread(p).StudyInstanceUID) for p in good}
        found = findscu_image_uids(server.port, studies, tmp_path / "find")
        assert found == {sop_uid(p) for p in good}
        conflicts = list(server.archive.reader.iter_conflicts())
        assert [uid for uid, _ in conflicts] == [sop_uid(good[6])]
    finally:
        server.stop()

    # A second run reads only what it could not import: nothing new, no good file re-read.
    second = import_tree(data_dir, root, report=report, honour_modes=True)
    assert second.returncode == 1
    _, summary = read_report(report)
    assert summary["imported"] == 0
    assert summary["unchanged"] == len(good) + 1  # and the conflicting copy
    assert summary["scanned"] == 7  # the rejected regular files, read again
    assert summary["rejected"] == 7


def test_import_writes_nothing_outside_the_data_dir(tmp_path, legacy):
    root, good, _ = legacy
    before = {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).digest())
              for p in root.rglob("*") if p.is_file() and not p.is_symlink()
              and os.access(p, os.R_OK) and p.name != "pipe.dcm"}
    entries = {str(p) for p in tmp_path.rglob("*")}
    import_tree(tmp_path / "data", root, flags=("--in-place",))
    after_entries = {str(p) for p in tmp_path.rglob("*")}
    assert {e for e in after_entries - entries if not e.startswith(str(tmp_path / "data"))} == set()
    for path, (mtime, digest) in before.items():
        assert path.stat().st_mtime_ns == mtime
        assert hashlib.sha256(path.read_bytes()).digest() == digest


# --- kill -9 in the middle, then again: the same index as one uninterrupted run ----------
@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    generate_tree(root, studies=6, profile="tiny", series=4, instances_per_series=60, seed=5)
    return root  # 1,440 files


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--in-place",)], ids=["copy", "in-place"])
def test_kill_9_mid_import_then_rerun_equals_an_uninterrupted_import(tmp_path, big_tree, mode):
    reference = tmp_path / "reference"
    done = import_tree(reference, big_tree, flags=("--settle", "0", *mode))
    assert done.returncode == 0, done.stderr
    total = index_state(reference)["stats"].instances
    assert total == 1440

    killed_at = None
    for attempt in range(3):  # a quiet machine may finish a batch faster than we poll
        data_dir = tmp_path / f"data{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "import", "--data-dir", str(data_dir),
             "--workers", "2", "--settle", "0", *mode, str(big_tree)], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if (data_dir / "index" / "data.mdb").exists():
                    try:
                        committed = index_state(data_dir)["stats"].instances
                    except Exception:  # the importer is still creating the index's tables
                        time.sleep(0.005)
                        continue
                    if committed >= 1:
                        os.killpg(proc.pid, signal.SIGKILL)  # the importer and its workers
                        killed_at = committed
                        break
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        if killed_at is not None and killed_at < total:
            break
        killed_at = None
    assert killed_at is not None, "the import ended before the kill, three times"
    assert index_state(data_dir)["stats"].instances < total

    again = import_tree(data_dir, big_tree, flags=("--settle", "0", *mode))
    assert again.returncode == 0, again.stdout + again.stderr
    interrupted, uninterrupted = index_state(data_dir), index_state(reference)
    if mode:  # in place: the same files are referenced, by the same paths
        assert interrupted == uninterrupted
    else:
        assert interrupted == uninterrupted
        assert objects(data_dir) == objects(reference)
    assert not list((data_dir / "tmp").iterdir())  # no temp left behind
    verify = pacs("verify", "--data-dir", str(data_dir))
    assert verify.returncode == 0, verify.stdout  # no orphan, nothing missing
    assert "0 orphans" in verify.stdout


@pytest.mark.slow
def test_ctrl_c_finishes_the_files_in_flight_and_a_rerun_completes(tmp_path, big_tree):
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "import", "--data-dir", str(data_dir), "--workers",
         "2", "--settle", "0", str(big_tree)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (data_dir / "index" / "data.mdb").exists() and \
                    index_state(data_dir)["stats"].instances >= 100:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
                break
            time.sleep(0.02)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 130, out + err
    assert "interrupted: run the same command again to continue" in out
    assert "rejected 0" in out
    assert index_state(data_dir)["stats"].instances < 1440
    assert not list((data_dir / "tmp").iterdir())  # the files in flight were finished
    assert pacs("verify", "--data-dir", str(data_dir)).returncode == 0  # and indexed
    again = import_tree(data_dir, big_tree, flags=("--settle", "0"))
    assert again.returncode == 0, again.stdout
    assert index_state(data_dir)["stats"].instances == 1440


# --- in place -----------------------------------------------------------------------------
def test_in_place_import_verify_and_c_get_return_the_same_bytes(tmp_path):
    src = tmp_path / "old-pacs"
    files = generate_tree(src, studies=2, profile="tiny", series=1, instances_per_series=5,
                          seed=3)
    data_dir = tmp_path / "data"
    result = import_tree(data_dir, src, flags=("--in-place",))
    assert result.returncode == 0, result.stderr
    assert "imported 10" in result.stdout
    assert objects(data_dir) == set()  # nothing copied
    verify = pacs("verify", "--data-dir", str(data_dir))
    assert verify.returncode == 0, verify.stdout
    assert "(10 imported in place)" in verify.stdout

    server = ServerThread(make_config(data_dir)).start()
    try:
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        received = c_get_raw(server.port, study_uid)
        originals = {sop_uid(p): dataset_bytes(p) for p in files[:5]}
        assert received == originals
        # The same file sent over the network: a duplicate; no second copy in objects/.
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
        assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
        assert assoc.send_c_store(files[1]).Status == 0x0000
        assoc.release()
        assert objects(data_dir) == set()
        # Storage commitment is refused: the file lives on storage the archive does not own.
        ds = pydicom.dcmread(files[1])
        status, ((_, report),) = commit_same_association(
            server.port, commitment_request([(ds.SOPClassUID, ds.SOPInstanceUID)]))
        assert status.Status == 0x0000 and report.get("ReferencedSOPSequence") is None
        assert [i.FailureReason for i in report.FailedSOPSequence] == [0x0110]
    finally:
        server.stop()

    # A changed source file is reported by verify, never "repaired" by writing to it.
    victim = files[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    verify = pacs("verify", "--data-dir", str(data_dir))
    assert verify.returncode == 1
    assert f"MISMATCH  {sop_uid(victim)}" in verify.stdout
    assert victim.read_bytes() == bytes(data)


def test_compressing_an_in_place_instance_leaves_its_file_alone(tmp_path):
    src = tmp_path / "old-pacs"
    files = generate_tree(src, studies=1, profile="tiny", series=1, instances_per_series=3,
                          seed=9)
    digests = {p: hashlib.sha256(p.read_bytes()).digest() for p in files}
    data_dir = tmp_path / "data"
    assert import_tree(data_dir, src, flags=("--in-place",)).returncode == 0
    server = ServerThread(make_config(data_dir)).start()
    workers = CodecWorkers(1, timeout=60)
    try:
        archive = server.archive
        stage = CompressionStage(archive.store, archive.reader, archive.writer,
                                 CompressionPolicy(CompressionConfig(min_size=0)), workers)
        report = stage.run_now()
        assert report.compressed == 3, report.failures
        for path in files:
            record = archive.reader.instance(sop_uid(path))
            assert record.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
            assert archive.reader.external_path(record.content_hash) is None
            assert archive.store.exists(record.content_hash)
        verify = verify_archive(archive.store, archive.reader)
        assert verify.ok, verify
    finally:
        workers.close()
        server.stop()
    assert {p: hashlib.sha256(p.read_bytes()).digest() for p in files} == digests


# --- beside a running server ----------------------------------------------------------------
def test_import_while_the_server_ingests_on_the_same_data_dir(tmp_path):
    src = tmp_path / "old-pacs"
    files = generate_tree(src, studies=4, profile="tiny", series=2, instances_per_series=40,
                          seed=21)
    sent = generate_study(22, profile="tiny", series=1, instances_per_series=120)
    data_dir = tmp_path / "data"
    server = ServerThread(make_config(data_dir)).start()
    try:
        in_flight = data_dir / "tmp" / "0123456789abcdef01234567.partial"
        in_flight.write_bytes(b"a server's file being received")
        acknowledged: list[str] = []

        def send():
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
            assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
            for ds in sent:
                if assoc.send_c_store(ds).Status == 0x0000:
                    acknowledged.append(ds.SOPInstanceUID)
            assoc.release()

        sender = threading.Thread(target=send)
        sender.start()
        result = import_tree(data_dir, src, flags=("--settle", "0"))
        sender.join(120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "imported 320" in result.stdout
        assert len(acknowledged) == len(sent)
        reader = server.archive.reader
        indexed = {uid for uid, _ in reader.iter_instances()}
        assert indexed == {sop_uid(p) for p in files} | set(acknowledged)
        assert in_flight.exists()  # the import left the server's tmp/ alone
        in_flight.unlink()
        assert verify_archive(server.archive.store, reader).ok
    finally:
        server.stop()


def test_a_second_import_on_the_same_data_dir_is_refused(tmp_path):
    import fcntl

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(data_dir / "import.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        result = import_tree(data_dir, tmp_path)
    assert result.returncode == 2
    assert "another pacs import is running" in result.stderr


# --- DICOMDIR, fresh files ----------------------------------------------------------------
def test_dicomdir_media_is_imported_and_its_missing_files_reported(tmp_path):
    from pydicom.fileset import FileSet

    datasets = generate_study(31, profile="tiny", series=2, instances_per_series=3)
    fs = FileSet()
    for ds in datasets:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        fs.add(ds)
    media = tmp_path / "cd"
    fs.write(media)
    listed = sorted(p for p in media.rglob("*") if p.is_file() and p.name != "DICOMDIR")
    assert len(listed) == 6
    listed[0].unlink()  # the DICOMDIR still lists it
    (media / "EXTRA").mkdir()
    write_dataset(generate_study(32, profile="tiny", instances_per_series=1)[0],
                  media / "EXTRA" / "unlisted.dcm")
    report = tmp_path / "report.csv"
    result = import_tree(tmp_path / "data", media, report=report)
    assert result.returncode == 1, result.stdout
    assert "imported 6," in result.stdout  # 5 listed + 1 the DICOMDIR does not know
    lines = report.read_text().splitlines()
    assert lines[0] == "path,status,reason"
    assert len(lines) == 2 and "listed in DICOMDIR, not found" in lines[1]
    assert "DICOMDIR" not in "".join(lines[1:]).replace("listed in DICOMDIR", "")


def test_a_file_still_being_written_is_never_imported_incomplete(tmp_path):
    src = tmp_path / "incoming"
    files = generate_tree(src, studies=1, profile="tiny", series=1, instances_per_series=4,
                          seed=41)
    growing = [write_dataset(ds, tmp_path / f"whole{n}.dcm") for n, ds in
               enumerate(generate_study(42, profile="ct", instances_per_series=2))]
    whole = [p.read_bytes() for p in growing]
    slow, quick = src / "slow.dcm", src / "quick.dcm"
    slow.write_bytes(whole[0][:len(whole[0]) // 2])
    stop = threading.Event()

    def write_slowly():
        """The quick file lands in pieces at once; the slow one keeps growing until the end."""
        with open(quick, "wb") as fh:
            for start in range(0, len(whole[1]), 65536):
                fh.write(whole[1][start:start + 65536])
                fh.flush()
                time.sleep(0.01)
        with open(slow, "ab") as fh:
            while not stop.wait(0.05):
                fh.write(b"\0" * 16)
                fh.flush()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    report = tmp_path / "report.json"
    try:
        result = import_tree(tmp_path / "data", src, report=report,
                             flags=("--settle", "0.5"))
    finally:
        stop.set()
        writer.join()
    files_report, summary = read_report(report)
    assert summary["imported"] == len(files) + 1, result.stdout  # the quick one, complete
    status, reason = files_report[str(slow)]
    assert status == "rejected"
    assert "being written" in reason or "incomplete" in reason, reason
    db = IndexDatabase(tmp_path / "data" / "index", 1 << 30, readonly=True)
    try:
        reader = IndexReader(db)
        record = reader.instance(sop_uid(growing[1]))
        assert record is not None and reader.instance(sop_uid(growing[0])) is None
        ts, dataset = dataset_bytes(growing[1])
        hasher = content_hasher(ts)
        hasher.update(dataset)
        assert record.content_hash == hasher.hexdigest()
    finally:
        db.close()


# --- one address for both ingest paths; routing only when asked ----------------------------
def test_a_file_received_over_the_network_and_imported_has_one_address(tmp_path):
    src = tmp_path / "legacy"
    files = generate_tree(src, studies=1, profile="tiny", series=1, instances_per_series=3,
                          seed=51)
    data_dir = tmp_path / "data"
    server = ServerThread(make_config(data_dir)).start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
        assoc = ae.associate(LOOPBACK, server.port, ae_title="PACS")
        for path in files[:2]:  # pynetdicom sends a file's dataset bytes as they are
            assert assoc.send_c_store(path).Status == 0x0000
        assoc.release()
        stored = {sop_uid(p): server.archive.reader.instance(sop_uid(p)).content_hash
                  for p in files[:2]}
        result = import_tree(data_dir, src, flags=("--settle", "0"))
        assert "imported 1, duplicates 2, conflicts 0" in result.stdout, result.stdout
        for uid, address in stored.items():
            assert server.archive.reader.instance(uid).content_hash == address
        assert len(objects(data_dir)) == 3
    finally:
        server.stop()


def test_route_queues_forwards_only_when_asked(tmp_path):
    src = tmp_path / "legacy"
    generate_tree(src, studies=1, profile="tiny", series=1, instances_per_series=3, seed=61)
    config = tmp_path / "pacs.toml"
    config.write_text(
        '[routing]\n'
        f'destinations = {{ EXPORT = {{ type = "folder", path = "{tmp_path / "out"}" }} }}\n'
        '[[routing.rules]]\nname = "ct-out"\nwhen = { Modality = "CT" }\n'
        'forward = ["EXPORT"]\n')
    plain, routed = tmp_path / "plain", tmp_path / "routed"
    assert import_tree(plain, src, flags=("--config", str(config), "--settle", "0")
                       ).returncode == 0
    assert import_tree(routed, src, flags=("--config", str(config), "--settle", "0",
                                           "--route")).returncode == 0

    def pending(data_dir: Path) -> int:
        db = IndexDatabase(data_dir / "index", 1 << 30, readonly=True)
        try:
            return sum(s.pending for s in IndexReader(db).forward_summary().values())
        finally:
            db.close()

    assert pending(plain) == 0
    assert pending(routed) == 3
    assert not (tmp_path / "out").exists()  # queued for the server, not sent by the import


def test_keep_first_means_first_in_the_tree_whatever_the_workers(tmp_path):
    """Results are indexed in walk order: of two contents under one SOP Instance UID, the
    one met first in the (sorted) tree is current, even when another worker read the
    second one sooner."""
    src = tmp_path / "legacy"
    files = generate_tree(src / "b-middle", studies=2, profile="tiny", series=2,
                          instances_per_series=40, seed=71)  # 160 files: several tasks
    first = pydicom.dcmread(files[0])
    first.PatientName = "FIRST^IN^TREE"
    write_dataset(first, src / "a-first" / "x.dcm")
    second = pydicom.dcmread(files[0])
    second.PatientName = "LAST^IN^TREE"
    write_dataset(second, src / "c-last" / "x.dcm")
    data_dir = tmp_path / "data"
    result = import_tree(data_dir, src, flags=("--settle", "0"))
    assert "conflicts 2" in result.stdout, result.stdout  # b-middle's and c-last's copies
    db = IndexDatabase(data_dir / "index", 1 << 30, readonly=True)
    try:
        record = IndexReader(db).instance(first.SOPInstanceUID)
        ts, dataset = dataset_bytes(src / "a-first" / "x.dcm")
        hasher = content_hasher(ts)
        hasher.update(dataset)
        assert record.content_hash == hasher.hexdigest()
    finally:
        db.close()
