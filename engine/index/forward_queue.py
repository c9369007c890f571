"""The router's durable forward queue, in the index.

    forward_jobs          destination NUL job id (8 bytes, big endian) -> job (JSON)
    forward_due           destination NUL due time (ms, 8 bytes) job id -> stability
    forward_destinations  destination -> its health (JSON): failures, next probe,
                          last error, jobs in flight
    forward_warnings      destination NUL SOPInstanceUID -> warning status, time (JSON)
    forward_pending       SOPInstanceUID -> jobs left for it
    forward_done          SOPInstanceUID -> epoch seconds its last forward was delivered
    study_activity        StudyInstanceUID -> epoch seconds of its latest instance
    meta  forward_next_id

Jobs are added in the same write transaction as the instance's index entry,
so an instance whose C-STORE was acknowledged will be forwarded even if the
server is killed a moment later.  Every pending job has one forward_due key,
sorted by destination, then by the time it is due, then by arrival: a worker
reads its destination's due jobs in order without decoding any other job, and
a job whose trigger waits for a stable study carries the study UID and the
seconds of quiet in the key's value, so waiting jobs are skipped undecoded.

Two kinds of failure are told apart.  A destination that cannot be reached
(refused, unreachable, rejected) is backed off as a whole: its jobs are not
charged an attempt, one probe is made when the backoff ends, and only age
(`max_age`) dead-letters them, so an outage of hours loses nothing.  A
failure of one instance (a failure status, an abort while it was being sent)
is charged to that job, which backs off (capped exponential, jittered) and
turns dead after `max_attempts`.  Dead jobs wait for `pacs queue retry`.

In store-and-forward mode an instance whose every forward was delivered is
listed in forward_done, and removed from the archive once its retention has
passed; an instance with any job left (pending, dead, or dropped) is never
removed.
"""
from __future__ import annotations

import json
import random
import struct
from dataclasses import asdict, dataclass, field, replace

_NEXT_ID = b"forward_next_id"
_ID = struct.Struct(">Q")
_DUE = struct.Struct(">QQ")  # due time in ms, job id
_LAST = (1 << 64) - 1


def _ms(seconds: float) -> int:
    """A due time as the key's milliseconds (clamped: `now` may be inf, "everything")."""
    return _LAST if seconds * 1000 >= _LAST else max(0, int(seconds * 1000))
#: study_activity entries older than this are of no use to any stability trigger.
ACTIVITY_KEPT = 24 * 3600.0
#: Warning statuses of delivered instances are kept this long (`pacs queue warnings`).
WARNINGS_KEPT = 30 * 24 * 3600.0


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

    @property
    def due_key(self) -> bytes:
        return (self.order.destination.encode() + b"\x00" +
                _DUE.pack(_ms(self.next_attempt), self.job_id))

    @property
    def due_value(self) -> bytes:
        """What due() needs to hold a job back for a stable study, without decoding it."""
        if self.order.trigger == "instance" or self.order.stable_seconds <= 0:
            return b""
        return f"{self.order.stable_seconds!r}\x00{self.study_instance_uid}".encode()

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
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (min(attempts, 60) - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class DestinationHealth:
    """A destination's reachability, kept so `pacs queue` can show it."""

    failures: int = 0
    down_since: float = 0.0
    next_probe: float = 0.0
    last_error: str = ""
    in_flight: int = 0

    @property
    def down(self) -> bool:
        return self.failures > 0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw) -> "DestinationHealth":
        return cls(**json.loads(bytes(raw)))


@dataclass
class DestinationSummary:
    pending: int = 0
    retrying: int = 0
    dead: int = 0
    in_flight: int = 0
    oldest_created: float | None = None
    last_error: str = ""
    last_status: int | None = None
    #: Instances delivered with a warning status (kept in forward_warnings).
    warnings: int = 0
    down_since: float | None = None
    next_probe: float | None = None
    studies: set = field(default_factory=set)


def job_key(destination: str, job_id: int) -> bytes:
    return destination.encode() + b"\x00" + _ID.pack(job_id)


def _put(txn, tables, job: ForwardJob) -> None:
    txn.put(job.key, job.encode(), db=tables.forward_jobs)
    if job.state == "pending":
        txn.put(job.due_key, job.due_value, db=tables.forward_due)


