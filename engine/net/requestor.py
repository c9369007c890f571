"""The requestor side of an association, on asyncio (PS3.8 9.2, requestor states).

Opens a TCP connection, proposes presentation contexts (A-ASSOCIATE-RQ built
with pynetdicom's PDU classes), and then runs one request at a time: a
command (and dataset, possibly streamed from a stored file) out, the response
back.  C-MOVE sub-operations and storage-commitment reports on a new
association use it; the framing is the core's PDUFramer.  With an SSL context
(engine/net/tls.py) the connection is DICOM TLS; the handshake counts against
the connect timeout, and the PDUs above it are the same.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE, ImplementationClassUIDNotification, ImplementationVersionNameNotification,
    MaximumLengthNotification, SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import PresentationContext, negotiate_as_requestor

from engine.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.errors import DIMSEError, EngineError, PDUError
from engine.net.acse import (
    A_ABORT_BY_USER_PDU, A_RELEASE_RP_PDU, APPLICATION_CONTEXT_NAME, AcceptedContext,
    accepted_syntaxes)
from engine.net.dimse import MAX_COMMAND_SET_LENGTH, Command, MessageIds, decode_command
from engine.net.outbound import PeerGone, StoredDataset, send_message
from engine.net.pdu_framing import PDUFramer

log = logging.getLogger(__name__)

_AC, _RJ, _P_DATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
#: Largest response dataset we buffer (N-EVENT-REPORT-RSP, C-STORE-RSP carry none or little).
_MAX_RESPONSE_DATASET = 1 << 20
MAX_PRESENTATION_CONTEXTS = 128  # odd context IDs 1..255


class AssociationFailed(EngineError):
    """The peer could not be reached, rejected the association, or aborted it."""


def tls_context(wanted: bool, context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The SSL context for a destination (`tls = true` → `context`): a destination that
    asks for TLS is never reached without it."""
    if not wanted:
        return None
    if context is None:
        raise AssociationFailed("the destination requires TLS, but no TLS client context "
                                "is configured ([tls] ca_file)")
    return context


@dataclass(frozen=True)
class ProposedContext:
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    #: Propose SCP/SCU role selection with us as SCP of this SOP class (PS3.7 D.3.3.4).
    scp_role: bool = False


def associate_rq_pdu(calling_ae: str, called_ae: str, contexts: list[ProposedContext],
                     max_pdu_length: int) -> tuple[bytes, list[PresentationContext]]:
    """The A-ASSOCIATE-RQ bytes, and the pynetdicom contexts needed to read the answer."""
    if not 0 < len(contexts) <= MAX_PRESENTATION_CONTEXTS:
        raise ValueError(f"between 1 and {MAX_PRESENTATION_CONTEXTS} presentation contexts")
    proposed, roles = [], []
    for i, context in enumerate(contexts):
        cx = PresentationContext()
        cx.context_id = 2 * i + 1
        cx.abstract_syntax = UID(context.abstract_syntax)
        cx.transfer_syntax = [UID(ts) for ts in context.transfer_syntaxes]
        if context.scp_role:
            cx.scu_role, cx.scp_role = False, True
            role = SCP_SCU_RoleSelectionNegotiation()
            role.sop_class_uid = cx.abstract_syntax
            role.scu_role, role.scp_role = False, True
            if all(r.sop_class_uid != role.sop_class_uid for r in roles):
                roles.append(role)
        proposed.append(cx)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu_length
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.presentation_context_definition_list = proposed
    primitive.user_information = [max_length, impl_uid, impl_name, *roles]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode(), proposed


def read_associate_ac(raw: bytes, proposed: list[PresentationContext]
                      ) -> tuple[int, dict[int, AcceptedContext]]:
    """(peer's maximum PDU length, accepted contexts) from an A-ASSOCIATE-AC."""
    try:
        pdu = A_ASSOCIATE_AC()
        pdu.decode(raw)
        primitive = pdu.to_primitive()
    except Exception as exc:  # pynetdicom raises a variety of types for garbage
        raise AssociationFailed(f"undecodable A-ASSOCIATE-AC: {type(exc).__name__}") from exc
    peer_max, roles = 0, {}
    for item in primitive.user_information or []:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
            roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
    results = negotiate_as_requestor(
        proposed, primitive.presentation_context_definition_results_list, roles or None)
    accepted = {
        cx.context_id: AcceptedContext(cx.context_id, str(cx.abstract_syntax),
                                       str(cx.transfer_syntax[0]), cx.as_scu, cx.as_scp)
        for cx in results if cx.result == 0x00
    }
    return peer_max, accepted


