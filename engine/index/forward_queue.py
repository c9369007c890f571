"""The router's durable forward queue, in the index.

    forward_jobs     destination NUL job id (8 bytes, big endian) -> job (JSON)
    forward_pending  SOPInstanceUID -> jobs left for it
    forward_done     SOPInstanceUID -> epoch seconds its last forward was delivered
    study_activity   StudyInstanceUID -> epoch seconds of its latest instance
    meta  forward_next_id

Jobs are added in the same write transaction as the instance's index entry,
so an instance whose C-STORE was acknowledged will be forwarded even if the
server is killed a moment later.  Keys sort by destination, then by arrival:
each destination's workers read their own jobs in order.  A job stays until it
is delivered (deleted) or dropped by an administrator; after too many attempts
or too long it turns "dead" and waits for `pacs queue retry`.  In
store-and-forward mode an instance whose every forward was delivered is listed
in forward_done, and removed from the archive once its retention has passed;
an instance with any job left (pending, dead, or dropped) is never removed.
"""
from __future__ import annotations

import json
import random
import struct
from dataclasses import asdict, dataclass, field, replace

_NEXT_ID = b"forward_next_id"
_ID = struct.Struct(">Q")


@dataclass(frozen=True)
class ForwardOrder:
    """One destination an instance must reach, and how (from the routing rules)."""

    destination: str
    rule: str = ""
    #: "as-stored", "uncompressed" or "jpeg2000-lossless".
    transfer_syntax: str = "as-stored"
    #: Attribute changes for the copy sent: JSON objects (engine.routing.changes).
    changes: tuple = ()
    deidentify: bool = False
    #: "instance", or "series"/"study": wait until no new instance for stable_seconds.
    trigger: str = "instance"
    stable_seconds: float = 0.0


