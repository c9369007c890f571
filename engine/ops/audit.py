"""Audit records: the DICOM audit message (PS3.15 A.5) as JSON-ready dictionaries.

Each record carries the fields of the audit message, spelled as in its schema:
EventID (a DCM code), EventActionCode (C create, R read, D delete, E execute),
EventDateTime (UTC), EventOutcomeIndicator (0 success, 4 minor failure, 8 serious
failure, 12 major failure), EventTypeCode where the message has one,
ActiveParticipant (UserID = AE title or web user, UserIsRequestor, RoleIDCode,
NetworkAccessPointID), AuditSourceIdentification, and ParticipantObjectIdentification
(patients by Patient ID, studies by Study Instance UID with the instances per SOP
class, queries by SOP class with their keys).  Two fields are ours: `Event`, a short
name to filter on (association, store, query, retrieve, access, export, import,
delete, security, application), and `Association` (our association id, the one the
diagnostic log uses, so the two can be joined without patient data in the log).

Which message for what:

| what happened | EventID | action |
|---|---|---|
| an association (one record when it ends, or when rejected) | 110114 User Authentication, type 110122 Login | E |
| instances received (per association and study, or per STOW-RS request and study) | 110104 DICOM Instances Transferred | C |
| C-FIND, QIDO-RS | 110112 Query | E |
| C-MOVE, C-GET, WADO-RS retrieve (per operation and patient) | 110104 DICOM Instances Transferred | R |
| WADO-RS metadata | 110103 DICOM Instances Accessed | R |
| `pacs export` / `pacs import` (per study) | 110106 Export / 110107 Import | R / C |
| store-and-forward expiry (per study) | 110105 DICOM Study Deleted | D |
| known-peer refusal | 110113 Security Alert, type 110126 Node Authentication | E |
| DICOMweb 401 | 110114 User Authentication, type 110122 Login, outcome 4 | E |
| server start / stop | 110100 Application Activity, type 110120 / 110121 | E |
"""
from __future__ import annotations

import getpass
import ipaddress
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12


def _code(code: str, name: str, system: str = "DCM") -> dict:
    return {"code": code, "codeSystemName": system, "displayName": name}


APPLICATION_ACTIVITY = _code("110100", "Application Activity")
INSTANCES_ACCESSED = _code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _code("110104", "DICOM Instances Transferred")
STUDY_DELETED = _code("110105", "DICOM Study Deleted")
EXPORT = _code("110106", "Export")
IMPORT = _code("110107", "Import")
QUERY = _code("110112", "Query")
SECURITY_ALERT = _code("110113", "Security Alert")
USER_AUTHENTICATION = _code("110114", "User Authentication")

APPLICATION_START = _code("110120", "Application Start")
APPLICATION_STOP = _code("110121", "Application Stop")
LOGIN = _code("110122", "Login")
NODE_AUTHENTICATION = _code("110126", "Node Authentication")

ROLE_APPLICATION = _code("110150", "Application")
ROLE_DESTINATION = _code("110152", "Destination Role ID")
ROLE_SOURCE = _code("110153", "Source Role ID")
ROLE_DESTINATION_MEDIA = _code("110154", "Destination Media")
ROLE_SOURCE_MEDIA = _code("110155", "Source Media")

_PATIENT_NUMBER = _code("2", "Patient Number", "RFC-3881")
_STUDY_UID = _code("110180", "Study Instance UID")
_SOP_CLASS_UID = _code("110181", "SOP Class UID")

#: Study Root Query/Retrieve FIND, the model a QIDO-RS search is run as.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def now() -> str:
    """EventDateTime: UTC, milliseconds, 'Z'."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def participant(user_id: str, requestor: bool, role: dict | None = None,
                host: str = "", tls: "TLSIdentity | None" = None,
                alternative_id: str = "") -> dict:
    """An ActiveParticipant: an AE title, a web user or this application."""
    p: dict = {"UserID": user_id, "UserIsRequestor": requestor}
    if alternative_id:
        p["AlternativeUserID"] = alternative_id
    if role is not None:
        p["RoleIDCode"] = role
    if host:
        p["NetworkAccessPointID"] = host
        p["NetworkAccessPointTypeCode"] = "2" if _is_ip(host) else "1"
    if tls is not None and tls.tls:
        p["TLS"] = {"CertificateCN": list(tls.certificate_cns),
                    "CertificateSHA256": tls.certificate_sha256}
    return p


def operator(role: dict | None = None) -> dict:
    """The person running a command (`pacs import`, `pacs export`): the OS user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "uid:%d" % __import__("os").getuid()
    return participant(user, True, role, socket.gethostname())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class TLSIdentity:
    """What a TLS connection proved about the peer (engine.net.tls.PeerIdentity's fields)."""

    tls: bool = False
    certificate_cns: tuple[str, ...] = ()
    certificate_sha256: str = ""


def patient_object(patient_id: str) -> dict:
    return {"ParticipantObjectID": patient_id, "ParticipantObjectIDTypeCode": _PATIENT_NUMBER,
            "ParticipantObjectTypeCode": 1, "ParticipantObjectTypeCodeRole": 1}


