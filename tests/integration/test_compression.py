"""The compression stage on a real archive: round trips, retrieval, policy, faults.

Every test ends by checking that each instance is readable and bit-exact in
its pixels whatever happened: compressed and swapped, or left as it was.
"""
from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE

from engine.codec.workers import CodecWorkers
from engine.compression.policy import JPEG_2000_LOSSLESS, CompressionPolicy
from engine.compression.stage import CompressionStage
from engine.config import CompressionConfig
from engine.ingest.integrity import verify_archive
from tests.integration import compression_faults
from tests.support import LOOPBACK, ServerThread, make_config, run_tool
from tools.generate_data import generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"

#: pydicom's bundled files of different pixel layouts (all uncompressed).
LAYOUTS = [
    "CT_small.dcm",              # 16-bit signed, MONOCHROME2
    "MR_small.dcm",              # 16-bit, bits stored 16
    "MR_small_implicit.dcm",     # implicit VR little endian
    "MR_small_bigendian.dcm",    # explicit VR big endian
    "rtdose.dcm",                # 32-bit multi-frame
    "SC_rgb.dcm",                # 8-bit RGB
    "SC_rgb_16bit.dcm",          # 16-bit RGB
    "SC_rgb_small_odd.dcm",      # odd rows/columns
    "examples_ybr_color.dcm",    # YBR_FULL native
    "liver_1frame.dcm",
]


def _available(names):
    """The bundled files that are present, each under a SOP Instance UID of its own
    (several share one: stored together they would be duplicates)."""
    found = []
    for name in names:
        path = get_testdata_file(name)
        if path is not None:
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            found.append(ds)
    return found


def store(port: int, datasets) -> None:
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status in (0x0000, 0xB000)
    assoc.release()


def stage_for(server, job=None, workers=None, **policy) -> CompressionStage:
    archive = server.archive
    settings = {"min_size": 0, **policy}
    stage = CompressionStage(archive.store, archive.reader, archive.writer,
                             CompressionPolicy(CompressionConfig(**settings)),
                             workers or CodecWorkers(2, timeout=60))
    if job is not None:
        stage.job = job
    return stage


def stored_dataset(server, uid: str) -> pydicom.Dataset:
    record = server.archive.reader.instance(uid)
    return pydicom.dcmread(server.archive.store.path_of(record.content_hash))


def assert_intact(server, originals) -> None:
    """Every original is current, readable, and decodes to the original pixels."""
    for original in originals:
        ds = stored_dataset(server, original.SOPInstanceUID)
        if "PixelData" in original:
            assert np.array_equal(ds.pixel_array, original.pixel_array), original.SOPInstanceUID
    report = verify_archive(server.archive.store, server.archive.reader)
    assert not report.missing and not report.mismatched


@pytest.fixture
def server(tmp_path):
    running = ServerThread(make_config(tmp_path / "data")).start()
    yield running
    running.stop()


def test_round_trip_of_every_pixel_layout(server, tmp_path):
    originals = _available(LAYOUTS) + generate_study(51, profile="mr", series=1,
                                                     instances_per_series=2)
    assert len(originals) >= 8
    store(server.port, originals)
    workers = CodecWorkers(2, timeout=60)
    try:
        report = stage_for(server, workers=workers).run_now()
    finally:
        workers.close()
    # What JPEG 2000 cannot hold (32-bit, 1-bit, images under 32x32 for openjpeg) is
    # refused by the encoder and left as it was; nothing else may fail.
    for uid, reason in report.failures:
        assert "cannot encode pixel data" in reason, reason
    assert report.compressed >= len(originals) - 4
    for original in originals:
        record = server.archive.reader.instance(original.SOPInstanceUID)
        if record.transfer_syntax_uid != JPEG_2000_LOSSLESS:
            continue
        ds = stored_dataset(server, original.SOPInstanceUID)
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        # An independent decoder (GDCM) agrees.
        assert np.array_equal(ds.pixel_array, _decode_with_gdcm(ds))
        for element in original:
            if element.tag in (0x7FE00010, 0x00280006) or element.tag.group == 0x0002:
                continue
            if element.keyword == "PhotometricInterpretation":
                continue
            assert ds[element.tag].value == element.value, element.keyword
        # DCMTK reads it too.
        run_tool("dcmdump", "-q", str(server.archive.store.path_of(record.content_hash)))
    assert_intact(server, originals)