@dataclass(frozen=True)
class ForwardJob:
    job_id: int
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    order: ForwardOrder
    created: float
    attempts: int = 0
    next_attempt: float = 0.0
    state: str = "pending"  # or "dead"
    last_status: int | None = None
    last_error: str = ""

    @property
    def key(self) -> bytes:
        return job_key(self.order.destination, self.job_id)

    def encode(self) -> bytes:
        doc = asdict(self)
        doc["order"]["changes"] = list(self.order.changes)
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw) -> "ForwardJob":
        doc = json.loads(bytes(raw))
        order = doc.pop("order")
        order["changes"] = tuple(order.get("changes", ()))
        return cls(order=ForwardOrder(**order), **doc)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    max_age: float = 72 * 3600.0
    backoff_base: float = 5.0
    backoff_max: float = 600.0

    def delay(self, attempts: int) -> float:
        """Capped exponential backoff with full jitter (attempts >= 1)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempts - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class DestinationSummary:
    pending: int = 0
    retrying: int = 0
    dead: int = 0
    oldest_created: float | None = None
    last_error: str = ""
    last_status: int | None = None
    studies: set = field(default_factory=set)


def job_key(destination: str, job_id: int) -> bytes:
    return destination.encode() + b"\x00" + _ID.pack(job_id)


# -- writes (writer thread) -----------------------------------------------------------
def add_jobs(txn, tables, sop_uid: str, study_uid: str, series_uid: str,
             orders: tuple[ForwardOrder, ...], now: float) -> None:
    raw = txn.get(_NEXT_ID, db=tables.meta)
    next_id = int(raw) if raw is not None else 1
    for order in orders:
        job = ForwardJob(next_id, sop_uid, study_uid, series_uid, order, now,
                         next_attempt=now)
        txn.put(job.key, job.encode(), db=tables.forward_jobs)
        next_id += 1
    txn.put(_NEXT_ID, str(next_id).encode(), db=tables.meta)
    _count(txn, tables, sop_uid, len(orders))
    txn.delete(sop_uid.encode(), db=tables.forward_done)  # re-sent: not done any more
    txn.put(study_uid.encode(), repr(now).encode(), db=tables.study_activity)


def _count(txn, tables, sop_uid: str, delta: int) -> int:
    key = sop_uid.encode()
    raw = txn.get(key, db=tables.forward_pending)
    left = (int(raw) if raw is not None else 0) + delta
    if left > 0:
        txn.put(key, str(left).encode(), db=tables.forward_pending)
    else:
        txn.delete(key, db=tables.forward_pending)
    return left


def delivered(txn, tables, job: ForwardJob, now: float, record_done: bool) -> None:
    """Delete a delivered job; with `record_done` (store-and-forward), an instance whose
    last job this was goes to forward_done (archive mode keeps no such list)."""
    if txn.delete(job.key, db=tables.forward_jobs) and \
            _count(txn, tables, job.sop_instance_uid, -1) <= 0 and record_done:
        txn.put(job.sop_instance_uid.encode(), repr(now).encode(), db=tables.forward_done)


def failed(txn, tables, job: ForwardJob, status: int | None, error: str, now: float,
           policy: RetryPolicy) -> ForwardJob:
    """Record a failed attempt: back off, or dead after too many attempts or too long."""
    if txn.get(job.key, db=tables.forward_jobs) is None:
        return job  # dropped meanwhile
    attempts = job.attempts + 1
    dead = attempts >= policy.max_attempts or now - job.created >= policy.max_age
    updated = replace(job, attempts=attempts, last_status=status, last_error=error[:200],
                      state="dead" if dead else "pending",
                      next_attempt=now + (0.0 if dead else policy.delay(attempts)))
    txn.put(job.key, updated.encode(), db=tables.forward_jobs)
    return updated


def _select(txn, tables, destination: str | None, study_uid: str | None):
    prefix = destination.encode() + b"\x00" if destination else b""
    with txn.cursor(db=tables.forward_jobs) as cur:
        if not cur.set_range(prefix):
            return
        for key, value in cur:
            if not bytes(key).startswith(prefix):
                break
            job = ForwardJob.decode(value)
            if study_uid is None or job.study_instance_uid == study_uid:
                yield job


def retry(txn, tables, destination: str | None, study_uid: str | None, now: float) -> int:
    """Dead (or backing-off) jobs become due now, with a fresh attempt count."""
    jobs = [j for j in _select(txn, tables, destination, study_uid)
            if j.state == "dead" or j.attempts]
    for job in jobs:
        txn.put(job.key, replace(job, state="pending", attempts=0, next_attempt=now,
                                 created=now).encode(), db=tables.forward_jobs)
    return len(jobs)


def drop(txn, tables, destination: str | None, study_uid: str | None,
         dead_only: bool) -> int:
    jobs = [j for j in _select(txn, tables, destination, study_uid)
            if j.state == "dead" or not dead_only]
    for job in jobs:  # a dropped forward never counts as delivered: the instance stays
        txn.delete(job.key, db=tables.forward_jobs)
        _count(txn, tables, job.sop_instance_uid, -1)
    return len(jobs)


def expired(txn, tables, before: float, limit: int) -> list[str]:
    """Instances delivered everywhere before `before` (store-and-forward removal)."""
    found = []
    with txn.cursor(db=tables.forward_done) as cur:
        for key, value in cur:
            if float(bytes(value)) < before:
                found.append(bytes(key).decode())
                if len(found) >= limit:
                    break
    return found


def forget_done(txn, tables, sop_uid: str) -> bool:
    """Take an instance off forward_done; False if it has jobs again (keep it)."""
    txn.delete(sop_uid.encode(), db=tables.forward_done)
    return txn.get(sop_uid.encode(), db=tables.forward_pending) is None


# -- reads --------------------------------------------------------------------------
def due(txn, tables, destination: str, now: float, limit: int,
        skip: set[int]) -> list[ForwardJob]:
    """Pending jobs of `destination` whose time has come, oldest first.

    A job with a series/study trigger is due once its study has had no new
    instance for `stable_seconds`.
    """
    found: list[ForwardJob] = []
    activity: dict[str, float] = {}
    for job in _select(txn, tables, destination, None):
        if job.state != "pending" or job.job_id in skip or job.next_attempt > now:
            continue
        if job.order.trigger != "instance":
            study = job.study_instance_uid
            if study not in activity:
                raw = txn.get(study.encode(), db=tables.study_activity)
                activity[study] = float(bytes(raw)) if raw is not None else 0.0
            if now - activity[study] < job.order.stable_seconds:
                continue
        found.append(job)
        if len(found) >= limit:
            break
    return found


def summary(txn, tables) -> dict[str, DestinationSummary]:
    result: dict[str, DestinationSummary] = {}
    for job in _select(txn, tables, None, None):
        s = result.setdefault(job.order.destination, DestinationSummary())
        if job.state == "dead":
            s.dead += 1
        else:
            s.pending += 1
            if job.attempts:
                s.retrying += 1
        if s.oldest_created is None or job.created < s.oldest_created:
            s.oldest_created = job.created
        if job.last_error:
            s.last_error, s.last_status = job.last_error, job.last_status
    return result


__all__ = ["DestinationSummary", "ForwardJob", "ForwardOrder", "RetryPolicy", "add_jobs",
           "delivered", "drop", "due", "expired", "failed", "forget_done", "job_key",
           "retry", "summary"]
