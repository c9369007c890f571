"""DIMSE service providers: the dispatch point, and Verification / Storage SCP.

A service turns a received command into either an immediate response, or an
operation that consumes the dataset fragments and answers after `complete()`.
"""
from __future__ import annotations

import logging
import ssl
import time

from engine.dicom.tags import CMD_AFFECTED_SOP_CLASS_UID, CMD_AFFECTED_SOP_INSTANCE_UID
from engine.dicom.uids import VERIFICATION_SOP_CLASS, is_valid_uid
from engine.codec.workers import CodecWorkers
from engine.config import QueryConfig, RetrieveConfig
from engine.errors import EngineError
from engine.ingest.pipeline import IngestPipeline, InstanceReceiver, Origin
from engine.net import status as st
from engine.net.acse import AcceptedContext
from engine.net.dimse import (
    C_ECHO_RSP, C_STORE_RSP, Command, encode_response)
from engine.net.commitment_service import (
    CommitmentOperation, CommitmentReporter, ReportChannel)
from engine.net.find_service import FindOperation
from engine.net.retrieve_service import GetOperation, MoveOperation, StoreChannel
from engine.query.find import FindExecutor
from engine.query.retrieve import RetrieveResolver

log = logging.getLogger(__name__)


class StoreOperation:
    """One C-STORE: feeds the dataset to ingest, or drains it when refused up front."""

    reads_while_running = False  # responses in order: stop reading while committing

    __slots__ = ("context_id", "command", "receiver", "refusal", "assoc_id", "observer")

    def __init__(self, context_id: int, command: Command, receiver: InstanceReceiver | None,
                 refusal: tuple[int, str] | None, assoc_id: str, observer=None) -> None:
        self.context_id = context_id
        self.command = command
        self.receiver = receiver
        self.refusal = refusal
        self.assoc_id = assoc_id
        #: The association's AssociationObserver (engine.ops): audit tallies and metrics.
        self.observer = observer

    def feed(self, fragment: memoryview) -> None:
        if self.receiver is not None:
            self.receiver.feed(fragment)

    def abort(self) -> None:
        if self.receiver is not None:
            self.receiver.abort()

    async def run(self, send) -> None:
        await send(self.context_id, await self.complete(), None)

    def cancel(self) -> None:
        """C-CANCEL does not apply to C-STORE (PS3.7 9.3.1): ignored."""

    async def complete(self) -> bytes:
        """Store durably (or not) and return the C-STORE-RSP command set."""
        size, started = 0, None
        if self.refusal is not None:
            status, comment = self.refusal
        else:
            assert self.receiver is not None
            started = time.monotonic()
            try:
                result = await self.receiver.complete()
                size = result.size
                status, comment = st.status_for_outcome(result.outcome)
                if status:
                    log.warning("%s C-STORE %s: %s", self.assoc_id, result.outcome.value,
                                result.content_hash[:16])
            except EngineError as exc:
                status, comment = st.status_for_error(exc)
                log.warning("%s C-STORE failed with 0x%04X: %s", self.assoc_id, status, exc)
            except Exception:
                log.exception("%s C-STORE failed unexpectedly", self.assoc_id)
                status, comment = st.FAILURE_PROCESSING, "internal error while storing"
        observer = self.observer
        if observer is not None:
            receiver = self.receiver
            if receiver is not None:
                observer.stored(receiver.sop_class_uid, receiver.study_instance_uid,
                                receiver.patient_id, status, size,
                                time.monotonic() - started)
            else:
                observer.stored(self.command.text(CMD_AFFECTED_SOP_CLASS_UID) or "", "", "",
                                status, 0, None)
        return encode_response(C_STORE_RSP, self.command, status, comment)


class ServiceProvider:
    """Dispatches commands of an established association to the right service."""

    def __init__(self, pipeline: IngestPipeline, finder: FindExecutor,
                 query_config: QueryConfig, resolver: RetrieveResolver,
                 retrieve_config: RetrieveConfig, codec: CodecWorkers, ae_title: str,
                 max_pdu_length: int, reporter: CommitmentReporter,
                 client_ssl: ssl.SSLContext | None = None) -> None:
        #: Our TLS client context, for C-MOVE destinations that say tls = true.
        self.client_ssl = client_ssl
        self.pipeline = pipeline
        self.finder = finder
        self.query_config = query_config
        self.resolver = resolver
        self.retrieve_config = retrieve_config
        self.codec = codec
        self.ae_title = ae_title
        self.max_pdu_length = max_pdu_length
        self.reporter = reporter

    def begin_find(self, context: AcceptedContext, command: Command,
                   assoc_id: str, observer=None) -> FindOperation:
        return FindOperation(context, command, self.finder, self.query_config, assoc_id,
                             observer)

    def begin_move(self, context: AcceptedContext, command: Command, calling_ae_title: str,
                   assoc_id: str, observer=None) -> MoveOperation:
        return MoveOperation(context, command, self.resolver, self.retrieve_config, self.codec,
                             self.ae_title, calling_ae_title, self.max_pdu_length, assoc_id,
                             self.client_ssl, observer)

    def begin_get(self, context: AcceptedContext, command: Command, channel: StoreChannel,
                  assoc_id: str, observer=None) -> GetOperation:
        return GetOperation(context, command, self.resolver, self.retrieve_config, self.codec,
                            channel, assoc_id, observer)

    def begin_commitment(self, context: AcceptedContext, command: Command,
                         channel: ReportChannel, calling_ae_title: str,
                         assoc_id: str) -> CommitmentOperation:
        return CommitmentOperation(context, command, self.reporter, channel, calling_ae_title,
                                   assoc_id)

    def echo(self, command: Command) -> bytes:
        return encode_response(C_ECHO_RSP, command, st.SUCCESS)

    def begin_store(self, context: AcceptedContext, command: Command, origin: Origin,
                    assoc_id: str, observer=None) -> StoreOperation:
        sop_class = command.text(CMD_AFFECTED_SOP_CLASS_UID) or ""
        sop_instance = command.text(CMD_AFFECTED_SOP_INSTANCE_UID) or ""
        refusal = None
        if not is_valid_uid(sop_class) or not is_valid_uid(sop_instance):
            refusal = (st.FAILURE_INVALID_UID, "Affected SOP Class/Instance UID is not a valid UID")
        elif sop_class != context.abstract_syntax or sop_class == VERIFICATION_SOP_CLASS:
            refusal = (st.FAILURE_SOP_CLASS_NOT_SUPPORTED,
                       "SOP Class differs from the presentation context's")
        receiver = None
        if refusal is None:
            try:
                receiver = self.pipeline.begin(sop_class, sop_instance, context.transfer_syntax,
                                               origin.calling_ae_title, origin)
            except EngineError as exc:
                refusal = st.status_for_error(exc)
        if refusal is not None:
            log.warning("%s C-STORE refused with 0x%04X: %s", assoc_id, *refusal)
        return StoreOperation(context.context_id, command, receiver, refusal, assoc_id,
                              observer)

