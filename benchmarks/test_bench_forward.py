"""The router's delivery: drain of a 50-instance forward backlog to DCMTK storescp.

A 50-instance CT series (512x512, 16-bit, ~0.5 MB each) is stored once, with
one rule forwarding everything to a storescp that discards what it receives
(`--ignore`: the destination's disk is not what is measured).  Each round puts
a forward job for every instance back on the queue, in one writer transaction
as ingest would, wakes the workers (no poll wait) and times until the queue is
empty again.  The comparison with `storescu` sending the same files, at 1 and
4 associations, and ingest while forwarding, is `tools/bench_forward.py`.
"""
from __future__ import annotations

import math
import subprocess
import time

import pydicom
import pytest

from engine.config import config_from_mapping
from engine.index.forward_queue import ForwardOrder, add_jobs
from tests.support import (
    DCMTK_ENV, LOOPBACK, ServerThread, free_port, require_tool, run_tool)
from tools.generate_data import generate_tree

INSTANCES = 50
TIMEOUT = 60.0


def _empty(running: ServerThread) -> bool:
    """No job left, dead ones included."""
    return not running.archive.reader.forward_summary()


def _wait_drained(running: ServerThread) -> None:
    """Until no job is pending; reads one job per check (the summary decodes them all)."""
    reader, deadline = running.archive.reader, time.monotonic() + TIMEOUT
    while reader.forward_due("SINK", math.inf, 1, set()):
        if time.monotonic() > deadline:
            pytest.fail(f"forward queue not drained within {TIMEOUT:g} s: "
                        f"{reader.forward_summary()}")
        time.sleep(0.002)


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    sink_port = free_port()
    storescp = subprocess.Popen(
        [require_tool("storescp"), "--aetitle", "SINK", "--ignore", str(sink_port)],
        env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = config_from_mapping({
        "network": {"host": LOOPBACK, "port": 0},
        "storage": {"data_dir": str(tmp_path_factory.mktemp("forward") / "data"),
                    "index_map_size": 1 << 30, "min_free_bytes": 0},
        "routing": {"rules": [{"name": "all", "forward": ["SINK"]}],
                    "destinations": {"SINK": {"type": "dicom", "ae_title": "SINK",
                                              "host": LOOPBACK, "port": sink_port}}},
    })
    files = tmp_path_factory.mktemp("files")
    study = [pydicom.dcmread(p, stop_before_pixels=True) for p in generate_tree(
        files, 1, "ct", 1, INSTANCES, seed=43)]
    running = ServerThread(config).start()
    try:
        run_tool("storescu", "+sd", "+r", "-aec", "PACS", LOOPBACK, str(running.port),
                 str(files))
        _wait_drained(running)  # the first forwarding doubles as warm-up
        assert _empty(running)
        yield running, study
    finally:
        running.stop()
        storescp.terminate()
        storescp.wait(10)


def test_drain_50_instance_backlog_to_storescp(benchmark, router):
    running, study = router
    writer, forwarder = running.archive.writer, running.server.forwarder

    def requeue(tx):
        now = time.time()
        for ds in study:
            add_jobs(tx.txn, tx.t, ds.SOPInstanceUID, ds.StudyInstanceUID,
                     ds.SeriesInstanceUID, (ForwardOrder("SINK", rule="all"),), now)

    def drain():
        writer.run_job(requeue)
        running.loop.call_soon_threadsafe(forwarder.wake)
        _wait_drained(running)

    benchmark.pedantic(drain, rounds=5, iterations=1)
    assert _empty(running)
