"""The operations side end to end: audit trail, /metrics, /health, JSON logs, no PHI.

Real servers on 127.0.0.1 (in-process, and `pacs serve` as a process for the JSON log
and PHI checks), real clients (pynetdicom, DCMTK with TCP_NODELAY=1, HTTP), and the
`pacs export` / `pacs import` / `pacs health` commands as subprocesses.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove)

from tests.integration.test_retrieve import StorageSCP
from tests.support import (
    LOOPBACK, ServerThread, free_port, make_config, require_tool, run_tool)
from tools.generate_data import generate_study

REPO = Path(__file__).resolve().parents[2]
CANARY_NAME = "CANARY^PHI"
CANARY_ID = "CANARY-PID-7731"


# -- helpers ------------------------------------------------------------------------------------
def canary_study(seed: int, instances: int = 3, patient_id: str = CANARY_ID):
    study = generate_study(seed, profile="tiny", series=1, instances_per_series=instances)
    for ds in study:
        ds.PatientName = CANARY_NAME
        ds.PatientID = patient_id
    return study


def store(port: int, datasets, calling: str = "MODALITY1", called: str = "PACS") -> None:
    ae = AE(ae_title=calling)
    for ds in {d.SOPClassUID: d for d in datasets}.values():
        ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


def audit_records(data_dir: Path) -> list[dict]:
    records = []
    for path in sorted((data_dir / "audit").glob("audit-*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def wait_for_records(data_dir: Path, predicate, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in audit_records(data_dir) if predicate(r)]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def http(url: str, timeout: float = 10.0, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[tuple, float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    status, body = http(f"http://{LOOPBACK}:{port}/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def participants(record: dict) -> dict[str, dict]:
    return {p["UserID"]: p for p in record["ActiveParticipant"]}


def objects(record: dict, type_code: str) -> list[dict]:
    """ParticipantObjects of a type: "2" patient, "110180" study, "110181" SOP class."""
    return [o for o in record.get("ParticipantObjectIdentification", [])
            if o["ParticipantObjectIDTypeCode"]["code"] == type_code]


def pacs(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **kw)


# -- DIMSE: associations, store, find, move, get, rejection; metrics moved by as much ---------
def test_dimse_traffic_is_audited_and_counted(tmp_path):
    dest = StorageSCP("DEST")
    data_dir = tmp_path / "data"
    config = make_config(data_dir, web={}, require_called_ae_title=True,
                         retrieve={"destinations": {"DEST": f"{LOOPBACK}:{dest.port}"}})
    running = ServerThread(config).start()
    study = canary_study(201)
    study_uid = study[0].StudyInstanceUID
    try:
        before = scrape(running.web_port)
        store(running.port, study)

        ae = AE(ae_title="VIEWER1")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate(LOOPBACK, running.port, ae_title="PACS")
        assert assoc.is_established
        query = type(study[0])()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "CANARY-PID-*"
        query.StudyInstanceUID = ""
        statuses = [s.Status for s, _ in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind)]
        assert statuses == [0xFF00, 0x0000]
        move = type(study[0])()
        move.QueryRetrieveLevel = "STUDY"
        move.StudyInstanceUID = study_uid
        final = [s.Status for s, _ in assoc.send_c_move(
            move, "DEST", StudyRootQueryRetrieveInformationModelMove)][-1]
        assert final == 0x0000
        assoc.release()
        assert set(dest.received) == {ds.SOPInstanceUID for ds in study}

        getter = AE(ae_title="GETTER")
        getter.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
        getter.add_requested_context(study[0].SOPClassUID, ExplicitVRLittleEndian)
        got = []
        handlers = [(evt.EVT_C_STORE,
                     lambda event: got.append(event.request.AffectedSOPInstanceUID) or 0)]
        assoc = getter.associate(LOOPBACK, running.port, ae_title="PACS",
                                 ext_neg=[build_role(study[0].SOPClassUID, scp_role=True)],
                                 evt_handlers=handlers)
        get = type(study[0])()
        get.QueryRetrieveLevel = "PATIENT"
        get.PatientID = CANARY_ID
        final = [s.Status for s, _ in assoc.send_c_get(
            get, PatientRootQueryRetrieveInformationModelGet)][-1]
        assoc.release()
        assert final == 0x0000 and len(got) == 3

        stranger = AE(ae_title="MODALITY1")
        stranger.add_requested_context(study[0].SOPClassUID, ExplicitVRLittleEndian)
        refused = stranger.associate(LOOPBACK, running.port, ae_title="NOT-US")
        assert not refused.is_established  # rejected (pynetdicom may see the close first)

        run_tool("echoscu", "-aet", "DCMTKSCU", "-aec", "PACS", LOOPBACK, str(running.port))
        after = scrape(running.web_port)
        reader = running.archive.reader
        stored_bytes = sum(reader.instance(ds.SOPInstanceUID).size for ds in study)
    finally:
        running.stop()
        dest.stop()

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # /metrics: counters moved by exactly what the traffic did.
    assert moved("pacs_associations_accepted_total") == 4  # store, find/move, get, echo
    assert moved("pacs_associations_rejected_total", reason="called_ae_not_recognized") == 1
    assert moved("pacs_instances_received_total", via="dimse") == 3
    assert moved("pacs_received_bytes_total", via="dimse") == stored_bytes
    assert moved("pacs_dimse_responses_total", service="C-STORE", status="0000") == 3
    assert moved("pacs_dimse_responses_total", service="C-FIND", status="0000") == 1
    assert moved("pacs_dimse_responses_total", service="C-MOVE", status="0000") == 1
    assert moved("pacs_dimse_responses_total", service="C-GET", status="0000") == 1
    assert moved("pacs_dimse_responses_total", service="C-ECHO", status="0000") == 1
    assert moved("pacs_store_commit_seconds_count") == 3
    assert moved("pacs_find_seconds_count") == 1
    assert moved("pacs_retrieve_suboperation_seconds_count", service="C-MOVE") == 3
    assert moved("pacs_retrieve_suboperation_seconds_count", service="C-GET") == 3
    assert value(after, "pacs_index_entries", level="instances") == 3
    assert value(after, "pacs_associations_active") == 0
    assert value(after, "pacs_disk_free_bytes") > 0
    assert moved("pacs_web_requests_total", route="/metrics", method="GET", status="200") == 1

    records = audit_records(data_dir)
    by_event: dict[str, list[dict]] = {}
    for r in records:
        by_event.setdefault(r["Event"], []).append(r)
        assert r["EventDateTime"].endswith("Z")
        assert r["EventID"]["codeSystemName"] == "DCM"

    # One record per association; the store's association released, the refused one not.
    associations = by_event["association"]
    assert len(associations) == 5
    store_assoc = [r for r in associations if "MODALITY1" in participants(r)
                   and r["AssociationOutcome"] == "released"]
    assert len(store_assoc) == 1
    released = store_assoc[0]
    assert released["EventID"]["code"] == "110114" and released["EventOutcomeIndicator"] == 0
    assert participants(released)["MODALITY1"]["NetworkAccessPointID"] == LOOPBACK
    assert participants(released)["MODALITY1"]["UserIsRequestor"] is True
    assert released["Operations"] == {"C-STORE": 3}
    rejected = [r for r in associations if r["AssociationOutcome"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["EventOutcomeIndicator"] == 4
    assert "1/1/7" in rejected[0]["EventOutcomeDescription"]
    assert participants(rejected[0])["NOT-US"]["UserIsRequestor"] is False
    assert any("DCMTKSCU" in participants(r) for r in associations)

    # Store: one record for the association and study, instances per SOP class, patient.
    (stored,) = by_event["store"]
    assert stored["EventID"]["code"] == "110104" and stored["EventActionCode"] == "C"
    assert stored["Association"] == released["Association"]
    (study_object,) = objects(stored, "110180")
    assert study_object["ParticipantObjectID"] == study_uid
    assert study_object["ParticipantObjectDescription"]["SOPClass"] == [
        {"UID": study[0].SOPClassUID, "NumberOfInstances": 3}]
    assert objects(stored, "2")[0]["ParticipantObjectID"] == CANARY_ID
    assert participants(stored)["MODALITY1"]["RoleIDCode"]["code"] == "110153"

    # Query: its keys.
    (query_record,) = by_event["query"]
    assert query_record["EventID"]["code"] == "110112"
    (query_object,) = objects(query_record, "110181")
    assert query_object["ParticipantObjectID"] == StudyRootQueryRetrieveInformationModelFind
    assert query_object["ParticipantObjectQuery"]["PatientID"] == "CANARY-PID-*"
    assert query_object["ParticipantObjectQuery"]["QueryRetrieveLevel"] == "STUDY"
    assert query_record["Matches"] == 1

    # Retrieve: C-MOVE to DEST and C-GET back to the requestor, studies and counts.
    retrieves = {r["Service"]: r for r in by_event["retrieve"]}
    move_record = retrieves["C-MOVE"]
    assert move_record["EventActionCode"] == "R" and move_record["EventOutcomeIndicator"] == 0
    assert participants(move_record)["DEST"]["RoleIDCode"]["code"] == "110152"
    assert participants(move_record)["VIEWER1"]["UserIsRequestor"] is True
    (moved_study,) = objects(move_record, "110180")
    assert moved_study["ParticipantObjectDescription"]["SOPClass"][0]["NumberOfInstances"] == 3
    assert objects(move_record, "2")[0]["ParticipantObjectID"] == CANARY_ID
    get_record = retrieves["C-GET"]
    assert participants(get_record)["GETTER"]["RoleIDCode"]["code"] == "110152"
    assert objects(get_record, "110180")[0]["ParticipantObjectID"] == study_uid

    assert [r["EventTypeCode"][0]["code"] for r in by_event["application"]] == \
        ["110120", "110121"]


def test_known_peer_refusal_is_a_security_record(tmp_path):
    import dataclasses

    from engine.config import SecurityConfig

    config = make_config(tmp_path / "data")
    config = dataclasses.replace(config, security=SecurityConfig(deny_unknown=True))
    running = ServerThread(config).start()
    try:
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context("1.2.840.10008.1.1")
        refused = stranger.associate(LOOPBACK, running.port, ae_title="PACS")
        assert not refused.is_established  # rejected (pynetdicom may see the close first)
    finally:
        running.stop()
    records = audit_records(tmp_path / "data")
    (alert,) = [r for r in records if r["Event"] == "security"]
    assert alert["EventID"]["code"] == "110113"
    assert alert["EventTypeCode"][0]["code"] == "110126"
    assert "not a known peer" in alert["EventOutcomeDescription"]
    assert participants(alert)["STRANGER"]["NetworkAccessPointID"] == LOOPBACK
    (rejection,) = [r for r in records if r["Event"] == "association"]
    assert rejection["AssociationOutcome"] == "rejected"


def test_dcmtk_store_and_abort_are_audited(tmp_path):
    require_tool("storescu")
    data_dir = tmp_path / "data"
    running = ServerThread(make_config(data_dir)).start()
    files = tmp_path / "files"
    files.mkdir()
    study = canary_study(202, instances=2)
    for n, ds in enumerate(study):
        ds.save_as(files / f"{n}.dcm", enforce_file_format=True)
    try:
        run_tool("storescu", "-aet", "DCMTKSTORE", "-aec", "PACS", LOOPBACK,
                 str(running.port), *map(str, sorted(files.iterdir())))
        # An association the peer aborts (A-ABORT) is recorded as aborted.
        ae = AE(ae_title="ABORTER")
        ae.add_requested_context(study[0].SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate(LOOPBACK, running.port, ae_title="PACS")
        assert assoc.is_established
        assoc.abort()
    finally:
        running.stop()
    records = audit_records(data_dir)
    (stored,) = [r for r in records if r["Event"] == "store"]
    assert "DCMTKSTORE" in participants(stored)
    assert objects(stored, "110180")[0]["ParticipantObjectDescription"]["SOPClass"][0][
        "NumberOfInstances"] == 2
    aborted = [r for r in records if r["Event"] == "association"
               and "ABORTER" in participants(r)]
    assert len(aborted) == 1 and aborted[0]["AssociationOutcome"] == "aborted"
    assert aborted[0]["EventOutcomeIndicator"] == 4


# -- DICOMweb: QIDO query, WADO retrieve, STOW store, 401 ----------------------------------------
def test_dicomweb_requests_are_audited(tmp_path):
    import hashlib

    token = "s3cret-token"
    data_dir = tmp_path / "data"
    config = make_config(data_dir, web={"authentication": "token", "token_sha256": (
        hashlib.sha256(token.encode()).hexdigest(),)})
    running = ServerThread(config).start()
    study = canary_study(203, instances=2)
    study_uid = study[0].StudyInstanceUID
    base = f"http://{LOOPBACK}:{running.web_port}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        store(running.port, study)
        assert http(f"{base}/dicomweb/studies?PatientID={CANARY_ID}")[0] == 401
        assert http(f"{base}/dicomweb/studies?PatientID={CANARY_ID}",
                    headers={"Authorization": "Bearer wrong"})[0] == 401
        status, body = http(f"{base}/dicomweb/studies?PatientID={CANARY_ID}", headers=auth)
        assert status == 200 and len(json.loads(body)) == 1
        status, body = http(f"{base}/dicomweb/studies/{study_uid}", headers=auth)
        assert status == 200 and body.count(b"DICM") == 2
        # /health and /metrics need no credentials on loopback.
        assert http(f"{base}/health")[0] == 200
        assert http(f"{base}/metrics")[0] == 200
    finally:
        running.stop()
    records = audit_records(data_dir)
    user = "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]
    refusals = [r for r in records if r["Event"] == "security"]
    assert len(refusals) == 2
    assert {r["EventOutcomeDescription"].rsplit(": ", 1)[1] for r in refusals} == \
        {"no credentials", "invalid credentials"}
    assert all(r["EventOutcomeIndicator"] == 4 and r["EventID"]["code"] == "110114"
               for r in refusals)
    (query,) = [r for r in records if r["Event"] == "query"]
    assert participants(query)[user]["NetworkAccessPointID"] == LOOPBACK
    assert objects(query, "110181")[0]["ParticipantObjectQuery"]["PatientID"] == CANARY_ID
    (retrieve,) = [r for r in records if r["Event"] == "retrieve"]
    assert retrieve["Service"] == "WADO-RS" and retrieve["Instances"] == 2
    assert retrieve["EventOutcomeIndicator"] == 0
    assert objects(retrieve, "110180")[0]["ParticipantObjectID"] == study_uid
    assert objects(retrieve, "2")[0]["ParticipantObjectID"] == CANARY_ID


# -- pacs export / pacs import --------------------------------------------------------------------
def test_export_and_import_are_audited(tmp_path):
    data_dir = tmp_path / "data"
    running = ServerThread(make_config(data_dir)).start()
    study = canary_study(204, instances=2)
    try:
        store(running.port, study)
    finally:
        running.stop()
    out = tmp_path / "out"
    proc = pacs("export", "--data-dir", data_dir, "--patient", CANARY_ID, "--folder", out)
    assert proc.returncode == 0, proc.stderr
    (export,) = [r for r in audit_records(data_dir) if r["Event"] == "export"]
    assert export["EventID"]["code"] == "110106" and export["EventActionCode"] == "R"
    assert export["EventOutcomeIndicator"] == 0
    assert objects(export, "2")[0]["ParticipantObjectID"] == CANARY_ID
    assert objects(export, "110180")[0]["ParticipantObjectDescription"]["SOPClass"][0][
        "NumberOfInstances"] == 2
    roles = {p.get("RoleIDCode", {}).get("code") for p in export["ActiveParticipant"]}
    assert "110154" in roles  # destination media: the folder
    assert any(p["UserIsRequestor"] for p in export["ActiveParticipant"])  # the OS user

    other = tmp_path / "other"
    proc = pacs("import", "--data-dir", other, "--workers", "1", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (imported,) = [r for r in audit_records(other) if r["Event"] == "import"]
    assert imported["EventID"]["code"] == "110107" and imported["EventActionCode"] == "C"
    assert objects(imported, "110180")[0]["ParticipantObjectID"] == study[0].StudyInstanceUID
    assert objects(imported, "2")[0]["ParticipantObjectID"] == CANARY_ID
    roles = {p.get("RoleIDCode", {}).get("code") for p in imported["ActiveParticipant"]}
    assert "110155" in roles  # source media: the imported tree


# -- store-and-forward expiry is a deletion ---------------------------------------------------
def test_store_and_forward_expiry_is_a_deletion_record(tmp_path):
    from engine.config import config_from_mapping

    data_dir = tmp_path / "data"
    config = config_from_mapping({
        "network": {"host": LOOPBACK, "port": 0},
        "storage": {"data_dir": str(data_dir), "index_map_size": 1 << 30, "min_free_bytes": 0},
        "web": {"enabled": False},
        "routing": {"destinations": {"OUT": {"type": "folder", "path": str(tmp_path / "out")}},
                    "rules": [{"name": "all", "forward": ["OUT"]}], "retention": 0.3}})
    running = ServerThread(config).start()
    study = canary_study(205, instances=2)
    try:
        store(running.port, study)
        deleted = wait_for_records(data_dir, lambda r: r["Event"] == "delete", timeout=20)
    finally:
        running.stop()
    assert deleted, "no deletion record"
    record = deleted[0]
    assert record["EventID"]["code"] == "110105" and record["EventActionCode"] == "D"
    assert objects(record, "110180")[0]["ParticipantObjectID"] == study[0].StudyInstanceUID
    assert sum(objects(r, "110180")[0]["ParticipantObjectDescription"]["NumberOfInstances"]
               for r in deleted) == 2


# -- /health and pacs health ------------------------------------------------------------------------
def test_health_ready_then_unavailable_when_disk_below_reserve(tmp_path):
    healthy = ServerThread(make_config(tmp_path / "a", web={})).start()
    starved = ServerThread(make_config(tmp_path / "b", web={},
                                       storage={"min_free_bytes": 1 << 62})).start()
    try:
        status, body = http(f"http://{LOOPBACK}:{healthy.web_port}/health")
        report = json.loads(body)
        assert status == 200 and report["ready"] and report["status"] == "ok"
        assert set(report["checks"]) == {"event_loop", "index", "index_writer", "disk",
                                         "dicom_listener"}
        status, body = http(f"http://{LOOPBACK}:{starved.web_port}/health")
        report = json.loads(body)
        assert status == 503 and not report["ready"] and report["live"]
        assert report["checks"]["disk"]["ok"] is False
        assert report["checks"]["index"]["ok"] is True
        assert http(f"http://{LOOPBACK}:{starved.web_port}/health/live")[0] == 200

        ok = pacs("health", "--url", f"http://{LOOPBACK}:{healthy.web_port}/health",
                  timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.startswith("ok (200)")
        bad = pacs("health", "--url", f"http://{LOOPBACK}:{starved.web_port}/health",
                   timeout=60)
        assert bad.returncode == 1 and "FAIL  disk" in bad.stdout
        gone = pacs("health", "--url", f"http://{LOOPBACK}:{free_port()}/health",
                    "--timeout", "2", timeout=60)
        assert gone.returncode == 2 and "no answer" in gone.stderr
    finally:
        healthy.stop()
        starved.stop()


def test_metrics_and_health_on_their_own_port_without_web(tmp_path):
    port = free_port()
    running = ServerThread(make_config(tmp_path / "data",
                                       metrics={"port": port})).start()
    try:
        assert running.server.web is None and running.server.metrics_port == port
        store(running.port, canary_study(206, instances=1))
        samples = scrape(port)
        assert value(samples, "pacs_instances_received_total", via="dimse") == 1
        assert http(f"http://{LOOPBACK}:{port}/health")[0] == 200
        assert http(f"http://{LOOPBACK}:{port}/dicomweb/studies")[0] == 404
    finally:
        running.stop()


def test_two_servers_in_one_process_have_their_own_metrics(tmp_path):
    a = ServerThread(make_config(tmp_path / "a", web={})).start()
    b = ServerThread(make_config(tmp_path / "b", web={})).start()
    try:
        store(a.port, canary_study(207, instances=2))
        assert value(scrape(a.web_port), "pacs_instances_received_total", via="dimse") == 2
        assert value(scrape(b.web_port), "pacs_instances_received_total", via="dimse") == 0
    finally:
        a.stop()
        b.stop()


# -- diagnostic logs: JSON lines, and no patient data in them -------------------------------------
def _serve(tmp_path: Path, log_format: str):
    config = tmp_path / "pacs.toml"
    config.write_text(f'[logging]\nlevel = "DEBUG"\nformat = "{log_format}"\n'
                      '[storage]\nmin_free_bytes = 0\nindex_map_size = 1073741824\n'
                      '[web]\nenabled = false\n'
                      '[retrieve]\ndestinations = { DEST = "127.0.0.1:9" }\n')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--config", str(config), "--data-dir",
         str(tmp_path / "data"), "--host", LOOPBACK, "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    import socket
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    return proc, port


def _phi_traffic(port: int) -> None:
    """Stores, a query naming the patient, and queries whose keys cannot be parsed (the
    error texts would quote the values)."""
    study = canary_study(208, instances=2)
    store(port, study)
    ae = AE(ae_title="PHIPROBE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(LOOPBACK, port, ae_title="PACS")
    for key, text in (("PatientName", CANARY_NAME), ("PatientID", CANARY_ID),
                      ("PatientName", "CANARY^PHI^A^B^C=X=Y=Z"),
                      ("PatientID", "CANARY-PID-7731\\\\"),
                      ("PatientBirthDate", "CANARY-19700101")):
        query = type(study[0])()
        query.QueryRetrieveLevel = "STUDY"
        setattr(query, key, text)
        list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    move = type(study[0])()
    move.QueryRetrieveLevel = "STUDY"
    move.StudyInstanceUID = "CANARY-PID-7731*"
    list(assoc.send_c_move(move, "DEST", StudyRootQueryRetrieveInformationModelMove))
    assoc.release()


def test_json_logs_parse_and_hold_no_patient_data(tmp_path):
    proc, port = _serve(tmp_path, "json")
    try:
        _phi_traffic(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(p) for p in parsed)
    assert any(p.get("assoc", "").startswith("assoc#") and "established" in p["message"]
               for p in parsed)
    assert any(p["level"] == "DEBUG" for p in parsed)
    assert "CANARY" not in stderr
    audit = "\n".join(p.read_text() for p in (tmp_path / "data" / "audit").iterdir())
    assert CANARY_ID in audit and CANARY_NAME in audit


def test_phi_stays_out_of_the_diagnostic_log_in_process(tmp_path, caplog):
    caplog.set_level("DEBUG")
    data_dir = tmp_path / "data"
    running = ServerThread(make_config(data_dir, web={})).start()
    try:
        _phi_traffic(running.port)
        base = f"http://{LOOPBACK}:{running.web_port}/dicomweb"
        http(f"{base}/studies?PatientName=CANARY^PHI^A^B^C=X=Y=Z")
        http(f"{base}/studies?PatientID={CANARY_ID}")
    finally:
        running.stop()
    # The server's diagnostic log (the test's own pynetdicom client logs what it sends).
    server_log = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
        if r.name.startswith(("engine", "uvicorn", "starlette")))
    assert "established" in server_log and "C-FIND refused with" in server_log
    assert "CANARY" not in server_log
    audit = "\n".join(json.dumps(r) for r in audit_records(data_dir))
    assert CANARY_ID in audit and CANARY_NAME in audit


def test_text_log_format_still_default(tmp_path):
    proc, port = _serve(tmp_path, "text")
    try:
        store(port, canary_study(209, instances=1))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0
    import re
    assert re.search(r" INFO engine\.net\.listener: assoc#\d+ established", stderr)
    assert "CANARY" not in stderr
