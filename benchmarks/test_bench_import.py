"""`pacs import` at smoke size: the importer in copy and in-place mode, and one worker's read.

Each round imports the same generated tree into an empty index of an archive whose
store layout exists (worker processes started, files read, hashed, scanned,
copied or not, indexed, journaled).  The comparison with `cp -r` and a pydicom
loop on larger datasets is `tools/bench_import.py`.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from engine.config import Config, StorageConfig
from engine.migration import scan
from engine.migration.importer import ImportOptions, Importer
from engine.migration.walker import Candidate, walk
from engine.store.blob_store import FilesystemBlobStore
from tools.generate_data import generate_tree

FILES = 400  # 4 studies x 2 series x 50 tiny CT images


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy")
    generate_tree(root, studies=4, profile="tiny", series=2, instances_per_series=50, seed=3)
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """An archive's store layout (4,096 shards), copied into each round's data dir."""
    root = tmp_path_factory.mktemp("layout") / "data"
    FilesystemBlobStore(root).open()
    return root


def _import(tree: Path, data_dir: Path, in_place: bool):
    importer = Importer(
        Config(storage=StorageConfig(data_dir=data_dir, index_map_size=1 << 30,
                                     min_free_bytes=0)),
        ImportOptions((tree,), in_place=in_place, workers=2, settle_seconds=0),
        stream=io.StringIO(), interactive=False)
    return importer.run()


@pytest.mark.parametrize("in_place", [False, True], ids=["copy", "in-place"])
def test_import_tree(benchmark, tree, layout, tmp_path, in_place):
    rounds = iter(range(1000))

    def setup():
        data_dir = tmp_path / f"data{next(rounds)}"
        shutil.copytree(layout, data_dir)
        os.sync()
        return (tree, data_dir, in_place), {}

    summary = benchmark.pedantic(_import, setup=setup, rounds=3, iterations=1)
    assert summary.imported == FILES and not summary.rejected
    if benchmark.stats is not None:  # None under --benchmark-disable (run once, untimed)
        median = benchmark.stats.stats.median
        benchmark.extra_info["files_per_s"] = FILES / median
        benchmark.extra_info["mb_per_s"] = summary.bytes_scanned / median / 1e6


def test_one_worker_reads_in_place(benchmark, tree, layout):
    """The worker's share per file: open, read, hash, scan the whole dataset, decode."""
    candidates = [(c.path, c.size, c.mtime_ns, c.dev, c.ino) for c in walk([tree])
                  if isinstance(c, Candidate)]
    settings = scan.ScanSettings(str(layout), copy=False, ae_title="IMPORT")
    scan.init_worker(settings)
    results = benchmark(scan.scan_batch, candidates)
    assert all(r.status == scan.OK for r in results)
    if benchmark.stats is not None:
        benchmark.extra_info["files_per_s"] = len(candidates) / benchmark.stats.stats.median