def _stored(txn, tables, key: bytes) -> ForwardJob | None:
    raw = txn.get(key, db=tables.forward_jobs)
    return None if raw is None else ForwardJob.decode(raw)


def _remove(txn, tables, job: ForwardJob) -> None:
    """Delete a job as stored (its due key follows the stored next_attempt)."""
    txn.delete(job.key, db=tables.forward_jobs)
    if job.state == "pending":
        txn.delete(job.due_key, db=tables.forward_due)


# -- writes (writer thread) -----------------------------------------------------------
def add_jobs(txn, tables, sop_uid: str, study_uid: str, series_uid: str,
             orders: tuple[ForwardOrder, ...], now: float) -> None:
    raw = txn.get(_NEXT_ID, db=tables.meta)
    next_id = int(raw) if raw is not None else 1
    for order in orders:
        _put(txn, tables, ForwardJob(next_id, sop_uid, study_uid, series_uid, order, now,
                                     next_attempt=now))
        next_id += 1
    txn.put(_NEXT_ID, str(next_id).encode(), db=tables.meta)
    _count(txn, tables, sop_uid, len(orders))
    txn.delete(sop_uid.encode(), db=tables.forward_done)  # re-sent: not done any more
    if any(order.trigger != "instance" for order in orders):
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


def delivered(txn, tables, job: ForwardJob, now: float, record_done: bool,
              status: int = 0) -> None:
    """Delete a delivered job; with `record_done` (store-and-forward), an instance whose
    last job this was goes to forward_done (archive mode keeps no such list).  A warning
    status (the destination coerced or changed something) is kept per instance."""
    stored = _stored(txn, tables, job.key)
    if stored is None:
        return  # dropped meanwhile
    if status:
        txn.put(_warning_key(job.order.destination, job.sop_instance_uid),
                json.dumps({"status": status, "time": now}).encode(), db=tables.forward_warnings)
    _remove(txn, tables, stored)
    if _count(txn, tables, job.sop_instance_uid, -1) <= 0 and record_done:
        txn.put(job.sop_instance_uid.encode(), repr(now).encode(), db=tables.forward_done)


def failed(txn, tables, job: ForwardJob, status: int | None, error: str, now: float,
           policy: RetryPolicy) -> ForwardJob:
    """Charge a failed attempt to a job: back off, or dead after too many or too long."""
    stored = _stored(txn, tables, job.key)
    if stored is None:
        return job  # dropped meanwhile
    attempts = stored.attempts + 1
    dead = attempts >= policy.max_attempts or now - stored.created >= policy.max_age
    updated = replace(stored, attempts=attempts, last_status=status, last_error=error[:200],
                      state="dead" if dead else "pending",
                      next_attempt=now + (0.0 if dead else policy.delay(attempts)))
    _remove(txn, tables, stored)
    _put(txn, tables, updated)
    return updated


def expire_aged(txn, tables, destination: str, now: float, policy: RetryPolicy,
                error: str, limit: int = 1000) -> list[ForwardJob]:
    """Dead-letter pending jobs of a destination older than `max_age` (it stayed down).

    A job is due no earlier than it was created, so every job due before the
    cutoff is old enough: the due index finds them without decoding the rest.
    Jobs created before the cutoff but backing off until later are caught by
    `failed()` when they come due.
    """
    cutoff = now - policy.max_age
    prefix = destination.encode() + b"\x00"
    last = prefix + _DUE.pack(_ms(cutoff), _LAST)
    keys = []
    with txn.cursor(db=tables.forward_due) as cur:
        if cur.set_range(prefix):
            for key in cur.iternext(keys=True, values=False):
                if bytes(key) > last or len(keys) >= limit:
                    break
                keys.append(bytes(key))
    aged = []
    for key in keys:
        job_id = _DUE.unpack_from(key, len(prefix))[1]
        stored = _stored(txn, tables, job_key(destination, job_id))
        txn.delete(key, db=tables.forward_due)
        if stored is None:
            continue
        dead = replace(stored, state="dead", last_error=error[:200], next_attempt=now)
        txn.put(dead.key, dead.encode(), db=tables.forward_jobs)
        aged.append(dead)
    return aged