def study_object(study_uid: str, sop_classes: Mapping[str, int] | None = None,
                 failed: int = 0) -> dict:
    """A study, with its instances per SOP class (ParticipantObjectDescription)."""
    obj: dict = {"ParticipantObjectID": study_uid, "ParticipantObjectIDTypeCode": _STUDY_UID,
                 "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3}
    if sop_classes is not None:
        description: dict = {"SOPClass": [{"UID": uid, "NumberOfInstances": count}
                                          for uid, count in sorted(sop_classes.items())]}
        if failed:
            description["NumberOfFailedInstances"] = failed
        obj["ParticipantObjectDescription"] = description
    return obj


def query_object(sop_class_uid: str, keys: Mapping[str, str], detail: Mapping[str, str]
                 ) -> dict:
    """A query: its SOP class, its keys (ParticipantObjectQuery) and details."""
    return {"ParticipantObjectID": sop_class_uid, "ParticipantObjectIDTypeCode": _SOP_CLASS_UID,
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
            "ParticipantObjectQuery": dict(keys),
            "ParticipantObjectDetail": [{"type": k, "value": v} for k, v in detail.items()]}


def record(event: str, event_id: dict, action: str, outcome: int,
           participants: Iterable[dict], objects: Iterable[dict] = (), *,
           type_code: dict | None = None, description: str = "", source_id: str = "",
           association: str = "", **extra) -> dict:
    """One audit record (see the module docstring for the fields)."""
    doc: dict = {"Event": event, "EventID": event_id, "EventActionCode": action,
                 "EventDateTime": now(), "EventOutcomeIndicator": outcome}
    if type_code is not None:
        doc["EventTypeCode"] = [type_code]
    if description:
        doc["EventOutcomeDescription"] = description
    doc["ActiveParticipant"] = list(participants)
    doc["AuditSourceIdentification"] = {"AuditSourceID": source_id or "pacs-engine",
                                        "AuditSourceTypeCode": "4"}
    objects = list(objects)
    if objects:
        doc["ParticipantObjectIdentification"] = objects
    if association:
        doc["Association"] = association
    doc.update(extra)
    return doc


def outcome_of(done: int, failed: int) -> int:
    """0 when nothing failed, 4 when some did, 8 when all did."""
    if not failed:
        return SUCCESS
    return SERIOUS_FAILURE if not done else MINOR_FAILURE


# -- per-study tallies (stores of an association, retrieves, exports, imports) ----------
@dataclass
class StudyTally:
    patient_id: str = ""
    sop_classes: dict[str, int] = field(default_factory=dict)
    failed: int = 0


class Tallies:
    """Instances per study (and SOP class) and failures, grouped by patient for records."""

    __slots__ = ("studies", "failed_unknown")

    def __init__(self) -> None:
        self.studies: dict[str, StudyTally] = {}
        #: Failures whose study is not known (unparseable datasets).
        self.failed_unknown = 0

    def add(self, study_uid: str, patient_id: str, sop_class_uid: str, ok: bool = True) -> None:
        if not study_uid:
            if not ok:
                self.failed_unknown += 1
            return
        tally = self.studies.get(study_uid)
        if tally is None:
            tally = self.studies[study_uid] = StudyTally(patient_id)
        if ok:
            tally.sop_classes[sop_class_uid] = tally.sop_classes.get(sop_class_uid, 0) + 1
        else:
            tally.failed += 1

    def __bool__(self) -> bool:
        return bool(self.studies) or bool(self.failed_unknown)

    def per_study(self) -> Iterable[tuple[str, StudyTally]]:
        return self.studies.items()

    def per_patient(self) -> dict[str, list[tuple[str, StudyTally]]]:
        grouped: dict[str, list[tuple[str, StudyTally]]] = {}
        for uid, tally in self.studies.items():
            grouped.setdefault(tally.patient_id, []).append((uid, tally))
        return grouped


def study_records(tallies: Tallies, make, per_patient: bool = False) -> list[dict]:
    """Records from tallies: `make(objects, done, failed)` → record, once per study (or per
    patient, with its studies)."""
    records = []
    groups = (tallies.per_patient().items() if per_patient else
              ((t.patient_id, [(uid, t)]) for uid, t in tallies.per_study()))
    for patient_id, studies in groups:
        objects = [study_object(uid, t.sop_classes, t.failed) for uid, t in studies]
        objects.append(patient_object(patient_id))
        done = sum(sum(t.sop_classes.values()) for _, t in studies)
        failed = sum(t.failed for _, t in studies)
        records.append(make(objects, done, failed))
    return records


__all__ = [
    "APPLICATION_ACTIVITY", "APPLICATION_START", "APPLICATION_STOP", "EXPORT", "IMPORT",
    "INSTANCES_ACCESSED", "INSTANCES_TRANSFERRED", "LOGIN", "MAJOR_FAILURE", "MINOR_FAILURE",
    "NODE_AUTHENTICATION", "QUERY", "operator", "ROLE_APPLICATION", "ROLE_DESTINATION",
    "ROLE_DESTINATION_MEDIA", "ROLE_SOURCE", "ROLE_SOURCE_MEDIA", "SECURITY_ALERT",
    "SERIOUS_FAILURE", "STUDY_DELETED", "STUDY_ROOT_FIND", "SUCCESS", "StudyTally", "Tallies",
    "TLSIdentity", "USER_AUTHENTICATION", "now", "outcome_of", "participant", "patient_object",
    "query_object", "record", "study_object", "study_records"]
