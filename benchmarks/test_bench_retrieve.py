"""C-MOVE and C-GET throughput: sub-operations streamed from stored files.

One 100-instance CT series (512x512, 16-bit, ~0.5 MB each) is stored once per
module; each round moves it to a DCMTK storescp that discards what it receives
(`--ignore`, so the destination's disk is not what is measured), or gets it
back over the requestor's own association with pynetdicom.  The full
comparison with `storescu` sending the same files is `tools/bench_retrieve.py`.
"""
from __future__ import annotations

import subprocess

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet as STUDY_GET,
    StudyRootQueryRetrieveInformationModelMove as STUDY_MOVE)

from tests.support import (
    DCMTK_ENV, LOOPBACK, ServerThread, free_port, make_config, require_tool)
from tools.generate_data import generate_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"
INSTANCES = 100


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    require_tool("storescp")
    scp_port = free_port()
    storescp = subprocess.Popen(
        [require_tool("storescp"), "--aetitle", "SINK", "--ignore", str(scp_port)],
        env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = make_config(tmp_path_factory.mktemp("retrieve") / "data",
                         retrieve={"destinations": {"SINK": f"{LOOPBACK}:{scp_port}"}})
    running = ServerThread(config).start()
    study = generate_study(41, profile="ct", series=1, instances_per_series=INSTANCES)
    ae = AE(ae_title="FILL")
    ae.add_requested_context(study[0].SOPClassUID, EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, running.port, ae_title="PACS")
    for ds in study:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    yield running, study
    running.stop()
    storescp.terminate()
    storescp.wait(10)


def _identifier(study) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study[0].StudyInstanceUID
    return ds


def test_c_move_100_ct_instances_to_storescp(benchmark, archive):
    running, study = archive
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(STUDY_MOVE)
    assoc = ae.associate(LOOPBACK, running.port, ae_title="PACS")

    def move():
        final = None
        for status, _ in assoc.send_c_move(_identifier(study), "SINK", STUDY_MOVE):
            final = status
        return final

    try:
        final = benchmark.pedantic(move, rounds=5, iterations=1)
    finally:
        assoc.release()
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == INSTANCES


def test_c_get_100_ct_instances(benchmark, archive):
    running, study = archive
    received = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(STUDY_GET)
    ae.add_requested_context(study[0].SOPClassUID, EXPLICIT_LE)
    assoc = ae.associate(LOOPBACK, running.port, ae_title="PACS",
                         ext_neg=[build_role(study[0].SOPClassUID, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def get():
        final = None
        for status, _ in assoc.send_c_get(_identifier(study), STUDY_GET):
            final = status
        return final

    try:
        final = benchmark.pedantic(get, rounds=3, iterations=1)
    finally:
        assoc.release()
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == INSTANCES
