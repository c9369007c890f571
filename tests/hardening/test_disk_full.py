"""Battery item 6: a full disk, and a full index map.

The archive lives on a 32 MiB tmpfs (mounted by the test: root only) with a filler file
on it. Instances of 1 MiB are stored until stores fail, then a few more: every success
must be durable and verifiable (in the index, its file re-hashing to its address), every
failure an out-of-resources status (0xA7xx), no partial file left in tmp/ and no orphan,
C-ECHO and C-FIND keep working while the disk is full, and once the filler is deleted
stores succeed again without a restart. The same with a small LMDB map
(`storage.index_map_size`) on an ordinary disk.

Skipped, with the reason, when not root or when mounting is not permitted; under CI=true
not being root is a failure (the CI runs as root to exercise this), while a container
that forbids mounts skips with its reason.
"""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from engine.index.database import IndexDatabase
from engine.index.reader import IndexReader
from engine.ingest.integrity import verify_archive
from engine.store.blob_store import FilesystemBlobStore
from tests.support import ServerThread, make_config
from tests.hardening.harness import (
    CT, CT_CX, ECHO_CX, FIND_CX, FIND_STUDY, PacsProcess, ct_dataset, encode,
    open_association, report)

UID_ROOT = "1.2.826.0.1.3680043.2.1125.86."


