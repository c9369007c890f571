"""What happens on an association, turned into audit records and metric updates.

`Observers` is built once per server (audit sink, metrics, our AE title) and makes
one `AssociationObserver` per accepted connection.  The listener and the DIMSE
operations tell it plain facts (established, rejected, a C-STORE's status and
study, a C-FIND's keys and matches, a retrieve's results); it keeps the tallies and
writes the records:

- one `association` record per association, when it ends (released / aborted, with
  its duration and operation counts) or when it is rejected;
- one `store` record per association and study (PS3.15 A.5 "DICOM Instances
  Transferred": instances per SOP class, failures), written when the association ends;
- one `query` record per C-FIND, one `retrieve` record per C-MOVE / C-GET and patient;
- a `security` record when the known-peer table refuses a calling AE title.

Per C-STORE this costs a few dictionary updates and metric increments: no I/O, no
serialisation (the audit writer thread does that), nothing held.
"""
from __future__ import annotations

import socket
import time
from typing import Mapping

from engine.ops import audit as a
from engine.ops.audit_log import AuditSink, NullAudit
from engine.ops.metrics import Metrics

#: A-ASSOCIATE-RJ (result, source, diagnostic) → the reason label of the metric.
REJECT_REASONS = {
    (1, 1, 2): "application_context_not_supported",
    (1, 1, 3): "calling_ae_not_recognized",
    (1, 1, 7): "called_ae_not_recognized",
    (1, 3, 2): "protocol_version_not_supported",
    (2, 3, 2): "local_limit_exceeded",
}


def reject_reason(reason: tuple[int, int, int] | None) -> str:
    if reason is None:
        return "unknown"
    return REJECT_REASONS.get(tuple(reason), "rj_{}_{}_{}".format(*reason))


def is_stored(status: int) -> bool:
    """Success or warning: the instance is stored."""
    return status == 0 or status == 0x0001 or 0xB000 <= status <= 0xBFFF


class Observers:
    """Per server: where records and metrics go; makes the per-association observers."""

    def __init__(self, audit: AuditSink | None = None, metrics: Metrics | None = None,
                 ae_title: str = "PACS") -> None:
        self.audit = audit if audit is not None else NullAudit()
        self.metrics = metrics
        self.ae_title = ae_title
        self.host = socket.gethostname()

    @property
    def auditing(self) -> bool:
        return self.audit.enabled

    def association(self, assoc_id: str, peer_ip: str, tls: a.TLSIdentity | None = None
                    ) -> "AssociationObserver":
        return AssociationObserver(self, assoc_id, peer_ip, tls or a.TLSIdentity())

    def emit(self, record: dict) -> None:
        self.audit.emit(record)

    def us(self, role: dict | None = None, requestor: bool = False) -> dict:
        return a.participant(self.ae_title, requestor, role, self.host)

    def application(self, started: bool) -> None:
        """Server start / stop (110100 Application Activity)."""
        self.emit(a.record(
            "application", a.APPLICATION_ACTIVITY, "E", a.SUCCESS,
            [a.participant(self.ae_title, False, a.ROLE_APPLICATION, self.host)],
            type_code=a.APPLICATION_START if started else a.APPLICATION_STOP,
            source_id=self.ae_title))