def _warning_key(destination: str, sop_uid: str) -> bytes:
    return destination.encode() + b"\x00" + sop_uid.encode()


def warnings(txn, tables, destination: str | None, limit: int
             ) -> list[tuple[str, str, int, float]]:
    """Instances delivered with a warning status: (destination, SOP Instance UID, status,
    time), newest first, at most `limit`."""
    prefix = destination.encode() + b"\x00" if destination else b""
    found = []
    with txn.cursor(db=tables.forward_warnings) as cur:
        if cur.set_range(prefix):
            for key, value in cur:
                if not bytes(key).startswith(prefix):
                    break
                name, uid = bytes(key).decode().split("\x00", 1)
                doc = json.loads(bytes(value))
                found.append((name, uid, doc["status"], doc["time"]))
    found.sort(key=lambda row: -row[3])
    return found[:limit]


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


def jobs(txn, tables, destination: str | None, study_uid: str | None,
         limit: int) -> list[ForwardJob]:
    """The queued jobs (pending and dead), by destination then arrival, at most `limit`."""
    found = []
    for job in _select(txn, tables, destination, study_uid):
        found.append(job)
        if len(found) >= limit:
            break
    return found


def retry(txn, tables, destination: str | None, study_uid: str | None, now: float) -> int:
    """Dead (or backing-off) jobs become due now, with a fresh attempt count; the
    destinations concerned are probed at once."""
    jobs = [j for j in _select(txn, tables, destination, study_uid)
            if j.state == "dead" or j.attempts]
    for job in jobs:
        _remove(txn, tables, job)
        _put(txn, tables, replace(job, state="pending", attempts=0, next_attempt=now,
                                  created=now))
    for name in {job.order.destination for job in jobs} | ({destination} if destination
                                                           else set()):
        health = destination_health(txn, tables, name)
        if health.down:
            set_destination_health(txn, tables, name, replace(health, next_probe=now))
    return len(jobs)


def drop(txn, tables, destination: str | None, study_uid: str | None,
         dead_only: bool) -> int:
    jobs = [j for j in _select(txn, tables, destination, study_uid)
            if j.state == "dead" or not dead_only]
    for job in jobs:  # a dropped forward never counts as delivered: the instance stays
        _remove(txn, tables, job)
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


def _forget_older(txn, table, before: float, time_of, limit: int) -> int:
    """Delete up to `limit` rows of `table` whose time (`time_of(value)`) is before `before`."""
    old = []
    with txn.cursor(db=table) as cur:
        for key, value in cur:
            if time_of(bytes(value)) < before:
                old.append(bytes(key))
                if len(old) >= limit:
                    break
    for key in old:
        txn.delete(key, db=table)
    return len(old)


def forget_old_warnings(txn, tables, before: float, limit: int = 1000) -> int:
    return _forget_older(txn, tables.forward_warnings, before,
                         lambda raw: json.loads(raw)["time"], limit)


def forget_quiet_studies(txn, tables, before: float, limit: int = 1000) -> int:
    """Drop study_activity entries older than `before`: a study quiet that long is
    stable for any trigger (a missing entry reads as quiet since forever)."""
    return _forget_older(txn, tables.study_activity, before, float, limit)


# -- destination health ----------------------------------------------------------------
def destination_health(txn, tables, destination: str) -> DestinationHealth:
    raw = txn.get(destination.encode(), db=tables.forward_destinations)
    return DestinationHealth() if raw is None else DestinationHealth.decode(raw)


def _keys_with_prefix(txn, table, prefix: bytes, limit: int) -> int:
    """Keys starting with `prefix`, counted without reading values, at most `limit`."""
    count = 0
    with txn.cursor(db=table) as cur:
        if not cur.set_range(prefix):
            return 0
        for key in cur.iternext(keys=True, values=False):
            if not bytes(key).startswith(prefix) or count >= limit:
                break
            count += 1
    return count


