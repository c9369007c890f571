"""The asyncio side of associations: sockets, timers, limits, ordering.

One `AssociationProtocol` per TCP connection drives an `AssociationMachine`.
Messages are handled strictly in order: while a C-STORE is being made durable,
reading from that peer is paused, so responses go out in request order and a
fast peer cannot queue unbounded work.  A single sweeper task enforces the
ARTIM, idle and DIMSE timeouts of every association.

A DICOM TLS listener uses the same protocol beneath asyncio's TLS layer: the
handshake runs in the event loop, one per connection, under its own deadline
(`ssl_handshake_timeout`), and only a completed handshake reaches
`connection_made`; until then a connection is no association (not counted, not
logged, no ARTIM), so a failed or silent handshake costs nothing but itself.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass

from engine.errors import PDUError
from engine.net.acse import (
    A_ABORT_BY_USER_PDU, A_RELEASE_RP_PDU, ABORT_REASON_NOT_SPECIFIED, AcceptorPolicy,
    AssociationNegotiator, accepted_syntaxes, provider_abort_pdu)
from engine.net.association import (
    AssociationMachine, CommandReceived, DatasetFragment, Established, PeerAborted, Rejected,
    ReleaseRequested, SendPDU, State)
from engine.dicom.tags import CMD_MESSAGE_ID_BEING_RESPONDED_TO
from engine.ingest.pipeline import Origin
from engine.net.dimse import (
    C_CANCEL_RQ, C_ECHO_RQ, C_FIND_RQ, C_GET_RQ, C_MOVE_RQ, C_STORE_RQ, N_ACTION_RQ, Command,
    MessageIds)
from engine.net.outbound import PeerGone, StoredDataset, send_message
from engine.net.pdu_framing import encode_p_data
from engine.net.peers import PeerTable
from engine.net.requestor import AssociationFailed
from engine.net.services import ServiceProvider
from engine.net.tls import PeerIdentity, peer_identity
from engine.ops.audit import TLSIdentity
from engine.ops.observer import Observers

log = logging.getLogger(__name__)

#: Events a peer may queue while an operation runs before we stop reading from it.
_MAX_QUEUED_EVENTS = 64


@dataclass(frozen=True)
class ListenerLimits:
    max_associations: int
    max_associations_per_ip: int
    max_associate_rq_length: int
    artim_timeout: float
    idle_timeout: float
    dimse_timeout: float
    #: Seconds the peer may take to answer a request we send (C-GET sub-operations).
    response_timeout: float = 60.0


class AssociationProtocol(asyncio.Protocol):
    def __init__(self, listener: "DicomListener") -> None:
        self.listener = listener
        self.id = "assoc#?"  # numbered once the connection (and its TLS handshake) is made
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.identity = PeerIdentity("")
        self.machine = AssociationMachine(
            listener.negotiator, listener.limits.max_associate_rq_length, self._over_limit,
            self._admit if listener.peers.active else None)
        self._events: deque = deque()
        self._operation = None  # the running StoreOperation, FindOperation, GetOperation...
        self._completion: asyncio.Task | None = None
        self._closed = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.connected_at = time.monotonic()
        self.last_activity = self.connected_at
        self.message_started_at: float | None = None
        #: Since when our writes have been paused (the peer's receive window is full).
        self.write_blocked_since: float | None = None
        self._calling_ae = ""
        self._origin = Origin("")
        self._peer_max_pdu = 0
        #: Our outstanding request on this association (C-GET sub-operation) and its answer.
        self._response: asyncio.Future | None = None
        self._skipping_response_dataset = False
        #: Message IDs of our requests on this association (C-GET sub-operations).
        self.next_message_id = MessageIds()
        #: Audit tallies and metrics of this association (engine.ops.observer).
        self.observer = listener.observers.association(self.id, "")

    # -- asyncio callbacks ------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.id = f"assoc#{next(self.listener.ids)}"
        self.connected_at = self.last_activity = time.monotonic()  # ARTIM starts now
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        ssl_object = transport.get_extra_info("ssl_object")
        self.identity = peer_identity(self.peer_ip, ssl_object)
        identity = self.identity
        self.observer = self.listener.observers.association(
            self.id, self.peer_ip, TLSIdentity(identity.tls, identity.certificate_cns,
                                               identity.certificate_sha256))
        self.listener.register(self)
        if ssl_object is not None:
            log.debug("%s TLS connection from %s (%s, %s), client certificate CN %s", self.id,
                      self.peer_ip, ssl_object.version(), (ssl_object.cipher() or ("?",))[0],
                      ", ".join(self.identity.certificate_cns) or "(none)")
        else:
            log.debug("%s connection from %s", self.id, self.peer_ip)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        try:
            events = self.machine.receive(data)
        except PDUError as exc:
            self._drain()  # act on what was valid before the bad bytes
            self.abort(getattr(exc, "reason", ABORT_REASON_NOT_SPECIFIED), str(exc))
            return
        if self._completion is None:
            self._events.extend(events)
            self._drain()
        else:
            self._intercept(events)
            if len(self._events) > _MAX_QUEUED_EVENTS and self.transport is not None:
                self.transport.pause_reading()  # a peer racing ahead of its own responses
        if self.message_started_at is None and self.machine.state is State.ESTABLISHED and \
                (not events or self.machine.in_message):
            # Bytes that completed no PDU, or a command still in fragments, start the DIMSE
            # clock: every byte resets the idle timer, so a peer trickling a PDU or a message
            # would otherwise hold the association for ever.
            self.message_started_at = self.last_activity

    def _intercept(self, events) -> None:
        """While an operation that keeps reading (C-FIND) runs, a C-CANCEL for it or an
        A-ABORT acts at once; every other event is queued for its turn."""
        for event in events:
            if isinstance(event, CommandReceived) and event.command.is_response:
                self._on_response(event.command)
            elif isinstance(event, DatasetFragment) and self._skipping_response_dataset:
                self._skipping_response_dataset = not event.last
            elif isinstance(event, CommandReceived) and \
                    event.command.command_field == C_CANCEL_RQ:
                operation = self._operation
                if operation is not None and event.command.us(
                        CMD_MESSAGE_ID_BEING_RESPONDED_TO) == operation.message_id:
                    operation.cancel()
            elif isinstance(event, PeerAborted):
                log.info("%s aborted by peer", self.id)
                self.observer.ending("aborted by peer")
                if self._operation is not None:
                    self._operation.abort()
                self._close()
                return
            else:
                if isinstance(event, ReleaseRequested):
                    # A peer releasing will not answer a request of ours: stop waiting.
                    self._fail_response(AssociationFailed("peer requested release"))
                self._events.append(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._writable.set()  # release a sender waiting for buffer space
        self._fail_response(AssociationFailed("connection closed"))
        if self._operation is not None:
            if self._completion is None:
                self._operation.abort()  # mid-dataset: nothing of it is kept
                self._operation = None
            elif self._operation.reads_while_running:
                self._operation.abort()  # stop a running query; a store still completes
        self.listener.unregister(self)
        self.observer.closed()
        log.debug("%s closed", self.id)

    # -- message handling -------------------------------------------------------
    def _over_limit(self) -> bool:
        return self.listener.over_limit(self)

    def _admit(self, calling_ae_title: str) -> bool:
        """The known-peer check (A-ASSOCIATE-RJ 1/1/3 when it fails; the reason is logged)."""
        why = self.listener.peers.refusal(calling_ae_title, self.identity)
        if why is not None:
            log.warning("%s refused calling AE %r from %s%s: %s", self.id, calling_ae_title,
                        self.peer_ip, " (TLS)" if self.identity.tls else "", why)
            self.observer.refused_peer(calling_ae_title, why)
        return why is None

    def _drain(self) -> None:
        """Act on queued events in order; stop while a store is being committed."""
        events = self._events
        while events and self._completion is None and not self._closed:
            event = events.popleft()
            if isinstance(event, DatasetFragment) and self._skipping_response_dataset:
                self._skipping_response_dataset = not event.last
            elif isinstance(event, DatasetFragment):
                operation = self._operation
                if operation is not None:
                    operation.feed(event.data)
                    if event.last:
                        self._start_completion(operation)
            elif isinstance(event, SendPDU):
                self._send(event.data)
                if event.close_after:
                    self._close()
            elif isinstance(event, CommandReceived):
                self._on_command(event)
            elif isinstance(event, Established):
                self._calling_ae = event.negotiation.calling_ae_title
                self._origin = Origin(event.negotiation.calling_ae_title,
                                      event.negotiation.called_ae_title, self.peer_ip)
                self._peer_max_pdu = event.negotiation.peer_max_pdu_length
                self.observer.established(event.negotiation.calling_ae_title,
                                          event.negotiation.called_ae_title)
                log.info("%s established: calling %s called %s, %d contexts", self.id,
                         event.negotiation.calling_ae_title, event.negotiation.called_ae_title,
                         len(event.negotiation.contexts))
            elif isinstance(event, Rejected):
                log.info("%s rejected (%d/%d/%d): calling %s called %s", self.id,
                         *event.negotiation.reject_reason, event.negotiation.calling_ae_title,
                         event.negotiation.called_ae_title)
                self.observer.rejected(event.negotiation.reject_reason,
                                       event.negotiation.calling_ae_title,
                                       event.negotiation.called_ae_title)
            elif isinstance(event, ReleaseRequested):
                self.observer.ending("released")
                self._send(A_RELEASE_RP_PDU)
                self._close()
            elif isinstance(event, PeerAborted):
                log.info("%s aborted by peer", self.id)
                self.observer.ending("aborted by peer")
                self._close()
        if self._completion is None and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def _on_command(self, event: CommandReceived) -> None:
        command = event.command
        field = command.command_field
        if command.is_response:
            self._on_response(command)
            return
        # A message whose first bytes trickled in keeps the clock started by them.
        self.message_started_at = (self.message_started_at or time.monotonic()) \
            if command.has_dataset else None
        services = self.listener.services
        observer = self.observer
        if field == C_STORE_RQ and command.has_dataset:
            self._operation = services.begin_store(event.context, command, self._origin,
                                                   self.id, observer)
        elif field == C_FIND_RQ and command.has_dataset:
            self._operation = services.begin_find(event.context, command, self.id, observer)
        elif field == C_MOVE_RQ and command.has_dataset:
            self._operation = services.begin_move(event.context, command, self._calling_ae,
                                                  self.id, observer)
        elif field == C_GET_RQ and command.has_dataset:
            self._operation = services.begin_get(event.context, command, self, self.id,
                                                 observer)
        elif field == N_ACTION_RQ:
            self._operation = services.begin_commitment(event.context, command, self,
                                                        self._calling_ae, self.id)
            if not command.has_dataset:  # no Action Information: answered with a failure
                self._start_completion(self._operation)
        elif field == C_CANCEL_RQ:
            pass  # nothing of that message is running any more (PS3.7 9.3.2.3)
        elif field == C_ECHO_RQ:
            self._send_command(event.context.context_id, self.listener.services.echo(command))
            observer.echo()
        else:
            self.abort(ABORT_REASON_NOT_SPECIFIED,
                       f"unsupported DIMSE command 0x{field or 0:04X}")

    def _start_completion(self, operation) -> None:
        if not operation.reads_while_running:
            self.transport.pause_reading()
        self._completion = asyncio.get_running_loop().create_task(self._complete(operation))
        if operation.reads_while_running and self._events:
            # A C-CANCEL may have arrived in the same read as the request it cancels.
            queued = list(self._events)
            self._events.clear()
            self._intercept(queued)

    async def _complete(self, operation) -> None:
        try:
            await operation.run(self._send_message)
        finally:
            self._operation = None
            self._completion = None
            self.message_started_at = None
            if not self._closed:
                self._drain()

    # -- output -----------------------------------------------------------------
    def _send(self, pdu: bytes) -> None:
        if not self._closed and self.transport is not None:
            self.transport.write(pdu)

    def _send_command(self, context_id: int, command_set: bytes) -> None:
        for pdu in encode_p_data(context_id, True, command_set, self._peer_max_pdu):
            self._send(pdu)

    async def _send_message(self, context_id: int, command_set: bytes,
                            dataset: bytes | None) -> None:
        """Send a DIMSE message; waits while the transport's write buffer is full.

        Command and dataset PDUs go to the transport in one call: a C-FIND sends
        thousands of small messages, and one write per message is what they cost.
        """
        pdus = encode_p_data(context_id, True, command_set, self._peer_max_pdu)
        if dataset is not None:
            pdus += encode_p_data(context_id, False, dataset, self._peer_max_pdu)
        if not self._closed and self.transport is not None:
            self.transport.writelines(pdus)
        if not self._writable.is_set() and not self._closed:
            await self._writable.wait()

    # -- requests we send on this association (C-GET: we are the storage SCU) ---------
    @property
    def closed(self) -> bool:
        return self._closed

    def write_buffers(self, buffers: list) -> None:
        if not self._closed and self.transport is not None:
            self.transport.writelines(buffers)

    async def wait_writable(self) -> None:
        if not self._writable.is_set() and not self._closed:
            await self._writable.wait()

    @property
    def accepts_reports(self) -> bool:
        """Whether a request of ours may still go out: open, and no release queued."""
        return (not self._closed and self.machine.state is State.ESTABLISHED
                and not any(isinstance(e, ReleaseRequested) for e in self._events))

    def accepted_syntaxes(self, sop_class_uid: str) -> dict[str, int]:
        """Transfer syntax → context id of contexts on which the peer let us be SCU."""
        negotiation = self.machine.negotiation
        return accepted_syntaxes(negotiation.contexts.values() if negotiation else (),
                                 sop_class_uid)

    async def request(self, context_id: int, command_set: bytes,
                      dataset: bytes | StoredDataset | None) -> tuple[Command, bytes | None]:
        """Send a request to the peer and wait for its response (one at a time)."""
        if self._closed:
            raise AssociationFailed("association closed")
        self._response = asyncio.get_running_loop().create_future()
        try:
            await send_message(self, context_id, command_set, dataset, self._peer_max_pdu)
        except PeerGone as exc:
            raise AssociationFailed(str(exc)) from exc
        except OSError as exc:  # half a message is out: the association cannot go on
            self.abort(ABORT_REASON_NOT_SPECIFIED, f"stored file unreadable mid-send: {exc}")
            raise AssociationFailed("stored file unreadable mid-send") from exc
        try:
            return await asyncio.wait_for(self._response, self.listener.limits.response_timeout)
        except asyncio.TimeoutError:
            self.abort(ABORT_REASON_NOT_SPECIFIED, "peer did not answer our request in time")
            raise AssociationFailed("no response within the timeout") from None
        finally:
            self._response = None

    def _on_response(self, command: Command) -> None:
        self._skipping_response_dataset = command.has_dataset  # an optional reply dataset
        if self._response is not None and not self._response.done():
            self._response.set_result((command, None))
        else:
            log.info("%s ignoring an unexpected response (0x%04X)", self.id,
                     command.command_field or 0)

    def _fail_response(self, exc: Exception) -> None:
        if self._response is not None and not self._response.done():
            self._response.set_exception(exc)
            self._response.exception()  # may have no waiter (the send failed first): not noise

    def pause_writing(self) -> None:
        self._writable.clear()
        self.write_blocked_since = time.monotonic()

    def resume_writing(self) -> None:
        self._writable.set()
        self.write_blocked_since = None

    def _close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()

    def abort(self, reason: int, why: str) -> None:
        """Send A-ABORT (service provider) and drop the connection."""
        log.warning("%s aborting: %s", self.id, why)
        self.observer.ending(f"aborted: {why}")
        if self._operation is not None and self._completion is None:
            self._operation.abort()
            self._operation = None
        self._events.clear()
        if self.transport is not None and not self._closed:
            self.transport.write(provider_abort_pdu(reason))
            self.transport.close()
        self._closed = True
        self._fail_response(AssociationFailed(f"aborted: {why}"))

    def check_deadlines(self, now: float) -> None:
        limits = self.listener.limits
        state = self.machine.state
        if self.write_blocked_since is not None and \
                now - self.write_blocked_since > limits.dimse_timeout:
            # The peer stopped reading: a running operation waits for buffer space that never
            # comes (and a close would wait to flush it), so drop the connection outright.
            log.warning("%s aborting: peer read nothing for %.0f s", self.id,
                        now - self.write_blocked_since)
            self.observer.ending("aborted: peer read nothing within the DIMSE timeout")
            self._hard_close(reset=True)
        elif state is State.AWAITING_ASSOCIATE_RQ and \
                now - self.connected_at > limits.artim_timeout:
            log.info("%s ARTIM expired waiting for A-ASSOCIATE-RQ", self.id)
            self._hard_close()
        elif state is State.AWAITING_CLOSE and now - self.last_activity > limits.artim_timeout:
            self._hard_close()
        elif state is State.ESTABLISHED and self._completion is None:
            if self.message_started_at is not None and \
                    now - self.message_started_at > limits.dimse_timeout:
                self.abort(ABORT_REASON_NOT_SPECIFIED, "DIMSE timeout: message incomplete")
            elif now - self.last_activity > limits.idle_timeout:
                self.abort(ABORT_REASON_NOT_SPECIFIED, "idle timeout")

    def _hard_close(self, reset: bool = False) -> None:
        if self.transport is not None:
            if reset:  # RST, not FIN: the kernel drops the unsent data instead of keeping
                sock = self.transport.get_extra_info("socket")  # it for a peer that never reads
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except (AttributeError, OSError):
                    pass
            self.transport.abort()
        self._closed = True


class DicomListener:
    """Accepts TCP connections and tracks every association for limits and shutdown."""

    def __init__(self, policy: AcceptorPolicy, limits: ListenerLimits,
                 services: ServiceProvider, peers: PeerTable | None = None,
                 observers: Observers | None = None) -> None:
        #: Audit trail and metrics (engine.ops); a silent default when not given.
        self.observers = observers if observers is not None else Observers()
        self.negotiator = AssociationNegotiator(policy)
        self.limits = limits
        self.services = services
        self.peers = peers if peers is not None else PeerTable()
        self.ids = itertools.count(1)
        self.associations: set[AssociationProtocol] = set()
        self._per_ip: dict[str, int] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.Task | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    handshake_timeout: float = 10.0) -> int:
        """Listen on host:port (with TLS when `ssl_context` is given); the bound port.

        May be called once per listening socket (plain and TLS side by side).
        """
        loop = asyncio.get_running_loop()
        tls = {"ssl": ssl_context, "ssl_handshake_timeout": handshake_timeout} \
            if ssl_context is not None else {}
        server = await loop.create_server(
            lambda: AssociationProtocol(self), host, port, reuse_address=True, backlog=256,
            **tls)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return server.sockets[0].getsockname()[1]

    def register(self, assoc: AssociationProtocol) -> None:
        self.associations.add(assoc)
        self._per_ip[assoc.peer_ip] = self._per_ip.get(assoc.peer_ip, 0) + 1

    def unregister(self, assoc: AssociationProtocol) -> None:
        if assoc in self.associations:
            self.associations.discard(assoc)
            left = self._per_ip.get(assoc.peer_ip, 1) - 1
            if left:
                self._per_ip[assoc.peer_ip] = left
            else:
                self._per_ip.pop(assoc.peer_ip, None)

    def over_limit(self, assoc: AssociationProtocol) -> bool:
        """Checked when an A-ASSOCIATE-RQ arrives (answered with A-ASSOCIATE-RJ 2/3/2)."""
        established = sum(1 for a in self.associations
                          if a is not assoc and a.machine.state is State.ESTABLISHED)
        return (established >= self.limits.max_associations
                or self._per_ip.get(assoc.peer_ip, 0) > self.limits.max_associations_per_ip)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for assoc in list(self.associations):
                assoc.check_deadlines(now)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let in-flight stores finish, then abort what is left."""
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
                a._completion is not None for a in self.associations):
            await asyncio.sleep(0.02)
        for assoc in list(self.associations):
            if assoc._completion is not None:
                await asyncio.wait({assoc._completion}, timeout=max(0.0, deadline - time.monotonic()))
            if assoc.transport is not None and not assoc._closed:
                assoc.observer.ending("aborted: server stopping")
                assoc.transport.write(A_ABORT_BY_USER_PDU)
                assoc.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)  # connection_lost of the connections just closed
        for assoc in list(self.associations):
            assoc.observer.closed()  # their audit records before the trail is closed

    @property
    def active(self) -> int:
        """Associations established now (the metrics' gauge)."""
        return sum(1 for a in self.associations if a.machine.state is State.ESTABLISHED)

    @property
    def accepting(self) -> bool:
        """Whether every listening socket still accepts connections (the health check)."""
        return bool(self._servers) and all(s.is_serving() for s in self._servers)


__all__ = ["DicomListener", "ListenerLimits", "AssociationProtocol"]
