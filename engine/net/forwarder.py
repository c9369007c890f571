"""Delivery of the router's forward queue: per-destination workers with retries.

Each destination gets `max_associations` workers.  A worker takes the oldest
due jobs of its destination (a batch), sends them on one association (or
writes them to a folder), and records each outcome in the index: delivered
jobs are deleted, failed ones back off (capped exponential, jittered) and turn
dead after too many attempts or too long.  Delivery is at least once: a job
is deleted only after the destination's success (or warning) status.  Ingest
wakes the workers after each commit, so forwarding starts at once; otherwise
they poll for retries that come due.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from pathlib import Path

from engine.codec.transcode import transcode_file
from engine.codec.workers import CodecWorkers
from engine.dicom.part10 import encode_file_header
from engine.errors import EngineError
from engine.index.forward_queue import ForwardJob, RetryPolicy
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter
from engine.net import status as st
from engine.net.outbound import DatasetUnavailable
from engine.net.requestor import AssociationFailed, RequestorAssociation
from engine.net.retrieve_service import CopyRecipe, proposed_contexts, send_instance
from engine.query.retrieve import RetrieveResolver, StoredInstance
from engine.routing.copy import prepare_copy
from engine.routing.deidentify import UIDMapper
from engine.routing.destinations import DicomDestination, Destination, FolderDestination

log = logging.getLogger(__name__)

_BATCH = 64
_POLL = 1.0
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _prefer(job: ForwardJob) -> str | None:
    return {"uncompressed": _UNCOMPRESSED[0],
            "jpeg2000-lossless": _J2K_LOSSLESS}.get(job.order.transfer_syntax)


def _is_success(status: int) -> bool:
    return status == st.SUCCESS or status == 0x0001 or 0xB000 <= status <= 0xBFFF


class Forwarder:
    def __init__(self, destinations: dict[str, Destination], reader: IndexReader,
                 writer: GroupCommitWriter, resolver: RetrieveResolver, codec: CodecWorkers,
                 policy: RetryPolicy, our_ae_title: str, max_pdu_length: int,
                 connect_timeout: float, response_timeout: float,
                 deidentify_secret: str, retention: float = 0.0) -> None:
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
        self._wake = {name: asyncio.Event() for name in destinations}
        self._in_flight: dict[str, set[int]] = {name: set() for name in destinations}
        self._claim = {name: asyncio.Lock() for name in destinations}
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.retention > 0:
            self._tasks.append(loop.create_task(self._expire(), name="forward-retention"))
        for name, destination in self.destinations.items():
            slots = destination.max_associations if isinstance(destination,
                                                                DicomDestination) else 1
            for slot in range(max(1, slots)):
                self._tasks.append(loop.create_task(self._worker(destination),
                                                    name=f"forward-{name}-{slot}"))

    def wake(self, names=None) -> None:
        for name in (names if names is not None else self._wake):
            event = self._wake.get(name)
            if event is not None:
                event.set()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def _expire(self) -> None:
        """Store-and-forward: remove instances delivered everywhere `retention` s ago."""
        store = self.resolver.store
        while not self._stopping:
            uids = await asyncio.to_thread(self.reader.forward_expired,
                                           time.time() - self.retention, 500)
            for uid in uids:
                address = await asyncio.to_thread(
                    self.writer.run_job, lambda tx, uid=uid: tx.forward_expire(uid))
                if isinstance(address, str):
                    await asyncio.to_thread(store.remove, address)
            if uids:
                log.info("store-and-forward: removed %d delivered instance(s)", len(uids))
            if len(uids) < 500:
                await asyncio.sleep(min(60.0, self.retention / 4 + 0.1))

    # -- a worker ---------------------------------------------------------------------
    def copy_recipe(self, job: ForwardJob) -> CopyRecipe | None:
        """How to build the copy a rule changes (de-identification, attribute changes)."""
        order = job.order
        if not order.changes and not order.deidentify:
            return None
        return prepare_copy, (tuple(order.changes),
                              self.deidentify_secret if order.deidentify else None)

    async def _worker(self, destination: Destination) -> None:
        name = destination.name
        while not self._stopping:
            in_flight = self._in_flight[name]
            async with self._claim[name]:  # workers of one destination take disjoint jobs
                jobs = await asyncio.to_thread(self.reader.forward_due, name, time.time(),
                                               _BATCH, set(in_flight))
                jobs = [j for j in jobs if j.job_id not in in_flight]
                in_flight.update(j.job_id for j in jobs)
            if len(jobs) == _BATCH:
                self._wake[name].set()  # more are due: a sibling worker may take them
            if not jobs:
                event = self._wake[name]
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), _POLL)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                if isinstance(destination, FolderDestination):
                    await self._to_folder(destination, jobs)
                else:
                    await self._to_peer(destination, jobs)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the destination's deliveries
                log.exception("forwarding to %s failed unexpectedly", name)
                await self._record_failures(jobs, None, "internal error (see log)")
            finally:
                in_flight.difference_update(j.job_id for j in jobs)

    async def _instances(self, jobs: list[ForwardJob]
                         ) -> list[tuple[ForwardJob, StoredInstance | None]]:
        def lookup():
            return [(job, self.resolver.stored(job.sop_instance_uid)) for job in jobs]
        return await asyncio.to_thread(lookup)

    async def _to_peer(self, destination: DicomDestination, jobs: list[ForwardJob]) -> None:
        pairs = await self._instances(jobs)
        gone = [job for job, instance in pairs if instance is None]
        await self._record_failures(gone, None, "instance no longer in the archive")
        pairs = [(job, instance) for job, instance in pairs if instance is not None]
        if not pairs:
            return
        contexts = proposed_contexts([instance for _, instance in pairs], extra=(_J2K_LOSSLESS,)
                                     if any(_prefer(j) == _J2K_LOSSLESS for j, _ in pairs)
                                     else ())[0]
        classes = {cx.abstract_syntax for cx in contexts}
        later = [(j, i) for j, i in pairs if i.sop_class_uid not in classes]
        pairs = [(j, i) for j, i in pairs if i.sop_class_uid in classes]
        try:
            association = await RequestorAssociation.open(
                destination.host, destination.port,
                destination.calling_ae_title or self.our_ae_title, destination.ae_title,
                contexts, self.max_pdu_length, self.connect_timeout)
        except AssociationFailed as exc:
            await self._record_failures([j for j, _ in pairs], None, str(exc))
            return
        association.timeout = self.response_timeout
        done: list[ForwardJob] = []
        try:
            for index, (job, instance) in enumerate(pairs):
                try:
                    copy_uid = (UIDMapper(self.deidentify_secret).map(job.sop_instance_uid)
                                if job.order.deidentify else None)
                    status = await send_instance(association, instance, 0, None, self.codec,
                                                 _prefer(job), self.copy_recipe(job), copy_uid)
                except DatasetUnavailable as exc:
                    status = None
                    await self._record_failures([job], None, str(exc))
                    continue
                except AssociationFailed as exc:
                    await self._record_failures([j for j, _ in pairs[index:]], None, str(exc))
                    break
                if _is_success(status):
                    done.append(job)
                    if status != st.SUCCESS:
                        log.warning("forward of %s to %s delivered with warning 0x%04X",
                                    job.sop_instance_uid, destination.name, status)
                else:
                    await self._record_failures([job], status,
                                                f"{destination.ae_title} answered 0x{status:04X}")
        finally:
            await self._record_delivered(done)
            await association.release()
        if later:  # more SOP classes than one association can propose: next round
            log.debug("%d jobs for %s wait for another association", len(later),
                      destination.name)

    async def _to_folder(self, destination: FolderDestination, jobs: list[ForwardJob]) -> None:
        pairs = await self._instances(jobs)
        done: list[ForwardJob] = []
        for job, instance in pairs:
            if instance is None:
                await self._record_failures([job], None, "instance no longer in the archive")
                continue
            target = _prefer(job) or instance.transfer_syntax_uid
            recipe = self.copy_recipe(job)
            try:
                dataset = None
                if recipe is not None or target != instance.transfer_syntax_uid:
                    function, extra = recipe or (transcode_file, ())
                    dataset = await asyncio.to_thread(
                        self.codec.run, function, str(instance.path), instance.dataset_offset,
                        instance.transfer_syntax_uid, target, *extra)
                names = (job.study_instance_uid, job.sop_instance_uid)
                if job.order.deidentify:  # the file's name must not give the UIDs away
                    mapper = UIDMapper(self.deidentify_secret)
                    names = (mapper.map(names[0]), mapper.map(names[1]))
                await asyncio.to_thread(_write_part10, destination.path, names, instance,
                                        target, dataset)
            except EngineError as exc:
                await self._record_failures([job], None, f"cannot prepare the copy: {exc}")
                continue
            except OSError as exc:
                await self._record_failures([job], None, f"cannot write: {exc.strerror}")
                continue
            done.append(job)
        await self._record_delivered(done)

    # -- outcomes -----------------------------------------------------------------------
    async def _record_delivered(self, jobs: list[ForwardJob]) -> None:
        if jobs:
            now = time.time()

            def delete(tx):
                for job in jobs:
                    tx.forward_delivered(job, now, self.retention > 0)
            await asyncio.to_thread(self.writer.run_job, delete)

    async def _record_failures(self, jobs: list[ForwardJob], status: int | None,
                               error: str) -> None:
        if not jobs:
            return
        now = time.time()

        def fail(tx):
            return [tx.forward_failed(job, status, error, now, self.policy) for job in jobs]
        updated = await asyncio.to_thread(self.writer.run_job, fail)
        for job in updated:
            if job.state == "dead":
                log.error("forward of %s to %s is dead after %d attempts: %s",
                          job.sop_instance_uid, job.order.destination, job.attempts, error)
            else:
                log.info("forward of %s to %s failed (%s); retry in %.0f s",
                         job.sop_instance_uid, job.order.destination, error,
                         job.next_attempt - now)


def _write_part10(folder: Path, names: tuple[str, str], instance: StoredInstance,
                  target_ts: str, dataset: bytes | None) -> None:
    """Write folder/<study UID>/<SOP instance UID>.dcm durably: the stored file as it
    is, or our file meta in front of a prepared `dataset` (changed, de-identified or
    transcoded).

    The names are UIDs that passed the UI grammar check at ingest, or our own
    remapped ones (digits and dots only), so they cannot leave the folder.
    """
    study, sop = names
    study_dir = folder / study
    study_dir.mkdir(parents=True, exist_ok=True)
    final = study_dir / f"{sop}.dcm"
    temp = study_dir / f".{sop}.{secrets.token_hex(4)}.partial"
    with open(temp, "wb") as dst:
        if dataset is None:
            with open(instance.path, "rb") as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        else:
            dst.write(encode_file_header(instance.sop_class_uid, sop, target_ts))
            dst.write(dataset)
        dst.flush()
        os.fsync(dst.fileno())
    os.rename(temp, final)


__all__ = ["Forwarder"]
