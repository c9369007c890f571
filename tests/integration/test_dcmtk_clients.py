"""DCMTK clients (echoscu, storescu, dcmdump) against a real server over loopback."""
from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from engine.dicom.uids import STORAGE_SOP_CLASSES
from tests.support import LOOPBACK, find_tool, require_tool, run_tool

pytestmark = pytest.mark.dcmtk

#: storescu option that makes it propose (and send unchanged) each transfer syntax.
PROPOSE_FLAG = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def dataset_bytes(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, dataset bytes after the file meta) of a Part 10 file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta_length = ds.file_meta.FileMetaInformationGroupLength
    return str(ds.file_meta.TransferSyntaxUID), path.read_bytes()[132 + 12 + meta_length:]


def dcmtk_readable_test_files() -> dict[str, list[Path]]:
    """pydicom's bundled test files that DCMTK itself reads, grouped by transfer syntax."""
    dcmdump = find_tool("dcmdump")
    groups: dict[str, list[Path]] = defaultdict(list)
    for name in get_testdata_files():
        path = Path(name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ts = str(ds.file_meta.TransferSyntaxUID)
            ds.file_meta.FileMetaInformationGroupLength
            sop_class = str(ds.SOPClassUID)
            ds.SOPInstanceUID
        except Exception:
            continue
        if not ds.get("StudyInstanceUID") or not ds.get("SeriesInstanceUID"):
            continue  # refused by design: see test_instance_without_study_uid_is_refused
        if ts not in PROPOSE_FLAG or sop_class not in STORAGE_SOP_CLASSES:
            continue
        if dcmdump and subprocess.run([dcmdump, "-q", str(path)],
                                      capture_output=True).returncode != 0:
            continue  # broken on purpose (truncated test files): DCMTK will not send it
        groups[ts].append(path)
    return groups


def test_echoscu_succeeds(server):
    proc = run_tool("echoscu", "-aec", "PACS", LOOPBACK, str(server.port))
    assert proc.returncode == 0


def stored_candidates(server, uid: str) -> list:
    """Index records (current and conflicts) stored under a SOP Instance UID."""
    reader = server.archive.reader
    records = [r for u, r in reader.iter_conflicts() if u == uid]
    if reader.instance(uid) is not None:
        records.append(reader.instance(uid))
    return records


def comparable(ds: pydicom.Dataset) -> dict:
    """Elements of a dataset minus what a re-encoding sender may legitimately change:
    group lengths and trailing padding."""
    return {tag: ds[tag].value for tag in ds.keys()
            if tag.element != 0x0000 and tag != 0xFFFCFFFC}


def send_groups(server, groups: dict[str, list[Path]], tmp_path: Path) -> set[Path]:
    """Send each transfer-syntax group with storescu; returns the files storescu
    itself refused to send (its own parser rejects a few of pydicom's odd files)."""
    refused = set()
    for ts, files in groups.items():
        folder = tmp_path / ts
        folder.mkdir()
        copies = {}
        for i, path in enumerate(files):
            copies[f"{i:03d}_{path.name}"] = path
            shutil.copy(path, folder / f"{i:03d}_{path.name}")
        proc = run_tool("storescu", "-R", "-nh", PROPOSE_FLAG[ts], "+sd", "-aec", "PACS",
                        LOOPBACK, str(server.port), str(folder))
        for line in (proc.stdout + proc.stderr).splitlines():
            if "ignoring file" in line:
                refused |= {orig for name, orig in copies.items() if name in line}
    return refused


def test_storescu_stores_every_pydicom_test_file_unchanged(server, tmp_path):
    require_tool("storescu")
    groups = dcmtk_readable_test_files()
    assert sum(len(files) for files in groups.values()) > 80
    refused_by_storescu = send_groups(server, groups, tmp_path)
    assert len(refused_by_storescu) < 5
    store = server.archive.store
    for ts, files in groups.items():
        for path in files:
            if path in refused_by_storescu:
                continue
            original = pydicom.dcmread(path)
            uid = str(original.SOPInstanceUID)
            stored = [pydicom.dcmread(store.path_of(r.content_hash))
                      for r in stored_candidates(server, uid) if r.transfer_syntax_uid == ts]
            assert stored, f"{path.name} ({ts}) was not stored"
            assert any(comparable(s) == comparable(original) for s in stored), \
                f"{path.name}: stored dataset differs from the original"


def test_dcmdump_reads_every_stored_file(server, tmp_path):
    send_groups(server, dcmtk_readable_test_files(), tmp_path)
    addresses = list(server.archive.store.iter_addresses())
    assert len(addresses) > 80
    for address in addresses:
        path = server.archive.store.path_of(address)
        proc = run_tool("dcmdump", "-q", "+E", str(path), check=False)
        assert proc.returncode == 0, f"dcmdump failed on {path}: {proc.stderr[-500:]}"


def test_concurrent_storescu_processes_all_land(server, tmp_path):
    from tools.generate_data import generate_tree

    paths = generate_tree(tmp_path / "src", studies=4, profile="ct", series=2,
                          instances_per_series=10, seed=7)
    assert len(paths) == 80
    folders = defaultdict(list)
    for path in paths:
        folders[path.parent.parent].append(path)

    def send(folder: Path) -> None:
        run_tool("storescu", "+sd", "+r", "-aec", "PACS", LOOPBACK, str(server.port), str(folder))

    with ThreadPoolExecutor(len(folders)) as pool:
        list(pool.map(send, folders))
    stats = server.archive.reader.stats()
    assert (stats.studies, stats.series, stats.instances) == (4, 8, 80)
    for path in paths:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert server.archive.reader.instance(uid) is not None


def test_instance_without_study_uid_is_refused(server):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEGLSNearLossless_08.dcm")
    assert "StudyInstanceUID" not in pydicom.dcmread(path, stop_before_pixels=True)
    proc = run_tool("storescu", "-v", "-R", "-xu", "-aec", "PACS", LOOPBACK, str(server.port), path,
                    check=False)
    assert "error: cannotunderstand" in (proc.stdout + proc.stderr).lower()  # 0xC211
    assert server.archive.reader.stats().instances == 0