def _decode_with_gdcm(ds: pydicom.Dataset) -> np.ndarray:
    from pydicom.pixels import get_decoder
    array, _ = get_decoder(JPEG_2000_LOSSLESS).as_array(ds, decoding_plugin="gdcm")
    return array


def test_old_file_removed_totals_recorded_and_retrieval_decompresses(tmp_path):
    from tests.integration.test_retrieve import StorageSCP
    plain = StorageSCP("PLAIN", transfer_syntaxes=[EXPLICIT_LE])
    server = ServerThread(make_config(tmp_path / "data", retrieve={"destinations": {
        "PLAIN": f"{LOOPBACK}:{plain.port}"}})).start()
    try:
        _compress_and_move(server, plain)
    finally:
        server.stop()
        plain.stop()


def _compress_and_move(server, plain) -> None:
    from tests.integration.test_retrieve import STUDY_MOVE, level, move
    study = generate_study(52, profile="ct", series=1, instances_per_series=3)
    store(server.port, study)
    old = {ds.SOPInstanceUID: server.archive.reader.instance(ds.SOPInstanceUID).content_hash
           for ds in study}
    report = stage_for(server).run_now(study[0].StudyInstanceUID)
    assert report.compressed == 3 and report.bytes_after < report.bytes_before
    for uid, address in old.items():
        assert not server.archive.store.exists(address)
    totals = server.archive.reader.compression_totals()
    assert totals["CT"].count == 3 and totals["CT"].bytes_before == report.bytes_before

    _, final, _ = move(server.port, STUDY_MOVE,
                       level("STUDY", StudyInstanceUID=study[0].StudyInstanceUID), "PLAIN")
    assert final.Status == 0x0000
    for original in study:
        received = plain.received[original.SOPInstanceUID]
        assert plain.transfer_syntaxes[original.SOPInstanceUID] == EXPLICIT_LE
        assert received.PixelData == original.PixelData


def test_policy_filters(server):
    ct = generate_study(53, profile="tiny", series=1, instances_per_series=2)
    mr = generate_study(54, profile="mr", series=1, instances_per_series=1)
    store(server.port, ct + mr)
    report = stage_for(server, modalities=("MR",)).run_now()
    assert report.compressed == 1
    assert server.archive.reader.instance(mr[0].SOPInstanceUID).transfer_syntax_uid == \
        JPEG_2000_LOSSLESS
    assert all(server.archive.reader.instance(d.SOPInstanceUID).transfer_syntax_uid ==
               EXPLICIT_LE for d in ct)
    big_only = stage_for(server, min_size=10 << 20).run_now()
    assert big_only.compressed == 0


def test_background_stage_sweeps_and_compresses(tmp_path):
    config = make_config(tmp_path / "data")
    from dataclasses import replace
    config = replace(config, compression=CompressionConfig(
        enabled=True, min_size=0, sweep_interval=0.2), codec=replace(config.codec, workers=1))
    running = ServerThread(config).start()
    try:
        study = generate_study(55, profile="mr", series=1, instances_per_series=3)
        store(running.port, study)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(running.archive.reader.instance(d.SOPInstanceUID).transfer_syntax_uid ==
                   JPEG_2000_LOSSLESS for d in study):
                break
            time.sleep(0.2)
        else:
            pytest.fail("background stage did not compress the study within 60 s")
        assert_intact(running, study)
        assert running.archive.reader.compression_queue_length() == 0
    finally:
        running.stop()


