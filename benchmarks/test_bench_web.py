"""DICOMweb over loopback, in-process server (smoke size; tools/bench_web.py is the real run).

QIDO-RS study searches over an index of 2,000 studies (filled through the index
writer's transaction code, tools/find_archive.py) and WADO-RS of a 20-slice CT
series as stored, each request on one kept-alive HTTP connection.
"""
from __future__ import annotations

import pytest

from tests.integration.test_retrieve import fill
from tests.support import ServerThread, make_config
from tools.bench_web import AS_STORED, Http, count_parts, qido_path
from tools.find_archive import catalogue, fill_index
from tools.find_clients import queries
from tools.generate_data import generate_study

STUDIES = 2_000
SLICES = 20


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    data = tmp_path_factory.mktemp("bench-web") / "data"
    data.mkdir()
    studies = catalogue(STUDIES, 2)
    fill_index(data, studies, lambda message: None, map_size=1 << 30)
    running = ServerThread(make_config(data, web={}, query={"max_results": 100_000})).start()
    series = generate_study(7, profile="ct", series=1, instances_per_series=SLICES)
    fill(running.port, series)
    client = Http(running.web_port)
    yield running, client, studies, series
    client.close()
    running.stop()


QUERY_NAMES = ("patient-id", "accession", "date-month", "name-prefix", "all-studies")


@pytest.mark.parametrize("name", QUERY_NAMES)
def test_qido_study_search(benchmark, web, name):
    _, client, studies, _ = web
    query = next(q for q in queries(studies) if q.name == name)
    path = qido_path("/dicomweb", query.keys)
    benchmark.group = f"qido-studies-{STUDIES}"

    def search() -> bytes:
        status, _, body = client.get(path)
        assert status == 200
        return body

    body = benchmark(search)
    assert body.count(b'"0020000D"') >= 1


def test_wado_series_as_stored(benchmark, web):
    _, client, _, series = web
    path = (f"/dicomweb/studies/{series[0].StudyInstanceUID}/series/"
            f"{series[0].SeriesInstanceUID}")
    benchmark.group = "wado-series"

    def retrieve() -> tuple[int, int]:
        status, headers, body = client.get(path, AS_STORED)
        assert status == 200
        return count_parts(body, headers["content-type"]), len(body)

    parts, size = benchmark(retrieve)
    assert parts == SLICES
    benchmark.extra_info["MB"] = size / 1e6
