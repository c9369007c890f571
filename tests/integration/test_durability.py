"""Nothing acknowledged is ever lost: kill -9, SIGTERM, and very large instances."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from engine.index.database import IndexDatabase
from engine.index.reader import IndexReader
from tests.rawclient import RawAssociation
from tests.support import LOOPBACK, ServerProcess, free_port
from tools.generate_data import generate_study

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def sender(port: int, datasets, acknowledged: list, stop: threading.Event) -> None:
    """Send datasets on one association until told to stop or the server dies."""
    ae = AE(ae_title="CRASHSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
    try:
        assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
        if not assoc.is_established:
            return
        for ds in datasets:
            if stop.is_set():
                break
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) == 0x0000:
                acknowledged.append(ds.SOPInstanceUID)
            elif not assoc.is_established:
                break
        if assoc.is_established:
            assoc.release()
    except Exception:
        pass  # the server was killed under us: exactly the point


def run_verify(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "verify", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300)


def indexed_uids(data_dir: Path) -> set[str]:
    db = IndexDatabase(data_dir / "index", 1 << 30, readonly=True)
    try:
        return {uid for uid, _ in IndexReader(db).iter_instances()}
    finally:
        db.close()


def ct_series(seed: int, count: int):
    return generate_study(seed, profile="tiny", series=1, instances_per_series=count)


@pytest.mark.slow
def test_kill_9_during_ingest_loses_nothing_acknowledged(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    server = ServerProcess(data_dir, port)
    acknowledged: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=sender, args=(port, ct_series(seed, 400), acknowledged,
                                                     stop)) for seed in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL while four associations are mid-stream
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(acknowledged) >= 150

    restarted = ServerProcess(data_dir, port)  # start-up cleans tmp/
    try:
        assert list((data_dir / "tmp").iterdir()) == []
        missing = set(acknowledged) - indexed_uids(data_dir)
        assert not missing, f"{len(missing)} acknowledged instances lost"
        report = run_verify(data_dir)
        assert "MISSING" not in report.stdout and "MISMATCH" not in report.stdout, report.stdout
    finally:
        restarted.terminate()


@pytest.mark.slow
def test_sigterm_finishes_in_flight_stores_and_exits_cleanly(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    server = ServerProcess(data_dir, port)
    acknowledged: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=sender, args=(port, ct_series(10 + seed, 300),
                                                     acknowledged, stop)) for seed in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.terminate() == 0
    stop.set()
    for thread in threads:
        thread.join(30)
    assert set(acknowledged) <= indexed_uids(data_dir)
    report = run_verify(data_dir)
    assert report.returncode == 0, report.stdout  # a clean stop leaves no orphans either


def large_dataset_chunks(header: bytes, pixel_bytes: int, chunk: int = 4 << 20):
    yield header + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    block = bytes(range(256)) * (chunk // 256)
    sent = 0
    while sent < pixel_bytes:
        n = min(chunk, pixel_bytes - sent)
        yield block[:n]
        sent += n


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_one_gib_instance_does_not_grow_server_memory(tmp_path):
    ds = generate_study(3, profile="tiny", series=1, instances_per_series=2)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    port = free_port()
    server = ServerProcess(tmp_path / "data", port)
    try:
        raw = RawAssociation(port, timeout=300)
        assert raw.associate([(CT, [EXPLICIT_LE])])[0] == 0x02
        small = ds[0]
        del small.PixelData
        write_dataset(buf, small)
        # Warm up with a small instance, then note the peak RSS.
        status = raw.c_store_stream(1, CT, small.SOPInstanceUID,
                                    large_dataset_chunks(buf.getvalue(), 1 << 20))
        assert status == 0x0000
        baseline = peak_rss_kib(server.proc.pid)
        big = ds[1]
        del big.PixelData
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, big)
        size = (1 << 30) + (64 << 20)
        status = raw.c_store_stream(1, CT, big.SOPInstanceUID,
                                    large_dataset_chunks(buf.getvalue(), size))
        assert status == 0x0000
        growth_mib = (peak_rss_kib(server.proc.pid) - baseline) / 1024
        print(f"peak RSS {baseline / 1024:.0f} MiB before, growth {growth_mib:.1f} MiB")
        raw.release()
        assert growth_mib < 48, f"peak RSS grew by {growth_mib:.0f} MiB for a 1.06 GiB instance"
        stored = [p for p in (tmp_path / "data" / "objects").rglob("*") if p.is_file()]
        assert max(p.stat().st_size for p in stored) > size
    finally:
        server.terminate()