def test_delay_and_window_are_respected(server):
    study = generate_study(56, profile="mr", series=1, instances_per_series=1)
    store(server.port, study)
    stage = stage_for(server, delay=3600.0)
    assert stage.sweep() == 0  # received just now: not due for an hour
    closed_window = stage_for(server, window="00:00-00:00")
    from datetime import datetime
    assert not closed_window.policy.in_window(datetime(2026, 1, 1, 12, 0))
    assert stage_for(server).sweep() == 1
    assert server.archive.reader.compression_queue(10) == [study[0].SOPInstanceUID]


@pytest.mark.parametrize("job, reason", [
    (compression_faults.encoder_raises, "injected"),
    (compression_faults.encoder_corrupts_pixels, "JPEG 2000"),
    (compression_faults.file_differs_from_verified, "differs"),
    (compression_faults.worker_killed, "died"),
    (compression_faults.disk_full, "No space left"),
])
def test_faults_leave_the_original_current(server, job, reason):
    study = generate_study(57, profile="mr", series=1, instances_per_series=1)
    store(server.port, study)
    uid = study[0].SOPInstanceUID
    before = server.archive.reader.instance(uid)
    workers = CodecWorkers(1, timeout=30)
    try:
        report = stage_for(server, job=job, workers=workers).run_now()
    finally:
        workers.close()
    assert report.compressed == 0 and report.failed == 1
    assert reason in report.failures[0][1]
    assert server.archive.reader.instance(uid) == before
    assert reason in server.archive.reader.compression_failure(uid)
    assert_intact(server, study)
    # Not retried by later sweeps once it failed.
    assert stage_for(server).sweep() == 0
    leftovers = [p.name for p in server.archive.store.tmp.iterdir()
                 if p.name.startswith("compress-") and p.name != "compress-killed.partial"]
    assert leftovers == []


def test_swap_refused_when_the_instance_changed_meanwhile(server):
    study = generate_study(58, profile="mr", series=1, instances_per_series=1)
    store(server.port, study)
    uid = study[0].SOPInstanceUID
    record = server.archive.reader.instance(uid)
    result = server.archive.writer.run_job(lambda tx: tx.swap_content(
        uid, "0" * 64, "1" * 64, JPEG_2000_LOSSLESS, 10, 5, "MR"))
    assert not result.swapped and result.new_unreferenced
    assert server.archive.reader.instance(uid) == record


def test_queue_survives_a_restart(tmp_path):
    from dataclasses import replace
    config = make_config(tmp_path / "data")
    running = ServerThread(config).start()
    study = generate_study(59, profile="mr", series=1, instances_per_series=2)
    try:
        store(running.port, study)
        assert stage_for(running).sweep() == 2  # queued, then the server stops
    finally:
        running.stop()
    config = replace(config, compression=CompressionConfig(
        enabled=True, min_size=0, sweep_interval=60.0), codec=replace(config.codec, workers=1))
    running = ServerThread(config).start()
    try:
        deadline = time.monotonic() + 60
        while running.archive.reader.compression_queue_length() and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(running.archive.reader.instance(d.SOPInstanceUID).transfer_syntax_uid ==
                   JPEG_2000_LOSSLESS for d in study)
        assert_intact(running, study)
    finally:
        running.stop()


def test_pacs_compress_now_and_stats(tmp_path):
    import subprocess
    import sys
    config = make_config(tmp_path / "data")
    running = ServerThread(config).start()
    study = generate_study(60, profile="ct", series=1, instances_per_series=2)
    try:
        store(running.port, study)
    finally:
        running.stop()
    data_dir = str(tmp_path / "data")
    out = subprocess.run([sys.executable, "-m", "engine", "compress", "--now", "--data-dir",
                          data_dir, "--study", study[0].StudyInstanceUID],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "compressed 2, skipped 0, failed 0" in out.stdout
    stats = subprocess.run([sys.executable, "-m", "engine", "stats", "--data-dir", data_dir],
                           capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    ct_row = next(line for line in stats.stdout.splitlines() if line.startswith("CT"))
    assert ct_row.split()[1] == "2" and float(ct_row.split()[-1]) > 1.0