class _RequestorProtocol(asyncio.Protocol):
    """Bytes in → PDUs → the association's futures; the writing side of `PDUSink`."""

    def __init__(self, max_pdu_length: int) -> None:
        self.framer = PDUFramer(max(max_pdu_length, 1 << 16))
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.associate_answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self.released: asyncio.Future = asyncio.get_running_loop().create_future()
        self.response: asyncio.Future | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._command = bytearray()
        self._dataset = bytearray()
        self._pending_command: Command | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        try:
            for pdu_type, _context_id, control, payload in self.framer.feed(data):
                self._on_pdu(pdu_type, control, payload)
        except (PDUError, DIMSEError) as exc:
            self._fail(AssociationFailed(f"protocol error from peer: {exc}"), abort=True)

    def _on_pdu(self, pdu_type: int, control: int, payload) -> None:
        if pdu_type in (_AC, _RJ):
            if not self.associate_answer.done():
                self.associate_answer.set_result((pdu_type, bytes(payload)))
        elif pdu_type == _P_DATA:
            self._on_pdv(control, payload)
        elif pdu_type == _RELEASE_RP:
            if not self.released.done():
                self.released.set_result(None)
            self._close()
        elif pdu_type == _RELEASE_RQ:  # the acceptor may not release (PS3.8 7.2); be polite
            self._write(A_RELEASE_RP_PDU)
            self._fail(AssociationFailed("peer released the association"))
        elif pdu_type == _ABORT:
            self._fail(AssociationFailed("peer aborted the association"))
        else:
            self._fail(AssociationFailed(f"unexpected PDU type {pdu_type}"), abort=True)

    def _on_pdv(self, control: int, payload) -> None:
        last = bool(control & 0x02)
        if control & 0x01:
            if len(self._command) + len(payload) > MAX_COMMAND_SET_LENGTH:
                raise DIMSEError("command set larger than 64 KiB")
            self._command += payload
            if not last:
                return
            command = decode_command(bytes(self._command))
            self._command.clear()
            if command.has_dataset:
                self._pending_command = command
            else:
                self._deliver(command, None)
        else:
            if self._pending_command is None:
                raise DIMSEError("dataset fragment without a command announcing it")
            if len(self._dataset) + len(payload) > _MAX_RESPONSE_DATASET:
                raise DIMSEError("response dataset too large")
            self._dataset += payload
            if last:
                command, self._pending_command = self._pending_command, None
                dataset = bytes(self._dataset)
                self._dataset.clear()
                self._deliver(command, dataset)

    def _deliver(self, command: Command, dataset: bytes | None) -> None:
        if not command.is_response:
            self._fail(AssociationFailed(
                f"peer sent a request (0x{command.command_field or 0:04X}) on our association"),
                abort=True)
            return
        if self.response is not None and not self.response.done():
            self.response.set_result((command, dataset))

    def _fail(self, exc: Exception, abort: bool = False) -> None:
        for future in (self.associate_answer, self.released, self.response):
            if future is not None and not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: whoever awaits it later still gets it
        if abort:
            self._write(A_ABORT_BY_USER_PDU)
        self._close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._writable.set()
        self._fail(AssociationFailed("connection closed by peer"))

    # -- PDUSink -------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def write_buffers(self, buffers: list) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(buffers)

    async def wait_writable(self) -> None:
        if not self._writable.is_set() and not self.closed:
            await self._writable.wait()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class RequestorAssociation:
    """An association we opened; `request()` one message at a time, then `release()`."""

    def __init__(self, protocol: _RequestorProtocol, peer_max_pdu: int,
                 contexts: dict[int, AcceptedContext], timeout: float) -> None:
        self._protocol = protocol
        self.peer_max_pdu = peer_max_pdu
        self.contexts = contexts
        self.timeout = timeout
        self.next_message_id = MessageIds()

    @classmethod
    async def open(cls, host: str, port: int, calling_ae: str, called_ae: str,
                   contexts: list[ProposedContext], max_pdu_length: int,
                   timeout: float, ssl_context: ssl.SSLContext | None = None
                   ) -> "RequestorAssociation":
        """Connect (over TLS with `ssl_context`) and negotiate; AssociationFailed when
        refused, unreachable, silent, or the TLS handshake fails (untrusted certificate...)."""
        raw_rq, proposed = associate_rq_pdu(calling_ae, called_ae, contexts, max_pdu_length)
        loop = asyncio.get_running_loop()
        tls = {"ssl": ssl_context, "server_hostname": host, "ssl_handshake_timeout": timeout} \
            if ssl_context is not None else {}
        try:
            _, protocol = await asyncio.wait_for(loop.create_connection(
                lambda: _RequestorProtocol(max_pdu_length), host, port, **tls), timeout)
        except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise AssociationFailed(f"cannot connect to {called_ae} at {host}:{port}"
                                    f"{' (TLS)' if ssl_context else ''}: "
                                    f"{exc or 'timed out'}") from exc
        protocol._write(raw_rq)
        try:
            pdu_type, raw = await asyncio.wait_for(protocol.associate_answer, timeout)
        except asyncio.TimeoutError:
            protocol._fail(AssociationFailed("no answer to A-ASSOCIATE-RQ"), abort=True)
            raise AssociationFailed(f"{called_ae} did not answer the association request")
        if pdu_type == _RJ:
            protocol._close()
            rj = A_ASSOCIATE_RJ()
            rj.decode(raw)
            raise AssociationFailed(f"{called_ae} rejected the association "
                                    f"({rj.result}/{rj.source}/{rj.reason_diagnostic})")
        peer_max, accepted = read_associate_ac(raw, proposed)
        protocol.framer.max_pdu_length = max_pdu_length
        return cls(protocol, peer_max, accepted, timeout)

    @property
    def is_open(self) -> bool:
        return not self._protocol.closed

    def accepted_syntaxes(self, abstract_syntax: str, as_scu: bool = True) -> dict[str, int]:
        """Transfer syntax → context id of the accepted contexts for a SOP class."""
        return accepted_syntaxes(self.contexts.values(), abstract_syntax, as_scu)

    async def request(self, context_id: int, command_set: bytes,
                      dataset: bytes | StoredDataset | None) -> tuple[Command, bytes | None]:
        """Send one request message and wait for its response (command, dataset)."""
        protocol = self._protocol
        if protocol.closed:
            raise AssociationFailed("association is closed")
        protocol.response = asyncio.get_running_loop().create_future()
        try:
            await send_message(protocol, context_id, command_set, dataset, self.peer_max_pdu)
        except PeerGone as exc:
            raise AssociationFailed(str(exc)) from exc
        except OSError as exc:  # half a message is out: the association cannot go on
            protocol._fail(AssociationFailed("stored file unreadable"), abort=True)
            raise AssociationFailed(f"stored file unreadable mid-send: {exc}") from exc
        try:
            return await asyncio.wait_for(protocol.response, self.timeout)
        except asyncio.TimeoutError:
            protocol._fail(AssociationFailed("DIMSE timeout"), abort=True)
            raise AssociationFailed("no response within the DIMSE timeout") from None
        finally:
            protocol.response = None

    async def release(self) -> None:
        """A-RELEASE; falls back to closing the socket if the peer does not answer."""
        protocol = self._protocol
        if protocol.closed:
            return
        protocol._write(A_RELEASE_RQ().encode())
        try:
            await asyncio.wait_for(protocol.released, self.timeout)
        except (asyncio.TimeoutError, AssociationFailed):
            pass
        finally:
            protocol._close()

    def abort(self) -> None:
        self._protocol._fail(AssociationFailed("aborted by us"), abort=True)


__all__ = ["AssociationFailed", "ProposedContext", "RequestorAssociation",
           "MAX_PRESENTATION_CONTEXTS", "associate_rq_pdu", "read_associate_ac", "tls_context"]
