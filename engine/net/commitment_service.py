"""Storage Commitment Push Model SCP (PS3.4 J): N-ACTION in, N-EVENT-REPORT out.

A modality asks us to commit a list of instances, then deletes its own copies
on our answer, so an instance is reported committed only when it is indexed
under the SOP class named and its file re-hashes to its content address
(engine.ingest.integrity).  The N-ACTION is answered at once; the report
follows on the same association when the requester keeps it open, otherwise
on a new association to the requester's AE title (known from
`[retrieve] destinations`), as the standard allows both.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from pydicom.dataset import Dataset

from engine.config import RetrieveConfig
from engine.dicom.tags import (
    CMD_ACTION_TYPE_ID, CMD_AFFECTED_SOP_CLASS_UID, CMD_AFFECTED_SOP_INSTANCE_UID,
    CMD_COMMAND_FIELD, CMD_DATA_SET_TYPE, CMD_EVENT_TYPE_ID, CMD_MESSAGE_ID,
    CMD_REQUESTED_SOP_CLASS_UID, CMD_REQUESTED_SOP_INSTANCE_UID)
from engine.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, STORAGE_COMMITMENT_SOP_CLASS,
    STORAGE_COMMITMENT_SOP_INSTANCE, is_valid_uid)
from engine.index.reader import IndexReader
from engine.ingest.integrity import commitment_failure
from engine.net import status as st
from engine.net.acse import AcceptedContext
from engine.net.dimse import (
    N_ACTION_RSP, N_EVENT_REPORT_RQ, Command, DatasetBuffer, encode_command, encode_response)
from engine.net.requestor import (
    AssociationFailed, ProposedContext, RequestorAssociation, tls_context)
from engine.query.find import InvalidQuery, decode_identifier, encode_identifier
from engine.store.blob_store import FilesystemBlobStore

log = logging.getLogger(__name__)

MAX_REQUEST_LENGTH = 16 << 20  # ~100,000 references
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2.1.1)
EVENT_ALL_COMMITTED, EVENT_FAILURES = 1, 2  # Event Type ID (PS3.4 J.3.2.1.2)

SendMessage = Callable[[int, bytes, bytes | None], Awaitable[None]]


class ReportChannel(Protocol):
    """The requesting association, for a report on the same association."""

    @property
    def accepts_reports(self) -> bool: ...

    def next_message_id(self) -> int: ...

    async def request(self, context_id: int, command_set: bytes, dataset: bytes | None): ...


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    references: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "CommitmentRequest":
        transaction = str(ds.get("TransactionUID", "") or "").strip()
        if not is_valid_uid(transaction):
            raise InvalidQuery("Transaction UID missing or not a valid UID")
        if "ReferencedSOPSequence" not in ds or not ds.ReferencedSOPSequence:
            raise InvalidQuery("Referenced SOP Sequence missing or empty")
        references = []
        for item in ds.ReferencedSOPSequence:
            sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
            sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
            if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
                raise InvalidQuery("a Referenced SOP Sequence item lacks valid UIDs")
            references.append((sop_class, sop_instance))
        return cls(transaction, tuple(references))


def commitment_report(request: CommitmentRequest, store: FilesystemBlobStore,
                      reader: IndexReader, our_ae_title: str) -> tuple[int, Dataset]:
    """(Event Type ID, Event Information) for a request: re-reads every instance."""
    committed, failed = [], []
    for sop_class, sop_instance in request.references:
        failure = commitment_failure(store, reader, sop_class, sop_instance)
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        if failure is None:
            committed.append(item)
        else:
            item.FailureReason = int(failure)
            failed.append(item)
    ds = Dataset()
    ds.TransactionUID = request.transaction_uid
    if committed:
        ds.RetrieveAETitle = our_ae_title
        ds.ReferencedSOPSequence = committed
    if failed:
        ds.FailedSOPSequence = failed
    return (EVENT_FAILURES if failed else EVENT_ALL_COMMITTED), ds


def _event_report_command(message_id: int, event_type: int) -> bytes:
    return encode_command({
        CMD_AFFECTED_SOP_CLASS_UID: STORAGE_COMMITMENT_SOP_CLASS,
        CMD_COMMAND_FIELD: N_EVENT_REPORT_RQ,
        CMD_MESSAGE_ID: message_id,
        CMD_DATA_SET_TYPE: 0x0000,
        CMD_AFFECTED_SOP_INSTANCE_UID: STORAGE_COMMITMENT_SOP_INSTANCE,
        CMD_EVENT_TYPE_ID: event_type,
    })


class CommitmentReporter:
    """Computes reports and delivers those that need a new association, in the background."""

    def __init__(self, store: FilesystemBlobStore, reader: IndexReader, config: RetrieveConfig,
                 ae_title: str, max_pdu_length: int,
                 client_ssl: ssl.SSLContext | None = None) -> None:
        #: For requesters whose [retrieve] destinations entry says tls = true.
        self.client_ssl = client_ssl
        self.store = store
        self.reader = reader
        self.config = config
        self.ae_title = ae_title
        self.max_pdu_length = max_pdu_length
        self._deliveries: set[asyncio.Task] = set()

    def deliver_later(self, calling_ae_title: str, event_type: int, report: Dataset,
                      transaction_uid: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.deliver(calling_ae_title, event_type, report, transaction_uid))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def deliver(self, calling_ae_title: str, event_type: int, report: Dataset,
                      transaction_uid: str) -> bool:
        """Send a report on a new association to the requester (we are the requestor)."""
        address = self.config.destination(calling_ae_title)
        if address is None:
            log.error("storage commitment %s: association closed and AE %r has no address in "
                      "[retrieve] destinations; report not delivered", transaction_uid,
                      calling_ae_title)
            return False
        try:
            association = await RequestorAssociation.open(
                address.host, address.port, self.ae_title, calling_ae_title,
                [ProposedContext(STORAGE_COMMITMENT_SOP_CLASS,
                                 (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN),
                                 scp_role=True)],
                self.max_pdu_length, self.config.connect_timeout,
                tls_context(address.tls, self.client_ssl))
        except AssociationFailed as exc:
            log.error("storage commitment %s: report not delivered: %s", transaction_uid, exc)
            return False
        association.timeout = self.config.response_timeout
        try:
            syntaxes = association.accepted_syntaxes(STORAGE_COMMITMENT_SOP_CLASS, as_scu=False)
            if not syntaxes:
                log.error("storage commitment %s: %s refused the report context",
                          transaction_uid, calling_ae_title)
                return False
            ts, context_id = next(iter(syntaxes.items()))
            response, _ = await association.request(
                context_id, _event_report_command(association.next_message_id(), event_type),
                encode_identifier(report, ts))
            ok = response.status == st.SUCCESS
            log.info("storage commitment %s reported to %s on a new association (0x%04X)",
                     transaction_uid, calling_ae_title, response.status or 0)
            return ok
        except AssociationFailed as exc:
            log.error("storage commitment %s: report not delivered: %s", transaction_uid, exc)
            return False
        finally:
            await association.release()

    async def drain(self, timeout: float) -> None:
        """Let reports in flight finish (server shutdown)."""
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=timeout)


class CommitmentOperation:
    """One N-ACTION-RQ (Request Storage Commitment) and the report that follows."""

    reads_while_running = True  # a release or abort must be seen while we verify

    def __init__(self, context: AcceptedContext, command: Command, reporter: CommitmentReporter,
                 channel: ReportChannel, calling_ae_title: str, assoc_id: str) -> None:
        self.context = context
        self.context_id = context.context_id
        self.command = command
        self.reporter = reporter
        self.channel = channel
        self.calling_ae_title = calling_ae_title
        self.assoc_id = assoc_id
        self._data = DatasetBuffer(MAX_REQUEST_LENGTH)

    @property
    def message_id(self) -> int | None:
        return self.command.message_id

    def feed(self, fragment: memoryview) -> None:
        self._data.feed(fragment)

    def cancel(self) -> None:
        """C-CANCEL does not apply to N-ACTION."""

    def abort(self) -> None:
        """The report still goes out, on a new association if it can."""

    def _response(self, status: int, comment: str = "") -> bytes:
        return encode_response(N_ACTION_RSP, self.command, status, comment, extra={
            CMD_AFFECTED_SOP_CLASS_UID: STORAGE_COMMITMENT_SOP_CLASS,
            CMD_AFFECTED_SOP_INSTANCE_UID: STORAGE_COMMITMENT_SOP_INSTANCE,
            CMD_ACTION_TYPE_ID: REQUEST_STORAGE_COMMITMENT})

    def _check(self) -> tuple[int, str] | CommitmentRequest:
        if self.command.text(CMD_REQUESTED_SOP_CLASS_UID) != STORAGE_COMMITMENT_SOP_CLASS:
            return st.FAILURE_NO_SUCH_SOP_CLASS, "not the Storage Commitment Push Model"
        if self.command.text(CMD_REQUESTED_SOP_INSTANCE_UID) != STORAGE_COMMITMENT_SOP_INSTANCE:
            return st.FAILURE_INVALID_OBJECT_INSTANCE, "not the well-known SOP instance"
        if self.command.us(CMD_ACTION_TYPE_ID) != REQUEST_STORAGE_COMMITMENT:
            return st.FAILURE_NO_SUCH_ACTION, "Action Type ID must be 1"
        if self._data.too_long:
            return st.FAILURE_RESOURCE_LIMITATION, "request too long"
        try:
            ds = decode_identifier(bytes(self._data.data), self.context.transfer_syntax)
            return CommitmentRequest.from_dataset(ds)
        except InvalidQuery as exc:
            return st.FAILURE_INVALID_ARGUMENT_VALUE, str(exc)

    async def run(self, send: SendMessage) -> None:
        checked = self._check()
        if not isinstance(checked, CommitmentRequest):
            log.info("%s N-ACTION refused with 0x%04X: %s", self.assoc_id, *checked)
            await send(self.context_id, self._response(*checked), None)
            return
        request = checked
        await send(self.context_id, self._response(st.SUCCESS), None)
        reporter = self.reporter
        event_type, report = await asyncio.to_thread(
            commitment_report, request, reporter.store, reporter.reader, reporter.ae_title)
        log.info("%s storage commitment %s: %d references, event type %d", self.assoc_id,
                 request.transaction_uid, len(request.references), event_type)
        if self.channel.accepts_reports:
            try:
                response, _ = await self.channel.request(
                    self.context_id,
                    _event_report_command(self.channel.next_message_id(), event_type),
                    encode_identifier(report, self.context.transfer_syntax))
                log.info("%s storage commitment %s reported (0x%04X)", self.assoc_id,
                         request.transaction_uid, response.status or 0)
                return
            except AssociationFailed as exc:
                log.info("%s report on the same association failed (%s); trying a new one",
                         self.assoc_id, exc)
        reporter.deliver_later(self.calling_ae_title, event_type, report,
                               request.transaction_uid)


__all__ = ["CommitmentOperation", "CommitmentReporter",
           "CommitmentRequest", "commitment_report"]
