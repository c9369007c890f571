"""C-MOVE and C-GET SCP with DCMTK (movescu, getscu, storescp) and pynetdicom as peers.

Every test compares what the peer received with what was stored: SOP Instance
UIDs per level, and the dataset bytes themselves.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet as PATIENT_GET,
    PatientRootQueryRetrieveInformationModelMove as PATIENT_MOVE,
    StudyRootQueryRetrieveInformationModelGet as STUDY_GET,
    StudyRootQueryRetrieveInformationModelMove as STUDY_MOVE, Verification)

from tests.support import LOOPBACK, ServerThread, free_port, make_config, run_tool
from tools.generate_data import generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

STUDIES = [
    (11, "tiny", 2, 3, dict(PatientID="RPAT1", StudyDate="20240105")),
    (12, "mr", 1, 2, dict(PatientID="RPAT1", StudyDate="20240212")),
    (13, "tiny", 1, 2, dict(PatientID="RPAT2", StudyDate="20240131")),
]


class StorageSCP:
    """A pynetdicom storage SCP on loopback that records what it receives."""

    def __init__(self, ae_title: str = "DEST", transfer_syntaxes=None, delay: float = 0.0,
                 status: int = 0x0000, port: int | None = None) -> None:
        self.port = port or free_port()
        #: Associations accepted, and released by the peer, so far.
        self.associations = 0
        self.releases = 0
        self.ae_title = ae_title
        self.received: dict[str, Dataset] = {}
        self.transfer_syntaxes: dict[str, str] = {}
        self.originators: set[tuple[str, int]] = set()
        self.delay = delay
        self.status = status
        ae = AE(ae_title=ae_title)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, transfer_syntaxes or
                                     [EXPLICIT_LE, IMPLICIT_LE, *cx.transfer_syntax])
        ae.maximum_pdu_size = 16384
        self._ae = ae
        self._server = ae.start_server((LOOPBACK, self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_released)])

    def _on_accepted(self, event):
        self.associations += 1

    def _on_released(self, event):
        self.releases += 1

    def _on_store(self, event):
        if self.delay:
            time.sleep(self.delay)
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received[ds.SOPInstanceUID] = ds
        self.transfer_syntaxes[ds.SOPInstanceUID] = str(event.context.transfer_syntax)
        self.originators.add((event.request.MoveOriginatorApplicationEntityTitle,
                              event.request.MoveOriginatorMessageID))
        return self.status

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture
def studies():
    return [generate_study(seed, profile=profile, series=series, instances_per_series=n, **kw)
            for seed, profile, series, n, kw in STUDIES]


def fill(port: int, datasets) -> None:
    ae = AE(ae_title="FILLSCU")
    for ds in {d.SOPClassUID: d for d in datasets}.values():
        ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)]
                                 if "TransferSyntaxUID" in ds.file_meta else EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


@pytest.fixture
def dest():
    scp = StorageSCP()
    yield scp
    scp.stop()


@pytest.fixture
def storescp_port():
    """Port a DCMTK storescp may listen on (configured as destination STORESCP)."""
    return free_port()


@pytest.fixture
def archive(tmp_path, dest, studies, storescp_port):
    config = make_config(tmp_path / "data", retrieve={"destinations": {
        "DEST": f"{LOOPBACK}:{dest.port}", "DOWN": f"{LOOPBACK}:{free_port()}",
        "STORESCP": f"{LOOPBACK}:{storescp_port}"}})
    running = ServerThread(config).start()
    fill(running.port, [ds for study in studies for ds in study])
    yield running
    running.stop()


def move(port: int, model, identifier: Dataset, destination: str = "DEST",
         cancel_after: int | None = None):
    """One C-MOVE with pynetdicom; returns (pending responses, final response, final dataset)."""
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(model)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    assert assoc.is_established
    pending, final, final_ds = [], None, None
    for status, ds in assoc.send_c_move(identifier, destination, model, msg_id=7):
        if status.Status == 0xFF00:
            pending.append(status)
            if cancel_after is not None and len(pending) == cancel_after:
                context_id = assoc._get_valid_context(model, "", "scu").context_id
                assoc.send_c_cancel(7, context_id)
        else:
            final, final_ds = status, ds
    # The association is still fine.  (Not checked with a C-ECHO: under CPU load
    # pynetdicom's reactor thread can swallow the response of a request sent right
    # after a C-MOVE ends, logging "Received unexpected C-ECHO service message".)
    assert assoc.is_established
    assoc.release()
    return pending, final, final_ds


def level(name: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = name
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def uids(datasets) -> set[str]:
    return {ds.SOPInstanceUID for ds in datasets}


def same_dataset(received: Dataset, original: Dataset) -> None:
    assert received.SOPInstanceUID == original.SOPInstanceUID
    for element in original:
        if element.tag.group == 0x0002:
            continue
        assert received[element.tag].value == element.value, element.keyword


# --- C-MOVE --------------------------------------------------------------------
def test_move_study_level_to_pynetdicom_scp(archive, dest, studies):
    study = studies[0]
    pending, final, _ = move(archive.port, STUDY_MOVE,
                             level("STUDY", StudyInstanceUID=study[0].StudyInstanceUID))
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(study)
    assert final.NumberOfFailedSuboperations == 0
    assert "NumberOfRemainingSuboperations" not in final
    assert [p.NumberOfRemainingSuboperations for p in pending] == \
        list(range(len(study) - 1, 0, -1))
    assert set(dest.received) == uids(study)
    for original in study:
        same_dataset(dest.received[original.SOPInstanceUID], original)
    assert dest.originators == {("MOVESCU", 7)}


def test_move_every_level_both_roots(archive, dest, studies):
    patient1 = studies[0] + studies[1]
    cases = [
        (PATIENT_MOVE, level("PATIENT", PatientID="RPAT1"), uids(patient1)),
        (PATIENT_MOVE, level("STUDY", PatientID="RPAT2",
                             StudyInstanceUID=studies[2][0].StudyInstanceUID), uids(studies[2])),
        (PATIENT_MOVE, level("STUDY", PatientID="RPAT1",  # study of another patient: nothing
                             StudyInstanceUID=studies[2][0].StudyInstanceUID), set()),
        (STUDY_MOVE, level("STUDY", StudyInstanceUID=[studies[1][0].StudyInstanceUID,
                                                      studies[2][0].StudyInstanceUID]),
         uids(studies[1] + studies[2])),
        (STUDY_MOVE, level("SERIES", StudyInstanceUID=studies[0][0].StudyInstanceUID,
                           SeriesInstanceUID=studies[0][0].SeriesInstanceUID),
         {d.SOPInstanceUID for d in studies[0]
          if d.SeriesInstanceUID == studies[0][0].SeriesInstanceUID}),
        (STUDY_MOVE, level("IMAGE", StudyInstanceUID=studies[0][0].StudyInstanceUID,
                           SeriesInstanceUID=studies[0][0].SeriesInstanceUID,
                           SOPInstanceUID=[studies[0][0].SOPInstanceUID,
                                           studies[0][1].SOPInstanceUID, "1.2.3.4.404"]),
         {studies[0][0].SOPInstanceUID, studies[0][1].SOPInstanceUID}),
    ]
    for model, identifier, expected in cases:
        dest.received.clear()
        _, final, _ = move(archive.port, model, identifier)
        assert final.Status == 0x0000, identifier
        assert final.NumberOfCompletedSuboperations == len(expected)
        assert set(dest.received) == expected, identifier


def test_move_unknown_destination_is_a801(archive, dest, studies):
    _, final, _ = move(archive.port, STUDY_MOVE,
                       level("STUDY", StudyInstanceUID=studies[0][0].StudyInstanceUID),
                       destination="NOBODY")
    assert final.Status == 0xA801
    assert not dest.received


def test_move_destination_down_fails_every_sub_operation(archive, studies):
    study = studies[2]
    _, final, ds = move(archive.port, STUDY_MOVE,
                        level("STUDY", StudyInstanceUID=study[0].StudyInstanceUID),
                        destination="DOWN")
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == len(study)
    assert set(ds.FailedSOPInstanceUIDList) == uids(study)


@pytest.mark.parametrize("identifier, status", [
    (level("STUDY"), 0xC000),                                   # no StudyInstanceUID
    (level("SERIES", SeriesInstanceUID="1.2.3"), 0xC000),       # no StudyInstanceUID above
    (level("STUDY", StudyInstanceUID="1.2.*"), 0xC000),         # wildcard in a retrieve
    (level("PATIENT", PatientID="RPAT1"), 0xA900),              # no patient level in Study Root
    (level("WARD", StudyInstanceUID="1.2.3"), 0xA900),
])
def test_move_bad_identifier(archive, dest, identifier, status):
    _, final, _ = move(archive.port, STUDY_MOVE, identifier)
    assert final.Status == status
    assert not dest.received


def test_move_destination_failures_give_warning_and_failed_list(tmp_path, studies):
    refusing = StorageSCP("REFUSE", status=0xA700)
    config = make_config(tmp_path / "data", retrieve={"destinations": {
        "REFUSE": f"{LOOPBACK}:{refusing.port}"}})
    running = ServerThread(config).start()
    try:
        fill(running.port, studies[2])
        _, final, ds = move(running.port, STUDY_MOVE,
                            level("STUDY", StudyInstanceUID=studies[2][0].StudyInstanceUID),
                            destination="REFUSE")
        assert final.Status == 0xA702  # every sub-operation failed
        assert set(ds.FailedSOPInstanceUIDList) == uids(studies[2])
    finally:
        running.stop()
        refusing.stop()


def test_move_cancel_stops_between_sub_operations(tmp_path):
    slow = StorageSCP("SLOW", delay=0.2)
    study = generate_study(21, profile="tiny", series=1, instances_per_series=12)
    config = make_config(tmp_path / "data", retrieve={"destinations": {
        "SLOW": f"{LOOPBACK}:{slow.port}"}})
    running = ServerThread(config).start()
    try:
        fill(running.port, study)
        pending, final, _ = move(running.port, STUDY_MOVE,
                                 level("STUDY", StudyInstanceUID=study[0].StudyInstanceUID),
                                 destination="SLOW", cancel_after=2)
        assert final.Status == 0xFE00
        done = final.NumberOfCompletedSuboperations
        assert 2 <= done < len(study)
        assert final.NumberOfRemainingSuboperations == len(study) - done
        assert len(slow.received) == done
    finally:
        running.stop()
        slow.stop()


def test_movescu_to_dcmtk_storescp(tmp_path, archive, studies, storescp_port):
    """DCMTK both ends: movescu asks us, we send to storescp (max PDU 16 KiB)."""
    out = tmp_path / "storescp"
    out.mkdir()
    storescp = run_tool_background("storescp", "--aetitle", "STORESCP", "--output-directory",
                                   str(out), "--max-pdu", "16384", str(storescp_port))
    try:
        study = studies[1]
        proc = run_tool("movescu", "-S", "-aet", "MOVESCU", "-aec", "PACS", "-aem", "STORESCP",
                        "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}",
                        LOOPBACK, str(archive.port))
        assert "Completed Suboperations" in proc.stdout + proc.stderr or proc.returncode == 0
        received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p)
                    for p in _wait_for_files(out, len(study))}
        assert set(received) == uids(study)
        for original in study:
            same_dataset(received[original.SOPInstanceUID], original)
    finally:
        storescp.terminate()
        storescp.wait(10)


# --- C-GET -----------------------------------------------------------------------
def get(port: int, model, identifier: Dataset, sop_classes, transfer_syntaxes=None):
    """C-GET with pynetdicom (role selection: we are storage SCP); (final, received)."""
    received: dict[str, Dataset] = {}

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[ds.SOPInstanceUID] = ds
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(model)
    roles = []
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, transfer_syntaxes or [EXPLICIT_LE, IMPLICIT_LE])
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    final = None
    for status, _ in assoc.send_c_get(identifier, model):
        if status.Status != 0xFF00:
            final = status
    assoc.release()
    return final, received


def test_get_study_with_role_selection(archive, studies):
    study = studies[0]
    final, received = get(archive.port, STUDY_GET,
                          level("STUDY", StudyInstanceUID=study[0].StudyInstanceUID),
                          {d.SOPClassUID for d in study})
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(study)
    assert set(received) == uids(study)
    for original in study:
        same_dataset(received[original.SOPInstanceUID], original)


def test_get_patient_root_patient_level(archive, studies):
    patient1 = studies[0] + studies[1]
    final, received = get(archive.port, PATIENT_GET, level("PATIENT", PatientID="RPAT1"),
                          {d.SOPClassUID for d in patient1})
    assert final.Status == 0x0000
    assert set(received) == uids(patient1)


def test_get_without_storage_context_fails_sub_operations(archive, studies):
    study = studies[2]
    final, received = get(archive.port, STUDY_GET,
                          level("STUDY", StudyInstanceUID=study[0].StudyInstanceUID),
                          ["1.2.840.10008.5.1.4.1.1.4"])  # MR only; the study is not MR
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == len(study)
    assert not received


def test_getscu_dcmtk(tmp_path, archive, studies):
    out = tmp_path / "getscu"
    out.mkdir()
    study = studies[0]
    run_tool("getscu", "-S", "-aet", "GETSCU", "-aec", "PACS", "-od", str(out),
             "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}",
             LOOPBACK, str(archive.port))
    files = list(out.iterdir())
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in files}
    assert set(received) == uids(study)
    for original in study:
        same_dataset(received[original.SOPInstanceUID], original)


# --- helpers -------------------------------------------------------------------------
def run_tool_background(*args: str):
    import subprocess

    from tests.support import DCMTK_ENV, require_tool
    proc = subprocess.Popen([require_tool(args[0]), *args[1:]], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = int(args[-1])
    deadline = time.monotonic() + 20
    import socket
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start listening")


def _wait_for_files(directory: Path, count: int, timeout: float = 20) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [p for p in directory.iterdir() if p.is_file()]
        if len(files) >= count:
            return files
        time.sleep(0.05)
    return [p for p in directory.iterdir() if p.is_file()]


# --- transcoding for peers that do not accept the stored syntax ---------------------
def _compressed_originals(tmp_path: Path) -> list[Dataset]:
    """MR in JPEG 2000 lossless (pydicom's test file) and in JPEG lossless SV1 (dcmcjpeg)."""
    from pydicom.data import get_testdata_file
    j2k = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    jpeg_ll = tmp_path / "mr_jpeg_ll.dcm"
    run_tool("dcmcjpeg", "+e1", "+ua", get_testdata_file("MR_small.dcm"), str(jpeg_ll))
    return [j2k, pydicom.dcmread(jpeg_ll)]


def test_move_transcodes_for_a_peer_that_accepts_only_explicit_le(tmp_path):
    originals = _compressed_originals(tmp_path)
    assert {str(o.file_meta.TransferSyntaxUID) for o in originals} == {
        "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70"}
    plain = StorageSCP("PLAIN", transfer_syntaxes=[EXPLICIT_LE])
    config = make_config(tmp_path / "data", retrieve={"destinations": {
        "PLAIN": f"{LOOPBACK}:{plain.port}"}})
    running = ServerThread(config).start()
    try:
        for original in originals:
            fill(running.port, [original])
            plain.received.clear()
            _, final, _ = move(running.port, STUDY_MOVE, level(
                "IMAGE", StudyInstanceUID=original.StudyInstanceUID,
                SeriesInstanceUID=original.SeriesInstanceUID,
                SOPInstanceUID=original.SOPInstanceUID), destination="PLAIN")
            assert final.Status == 0x0000
            received = plain.received[original.SOPInstanceUID]
            assert plain.transfer_syntaxes[original.SOPInstanceUID] == EXPLICIT_LE
            assert (received.pixel_array == original.pixel_array).all()
            assert received.PatientName == original.PatientName
    finally:
        running.stop()
        plain.stop()


def test_move_sends_compressed_bytes_unchanged_when_accepted(tmp_path):
    from pydicom.data import get_testdata_file
    original = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    scp = StorageSCP("ANY", transfer_syntaxes=[str(original.file_meta.TransferSyntaxUID),
                                               EXPLICIT_LE])
    config = make_config(tmp_path / "data", retrieve={"destinations": {
        "ANY": f"{LOOPBACK}:{scp.port}"}})
    running = ServerThread(config).start()
    try:
        fill(running.port, [original])
        _, final, _ = move(running.port, STUDY_MOVE,
                           level("STUDY", StudyInstanceUID=original.StudyInstanceUID), "ANY")
        assert final.Status == 0x0000
        assert scp.transfer_syntaxes[original.SOPInstanceUID] == "1.2.840.10008.1.2.4.90"
        assert scp.received[original.SOPInstanceUID].PixelData == original.PixelData
    finally:
        running.stop()
        scp.stop()


@pytest.mark.slow
def test_large_instance_streams_from_disk(tmp_path, storescp_port):
    """A 74 MB multi-frame instance goes to storescp (16 KiB PDUs) without the server
    holding it in memory: the test process (which runs the server) never loads it."""
    import psutil

    from tests.support import run_python
    source = tmp_path / "large.dcm"
    run_python("from tools.generate_data import generate_study\n"
               "ds = generate_study(3, profile='us', series=1, instances_per_series=1, "
               f"frames=80)[0]\nds.save_as({str(source)!r}, enforce_file_format=True)\n"
               "print(ds.SOPInstanceUID, ds.StudyInstanceUID)")
    size = source.stat().st_size
    assert size > 70_000_000
    config = make_config(tmp_path / "data", retrieve={"destinations": {
        "STORESCP": f"{LOOPBACK}:{storescp_port}"}})
    running = ServerThread(config).start()
    out = tmp_path / "received"
    out.mkdir()
    storescp = run_tool_background("storescp", "--aetitle", "STORESCP", "--output-directory",
                                   str(out), "--max-pdu", "16384", str(storescp_port))
    try:
        run_tool("storescu", "-aec", "PACS", LOOPBACK, str(running.port), str(source))
        record = next(iter(running.archive.reader.iter_instances()))[1]
        process = psutil.Process()
        baseline = process.memory_info().rss
        peak = baseline
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, final, _ = move(running.port, STUDY_MOVE,
                               level("STUDY", StudyInstanceUID=record.study_instance_uid),
                               "STORESCP")
        finally:
            done.set()
            sampler.join()
        assert final.Status == 0x0000
        (received,) = _wait_for_files(out, 1)
        stored = running.archive.store.path_of(record.content_hash).read_bytes()
        assert received.read_bytes()[-1_000_000:] == stored[-1_000_000:]
        assert received.stat().st_size >= size - 1024
        assert peak - baseline < 24 << 20, f"server grew by {(peak - baseline) >> 20} MiB"
    finally:
        storescp.terminate()
        storescp.wait(10)
        running.stop()


def test_corrupt_stored_stream_fails_its_sub_operation_only(tmp_path, studies):
    """A J2K codestream with a zeroed tail (which can hang openjpeg) costs one
    sub-operation, bounded by the codec task timeout; the rest of the move goes on."""
    from pydicom.data import get_testdata_file
    original = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    plain = StorageSCP("PLAIN", transfer_syntaxes=[EXPLICIT_LE])
    config = make_config(tmp_path / "data", codec={"workers": 1, "task_timeout": 5.0},
                         retrieve={"destinations": {"PLAIN": f"{LOOPBACK}:{plain.port}"}})
    running = ServerThread(config).start()
    try:
        fill(running.port, [original])
        record = running.archive.reader.instance(original.SOPInstanceUID)
        path = running.archive.store.path_of(record.content_hash)
        data = bytearray(path.read_bytes())
        data[-2000:] = bytes(2000)
        path.chmod(0o640)
        path.write_bytes(bytes(data))
        fill(running.port, studies[2])  # the same patient's other study, stored plainly
        _, final, ds = move(running.port, STUDY_MOVE, level(
            "STUDY", StudyInstanceUID=[original.StudyInstanceUID,
                                       studies[2][0].StudyInstanceUID]), destination="PLAIN")
        assert final.Status == 0xB000
        assert final.NumberOfCompletedSuboperations == len(studies[2])
        assert list(ds.FailedSOPInstanceUIDList) == [original.SOPInstanceUID] or \
            ds.FailedSOPInstanceUIDList == original.SOPInstanceUID
        assert set(plain.received) == uids(studies[2])
    finally:
        running.stop()
        plain.stop()
