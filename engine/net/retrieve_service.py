"""Query/Retrieve MOVE and GET SCP (PS3.4 C.4.2, C.4.3): C-STORE sub-operations.

Both resolve the identifier to stored instances (on a thread: LMDB reads),
then send each one with a C-STORE sub-operation over a `StoreChannel`: a new
association to the move destination (C-MOVE) or the requestor's own
association with roles reversed (C-GET).  After each sub-operation a pending
response reports the counts; C-CANCEL stops between two sub-operations.

What is sent is the stored file's dataset, streamed from disk, when the peer
accepted its transfer syntax; otherwise the instance is transcoded on the fly
to a syntax the peer accepted (engine.codec), or the sub-operation fails.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from pydicom.dataset import Dataset

from engine.codec.transcode import can_transcode, choose_target, transcode_file
from engine.codec.workers import CodecWorkers
from engine.config import RetrieveConfig
from engine.dicom.tags import (
    CMD_AFFECTED_SOP_CLASS_UID, CMD_AFFECTED_SOP_INSTANCE_UID, CMD_COMMAND_FIELD,
    CMD_DATA_SET_TYPE, CMD_MESSAGE_ID, CMD_MOVE_DESTINATION, CMD_MOVE_ORIGINATOR_AE_TITLE,
    CMD_MOVE_ORIGINATOR_MESSAGE_ID, CMD_NUMBER_OF_COMPLETED_SUBOPERATIONS,
    CMD_NUMBER_OF_FAILED_SUBOPERATIONS, CMD_NUMBER_OF_REMAINING_SUBOPERATIONS,
    CMD_NUMBER_OF_WARNING_SUBOPERATIONS, CMD_PRIORITY)
from engine.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from engine.errors import EngineError
from engine.net import status as st
from engine.net.acse import AcceptedContext
from engine.net.dimse import (
    C_GET_RSP, C_MOVE_RSP, C_STORE_RQ, MAX_IDENTIFIER_LENGTH, Command, DatasetBuffer,
    encode_command, encode_response)
from engine.net.outbound import DatasetUnavailable, StoredDataset
from engine.net.requestor import (
    MAX_PRESENTATION_CONTEXTS, AssociationFailed, ProposedContext, RequestorAssociation,
    tls_context)
from engine.ops.audit import Tallies
from engine.ops.logs import redact_values
from engine.query.find import decode_identifier, encode_identifier
from engine.query.retrieve import RetrieveRequest, RetrieveResolver, StoredInstance

log = logging.getLogger(__name__)

_UNCOMPRESSED_LE = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

SendMessage = Callable[[int, bytes, bytes | None], Awaitable[None]]
#: A modified copy to send: (function, extra args); the function runs in a codec worker
#: as function(path, dataset_offset, stored_ts, target_ts, *extra) -> dataset bytes.
CopyRecipe = tuple[Callable[..., bytes], tuple]


class StoreChannel(Protocol):
    """Where C-STORE sub-operations go: an association on which we are storage SCU."""

    def accepted_syntaxes(self, sop_class_uid: str) -> dict[str, int]: ...

    def next_message_id(self) -> int: ...

    async def request(self, context_id: int, command_set: bytes,
                      dataset: bytes | StoredDataset | None) -> tuple[Command, bytes | None]: ...


@dataclass
class SubOperationCounts:
    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def as_command(self, with_remaining: bool) -> dict[int, int]:
        values = {CMD_NUMBER_OF_COMPLETED_SUBOPERATIONS: self.completed,
                  CMD_NUMBER_OF_FAILED_SUBOPERATIONS: self.failed,
                  CMD_NUMBER_OF_WARNING_SUBOPERATIONS: self.warning}
        if with_remaining:
            values[CMD_NUMBER_OF_REMAINING_SUBOPERATIONS] = self.remaining
        return {tag: min(value, 0xFFFF) for tag, value in values.items()}


def _is_warning(status: int) -> bool:
    return status == 0x0001 or 0xB000 <= status <= 0xBFFF


async def send_instance(channel: StoreChannel, instance: StoredInstance, priority: int,
                        originator: tuple[str, int] | None, codec: CodecWorkers,
                        prefer: str | None = None, copy: CopyRecipe | None = None,
                        copy_uid: str | None = None) -> int:
    """One C-STORE sub-operation; returns the peer's status, or a failure of ours.

    The stored bytes go as they are when the peer accepted their syntax (and no
    `prefer`red syntax or modified `copy` is asked for); otherwise the dataset is
    produced in a codec worker, in `prefer` when accepted, else the best syntax
    the peer accepted (`copy_uid`: the SOP Instance UID of a modified copy, when it
    differs from the stored one).  AssociationFailed propagates: the channel is gone, the
    remaining ones fail.  DatasetUnavailable propagates too (nothing was sent):
    the file may have been replaced by the compression stage since it was resolved.
    """
    syntaxes = channel.accepted_syntaxes(instance.sop_class_uid)
    stored = instance.transfer_syntax_uid
    if prefer in syntaxes and (prefer == stored or can_transcode(stored, prefer)):
        target = prefer
    elif stored in syntaxes:
        target = stored
    else:
        target = choose_target(stored, list(syntaxes))
    if target is None:
        log.info("no accepted presentation context can carry %s in %s",
                 instance.sop_instance_uid, stored)
        return st.FAILURE_SOP_CLASS_NOT_SUPPORTED
    dataset: bytes | StoredDataset
    if target == stored and copy is None:
        dataset = StoredDataset(instance.path, instance.dataset_offset, instance.dataset_length)
    else:
        function, extra = copy if copy is not None else (transcode_file, ())
        try:
            dataset = await asyncio.to_thread(
                codec.run, function, instance.path, instance.dataset_offset, stored, target,
                *extra)
        except (EngineError, OSError) as exc:
            log.warning("cannot prepare %s in %s: %s", instance.sop_instance_uid, target, exc)
            return st.FAILURE_PROCESSING
    context_id = syntaxes[target]
    values: dict[int, int | str] = {
        CMD_AFFECTED_SOP_CLASS_UID: instance.sop_class_uid,
        CMD_COMMAND_FIELD: C_STORE_RQ,
        CMD_MESSAGE_ID: channel.next_message_id(),
        CMD_PRIORITY: priority,
        CMD_DATA_SET_TYPE: 0x0000,
        CMD_AFFECTED_SOP_INSTANCE_UID: copy_uid or instance.sop_instance_uid,
    }
    if originator is not None:
        values[CMD_MOVE_ORIGINATOR_AE_TITLE] = originator[0]
        values[CMD_MOVE_ORIGINATOR_MESSAGE_ID] = originator[1]
    response, _ = await channel.request(context_id, encode_command(values), dataset)
    status = response.status
    return st.FAILURE_PROCESSING if status is None else status


def proposed_contexts(instances: list[StoredInstance], extra: tuple[str, ...] = ()
                      ) -> list[list[ProposedContext]]:
    """Presentation contexts for sending `instances`, in groups of at most 128.

    Per SOP class: one context per stored transfer syntax (so a peer that
    accepts it gets the bytes as stored) and per `extra` syntax asked for, plus
    one of the uncompressed little endian syntaxes as a fallback for
    transcoding.  One group per association.
    """
    by_class: dict[str, dict[str, None]] = {}
    for instance in instances:
        by_class.setdefault(instance.sop_class_uid, {})[instance.transfer_syntax_uid] = None
    groups: list[list[ProposedContext]] = [[]]
    for sop_class, syntaxes in by_class.items():
        contexts = [ProposedContext(sop_class, (ts,)) for ts in syntaxes]
        contexts += [ProposedContext(sop_class, (ts,)) for ts in extra if ts not in syntaxes]
        if any(ts not in _UNCOMPRESSED_LE for ts in syntaxes):
            contexts.append(ProposedContext(sop_class, _UNCOMPRESSED_LE))
        if len(groups[-1]) + len(contexts) > MAX_PRESENTATION_CONTEXTS:
            groups.append([])
        groups[-1].extend(contexts[:MAX_PRESENTATION_CONTEXTS])
    return [group for group in groups if group]


class RetrieveOperation:
    """Common part of C-MOVE and C-GET: identifier, resolution, sub-operations, responses."""

    reads_while_running = True  # the peer may send C-CANCEL while sub-operations run
    response_field = C_MOVE_RSP
    service = "C-MOVE"

    def __init__(self, context: AcceptedContext, command: Command, resolver: RetrieveResolver,
                 config: RetrieveConfig, codec: CodecWorkers, assoc_id: str,
                 observer=None) -> None:
        #: The association's AssociationObserver (engine.ops): audit record and metrics.
        self.observer = observer
        #: SOP Instance UID → (SOP Class UID, sent: success or warning), for the audit record.
        self.outcomes: dict[str, tuple[str, bool]] = {}
        #: SOP Instance UID → (Study Instance UID, Patient ID), read when auditing.
        self._studies: dict[str, tuple[str, str]] = {}
        self.context_id = context.context_id
        self.context = context
        self.command = command
        self.resolver = resolver
        self.config = config
        self.codec = codec
        self.assoc_id = assoc_id
        self._identifier = DatasetBuffer(MAX_IDENTIFIER_LENGTH)
        self.cancelled = False
        self.aborted = False
        self.counts = SubOperationCounts()

    @property
    def message_id(self) -> int | None:
        return self.command.message_id

    def feed(self, fragment: memoryview) -> None:
        self._identifier.feed(fragment)

    def cancel(self) -> None:
        self.cancelled = True

    def abort(self) -> None:
        self.aborted = self.cancelled = True

    def _response(self, status: int, comment: str = "", with_remaining: bool = False,
                  has_dataset: bool = False, counts: bool = True) -> bytes:
        extra = self.counts.as_command(with_remaining) if counts else None
        return encode_response(self.response_field, self.command, status, comment,
                               has_dataset=has_dataset, extra=extra)

    def _failed_list(self) -> bytes:
        ds = Dataset()
        ds.FailedSOPInstanceUIDList = self.counts.failed_uids
        return encode_identifier(ds, self.context.transfer_syntax)

    async def _resolve(self, send: SendMessage) -> list[StoredInstance] | None:
        """The instances to send, or None after answering with a failure."""
        if self._identifier.too_long:
            await send(self.context_id, self._response(st.FAILURE_UNABLE_TO_PROCESS,
                                                       "identifier too long", counts=False), None)
            return None
        try:
            ds = decode_identifier(bytes(self._identifier.data), self.context.transfer_syntax)
            request = RetrieveRequest.from_identifier(self.context.abstract_syntax, ds)
            instances = await asyncio.to_thread(self.resolver.resolve, request)
        except Exception as exc:  # InvalidQuery, or a bug: answer the peer either way
            status, comment = st.status_for_query_error(exc)
            if isinstance(exc, EngineError):  # its text may quote a value: not in this log
                log.info("%s retrieve refused with 0x%04X: %s", self.assoc_id, status,
                         redact_values(exc))
            else:
                log.exception("%s retrieve identifier could not be processed", self.assoc_id)
            await send(self.context_id, self._response(status, comment, counts=False), None)
            self._observe(status, f"refused: {comment}")
            return None
        if self.observer is not None and self.observer.o.auditing and instances:
            self._studies = await asyncio.to_thread(
                self.resolver.studies_of, [i.sop_instance_uid for i in instances])
        return instances

    # -- audit and metrics ---------------------------------------------------------------
    def _destination(self) -> tuple[str, str]:
        return "", ""

    def _observe(self, status: int, detail: str) -> None:
        observer = self.observer
        if observer is None:
            return
        tallies = None
        if self.outcomes:
            tallies = Tallies()
            studies = self._studies
            for uid, (sop_class, sent) in self.outcomes.items():
                study, patient = studies.get(uid, ("", ""))
                tallies.add(study, patient, sop_class, sent)
        observer.retrieved(self.service, status, tallies, *self._destination(), detail)

    async def _send_all(self, channel: StoreChannel, instances: list[StoredInstance],
                        send: SendMessage, originator: tuple[str, int] | None) -> None:
        """Run sub-operations until done, cancelled or the channel fails."""
        counts = self.counts
        priority = self.command.us(CMD_PRIORITY) or 0
        for index, instance in enumerate(instances):
            if self.cancelled:
                return
            started = time.monotonic()
            try:
                status = await self._send_one(channel, instance, priority, originator)
            except AssociationFailed as exc:
                log.warning("%s sub-operations stopped: %s", self.assoc_id, exc)
                for rest in instances[index:]:
                    counts.failed += 1
                    counts.failed_uids.append(rest.sop_instance_uid)
                    self.outcomes[rest.sop_instance_uid] = (rest.sop_class_uid, False)
                counts.remaining = 0
                return
            if self.observer is not None:
                self.observer.suboperation(self.service, time.monotonic() - started)
            self.outcomes[instance.sop_instance_uid] = (
                instance.sop_class_uid, status == st.SUCCESS or _is_warning(status))
            counts.remaining -= 1
            if status == st.SUCCESS:
                counts.completed += 1
            elif _is_warning(status):
                counts.warning += 1
            else:
                counts.failed += 1
                counts.failed_uids.append(instance.sop_instance_uid)
            if counts.remaining and not self.aborted:
                await send(self.context_id, self._response(st.PENDING, with_remaining=True),
                           None)

    async def _send_one(self, channel: StoreChannel, instance: StoredInstance, priority: int,
                        originator: tuple[str, int] | None) -> int:
        try:
            return await send_instance(channel, instance, priority, originator, self.codec)
        except DatasetUnavailable as exc:
            fresh = await asyncio.to_thread(self.resolver.refresh, instance)
            if fresh is None or fresh == instance:
                log.error("%s cannot send %s: %s", self.assoc_id, instance.sop_instance_uid,
                          exc)
                return st.FAILURE_PROCESSING
        try:  # re-stored (compressed) since it was resolved: send the current file
            return await send_instance(channel, fresh, priority, originator, self.codec)
        except DatasetUnavailable as exc:
            log.error("%s cannot send %s: %s", self.assoc_id, instance.sop_instance_uid, exc)
            return st.FAILURE_PROCESSING

    async def _final(self, send: SendMessage, refused: tuple[int, str] | None = None) -> None:
        counts = self.counts
        if self.cancelled:
            status, comment = st.CANCEL, ""
        elif refused is not None:
            status, comment = refused
        elif counts.failed and not counts.completed and not counts.warning:
            status, comment = st.FAILURE_UNABLE_TO_PERFORM_SUBOPERATIONS, \
                "all sub-operations failed"
        elif counts.failed or counts.warning:
            status, comment = st.WARNING_SUBOPERATIONS, ""
        else:
            status, comment = st.SUCCESS, ""
        has_dataset = bool(counts.failed_uids) and status != st.SUCCESS
        await send(self.context_id,
                   self._response(status, comment, with_remaining=self.cancelled,
                                  has_dataset=has_dataset),
                   self._failed_list() if has_dataset else None)
        log.info("%s %s: %d completed, %d warning, %d failed%s", self.assoc_id,
                 type(self).__name__, counts.completed, counts.warning, counts.failed,
                 " (cancelled)" if self.cancelled else "")
        self._observe(status, comment or (f"{counts.completed} completed, {counts.warning} "
                                          f"warning, {counts.failed} failed"
                                          + (" (cancelled)" if self.cancelled else "")))


class MoveOperation(RetrieveOperation):
    """C-MOVE: sub-operations on new associations to a configured destination.

    The Move Destination is looked up in `[retrieve] destinations` and nowhere else:
    never the requester's own address or anything it sends, so a peer cannot make us
    send instances to a machine the configuration does not name (0xA801 otherwise).
    A destination with `tls = true` is reached over TLS only (`client_ssl`).
    """

    response_field = C_MOVE_RSP

    def __init__(self, context: AcceptedContext, command: Command, resolver: RetrieveResolver,
                 config: RetrieveConfig, codec: CodecWorkers, our_ae_title: str,
                 calling_ae_title: str, max_pdu_length: int, assoc_id: str,
                 client_ssl: ssl.SSLContext | None = None, observer=None) -> None:
        super().__init__(context, command, resolver, config, codec, assoc_id, observer)
        self.client_ssl = client_ssl
        self.our_ae_title = our_ae_title
        #: The Move Originator named in every C-STORE sub-operation.
        self.calling_ae_title = calling_ae_title
        self.max_pdu_length = max_pdu_length
        self.destination_ae = (command.text(CMD_MOVE_DESTINATION) or "").strip()

    def _destination(self) -> tuple[str, str]:
        address = self.config.destination(self.destination_ae)
        return self.destination_ae, address.host if address is not None else ""

    async def run(self, send: SendMessage) -> None:
        address = self.config.destination(self.destination_ae)
        if address is None:
            log.info("%s C-MOVE to unknown destination %r", self.assoc_id, self.destination_ae)
            await send(self.context_id, self._response(
                st.FAILURE_MOVE_DESTINATION_UNKNOWN,
                f"unknown move destination {self.destination_ae[:32]}", counts=False), None)
            self._observe(st.FAILURE_MOVE_DESTINATION_UNKNOWN, "unknown move destination")
            return
        instances = await self._resolve(send)
        if instances is None:
            return
        self.counts.remaining = len(instances)
        originator = (self.calling_ae_title, self.message_id or 0)
        refused = None
        for group in proposed_contexts(instances):
            if self.cancelled or not instances:
                break
            classes = {cx.abstract_syntax for cx in group}
            batch = [i for i in instances if i.sop_class_uid in classes]
            try:
                association = await RequestorAssociation.open(
                    address.host, address.port, self.our_ae_title, self.destination_ae, group,
                    self.max_pdu_length, self.config.connect_timeout,
                    tls_context(address.tls, self.client_ssl))
            except AssociationFailed as exc:
                log.warning("%s C-MOVE: %s", self.assoc_id, exc)
                refused = (st.FAILURE_UNABLE_TO_PERFORM_SUBOPERATIONS, str(exc)[:64])
                for instance in batch:
                    self.counts.failed += 1
                    self.counts.failed_uids.append(instance.sop_instance_uid)
                    self.outcomes[instance.sop_instance_uid] = (instance.sop_class_uid, False)
                self.counts.remaining -= len(batch)
                continue
            association.timeout = self.config.response_timeout
            try:
                await self._send_all(association, batch, send, originator)
            finally:
                if self.aborted:
                    association.abort()
                else:
                    await association.release()
        if not self.aborted:
            if refused is not None and (self.counts.completed or self.counts.warning):
                refused = None  # partly done: the final status says warning
            await self._final(send, refused)
        else:
            self._observe(st.CANCEL, "association aborted while sending")


class GetOperation(RetrieveOperation):
    """C-GET: sub-operations on the requestor's own association (roles reversed)."""

    response_field = C_GET_RSP
    service = "C-GET"

    def __init__(self, context: AcceptedContext, command: Command, resolver: RetrieveResolver,
                 config: RetrieveConfig, codec: CodecWorkers, channel: StoreChannel,
                 assoc_id: str, observer=None) -> None:
        super().__init__(context, command, resolver, config, codec, assoc_id, observer)
        self.channel = channel

    async def run(self, send: SendMessage) -> None:
        instances = await self._resolve(send)
        if instances is None:
            return
        self.counts.remaining = len(instances)
        await self._send_all(self.channel, instances, send, None)
        if not self.aborted:
            await self._final(send)
        else:
            self._observe(st.CANCEL, "association aborted while sending")


__all__ = ["CopyRecipe", "GetOperation", "MoveOperation", "RetrieveOperation", "StoreChannel",
           "proposed_contexts", "send_instance"]
