"""Compression stage: JPEG 2000 Lossless encode + verify per frame, and run_now over an archive.

`transcode_file` is what a codec worker runs for each instance (encode, decode every
frame again, compare bit-exact, re-encode the dataset); `run_now` adds the worker
processes, the fsync'd new file, the re-hash from disk and the index swap.  The full
comparison with opj_compress, ratios by modality and ingest while compressing is
`tools/bench_compress.py`.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom import AE

from engine.codec.transcode import transcode_file
from engine.codec.workers import CodecWorkers
from engine.compression.policy import JPEG_2000_LOSSLESS, CompressionPolicy
from engine.compression.stage import CompressionStage
from engine.config import CompressionConfig
from engine.dicom.part10 import dataset_offset
from tests.support import LOOPBACK, ServerThread, make_config
from tools.compress_frames import encoded_pixel_bytes
from tools.generate_data import generate_study, write_dataset

EXPLICIT_LE = "1.2.840.10008.1.2.1"
STUDY_INSTANCES = 6


def _stored(tmp_path_factory, profile: str, **overrides):
    ds = generate_study(61, profile=profile, series=1, instances_per_series=1, **overrides)[0]
    path = write_dataset(ds, tmp_path_factory.mktemp(profile) / "image.dcm")
    with open(path, "rb") as fh:
        return ds, str(path), dataset_offset(fh.read(144))


def _decoded(dataset: bytes, like: Dataset) -> np.ndarray:
    """Pixels of a transcoded dataset, decoded by pydicom (outside the timing)."""
    from io import BytesIO

    from pydicom.filereader import read_dataset
    ds = read_dataset(BytesIO(dataset), is_implicit_VR=False, is_little_endian=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG_2000_LOSSLESS
    return ds.pixel_array


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    return _stored(tmp_path_factory, "ct")


@pytest.fixture(scope="module")
def cr_file(tmp_path_factory):
    return _stored(tmp_path_factory, "cr")  # 2500 x 2048, 12 bits stored, 10 MB


def test_encode_and_verify_one_ct_frame(benchmark, ct_file):
    original, path, offset = ct_file
    out = benchmark(transcode_file, path, offset, EXPLICIT_LE, JPEG_2000_LOSSLESS)
    assert encoded_pixel_bytes(out)[1] < len(original.PixelData) / 2
    assert np.array_equal(_decoded(out, original), original.pixel_array)


def test_encode_and_verify_one_cr_frame(benchmark, cr_file):
    original, path, offset = cr_file
    out = benchmark.pedantic(transcode_file, (path, offset, EXPLICIT_LE, JPEG_2000_LOSSLESS),
                             rounds=3, iterations=1)
    assert encoded_pixel_bytes(out)[1] < len(original.PixelData) / 2
    assert np.array_equal(_decoded(out, original), original.pixel_array)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    running = ServerThread(make_config(tmp_path_factory.mktemp("compress") / "data")).start()
    workers = CodecWorkers(2, timeout=120)
    stage = CompressionStage(running.archive.store, running.archive.reader,
                             running.archive.writer,
                             CompressionPolicy(CompressionConfig(min_size=0)), workers)
    yield running, stage
    workers.close()
    running.stop()


def _store_study(port: int, seed: int) -> str:
    study = generate_study(seed, profile="ct", series=1, instances_per_series=STUDY_INSTANCES)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(study[0].SOPClassUID, EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    assert assoc.is_established
    try:
        for ds in study:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    return study[0].StudyInstanceUID


def test_run_now_over_a_small_archive(benchmark, archive):
    """One fresh 6-instance CT study per round (3 MB of pixels), 2 worker processes."""
    running, stage = archive
    seeds = itertools.count(700)
    stage.run_now(_store_study(running.port, next(seeds)))  # workers started, warm
    before = stage.report.compressed

    def setup():
        return (_store_study(running.port, next(seeds)),), {}

    benchmark.pedantic(stage.run_now, setup=setup, rounds=3, iterations=1)
    rounds = (stage.report.compressed - before) // STUDY_INSTANCES
    assert rounds >= 1 and stage.report.compressed - before == rounds * STUDY_INSTANCES
    assert stage.report.failed == 0
    record = next(iter(running.archive.reader.iter_instances()))[1]
    assert record.transfer_syntax_uid == JPEG_2000_LOSSLESS
