"""C-FIND over the network at a moderate scale: 2,000 studies x 5 = 10,000 instances.

`pacs serve` runs on an archive filled through the index writer's transaction
code (tools.find_archive; fake content hashes, indexed keys only), and a lean
SCU on one open association (tools.find_clients.RawFind) times each query of
tools.bench_find: what the server costs per request, network framing included.
The full comparison (1M instances, DCMTK findscu, pynetdicom, Orthanc) is
`python -m tools.bench_find`; in CI this runs with --benchmark-disable in seconds.
"""
from __future__ import annotations

import pytest

from tools.find_archive import catalogue, fill_index
from tools.find_clients import RawFind, queries
from tools.find_peers import PacsFindPeer

STUDIES, PER_STUDY = 2_000, 5
STUDY_LIST = catalogue(STUDIES, PER_STUDY, seed=3)
QUERIES = {q.name: q for q in queries(STUDY_LIST)}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("find-network")
    archive = root / "archive"
    archive.mkdir()
    fill_index(archive, STUDY_LIST, lambda message: None)
    peer = PacsFindPeer(archive)
    peer.start(root / "run", "find")
    try:
        raw = RawFind(peer.port)
        yield raw
        raw.close()
    finally:
        peer.stop()


@pytest.mark.parametrize("name", list(QUERIES))
def test_find_over_one_association(benchmark, client, name):
    query = QUERIES[name]
    benchmark.group = f"find-network-{STUDIES * PER_STUDY // 1000}k-instances"
    matches = benchmark(client.run, query)
    assert matches >= 1
    benchmark.extra_info["matches"] = matches
