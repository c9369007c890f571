"""The acceptor side of the DICOM Upper Layer state machine (PS3.8 9.2), sans I/O.

`AssociationMachine.receive(bytes)` returns events; it never touches a socket,
a clock or the event loop, so every transition is testable with plain bytes.
The asyncio protocol in listener.py performs the I/O the events ask for.

States used (PS3.8 Table 9-10, acceptor subset):
    Sta2  AWAITING_ASSOCIATE_RQ  transport open, ARTIM running
    Sta6  ESTABLISHED            data transfer
    Sta13 AWAITING_CLOSE         RJ, RP or A-ABORT sent; ARTIM running until close
    Sta1  CLOSED
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from engine.errors import DIMSEError, MalformedPDU, PDUError
from engine.net.acse import (
    ABORT_INVALID_PDU_PARAMETER, ABORT_UNEXPECTED_PDU, AcceptedContext, AssociationNegotiator,
    NegotiationResult)
from engine.net.dimse import MAX_COMMAND_SET_LENGTH, Command, decode_command
from engine.net.pdu_framing import PDUFramer

A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_ABORT = 0x07


class State(Enum):
    AWAITING_ASSOCIATE_RQ = "Sta2"
    ESTABLISHED = "Sta6"
    AWAITING_CLOSE = "Sta13"
    CLOSED = "Sta1"


class ProtocolViolation(PDUError):
    """A valid PDU arrived where the state machine does not allow it; carries the abort reason."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


# --- events ------------------------------------------------------------------
@dataclass(frozen=True)
class SendPDU:
    data: bytes
    close_after: bool = False


@dataclass(frozen=True)
class Established:
    negotiation: NegotiationResult


@dataclass(frozen=True)
class Rejected:
    negotiation: NegotiationResult


@dataclass(frozen=True)
class CommandReceived:
    context: AcceptedContext
    command: Command


@dataclass(frozen=True)
class DatasetFragment:
    data: memoryview
    last: bool


@dataclass(frozen=True)
class ReleaseRequested:
    pass


@dataclass(frozen=True)
class PeerAborted:
    pass


class AssociationMachine:
    """Per-association protocol state; feed it bytes, act on the events it returns."""

    def __init__(self, negotiator: AssociationNegotiator, max_associate_rq_length: int,
                 over_limit: Callable[[], bool],
                 admit: Callable[[str], bool] | None = None) -> None:
        self.state = State.AWAITING_ASSOCIATE_RQ
        self._negotiator = negotiator
        self._over_limit = over_limit
        #: Known-peer check of the calling AE title on this connection (None: everyone).
        self._admit = admit
        self._framer = PDUFramer(max_associate_rq_length)
        self.negotiation: NegotiationResult | None = None
        self._command = bytearray()
        self._command_context: int | None = None
        self._dataset_context: AcceptedContext | None = None

    @property
    def in_message(self) -> bool:
        """True while a command or its dataset is partly received (DIMSE timeout applies)."""
        return bool(self._command) or self._dataset_context is not None

    def receive(self, data) -> list:
        """Consume bytes from the peer; PDUError (with .reason where known) means abort."""
        if self.state is State.CLOSED:
            return []
        events: list = []
        for pdu_type, context_id, control, payload in self._framer.feed(data):
            if self.state is State.ESTABLISHED:
                if pdu_type == P_DATA_TF:
                    self._on_pdv(context_id, control, payload, events)
                elif pdu_type == A_RELEASE_RQ:
                    if self.in_message:
                        raise ProtocolViolation("A-RELEASE-RQ in the middle of a DIMSE message",
                                                ABORT_UNEXPECTED_PDU)
                    self.state = State.AWAITING_CLOSE
                    events.append(ReleaseRequested())
                elif pdu_type == A_ABORT:
                    self.state = State.CLOSED
                    events.append(PeerAborted())
                    return events
                else:
                    raise ProtocolViolation(f"unexpected PDU type {pdu_type} on an established "
                                            "association", ABORT_UNEXPECTED_PDU)
            elif self.state is State.AWAITING_ASSOCIATE_RQ:
                if pdu_type == A_ASSOCIATE_RQ:
                    self._on_associate_rq(payload, events)
                elif pdu_type == A_ABORT:
                    self.state = State.CLOSED
                    events.append(PeerAborted())
                    return events
                else:
                    raise ProtocolViolation(f"PDU type {pdu_type} before A-ASSOCIATE-RQ",
                                            ABORT_UNEXPECTED_PDU)
            elif self.state is State.AWAITING_CLOSE:
                if pdu_type == A_ABORT:
                    self.state = State.CLOSED
                    events.append(PeerAborted())
                    return events
                # Sta13: anything else is ignored while we wait for the close.
        return events

    def _on_associate_rq(self, raw: bytes, events: list) -> None:
        result = self._negotiator.negotiate(raw, self._over_limit(), self._admit)
        self.negotiation = result
        if result.accepted:
            self.state = State.ESTABLISHED
            self._framer.max_pdu_length = self._negotiator.policy.max_pdu_length
            events.append(SendPDU(result.response))
            events.append(Established(result))
        else:
            self.state = State.AWAITING_CLOSE
            events.append(SendPDU(result.response, close_after=True))
            events.append(Rejected(result))

    def _on_pdv(self, context_id: int, control: int, payload: memoryview, events: list) -> None:
        assert self.negotiation is not None
        context = self.negotiation.contexts.get(context_id)
        if context is None:
            raise ProtocolViolation(f"P-DATA on presentation context {context_id}, which was "
                                    "not accepted", ABORT_INVALID_PDU_PARAMETER)
        last = bool(control & 0x02)
        if control & 0x01:  # command fragment
            if self._dataset_context is not None:
                raise ProtocolViolation("command fragment while a dataset is being received",
                                        ABORT_UNEXPECTED_PDU)
            if self._command_context not in (None, context_id):
                raise ProtocolViolation("command fragments on two presentation contexts",
                                        ABORT_INVALID_PDU_PARAMETER)
            self._command_context = context_id
            if len(self._command) + len(payload) > MAX_COMMAND_SET_LENGTH:
                raise MalformedPDU("command set larger than 64 KiB")
            self._command += payload
            if last:
                raw = bytes(self._command)
                self._command.clear()
                self._command_context = None
                try:
                    command = decode_command(raw)
                except DIMSEError as exc:
                    raise ProtocolViolation(str(exc), ABORT_INVALID_PDU_PARAMETER) from exc
                if command.has_dataset:
                    self._dataset_context = context
                events.append(CommandReceived(context, command))
        else:
            if self._dataset_context is None or self._dataset_context.context_id != context_id:
                raise ProtocolViolation("dataset fragment without a command announcing it",
                                        ABORT_UNEXPECTED_PDU)
            if last:
                self._dataset_context = None
            events.append(DatasetFragment(payload, last))
