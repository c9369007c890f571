"""Audit records (engine/ops/audit.py) and the per-association observer (observer.py)."""
from __future__ import annotations

import json

from engine.ops import audit as a
from engine.ops.audit_log import AuditSink
from engine.ops.metrics import Metrics
from engine.ops.observer import Observers, reject_reason


class ListSink(AuditSink):
    enabled = True

    def __init__(self) -> None:
        self.records: list[dict] = []

    def emit(self, record: dict) -> None:
        self.records.append(json.loads(json.dumps(record)))  # must be JSON as it is


def sample(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_record_has_the_audit_message_fields():
    r = a.record("store", a.INSTANCES_TRANSFERRED, "C", a.SUCCESS,
                 [a.participant("CT1", True, a.ROLE_SOURCE, "10.0.0.5",
                                a.TLSIdentity(True, ("ct1.example",), "ab" * 32))],
                 [a.study_object("1.2.3", {"1.2.840.10008.5.1.4.1.1.2": 4}, failed=1),
                  a.patient_object("PID1")],
                 source_id="PACS", association="assoc#9", description="4 instance(s)")
    assert r["EventID"] == {"code": "110104", "codeSystemName": "DCM",
                            "displayName": "DICOM Instances Transferred"}
    assert r["EventActionCode"] == "C" and r["EventOutcomeIndicator"] == 0
    assert r["EventDateTime"].endswith("Z") and "T" in r["EventDateTime"]
    (p,) = r["ActiveParticipant"]
    assert p["UserID"] == "CT1" and p["UserIsRequestor"] is True
    assert p["NetworkAccessPointID"] == "10.0.0.5" and p["NetworkAccessPointTypeCode"] == "2"
    assert p["RoleIDCode"]["code"] == "110153"
    assert p["TLS"] == {"CertificateCN": ["ct1.example"], "CertificateSHA256": "ab" * 32}
    study, patient = r["ParticipantObjectIdentification"]
    assert study["ParticipantObjectIDTypeCode"]["code"] == "110180"
    assert study["ParticipantObjectDescription"] == {
        "SOPClass": [{"UID": "1.2.840.10008.5.1.4.1.1.2", "NumberOfInstances": 4}],
        "NumberOfFailedInstances": 1}
    assert patient["ParticipantObjectIDTypeCode"]["code"] == "2"
    assert patient["ParticipantObjectTypeCode"] == 1 and patient["ParticipantObjectID"] == "PID1"
    assert r["AuditSourceIdentification"]["AuditSourceID"] == "PACS"
    assert r["Association"] == "assoc#9"
    assert a.participant("ws", False, host="ws1.example")["NetworkAccessPointTypeCode"] == "1"


def test_outcome_and_tallies_per_study_and_patient():
    assert a.outcome_of(3, 0) == 0 and a.outcome_of(3, 1) == 4 and a.outcome_of(0, 2) == 8
    tallies = a.Tallies()
    assert not tallies
    tallies.add("1.1", "P1", "CT", True)
    tallies.add("1.1", "P1", "CT", True)
    tallies.add("1.1", "P1", "SR", False)
    tallies.add("1.2", "P1", "MR", True)
    tallies.add("2.1", "P2", "CT", True)
    tallies.add("", "", "CT", False)
    assert tallies.failed_unknown == 1
    made = []
    per_study = a.study_records(tallies, lambda o, d, f: made.append((o, d, f)) or (d, f))
    assert per_study == [(2, 1), (1, 0), (1, 0)]
    per_patient = a.study_records(tallies, lambda o, d, f: ([x["ParticipantObjectID"]
                                                              for x in o], d, f), True)
    assert per_patient == [(["1.1", "1.2", "P1"], 3, 1), (["2.1", "P2"], 1, 0)]


def test_operator_is_the_os_user_on_this_host():
    p = a.operator(a.ROLE_SOURCE)
    assert p["UserIsRequestor"] is True and p["UserID"] and p["NetworkAccessPointID"]


def test_association_released_gives_one_record_and_per_study_stores():
    sink, metrics = ListSink(), Metrics()
    observers = Observers(sink, metrics, "PACS")
    o = observers.association("assoc#1", "10.1.2.3")
    o.established("CT1", "PACS")
    o.stored("1.2.840.10008.5.1.4.1.1.2", "1.9.1", "PID", 0x0000, 1000, 0.004)
    o.stored("1.2.840.10008.5.1.4.1.1.2", "1.9.1", "PID", 0xB000, 1000, 0.004)  # kept
    o.stored("1.2.840.10008.5.1.4.1.1.2", "1.9.2", "PID", 0xA700, 0, 0.001)
    o.stored("1.2.840.10008.5.1.4.1.1.2", "", "", 0xC211, 0, None)  # refused up front
    o.echo()
    o.ending("released")
    o.ending("aborted: idle timeout")  # the first ending counts
    o.closed()
    o.closed()  # once only
    events = [r["Event"] for r in sink.records]
    assert events == ["association", "store", "store", "store"]
    assoc = sink.records[0]
    assert assoc["AssociationOutcome"] == "released" and assoc["EventOutcomeIndicator"] == 0
    assert assoc["Operations"] == {"C-STORE": 4, "C-ECHO": 1}
    assert assoc["EventTypeCode"][0]["code"] == "110122"
    first, second, unknown = sink.records[1:]
    assert first["EventOutcomeIndicator"] == 0
    assert first["ParticipantObjectIdentification"][0]["ParticipantObjectDescription"][
        "SOPClass"][0]["NumberOfInstances"] == 2
    assert second["EventOutcomeIndicator"] == 8  # its only instance failed
    assert unknown["EventOutcomeIndicator"] == 8 and "ParticipantObjectIdentification" \
        not in unknown
    assert sample(metrics, "pacs_associations_accepted_total") == 1
    assert sample(metrics, "pacs_associations_ended_total", how="released") == 1
    assert sample(metrics, "pacs_instances_received_total", via="dimse") == 2
    assert sample(metrics, "pacs_received_bytes_total", via="dimse") == 2000
    assert sample(metrics, "pacs_dimse_responses_total", service="C-STORE", status="A700") == 1
    assert sample(metrics, "pacs_dimse_responses_total", service="C-STORE", status="B000") == 1
    assert sample(metrics, "pacs_store_commit_seconds_count") == 3


def test_rejection_and_known_peer_refusal():
    sink, metrics = ListSink(), Metrics()
    observers = Observers(sink, metrics, "PACS")
    o = observers.association("assoc#2", "10.9.9.9")
    o.refused_peer("EVIL", "calling AE title is not a known peer")
    o.rejected((1, 1, 3), "EVIL", "PACS")
    o.closed()  # nothing more: it never was an association
    assert [r["Event"] for r in sink.records] == ["security", "association"]
    alert, rejection = sink.records
    assert alert["EventID"]["code"] == "110113" and alert["EventOutcomeIndicator"] == 4
    assert alert["EventTypeCode"][0]["code"] == "110126"
    assert rejection["AssociationOutcome"] == "rejected"
    assert "1/1/3" in rejection["EventOutcomeDescription"]
    assert sample(metrics, "pacs_associations_rejected_total", reason="known_peer_refused") == 1
    other = observers.association("assoc#3", "10.9.9.9")
    other.rejected((2, 3, 2), "CT1", "PACS")
    assert sample(metrics, "pacs_associations_rejected_total",
                  reason="local_limit_exceeded") == 1
    assert reject_reason((1, 2, 9)) == "rj_1_2_9" and reject_reason(None) == "unknown"


def test_aborted_and_never_established_connections():
    sink = ListSink()
    observers = Observers(sink, None, "PACS")
    silent = observers.association("assoc#4", "10.0.0.1")
    silent.ending("aborted: ARTIM")
    silent.closed()
    assert sink.records == []  # no A-ASSOCIATE-RQ: not an association
    o = observers.association("assoc#5", "10.0.0.1")
    o.established("MR1", "PACS")
    o.closed()
    (record,) = sink.records
    assert record["AssociationOutcome"] == "aborted" and record["EventOutcomeIndicator"] == 4
    assert record["EventOutcomeDescription"] == "aborted: connection closed"


def test_query_and_retrieve_records():
    sink, metrics = ListSink(), Metrics()
    o = Observers(sink, metrics, "PACS").association("assoc#6", "10.0.0.2")
    o.established("WS1", "PACS")
    o.queried("1.2.840.10008.5.1.4.1.2.2.1", {"QueryRetrieveLevel": "STUDY", "PatientID": "X*"},
              "1.2.840.10008.1.2", 0x0000, 7, 0.02)
    tallies = a.Tallies()
    tallies.add("1.5", "P", "CT", True)
    tallies.add("1.5", "P", "CT", False)
    o.suboperation("C-MOVE", 0.01)
    o.retrieved("C-MOVE", 0xB000, tallies, "DEST", "10.0.0.9", "1 completed, 1 failed")
    o.retrieved("C-MOVE", 0xA801, None, "NOWHERE", "", "unknown move destination")
    query, partly, refused = sink.records
    q = query["ParticipantObjectIdentification"][0]
    assert q["ParticipantObjectQuery"]["PatientID"] == "X*" and query["Matches"] == 7
    assert q["ParticipantObjectDetail"] == [{"type": "TransferSyntax",
                                             "value": "1.2.840.10008.1.2"}]
    assert partly["EventOutcomeIndicator"] == 4 and partly["FinalStatus"] == "0xB000"
    users = {p["UserID"]: p for p in partly["ActiveParticipant"]}
    assert users["DEST"]["NetworkAccessPointID"] == "10.0.0.9"
    assert users["WS1"]["UserIsRequestor"] and not users["PACS"]["UserIsRequestor"]
    assert refused["EventOutcomeIndicator"] == 8
    assert sample(metrics, "pacs_find_seconds_count") == 1
    assert sample(metrics, "pacs_retrieve_suboperation_seconds_count", service="C-MOVE") == 1
    assert sample(metrics, "pacs_dimse_responses_total", service="C-MOVE", status="A801") == 1


def test_a_disabled_trail_still_counts_metrics():
    from engine.ops.audit_log import NullAudit

    metrics = Metrics()
    o = Observers(NullAudit(), metrics, "PACS").association("assoc#7", "10.0.0.3")
    o.established("CT", "PACS")
    o.stored("1.2", "1.3", "P", 0, 10, 0.001)
    o.ending("released")
    o.closed()
    assert sample(metrics, "pacs_instances_received_total", via="dimse") == 1