def counts(txn, tables, destinations, limit: int) -> dict[str, tuple[int, int, bool]]:
    """Per destination: (pending, dead, down), from keys only (metrics: no job decoded).

    Pending jobs have a forward_due key, dead ones only their forward_jobs key; each
    count stops at `limit`, so the cost is bounded whatever the backlog.
    """
    result = {}
    for name in destinations:
        prefix = name.encode() + b"\x00"
        queued = _keys_with_prefix(txn, tables.forward_jobs, prefix, limit)
        pending = _keys_with_prefix(txn, tables.forward_due, prefix, limit)
        result[name] = (pending, max(0, queued - pending),
                        destination_health(txn, tables, name).down)
    return result


def set_destination_health(txn, tables, destination: str, health: DestinationHealth) -> None:
    if health == DestinationHealth():
        txn.delete(destination.encode(), db=tables.forward_destinations)
    else:
        txn.put(destination.encode(), health.encode(), db=tables.forward_destinations)


def clear_in_flight(txn, tables) -> None:
    """At start-up: nothing is in flight any more (a killed server left counts behind)."""
    with txn.cursor(db=tables.forward_destinations) as cur:
        rows = [(bytes(k).decode(), DestinationHealth.decode(v)) for k, v in cur]
    for name, health in rows:
        set_destination_health(txn, tables, name, replace(health, in_flight=0))


# -- reads --------------------------------------------------------------------------
def due(txn, tables, destination: str, now: float, limit: int,
        skip: set[int]) -> list[ForwardJob]:
    """Pending jobs of `destination` whose time has come, oldest first.

    A job with a series/study trigger is due once its study has had no new
    instance for `stable_seconds`.
    """
    prefix = destination.encode() + b"\x00"
    last = prefix + _DUE.pack(_ms(now), _LAST)
    quiet_for: dict[bytes, float] = {}
    ids: list[int] = []
    with txn.cursor(db=tables.forward_due) as cur:
        if not cur.set_range(prefix):
            return []
        for key, value in cur:
            if bytes(key) > last:
                break
            job_id = _DUE.unpack_from(key, len(prefix))[1]
            if job_id in skip:
                continue
            if len(value):
                stable, study = bytes(value).split(b"\x00", 1)
                if study not in quiet_for:
                    raw = txn.get(study, db=tables.study_activity)
                    quiet_for[study] = now - (float(bytes(raw)) if raw is not None else 0.0)
                if quiet_for[study] < float(stable):
                    continue
            ids.append(job_id)
            if len(ids) >= limit:
                break
    jobs = (_stored(txn, tables, job_key(destination, job_id)) for job_id in ids)
    return [job for job in jobs if job is not None]


def summary(txn, tables) -> dict[str, DestinationSummary]:
    """Per destination with jobs (or down): counts, oldest job, last error, health."""
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
    with txn.cursor(db=tables.forward_warnings) as cur:
        for key in cur.iternext(keys=True, values=False):
            name = bytes(key).split(b"\x00", 1)[0].decode()
            if name in result:
                result[name].warnings += 1
    with txn.cursor(db=tables.forward_destinations) as cur:
        for key, value in cur:
            name, health = bytes(key).decode(), DestinationHealth.decode(value)
            if name not in result and not health.down:
                continue
            s = result.setdefault(name, DestinationSummary())
            s.in_flight = health.in_flight
            if health.down:
                s.down_since, s.next_probe = health.down_since, health.next_probe
                s.last_error, s.last_status = health.last_error, None
    return result


def rebuild_due(txn, tables) -> int:
    """Schema upgrade: one forward_due key per pending job."""
    txn.drop(tables.forward_due, delete=False)
    count = 0
    for job in _select(txn, tables, None, None):
        if job.state == "pending":
            txn.put(job.due_key, job.due_value, db=tables.forward_due)
            count += 1
    return count


__all__ = ["ACTIVITY_KEPT", "WARNINGS_KEPT", "forget_old_warnings", "DestinationHealth", "DestinationSummary", "ForwardJob",
           "ForwardOrder", "RetryPolicy", "add_jobs", "clear_in_flight", "counts", "delivered",
           "destination_health", "drop", "due", "expire_aged", "expired", "failed",
           "forget_done", "forget_quiet_studies", "job_key", "jobs", "rebuild_due", "retry",
           "set_destination_health", "summary", "warnings"]
