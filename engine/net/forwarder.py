"""Delivery of the router's forward queue: per-destination workers with retries.

Each destination gets `max_associations` workers.  A worker claims the oldest
due jobs of its destination (a batch), sends them on its association (or
writes them to a folder), and records each outcome.  The association stays
open for `linger` seconds after a batch, so instances arriving one by one
during live ingest do not each pay for an association.

Outcomes (see index/forward_queue.py for the rules):
- delivered (success or warning status): the job is deleted.  Deletions are
  grouped, a few per commit, by the bookkeeping task; a crash before that
  commit re-sends them, which at-least-once delivery allows.
- a failure of one instance (failure status, the peer aborting while it is
  sent): charged to that job, which backs off and is dead-lettered after
  `max_attempts`.
- the destination cannot be reached: no job is charged; the destination is
  down, backed off as a whole (one probe per backoff), and `max_age` alone
  dead-letters what waits for it.

Ingest wakes the workers after each commit, so forwarding starts at once;
otherwise they poll for retries that come due.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field, replace

from engine.codec.workers import CodecWorkers
from engine.index.forward_queue import (
    ACTIVITY_KEPT, WARNINGS_KEPT, DestinationHealth, ForwardJob, RetryPolicy)
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter
from engine.net.folder_delivery import write_to_folder
from engine.net.peer_session import PeerSession, is_success
from engine.net.requestor import AssociationFailed
from engine.net.retrieve_service import CopyRecipe
from engine.ops import audit
from engine.ops.audit import Tallies
from engine.query.retrieve import RetrieveResolver, StoredInstance
from engine.routing.copy import prepare_copy
from engine.routing.deidentify import UIDMapper
from engine.routing.destinations import DicomDestination, Destination, FolderDestination

log = logging.getLogger(__name__)

_BATCH = 64
_POLL = 1.0
#: Delivered jobs are deleted in one commit once this many wait, or after _FLUSH_DELAY.
_FLUSH_SIZE = 256
_FLUSH_DELAY = 0.25
#: In-flight counts (for `pacs queue`) are written at most this often: not a commit per send.
_PUBLISH_INTERVAL = 1.0
#: After a wake-up, wait this long for more instances of a live ingest to join the batch:
#: per-batch costs (index reads, thread hops) then fall on several instances, not one.
_GATHER = 0.05


@dataclass
class _Link:
    """The runtime state of one destination, shared by its workers."""

    destination: Destination
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    claim: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Job ids claimed and not yet recorded (delivered ones until their deletion commits).
    in_flight: set = field(default_factory=set)
    health: DestinationHealth = field(default_factory=DestinationHealth)
    probing: bool = False
    published_in_flight: int = 0

    @property
    def name(self) -> str:
        return self.destination.name


class Forwarder:
    def __init__(self, destinations: dict[str, Destination], reader: IndexReader,
                 writer: GroupCommitWriter, resolver: RetrieveResolver, codec: CodecWorkers,
                 policy: RetryPolicy, our_ae_title: str, max_pdu_length: int,
                 connect_timeout: float, response_timeout: float,
                 deidentify_secret: str, retention: float = 0.0, linger: float = 5.0,
                 client_ssl: ssl.SSLContext | None = None, observers=None) -> None:
        #: The audit trail (engine.ops.observer.Observers): store-and-forward deletions.
        self.observers = observers
        self.destinations = destinations
        self.reader = reader
        self.writer = writer
        self.resolver = resolver
        self.codec = codec
        self.policy = policy
        self.our_ae_title = our_ae_title
        self.max_pdu_length = max_pdu_length
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        #: Keys the UID remapping of de-identified copies (stable across restarts).
        self.deidentify_secret = deidentify_secret
        #: Store-and-forward: seconds a delivered instance stays (0 = archive mode).
        self.retention = retention
        #: Seconds an idle association is kept for the next batch.
        self.linger = linger
        #: Our TLS client context for destinations with `tls = true`.
        self.client_ssl = client_ssl
        self._links: dict[str, _Link] = {}
        self._delivered: list[tuple[_Link, ForwardJob, int]] = []
        self._bookkeeping = asyncio.Event()
        self._published = 0.0
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._links = {name: _Link(destination)
                       for name, destination in self.destinations.items()}
        for name, link in self._links.items():  # backoffs survive a restart
            link.health = replace(self.reader.forward_health(name), in_flight=0)
        self.writer.post(lambda tx: tx.forward_clear_in_flight())
        self._tasks.append(loop.create_task(self._bookkeeper(), name="forward-bookkeeping"))
        self._tasks.append(loop.create_task(self._maintain(), name="forward-maintenance"))
        for name, link in self._links.items():
            slots = link.destination.max_associations if isinstance(
                link.destination, DicomDestination) else 1
            for slot in range(max(1, slots)):
                self._tasks.append(loop.create_task(self._worker(link),
                                                    name=f"forward-{name}-{slot}"))

    def wake(self, names=None) -> None:
        for name in (names if names is not None else self._links):
            link = self._links.get(name)
            if link is not None:
                link.wake.set()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        await self._flush_delivered()  # what was delivered is not sent again at next start

    # -- claiming work ------------------------------------------------------------------
    async def _claim(self, link: _Link) -> list[ForwardJob]:
        """The next batch of due jobs, disjoint from what siblings hold; none while the
        destination is down, except one probe batch when its backoff has passed."""
        async with link.claim:
            now = time.time()
            if link.health.down and (link.probing or now < link.health.next_probe):
                return []
            jobs = await asyncio.to_thread(self.reader.forward_due, link.name, now, _BATCH,
                                           set(link.in_flight))
            jobs = [j for j in jobs if j.job_id not in link.in_flight]
            link.in_flight.update(j.job_id for j in jobs)
            if jobs and link.health.down:
                link.probing = True
        if jobs:
            self._bookkeeping.set()  # publish the in-flight count
        if len(jobs) == _BATCH:
            link.wake.set()  # more are due: a sibling worker may take them
        return jobs

    def _release(self, link: _Link, jobs: list[ForwardJob]) -> None:
        link.in_flight.difference_update(j.job_id for j in jobs)
        self._bookkeeping.set()

    async def _idle(self, link: _Link, session: PeerSession | None) -> None:
        """Wait for a wake-up or the poll interval; close an association idle too long."""
        timeout = _POLL
        if session is not None and session.is_open:
            idle_left = session.last_used + self.linger - time.monotonic()
            if idle_left <= 0:
                await session.close()
            else:
                timeout = min(timeout, idle_left)
        if link.health.down:
            await self._notice_manual_retry(link)
        link.wake.clear()
        try:
            await asyncio.wait_for(link.wake.wait(), timeout)
        except asyncio.TimeoutError:
            return
        await asyncio.sleep(_GATHER)

    async def _notice_manual_retry(self, link: _Link) -> None:
        """`pacs queue retry` (another process) moves a down destination's probe to now."""
        stored = await asyncio.to_thread(self.reader.forward_health, link.name)
        if stored.next_probe < link.health.next_probe:
            link.health = replace(link.health, next_probe=stored.next_probe)

    async def _worker(self, link: _Link) -> None:
        destination = link.destination
        session = PeerSession(destination, self.our_ae_title, self.max_pdu_length,
                              self.connect_timeout, self.response_timeout, self.client_ssl) \
            if isinstance(destination, DicomDestination) else None
        try:
            while not self._stopping:
                jobs = await self._claim(link)
                if not jobs:
                    await self._idle(link, session)
                    continue
                probe = link.health.down  # then this worker holds the one probe batch
                try:
                    if session is None:
                        await self._to_folder(link, jobs)
                    else:
                        await self._to_peer(link, session, jobs)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug must not stop the destination's deliveries
                    log.exception("forwarding to %s failed unexpectedly", link.name)
                    await self._record_failures(link, jobs, None, "internal error (see log)")
                finally:
                    if probe:
                        link.probing = False
        finally:
            if session is not None:
                await session.close()

    # -- sending ------------------------------------------------------------------------
    def copy_recipe(self, job: ForwardJob) -> CopyRecipe | None:
        """How to build the copy a rule changes (de-identification, attribute changes)."""
        order = job.order
        if not order.changes and not order.deidentify:
            return None
        return prepare_copy, (tuple(order.changes),
                              self.deidentify_secret if order.deidentify else None)

    async def _instances(self, link: _Link, jobs: list[ForwardJob]
                         ) -> list[tuple[ForwardJob, StoredInstance]]:
        """The stored instances of `jobs`; jobs whose instance is gone fail."""
        def lookup():
            return [(job, self.resolver.stored(job.sop_instance_uid)) for job in jobs]
        pairs = await asyncio.to_thread(lookup)
        await self._record_failures(link, [job for job, instance in pairs if instance is None],
                                    None, "instance no longer in the archive")
        return [(job, instance) for job, instance in pairs if instance is not None]

    async def _to_peer(self, link: _Link, session: PeerSession,
                       jobs: list[ForwardJob]) -> None:
        pairs = await self._instances(link, jobs)
        if not pairs:
            return
        try:
            reused = await session.ensure([instance for _, instance in pairs],
                                          [job.order.transfer_syntax for job, _ in pairs])
        except AssociationFailed as exc:
            await self._destination_failed(link, [job for job, _ in pairs], str(exc))
            return
        if link.health.down:
            await self._destination_reachable(link)
        unsendable = [(j, i) for j, i in pairs if not session.carries(i)]
        if unsendable:  # more SOP classes than one association can propose: next round
            self._release(link, [j for j, _ in unsendable])
            pairs = [(j, i) for j, i in pairs if session.carries(i)]
        for index, (job, instance) in enumerate(pairs):
            copy_uid = (UIDMapper(self.deidentify_secret).map(job.sop_instance_uid)
                        if job.order.deidentify else None)
            try:
                status = await session.send(instance, job.order.transfer_syntax, self.codec,
                                            self.copy_recipe(job), copy_uid)
            except AssociationFailed as exc:
                rest = [j for j, _ in pairs[index:]]
                if reused and index == 0:  # the peer closed our idle association: not its fault
                    log.info("association to %s was closed while idle; reopening", link.name)
                    self._release(link, rest)
                    return
                await self._record_failures(link, [job], None, str(exc))
                await self._destination_failed(link, rest[1:], str(exc))
                return
            if status is None:
                await self._record_failures(link, [job], None, session.last_error)
            elif is_success(status):
                self._note_delivered(link, job, status)
                if status != 0x0000:
                    log.warning("forward of %s to %s delivered with warning 0x%04X",
                                job.sop_instance_uid, link.name, status)
            else:
                await self._record_failures(link, [job], status,
                                            f"{link.destination.ae_title} answered "
                                            f"0x{status:04X}")

    async def _to_folder(self, link: _Link, jobs: list[ForwardJob]) -> None:
        destination = link.destination
        assert isinstance(destination, FolderDestination)
        for job, instance in await self._instances(link, jobs):
            error = await write_to_folder(destination, job, instance, self.codec,
                                          self.copy_recipe(job), self.deidentify_secret)
            if error:
                await self._record_failures(link, [job], None, error)
            else:
                self._note_delivered(link, job)

    # -- outcomes -----------------------------------------------------------------------
    def _note_delivered(self, link: _Link, job: ForwardJob, status: int = 0) -> None:
        self._delivered.append((link, job, status))
        self._bookkeeping.set()

    async def _flush_delivered(self) -> None:
        """Delete delivered jobs in one commit; only then are they free to be claimed."""
        batch, self._delivered = self._delivered, []
        if not batch:
            return
        now, record_done = time.time(), self.retention > 0

        def delete(tx):
            for _, job, status in batch:
                tx.forward_delivered(job, now, record_done, status)
        try:
            await asyncio.to_thread(self.writer.run_job, delete)
        finally:
            for link, job, _ in batch:
                link.in_flight.discard(job.job_id)

    async def _record_failures(self, link: _Link, jobs: list[ForwardJob], status: int | None,
                               error: str) -> None:
        """Charge an attempt to each of `jobs`."""
        if not jobs:
            return
        now = time.time()

        def fail(tx):
            return [tx.forward_failed(job, status, error, now, self.policy) for job in jobs]
        try:
            updated = await asyncio.to_thread(self.writer.run_job, fail)
        finally:
            self._release(link, jobs)
        for job in updated:
            if job.state == "dead":
                log.error("forward of %s to %s is dead after %d attempts: %s",
                          job.sop_instance_uid, job.order.destination, job.attempts, error)
            else:
                log.info("forward of %s to %s failed (%s); retry in %.0f s",
                         job.sop_instance_uid, job.order.destination, error,
                         job.next_attempt - now)

    async def _destination_failed(self, link: _Link, jobs: list[ForwardJob],
                                  error: str) -> None:
        """The destination is down: back it off as a whole; `jobs` are not charged, and
        what waited longer than max_age is dead-lettered."""
        self._release(link, jobs)
        now = time.time()
        failures = link.health.failures + 1
        health = replace(link.health, failures=failures, last_error=error[:200],
                         down_since=link.health.down_since or now,
                         next_probe=now + self.policy.delay(failures))
        link.health = health

        def record(tx):
            tx.set_forward_health(link.name, replace(health, in_flight=len(link.in_flight)))
            return tx.forward_expire_aged(link.name, now, self.policy,
                                          f"destination down: {error}")
        aged = await asyncio.to_thread(self.writer.run_job, record)
        level = logging.WARNING if failures == 1 else logging.INFO
        log.log(level, "destination %s is down (%s); next attempt in %.0f s", link.name, error,
                health.next_probe - now)
        if aged:
            log.error("%d forward(s) to %s dead-lettered: older than %.0f s", len(aged),
                      link.name, self.policy.max_age)

    async def _destination_reachable(self, link: _Link) -> None:
        down_for = time.time() - link.health.down_since
        link.health = DestinationHealth(in_flight=len(link.in_flight))
        await asyncio.to_thread(self.writer.run_job,
                                lambda tx: tx.set_forward_health(link.name, link.health))
        log.warning("destination %s is reachable again after %.0f s", link.name, down_for)
        link.wake.set()  # siblings resume too

    # -- background ---------------------------------------------------------------------
    async def _bookkeeper(self) -> None:
        """Group the deletion of delivered jobs and publish in-flight counts."""
        while True:
            try:
                await asyncio.wait_for(self._bookkeeping.wait(), _PUBLISH_INTERVAL)
            except asyncio.TimeoutError:
                pass
            self._bookkeeping.clear()
            if self._delivered:
                if len(self._delivered) < _FLUSH_SIZE:
                    await asyncio.sleep(_FLUSH_DELAY)  # let more deliveries join the commit
                await self._flush_delivered()
            self._publish_in_flight()

    def _publish_in_flight(self) -> None:
        now = time.monotonic()
        if now - self._published < _PUBLISH_INTERVAL:
            return
        self._published = now
        for link in self._links.values():
            count = len(link.in_flight)
            if count != link.published_in_flight:
                link.published_in_flight = count
                health = replace(link.health, in_flight=count)
                self.writer.post(lambda tx, n=link.name, h=health: tx.set_forward_health(n, h))

    def _audit_deleted(self, deleted: Tallies) -> None:
        """One 110105 "DICOM Study Deleted" record per study of the instances removed."""
        observers = self.observers

        def make(objects, done, failed):
            for obj in objects:  # instance counts only: the SOP classes were not read
                description = obj.get("ParticipantObjectDescription")
                if description is not None:
                    description.pop("SOPClass", None)
                    description["NumberOfInstances"] = done
            return audit.record("delete", audit.STUDY_DELETED, "D", audit.SUCCESS,
                                [observers.us(audit.ROLE_APPLICATION)], objects,
                                source_id=observers.ae_title,
                                description=f"store-and-forward: {done} delivered "
                                            f"instance(s) removed after the retention")

        for r in audit.study_records(deleted, make):
            observers.emit(r)

    async def _maintain(self) -> None:
        """Store-and-forward removal of delivered instances; forget quiet studies and old
        warnings."""
        store = self.resolver.store
        while not self._stopping:
            removed = 0
            if self.retention > 0:
                uids = await asyncio.to_thread(self.reader.forward_expired,
                                               time.time() - self.retention, 500)
                auditing = self.observers is not None and self.observers.auditing
                studies = await asyncio.to_thread(self.resolver.studies_of, uids) \
                    if auditing and uids else {}
                deleted = Tallies()
                for uid in uids:
                    address = await asyncio.to_thread(
                        self.writer.run_job, lambda tx, uid=uid: tx.forward_expire(uid))
                    if isinstance(address, str):
                        await asyncio.to_thread(store.remove, address)
                    if auditing and uid in studies and \
                            await asyncio.to_thread(self.reader.instance, uid) is None:
                        deleted.add(*studies[uid], "")
                removed = len(uids)
                if removed:
                    log.info("store-and-forward: removed %d delivered instance(s)", removed)
                if deleted:
                    self._audit_deleted(deleted)
            def forget(tx, now=time.time()):
                tx.forget_quiet_studies(now - ACTIVITY_KEPT)
                tx.forget_old_warnings(now - WARNINGS_KEPT)
            await asyncio.to_thread(self.writer.run_job, forget)
            if removed < 500:
                pause = min(60.0, self.retention / 4 + 0.1) if self.retention > 0 else 600.0
                await asyncio.sleep(pause)


__all__ = ["Forwarder"]
