"""The router end to end: rules at ingest, the durable queue, delivery, retries.

Destinations are DCMTK storescp, pynetdicom SCPs and folders on loopback; the
server is the real one (in-process, or a process killed with SIGKILL).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from engine.config import config_from_mapping
from tests.integration.test_retrieve import StorageSCP, fill, run_tool_background
from tests.support import LOOPBACK, ServerProcess, ServerThread, free_port
from tools.generate_data import generate_study


def routing_config(data_dir: Path, destinations: dict, rules: list, **queue) -> dict:
    return {
        "network": {"host": LOOPBACK, "port": 0},
        "storage": {"data_dir": str(data_dir), "index_map_size": 1 << 30, "min_free_bytes": 0},
        "retrieve": {"connect_timeout": 2.0, "response_timeout": 10.0},
        "routing": {"destinations": destinations, "rules": rules,
                    "backoff_base": 0.2, "backoff_max": 0.5, **queue},
    }


def peer(name: str, port: int, **extra) -> dict:
    return {"type": "dicom", "ae_title": name, "host": LOOPBACK, "port": port, **extra}


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def queue_status(data_dir: Path) -> str:
    return subprocess.run([sys.executable, "-m", "engine", "queue", "--data-dir",
                           str(data_dir)], capture_output=True, text=True, timeout=60).stdout


def test_destination_down_then_up_everything_delivered(tmp_path):
    """An outage longer than max_attempts backoffs costs no instance its delivery:
    the destination is backed off as a whole, its jobs are not charged."""
    port = free_port()
    data_dir = tmp_path / "data"
    config = config_from_mapping(routing_config(
        data_dir, {"PEER": peer("STORESCP", port)},
        [{"name": "all", "forward": ["PEER"]}], max_attempts=2))
    running = ServerThread(config).start()
    out = tmp_path / "received"
    out.mkdir()
    study = generate_study(71, profile="tiny", series=2, instances_per_series=3)
    try:
        fill(running.port, study)  # the destination is down: every probe fails
        reader = running.archive.reader
        wait_until(lambda: reader.forward_health("PEER").failures >= 4,
                   what="four failed probes (twice max_attempts)")
        summary = reader.forward_summary()["PEER"]
        assert (summary.pending, summary.dead, summary.retrying) == (len(study), 0, 0)
        assert summary.down_since is not None and "Connection refused" in summary.last_error
        assert "DOWN for" in queue_status(data_dir)
        storescp = run_tool_background("storescp", "--aetitle", "STORESCP",
                                       "--output-directory", str(out), str(port))
        try:
            wait_until(lambda: not reader.forward_summary(), what="the queue to drain")
        finally:
            storescp.terminate()
            storescp.wait(10)
        assert not reader.forward_health("PEER").down
    finally:
        running.stop()
    received = {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert received == {ds.SOPInstanceUID for ds in study}


def test_instances_arriving_one_by_one_share_one_association(tmp_path):
    """The association lingers between batches, then is released when idle."""
    scp = StorageSCP("PEER")
    config = config_from_mapping(routing_config(
        tmp_path / "data", {"PEER": peer("PEER", scp.port)},
        [{"name": "all", "forward": ["PEER"]}], association_linger=1.5))
    running = ServerThread(config).start()
    study = generate_study(79, profile="tiny", series=1, instances_per_series=4)
    try:
        for n, ds in enumerate(study, 1):  # each on its own inbound association
            fill(running.port, [ds])
            wait_until(lambda: len(scp.received) == n, what=f"instance {n} delivered")
        assert (scp.associations, scp.releases) == (1, 0)
        wait_until(lambda: scp.releases == 1, timeout=10, what="the idle association released")
        wait_until(lambda: not running.archive.reader.forward_summary(), what="queue empty")
    finally:
        running.stop()
        scp.stop()
    assert set(scp.received) == {ds.SOPInstanceUID for ds in study}


def test_destination_down_past_max_age_is_dead_lettered_then_retried(tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    config = config_from_mapping(routing_config(
        data_dir, {"PEER": peer("PEER", port)}, [{"name": "all", "forward": ["PEER"]}],
        max_age=3.0))
    running = ServerThread(config).start()
    study = generate_study(80, profile="tiny", series=1, instances_per_series=3)
    scp = None
    try:
        fill(running.port, study)
        reader = running.archive.reader
        wait_until(lambda: reader.forward_summary().get("PEER") is not None and
                   reader.forward_summary()["PEER"].dead == len(study),
                   what="jobs dead-lettered by age")
        assert reader.forward_summary()["PEER"].retrying == 0  # never charged an attempt
        scp = StorageSCP("PEER", port=port)
        out = subprocess.run([sys.executable, "-m", "engine", "queue", "retry", "--data-dir",
                              str(data_dir)], capture_output=True, text=True, timeout=60)
        assert f"{len(study)} job(s) due again" in out.stdout, out.stderr
        wait_until(lambda: not reader.forward_summary(), what="redelivery after retry")
    finally:
        running.stop()
        if scp is not None:
            scp.stop()
    assert set(scp.received) == {ds.SOPInstanceUID for ds in study}


def test_rules_pick_destinations_and_folder_copy_is_changed(tmp_path):
    scp = StorageSCP("CTONLY")
    folder = tmp_path / "export"
    config = config_from_mapping(routing_config(
        tmp_path / "data",
        {"CT": peer("CTONLY", scp.port), "EXPORT": {"type": "folder", "path": str(folder)}},
        [{"name": "ct", "when": {"Modality": "CT"}, "forward": ["CT"]},
         {"name": "export", "when": {"calling_ae": {"one_of": ["FILLSCU"]}},
          "forward": ["EXPORT"], "changes": [{"set": "InstitutionName", "value": "ROUTED"}]}]))
    running = ServerThread(config).start()
    ct = generate_study(72, profile="tiny", series=1, instances_per_series=2)
    mr = generate_study(73, profile="mr", series=1, instances_per_series=1)
    try:
        fill(running.port, ct + mr)
        wait_until(lambda: not running.archive.reader.forward_summary(), what="delivery")
    finally:
        running.stop()
        scp.stop()
    assert set(scp.received) == {ds.SOPInstanceUID for ds in ct}
    assert all(ds.InstitutionName != "ROUTED" for ds in scp.received.values())
    exported = {p.stem: pydicom.dcmread(p) for p in folder.rglob("*.dcm")}
    assert set(exported) == {ds.SOPInstanceUID for ds in ct + mr}
    for original in ct + mr:
        copy = exported[original.SOPInstanceUID]
        assert copy.InstitutionName == "ROUTED"
        assert copy.PixelData == original.PixelData


def test_deidentified_copy_leaves_the_archive_unchanged(tmp_path):
    folder = tmp_path / "research"
    config = config_from_mapping(routing_config(
        tmp_path / "data", {"RESEARCH": {"type": "folder", "path": str(folder)}},
        [{"name": "research", "forward": ["RESEARCH"], "deidentify": True}]))
    running = ServerThread(config).start()
    study = generate_study(77, profile="tiny", series=1, instances_per_series=2,
                           PatientName="DOE^JANE", PatientID="SECRET-1")
    try:
        fill(running.port, study)
        wait_until(lambda: not running.archive.reader.forward_summary(), what="delivery")
        archived = running.archive.reader.instance(study[0].SOPInstanceUID)
        assert archived is not None  # the archive keeps the original UIDs and names
    finally:
        running.stop()
    paths = list(folder.rglob("*.dcm"))
    copies = [pydicom.dcmread(p) for p in paths]
    assert len(copies) == 2
    assert {p.stem for p in paths} == {c.SOPInstanceUID for c in copies}  # names remapped too
    assert {p.parent.name for p in paths} == {copies[0].StudyInstanceUID}
    assert all(c.file_meta.MediaStorageSOPInstanceUID == c.SOPInstanceUID for c in copies)
    for copy in copies:
        assert copy.PatientName != "DOE^JANE" and copy.PatientID != "SECRET-1"
        assert copy.PatientIdentityRemoved == "YES"
        assert copy.SOPInstanceUID not in {ds.SOPInstanceUID for ds in study}
    assert len({c.StudyInstanceUID for c in copies}) == 1  # consistently remapped


def test_failures_go_dead_then_retry_delivers(tmp_path):
    refusing = StorageSCP("REFUSE", status=0xA700)
    data_dir = tmp_path / "data"
    config = config_from_mapping(routing_config(
        data_dir, {"PEER": peer("REFUSE", refusing.port)},
        [{"name": "all", "forward": ["PEER"]}], max_attempts=2))
    running = ServerThread(config).start()
    study = generate_study(74, profile="tiny", series=1, instances_per_series=2)
    try:
        fill(running.port, study)
        wait_until(lambda: running.archive.reader.forward_summary().get("PEER") is not None
                   and running.archive.reader.forward_summary()["PEER"].dead == 2,
                   what="dead-lettered jobs")
        summary = running.archive.reader.forward_summary()["PEER"]
        assert summary.last_status == 0xA700
        assert "0xA700" in queue_status(data_dir)
        listing = subprocess.run([sys.executable, "-m", "engine", "queue", "list", "--data-dir",
                                  str(data_dir), "--study", study[0].StudyInstanceUID],
                                 capture_output=True, text=True, timeout=60).stdout
        for ds in study:  # where each instance is: its destination, attempts, state, error
            assert f"PEER             {ds.SOPInstanceUID:<64}   2 dead" in listing
        assert listing.count("0xA700 REFUSE answered 0xA700") == len(study)
        refusing.status = 0x0000
        out = subprocess.run([sys.executable, "-m", "engine", "queue", "retry", "--data-dir",
                              str(data_dir), "--destination", "PEER"],
                             capture_output=True, text=True, timeout=60)
        assert "2 job(s) due again" in out.stdout, out.stderr
        wait_until(lambda: not running.archive.reader.forward_summary(), what="redelivery")
    finally:
        running.stop()
        refusing.stop()
    assert set(refusing.received) == {ds.SOPInstanceUID for ds in study}


def test_warning_statuses_are_recorded_per_instance(tmp_path):
    coercing = StorageSCP("COERCE", status=0xB000)
    data_dir = tmp_path / "data"
    config = config_from_mapping(routing_config(
        data_dir, {"PEER": peer("COERCE", coercing.port)},
        [{"name": "all", "forward": ["PEER"]}]))
    running = ServerThread(config).start()
    study = generate_study(81, profile="tiny", series=1, instances_per_series=2)
    try:
        fill(running.port, study)
        wait_until(lambda: not running.archive.reader.forward_summary(), what="delivery")
        wait_until(lambda: len(running.archive.reader.forward_warnings(None, 10)) == 2,
                   what="the warnings recorded")
    finally:
        running.stop()
        coercing.stop()
    out = subprocess.run([sys.executable, "-m", "engine", "queue", "warnings", "--data-dir",
                          str(data_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for ds in study:
        assert f"PEER             0xB000  {ds.SOPInstanceUID}" in out.stdout


def test_study_trigger_waits_until_the_study_is_quiet(tmp_path):
    scp = StorageSCP("STUDY")
    config = config_from_mapping(routing_config(
        tmp_path / "data", {"PEER": peer("STUDY", scp.port)},
        [{"name": "study", "forward": ["PEER"], "trigger": "study", "stable_seconds": 2}]))
    running = ServerThread(config).start()
    study = generate_study(75, profile="tiny", series=1, instances_per_series=4)
    try:
        fill(running.port, study[:2])
        time.sleep(1.0)
        assert scp.received == {}  # the study is not quiet yet
        fill(running.port, study[2:])
        wait_until(lambda: len(scp.received) == len(study), what="the whole study")
    finally:
        running.stop()
        scp.stop()
    # The whole study on one association, in the order it arrived.
    assert list(scp.received) == [ds.SOPInstanceUID for ds in study]
    assert scp.associations == 1


@pytest.mark.slow
def test_kill_9_with_a_backlog_then_restart_drains_it(tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    config_file = tmp_path / "pacs.toml"
    config_file.write_text(
        f'[network]\nhost = "{LOOPBACK}"\n[storage]\ndata_dir = "{data_dir}"\n'
        f'[retrieve]\nconnect_timeout = 2.0\n'
        f'[routing]\nbackoff_base = 0.2\nbackoff_max = 0.5\n'
        f'[[routing.rules]]\nname = "all"\nforward = ["PEER"]\n'
        f'[routing.destinations.PEER]\ntype = "dicom"\nae_title = "STORESCP"\n'
        f'host = "{LOOPBACK}"\nport = {port}\n')
    server_port = free_port()
    server = ServerProcess(data_dir, server_port, "--config", str(config_file))
    study = generate_study(76, profile="tiny", series=1, instances_per_series=5)
    try:
        fill(server_port, study)  # acknowledged, the destination is down
    finally:
        server.kill()
    out = tmp_path / "received"
    out.mkdir()
    storescp = run_tool_background("storescp", "--aetitle", "STORESCP", "--output-directory",
                                   str(out), str(port))
    server = ServerProcess(data_dir, server_port, "--config", str(config_file))
    try:
        wait_until(lambda: len(list(out.iterdir())) >= len(study), what="the backlog")
    finally:
        server.terminate()
        storescp.terminate()
        storescp.wait(10)
    received = {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert received == {ds.SOPInstanceUID for ds in study}


def test_deidentified_copy_to_a_dicom_peer(tmp_path):
    scp = StorageSCP("AINODE")
    config = config_from_mapping(routing_config(
        tmp_path / "data", {"AI": peer("AINODE", scp.port, transfer_syntax="uncompressed")},
        [{"name": "ai", "forward": ["AI"], "deidentify": True,
          "changes": [{"set": "PatientID", "value": "PSEUDO-7"}]}]))
    running = ServerThread(config).start()
    study = generate_study(78, profile="tiny", series=1, instances_per_series=2,
                           PatientName="DOE^JANE", PatientID="SECRET-2")
    try:
        fill(running.port, study)
        wait_until(lambda: not running.archive.reader.forward_summary(), what="delivery")
    finally:
        running.stop()
        scp.stop()
    assert len(scp.received) == 2
    for uid, copy in scp.received.items():
        assert uid not in {ds.SOPInstanceUID for ds in study}
        assert copy.PatientID == "PSEUDO-7" and copy.PatientName != "DOE^JANE"
        assert copy.PixelData == study[0].PixelData or copy.PixelData == study[1].PixelData


def test_route_dry_run_lists_where_stored_instances_would_go(tmp_path):
    data_dir = tmp_path / "data"
    mapping = routing_config(data_dir, {"CT": peer("CTPEER", free_port())},
                             [{"name": "ct-only", "when": {"Modality": "CT"},
                               "forward": ["CT"]}])
    running = ServerThread(config_from_mapping({**mapping, "routing": {}})).start()
    ct = generate_study(79, profile="tiny", series=1, instances_per_series=2)
    mr = generate_study(80, profile="mr", series=1, instances_per_series=1)
    try:
        fill(running.port, ct + mr)  # stored while routing was off
    finally:
        running.stop()
    config_file = tmp_path / "route.toml"
    config_file.write_text(
        f'[storage]\ndata_dir = "{data_dir}"\n[[routing.rules]]\nname = "ct-only"\n'
        f'when = {{ Modality = "CT" }}\nforward = ["CT"]\n'
        f'[routing.destinations.CT]\ntype = "dicom"\nae_title = "CTPEER"\n'
        f'host = "{LOOPBACK}"\nport = 104\n')
    out = subprocess.run([sys.executable, "-m", "engine", "route", "--dry-run", "--config",
                          str(config_file)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if "(rule ct-only" in line}
    assert listed == {ds.SOPInstanceUID for ds in ct}
    assert "CT               2 instance(s)" in out.stdout


def test_store_and_forward_removes_only_what_was_delivered(tmp_path):
    up = StorageSCP("UP")
    config = config_from_mapping(routing_config(
        tmp_path / "data", {"UP": peer("UP", up.port), "DOWN": peer("DOWN", free_port())},
        [{"name": "ct", "when": {"Modality": "CT"}, "forward": ["UP"]},
         {"name": "mr", "when": {"Modality": "MR"}, "forward": ["UP", "DOWN"]}],
        retention=0.5))
    running = ServerThread(config).start()
    ct = generate_study(81, profile="tiny", series=1, instances_per_series=2)
    mr = generate_study(82, profile="mr", series=1, instances_per_series=1)
    try:
        fill(running.port, ct + mr)
        reader = running.archive.reader
        wait_until(lambda: all(reader.instance(ds.SOPInstanceUID) is None for ds in ct),
                   what="delivered CT instances to be removed")
        assert set(up.received) >= {ds.SOPInstanceUID for ds in ct + mr}
        time.sleep(1.0)
        # The MR instance still waits for DOWN: it stays, and so does its file.
        record = reader.instance(mr[0].SOPInstanceUID)
        assert record is not None
        assert running.archive.store.exists(record.content_hash)
        assert reader.stats().instances == 1
        assert verify_ok(running)
    finally:
        running.stop()
        up.stop()


def verify_ok(server) -> bool:
    from engine.ingest.integrity import verify_archive
    report = verify_archive(server.archive.store, server.archive.reader)
    return report.ok


def test_destination_aborting_mid_association_is_retried(tmp_path):
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    received: dict[str, bool] = {}
    aborts = {"left": 2}

    def on_store(event):
        if aborts["left"] > 0:
            aborts["left"] -= 1
            event.assoc.abort()  # A-ABORT in the middle of our batch
            return 0xC000
        received[event.request.AffectedSOPInstanceUID] = True
        return 0x0000

    port = free_port()
    ae = AE(ae_title="FLAKY")
    ae.supported_contexts = AllStoragePresentationContexts
    scp = ae.start_server((LOOPBACK, port), block=False,
                          evt_handlers=[(evt.EVT_C_STORE, on_store)])
    config = config_from_mapping(routing_config(
        tmp_path / "data", {"FLAKY": peer("FLAKY", port)},
        [{"name": "all", "forward": ["FLAKY"]}]))
    running = ServerThread(config).start()
    study = generate_study(83, profile="tiny", series=1, instances_per_series=3)
    try:
        fill(running.port, study)
        wait_until(lambda: not running.archive.reader.forward_summary(), what="redelivery")
    finally:
        running.stop()
        scp.shutdown()
    assert aborts["left"] == 0
    assert set(received) == {ds.SOPInstanceUID for ds in study}