class AssociationObserver:
    """One association's audit tallies and metric updates (see the module doc)."""

    __slots__ = ("o", "metrics", "assoc_id", "peer_ip", "tls", "calling", "called",
                 "started_at", "_started_wall", "established_", "ended", "known_peer_refusal",
                 "tallies", "operations", "_done")

    def __init__(self, observers: Observers, assoc_id: str, peer_ip: str,
                 tls: a.TLSIdentity) -> None:
        self.o = observers
        self.metrics = observers.metrics
        self.assoc_id = assoc_id
        self.peer_ip = peer_ip
        self.tls = tls
        self.calling = self.called = ""
        self.started_at = time.monotonic()
        self._started_wall = ""
        self.established_ = False
        self.ended = ""
        self.known_peer_refusal = False
        self.tallies = a.Tallies()
        self.operations: dict[str, int] = {}
        self._done = False

    # -- participants ------------------------------------------------------------------------
    def requestor(self, role: dict | None = None) -> dict:
        return a.participant(self.calling, True, role, self.peer_ip, self.tls)

    def _record(self, event: str, event_id: dict, action: str, outcome: int, participants,
                objects=(), **kw) -> None:
        self.o.emit(a.record(event, event_id, action, outcome, participants, objects,
                             source_id=self.o.ae_title, association=self.assoc_id, **kw))

    # -- the association -----------------------------------------------------------------
    def established(self, calling: str, called: str) -> None:
        self.calling, self.called = calling, called
        self.established_ = True
        self.started_at = time.monotonic()
        self._started_wall = a.now()
        if self.metrics is not None:
            self.metrics.associations_accepted.inc()

    def refused_peer(self, calling: str, why: str) -> None:
        """The known-peer table refused `calling` (the rejection follows)."""
        self.known_peer_refusal = True
        if self.o.auditing:
            self.calling = calling
            self._record("security", a.SECURITY_ALERT, "E", a.MINOR_FAILURE,
                         [self.requestor(), self.o.us()], type_code=a.NODE_AUTHENTICATION,
                         description=f"known-peer refusal: {why}")

    def rejected(self, reason: tuple[int, int, int] | None, calling: str, called: str) -> None:
        self._done = True
        if self.metrics is not None:
            self.metrics.rejected("known_peer_refused" if self.known_peer_refusal
                                  else reject_reason(reason))
        if self.o.auditing:
            self.calling, self.called = calling, called
            text = "{}/{}/{}".format(*reason) if reason else "?"
            self._record("association", a.USER_AUTHENTICATION, "E", a.MINOR_FAILURE,
                         [self.requestor(), self._called()], type_code=a.LOGIN,
                         description=f"rejected {text} ({reject_reason(reason)})",
                         AssociationOutcome="rejected")

    def _called(self) -> dict:
        return a.participant(self.called or self.o.ae_title, False, None, self.o.host)

    def ending(self, how: str) -> None:
        """How it ends: "released", "aborted by peer", "aborted: <why>" (first one wins)."""
        if not self.ended:
            self.ended = how

    def closed(self) -> None:
        """The connection is gone: the association record and the per-study store records."""
        if self._done:
            return
        self._done = True
        if not self.established_:
            return  # never an association (no A-ASSOCIATE-RQ, or rejected)
        how = self.ended or "aborted: connection closed"
        released = how == "released"
        if self.metrics is not None:
            self.metrics.ended("released" if released else "aborted")
        if not self.o.auditing:
            return
        self._record("association", a.USER_AUTHENTICATION, "E",
                     a.SUCCESS if released else a.MINOR_FAILURE,
                     [self.requestor(), self._called()], type_code=a.LOGIN, description=how,
                     AssociationOutcome="released" if released else "aborted",
                     AssociationStart=self._started_wall,
                     AssociationSeconds=round(time.monotonic() - self.started_at, 3),
                     Operations=dict(self.operations))
        self._store_records()

    def _store_records(self) -> None:
        tallies = self.tallies
        participants = [self.requestor(a.ROLE_SOURCE), self.o.us(a.ROLE_DESTINATION)]

        def make(objects, done, failed):
            return a.record("store", a.INSTANCES_TRANSFERRED, "C", a.outcome_of(done, failed),
                            participants, objects, source_id=self.o.ae_title,
                            association=self.assoc_id, description=_counted(done, failed))

        for r in a.study_records(tallies, make):
            self.o.emit(r)
        if tallies.failed_unknown:
            self._record("store", a.INSTANCES_TRANSFERRED, "C", a.SERIOUS_FAILURE, participants,
                         description=f"{tallies.failed_unknown} instance(s) refused before "
                                     "their study was known")

    def _count(self, service: str) -> None:
        self.operations[service] = self.operations.get(service, 0) + 1

    # -- operations ------------------------------------------------------------------------
    def echo(self, status: int = 0) -> None:
        self._count("C-ECHO")
        if self.metrics is not None:
            self.metrics.dimse("C-ECHO", status)

    def stored(self, sop_class_uid: str, study_uid: str, patient_id: str, status: int,
               size: int, seconds: float | None) -> None:
        """One C-STORE answered with `status` (the hot path: keep it cheap)."""
        ok = is_stored(status)
        self.operations["C-STORE"] = self.operations.get("C-STORE", 0) + 1
        m = self.metrics
        if m is not None:
            m.dimse("C-STORE", status)
            if ok:
                m.received("dimse", size)
            if seconds is not None:
                m.store_commit_seconds.observe(seconds)
        self.tallies.add(study_uid, patient_id, sop_class_uid, ok)

    def queried(self, sop_class_uid: str, keys: Mapping[str, str], transfer_syntax: str,
                status: int, matches: int, seconds: float, detail: str = "") -> None:
        self._count("C-FIND")
        if self.metrics is not None:
            self.metrics.dimse("C-FIND", status)
            self.metrics.find_seconds.observe(seconds)
        if self.o.auditing:
            outcome = a.SUCCESS if status in (0, 0xFE00) else a.MINOR_FAILURE
            self._record("query", a.QUERY, "E", outcome, [self.requestor(), self.o.us()],
                         [a.query_object(sop_class_uid, keys,
                                         {"TransferSyntax": transfer_syntax})],
                         description=detail or f"{matches} match(es), status "
                                               f"0x{status:04X}",
                         Matches=matches)

    def suboperation(self, service: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.suboperation(service, seconds)

    def retrieved(self, service: str, status: int, tallies: a.Tallies | None,
                  destination_ae: str, destination_host: str, detail: str) -> None:
        """A C-MOVE / C-GET ended with `status`: one record per patient of what it sent."""
        self._count(service)
        if self.metrics is not None:
            self.metrics.dimse(service, status)
        if not self.o.auditing:
            return
        if service == "C-GET":
            destination = self.requestor(a.ROLE_DESTINATION)
            participants = [self.o.us(a.ROLE_SOURCE), destination]
        else:
            participants = [self.o.us(a.ROLE_SOURCE),
                            a.participant(destination_ae, False, a.ROLE_DESTINATION,
                                          destination_host),
                            self.requestor()]
        extra = {"Service": service, "FinalStatus": f"0x{status:04X}"}

        def make(objects, done, failed):
            return a.record("retrieve", a.INSTANCES_TRANSFERRED, "R",
                            a.outcome_of(done, failed) if status not in (0xFE00,)
                            else a.MINOR_FAILURE, participants, objects,
                            source_id=self.o.ae_title, association=self.assoc_id,
                            description=f"{detail}; {_counted(done, failed)}", **extra)

        records = a.study_records(tallies, make, per_patient=True) if tallies else []
        if not records:
            outcome = a.SUCCESS if status == 0 else a.SERIOUS_FAILURE
            records = [a.record("retrieve", a.INSTANCES_TRANSFERRED, "R", outcome, participants,
                                source_id=self.o.ae_title, association=self.assoc_id,
                                description=detail, **extra)]
        for r in records:
            self.o.emit(r)

    def commitment(self, status: int) -> None:
        self._count("N-ACTION")
        if self.metrics is not None:
            self.metrics.dimse("N-ACTION", status)


def _counted(done: int, failed: int) -> str:
    return f"{done} instance(s)" + (f", {failed} failed" if failed else "")


__all__ = ["AssociationObserver", "Observers", "is_stored", "reject_reason"]