def not_permitted(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def mount_tmpfs():
    """mount(path, size): a size-limited tmpfs at `path`; all unmounted at teardown."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        if os.geteuid() != 0:
            not_permitted("the disk-full tests mount a small tmpfs: needs root")
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                               str(path)], capture_output=True, text=True)
        if done.returncode != 0:  # a container without CAP_SYS_ADMIN: a fact of the
            # machine, not a missing install, so a skip with the reason even under CI
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_volume(tmp_path, mount_tmpfs):
    """A 32 MiB tmpfs."""
    return mount_tmpfs(tmp_path / "volume", "32m")


def instance(n: int, size: int = 1 << 20) -> Dataset:
    ds = ct_dataset(UID_ROOT + str(n))
    ds.Rows, ds.Columns = size // 1024, 512
    ds.PixelData = (n.to_bytes(4, "little") * (size // 4))[:size]
    return ds


def find_count(raw) -> tuple[int, int]:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    raw.send_message(FIND_CX, {0x0002: FIND_STUDY, 0x0100: 0x0020, 0x0110: 999, 0x0700: 0,
                               0x0800: 0}, encode(q, explicit=False))
    matches = 0
    for _ in range(1000):
        response = raw.read_response()
        status = struct.unpack("<H", response[0x0900])[0]
        if status in (0xFF00, 0xFF01):
            raw.read_response_dataset()
            matches += 1
            continue
        return status, matches
    raise AssertionError("no final C-FIND response")


def verify(data_dir: Path, archive=None):
    """(indexed UIDs, verify report); through `archive` for an in-process server (LMDB
    opens an environment once per process)."""
    if archive is not None:
        return ({uid for uid, _ in archive.reader.iter_instances()},
                verify_archive(archive.store, archive.reader))
    db = IndexDatabase(data_dir / "index", 1 << 30, readonly=True)
    try:
        reader = IndexReader(db)
        uids = {uid for uid, _ in reader.iter_instances()}
        return uids, verify_archive(FilesystemBlobStore(data_dir), reader)
    finally:
        db.close()


def fill(raw, start: int, limit: int, after_failure: int = 3) -> tuple[list, list]:
    """Store until `after_failure` failures in a row (or `limit` stores)."""
    stored, statuses = [], []
    failures = 0
    for n in range(start, start + limit):
        status = raw.c_store(CT_CX, CT, UID_ROOT + str(n), encode(instance(n)))
        statuses.append(status)
        if status == 0:
            stored.append(UID_ROOT + str(n))
            failures = 0
        else:
            failures += 1
            if failures >= after_failure:
                break
    return stored, statuses


def check_full_archive(alive, data_dir: Path, stored: list, statuses: list, raw,
                       archive=None) -> dict:
    failures = [s for s in statuses if s != 0]
    uids, result = verify(data_dir, archive)
    echo = raw.c_echo(ECHO_CX)
    find_status, matches = find_count(raw)
    figures = {
        "stores": len(statuses), "successes": len(stored), "failures": len(failures),
        "failure_statuses": sorted({hex(s) for s in failures}),
        "false_successes": len(set(stored) - uids) + len(result.mismatched) + len(result.missing),
        "orphans": len(result.orphans),
        "partial_files_in_tmp": len(list((data_dir / "tmp").iterdir())),
        "echo_while_full": hex(echo), "find_while_full": f"{find_status:#06x}/{matches}"}
    assert failures, "the volume never filled up"
    assert all(0xA700 <= s <= 0xA7FF for s in failures), figures
    assert figures["false_successes"] == 0, figures
    assert figures["orphans"] == 0 and figures["partial_files_in_tmp"] == 0, figures
    assert echo == 0 and find_status == 0 and matches >= 1, figures
    assert alive()
    return figures


def test_full_disk_fails_with_a7xx_and_recovers_without_restart(small_volume):
    filler = small_volume / "filler"
    filler.write_bytes(b"\x00" * (8 << 20))
    data_dir = small_volume / "data"
    server = PacsProcess(data_dir, {"network": {"idle_timeout": 60.0, "dimse_timeout": 60.0},
                                    "storage": {"min_free_bytes": 0}},
                         log_path=small_volume.parent / "server.log").start()
    try:
        raw = open_association(server.port, timeout=30)
        stored, statuses = fill(raw, 0, 60)
        figures = check_full_archive(server.alive, data_dir, stored, statuses, raw)
        filler.unlink()  # space returns
        resumed, after = fill(raw, 1000, 4, after_failure=1)
        uids, result = verify(data_dir)
        raw.release()
        raw.close()
        report("item6 disk full (32 MiB tmpfs)", **figures,
               after_space_returned=[hex(s) for s in after],
               verify_after=f"{len(result.missing)} missing, {len(result.mismatched)} "
                            f"mismatched, {len(result.orphans)} orphans")
        assert after == [0, 0, 0, 0], after
        assert set(stored + resumed) <= uids and result.ok
        assert [line for line in server.crash_lines() if "audit" not in line] == []
    finally:
        server.stop()


def test_full_index_volume_fails_with_a7xx_and_recovers(tmp_path, mount_tmpfs):
    """The index alone on a small volume (objects/ and tmp/ have room): the LMDB commit is
    what fails (ENOSPC while writing its pages); the received file is dropped again."""
    data_dir = tmp_path / "data"
    volume = mount_tmpfs(data_dir / "index", "2m")
    filler = volume / "filler"
    server = PacsProcess(data_dir, {"network": {"idle_timeout": 60.0, "dimse_timeout": 60.0},
                                    "storage": {"min_free_bytes": 0}}).start()
    try:
        free = os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize
        filler.write_bytes(b"\x00" * max(0, free - (384 << 10)))  # leave ~384 KiB
        raw = open_association(server.port, timeout=30)
        stored, statuses = [], []
        failures = 0
        for n in range(2000):  # one study each: several index records per instance
            uid = UID_ROOT + f"3.{n}"
            ds = ct_dataset(uid, StudyInstanceUID=UID_ROOT + f"4.{n}",
                            SeriesInstanceUID=UID_ROOT + f"5.{n}", PatientID=f"P{n}")
            del ds.PixelData
            status = raw.c_store(CT_CX, CT, uid, encode(ds))
            statuses.append(status)
            if status == 0:
                stored.append(uid)
            else:
                failures += 1
                if failures >= 3:
                    break
        figures = check_full_archive(server.alive, data_dir, stored, statuses, raw)
        filler.unlink()
        ds = ct_dataset(UID_ROOT + "6.1")
        after = raw.c_store(CT_CX, CT, ds.SOPInstanceUID, encode(ds))
        raw.release()
        raw.close()
        uids, result = verify(data_dir)
        report("item6 index volume full (2 MiB tmpfs)", **figures,
               after_space_returned=hex(after), verify_after=result.ok)
        assert after == 0 and ds.SOPInstanceUID in uids and result.ok
        assert server.alive()
    finally:
        server.stop()


def test_full_index_map_fails_with_a7xx_and_keeps_serving(tmp_path, caplog):
    """A small LMDB map (in-process server: the config file refuses maps under 1 MiB)."""
    data_dir = tmp_path / "data"
    server = ServerThread(make_config(data_dir, idle_timeout=60.0, dimse_timeout=60.0,
                                      storage={"index_map_size": 48 * 4096})).start()
    try:
        raw = open_association(server.port, timeout=30)
        stored, statuses = [], []
        failures = 0
        for n in range(400):  # small instances: the index fills long before the disk
            ds = ct_dataset(UID_ROOT + f"7.{n}")
            status = raw.c_store(CT_CX, CT, ds.SOPInstanceUID, encode(ds))
            statuses.append(status)
            if status == 0:
                stored.append(ds.SOPInstanceUID)
            else:
                failures += 1
                if failures >= 3:
                    break
        figures = check_full_archive(lambda: True, data_dir, stored, statuses, raw,
                                     server.archive)
        raw.release()
        raw.close()
        report("item6 index map full (48 pages)", **figures)
    finally:
        server.stop()
    assert not [r for r in caplog.records if r.exc_info and "audit" not in r.getMessage()]
