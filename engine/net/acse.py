"""Association establishment as acceptor (PS3.8 7.1, PS3.7 D.3).

Decoding the A-ASSOCIATE-RQ, presentation-context negotiation and PDU encoding
are pynetdicom's; this module adds our policy (AE-title checks, association
limits, what we support; the caller adds the known-peer check) and returns the
bytes to send.  No I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pydicom.uid import UID
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP
from pynetdicom.pdu_primitives import (
    A_ABORT, A_ASSOCIATE, A_P_ABORT, ImplementationClassUIDNotification,
    ImplementationVersionNameNotification, MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation, SOPClassExtendedNegotiation)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from engine.dicom.uids import (
    ACCEPTED_TRANSFER_SYNTAXES, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME,
    STORAGE_COMMITMENT_SOP_CLASS, STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS)
from engine.errors import MalformedPDU
from engine.query.model import FIND_SOP_CLASSES, GET_SOP_CLASSES, MOVE_SOP_CLASSES

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-RJ (result, source, reason) triples, PS3.8 9.3.4.
REJECT_CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
REJECT_CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)
REJECT_APPLICATION_CONTEXT_NOT_SUPPORTED = (0x01, 0x01, 0x02)
REJECT_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
REJECT_PROTOCOL_VERSION_NOT_SUPPORTED = (0x01, 0x03, 0x02)

# A-ABORT source 2 = service provider, reasons PS3.8 9.3.8.
ABORT_REASON_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PDU_PARAMETER = 0x06


def _abort_pdu(source: int, reason: int) -> bytes:
    if source == 0x02:
        primitive = A_P_ABORT()
        primitive.provider_reason = reason
    else:
        primitive = A_ABORT()
        primitive.abort_source = source
    pdu = A_ABORT_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


#: Bytes of the fixed PDUs, built once with pynetdicom.
A_RELEASE_RP_PDU = A_RELEASE_RP().encode()
A_ABORT_BY_USER_PDU = _abort_pdu(0x00, 0x00)


def provider_abort_pdu(reason: int) -> bytes:
    """An A-ABORT with source "service provider" (we detected a protocol error)."""
    return _abort_pdu(0x02, reason)


_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def supported_contexts(sop_classes: tuple[str, ...] = STORAGE_SOP_CLASSES,
                       transfer_syntaxes: tuple[str, ...] = ACCEPTED_TRANSFER_SYNTAXES,
                       ) -> list[PresentationContext]:
    """The presentation contexts we accept: Verification, Storage Commitment and the
    Query/Retrieve models (uncompressed syntaxes), and every storage SOP class (every
    syntax).  On storage contexts we may also take the SCU role, which a C-GET
    requestor asks for by role selection to receive its instances on the same
    association."""
    contexts = []
    non_storage = (VERIFICATION_SOP_CLASS, STORAGE_COMMITMENT_SOP_CLASS, *FIND_SOP_CLASSES,
                   *MOVE_SOP_CLASSES, *GET_SOP_CLASSES)
    for abstract in (*non_storage, *sop_classes):
        cx = PresentationContext()
        cx.abstract_syntax = UID(abstract)
        cx.transfer_syntax = [UID(ts) for ts in (
            _UNCOMPRESSED if abstract in non_storage else transfer_syntaxes)]
        cx.scp_role = True
        cx.scu_role = abstract not in non_storage
        contexts.append(cx)
    return contexts


@dataclass(frozen=True)
class AcceptorPolicy:
    """Who may associate with us and on what terms."""

    ae_title: str
    max_pdu_length: int
    require_called_ae_title: bool = False


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    #: Whether we may send requests of this SOP class on it (C-GET's C-STORE sub-operations,
    #: storage-commitment reports), as negotiated by SCP/SCU role selection.
    as_scu: bool = False
    #: Whether the peer may send us requests of this SOP class on it.
    as_scp: bool = True
    #: Whether relational queries were agreed for this (C-FIND) SOP class by SOP Class
    #: Extended Negotiation (PS3.4 C.5.1.1.1); without it queries are hierarchical.
    relational_queries: bool = False


def accepted_syntaxes(contexts, abstract_syntax: str, as_scu: bool = True) -> dict[str, int]:
    """Transfer syntax → context id of accepted contexts for a SOP class (first wins);
    with `as_scu`, only those on which we may send requests."""
    found: dict[str, int] = {}
    for cx in contexts:
        if cx.abstract_syntax == abstract_syntax and (cx.as_scu or not as_scu):
            found.setdefault(cx.transfer_syntax, cx.context_id)
    return found


@dataclass(frozen=True)
class NegotiationResult:
    """Outcome of an A-ASSOCIATE-RQ: the PDU to send, and the agreed terms if accepted."""

    response: bytes
    accepted: bool
    calling_ae_title: str = ""
    called_ae_title: str = ""
    #: Largest PDU the peer accepts from us (0 = unlimited).
    peer_max_pdu_length: int = 0
    contexts: dict[int, AcceptedContext] = field(default_factory=dict)
    reject_reason: tuple[int, int, int] | None = None


def _reject(reason: tuple[int, int, int], calling: str = "", called: str = "") -> NegotiationResult:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return NegotiationResult(pdu.encode(), False, calling, called, reject_reason=reason)


def decode_associate_rq(raw: bytes) -> A_ASSOCIATE:
    """Decode an A-ASSOCIATE-RQ PDU to pynetdicom's primitive; MalformedPDU if it is not one."""
    # AE titles (PS3.5 AE: ASCII, no control characters, no backslash) are checked before
    # pynetdicom sees them: it logs a refused title verbatim, so a peer could write a
    # newline or terminal escapes into our log.
    if any(b < 0x20 or b > 0x7E or b == 0x5C for b in raw[10:42]):
        raise MalformedPDU("A-ASSOCIATE-RQ AE title with a control character, a backslash "
                           "or a non-ASCII byte")
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(raw)
        return pdu.to_primitive()
    except Exception as exc:  # pynetdicom raises a variety of types for garbage
        raise MalformedPDU(f"undecodable A-ASSOCIATE-RQ: {type(exc).__name__}") from exc


def _ae_titles(raw_rq: bytes) -> tuple[str, str]:
    """(calling, called) AE titles read from their fixed places in an A-ASSOCIATE-RQ."""
    return (raw_rq[26:42].decode("ascii", "replace").strip(),
            raw_rq[10:26].decode("ascii", "replace").strip())


class AssociationNegotiator:
    """Answers A-ASSOCIATE-RQs for one policy, remembering recent answers.

    The answer depends only on the request bytes and our (fixed) policy, and a
    modality sends the same request every time; decoding ~120 proposed contexts
    with pynetdicom costs ~10 ms, a cache hit a dictionary lookup.
    """

    def __init__(self, policy: AcceptorPolicy, contexts: list[PresentationContext] | None = None,
                 cache_size: int = 64) -> None:
        self.policy = policy
        self.contexts = contexts if contexts is not None else supported_contexts()
        self._cache: dict[bytes, NegotiationResult] = {}
        self._cache_size = cache_size

    def negotiate(self, raw_rq: bytes, over_limit: bool = False,
                  admit: Callable[[str], bool] | None = None) -> NegotiationResult:
        """The answer to an A-ASSOCIATE-RQ.  `admit(calling AE title)` is asked last,
        for a request we would accept: it judges the connection (known peers), which
        the cached answer must not depend on, and refusing it gives 1/1/3."""
        if over_limit:
            return _reject(REJECT_LOCAL_LIMIT_EXCEEDED, *_ae_titles(raw_rq))
        result = self._cache.get(raw_rq)
        if result is None:
            result = negotiate_association(raw_rq, self.policy, self.contexts)
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))  # oldest first
            self._cache[raw_rq] = result
        if result.accepted and admit is not None and not admit(result.calling_ae_title):
            return _reject(REJECT_CALLING_AE_NOT_RECOGNIZED, result.calling_ae_title,
                           result.called_ae_title)
        return result


def negotiate_association(raw_rq: bytes, policy: AcceptorPolicy,
                          contexts: list[PresentationContext]) -> NegotiationResult:
    """Decide on an A-ASSOCIATE-RQ and build the AC or RJ PDU to answer it.

    The association limit is not checked here: `AssociationNegotiator` rejects
    over-limit requests before (and without) decoding them.
    """
    rq = decode_associate_rq(raw_rq)
    calling = (rq.calling_ae_title or "").strip()
    called = (rq.called_ae_title or "").strip()
    if str(rq.application_context_name) != APPLICATION_CONTEXT_NAME:
        return _reject(REJECT_APPLICATION_CONTEXT_NOT_SUPPORTED, calling, called)
    if policy.require_called_ae_title and called != policy.ae_title.strip():
        return _reject(REJECT_CALLED_AE_NOT_RECOGNIZED, calling, called)

    peer_max = 0
    roles: dict = {}
    extended: dict[str, bytes] = {}
    for item in rq.user_information or []:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
            roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
        elif isinstance(item, SOPClassExtendedNegotiation):
            extended[str(item.sop_class_uid)] = item.service_class_application_information or b""

    results, role_items = negotiate_as_acceptor(
        rq.presentation_context_definition_list, contexts, roles or None)
    accepted_syntaxes = {str(cx.abstract_syntax) for cx in results if cx.result == 0x00}
    relational, extended_items = _extended_negotiation(extended, accepted_syntaxes)

    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = policy.max_pdu_length
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME

    ac = A_ASSOCIATE()
    ac.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result = 0x00
    ac.result_source = 0x01
    ac.presentation_context_definition_results_list = results
    ac.user_information = [max_length, impl_uid, impl_name, *role_items, *extended_items]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)

    accepted = {
        cx.context_id: AcceptedContext(cx.context_id, str(cx.abstract_syntax),
                                       str(cx.transfer_syntax[0]), bool(cx.as_scu),
                                       bool(cx.as_scp), str(cx.abstract_syntax) in relational)
        for cx in results if cx.result == 0x00
    }
    return NegotiationResult(pdu.encode(), True, calling, called, peer_max, accepted)


def _extended_negotiation(requested: dict[str, bytes], accepted_syntaxes: set[str]
                          ) -> tuple[set[str], list[SOPClassExtendedNegotiation]]:
    """The FIND SOP classes with relational queries agreed, and the items answering them.

    We answer only for SOP classes we accepted a context of (PS3.7 D.3.3.5).  Of the
    C-FIND application information (PS3.4 C.5.1.1.1) we agree to relational queries
    (byte 0) when asked and decline every other option (its byte 0), replying with as
    many bytes as were proposed.  Other SOP classes' items are left unanswered, which
    declines them.
    """
    relational: set[str] = set()
    items = []
    for sop_class, info in requested.items():
        if sop_class not in FIND_SOP_CLASSES or sop_class not in accepted_syntaxes or not info:
            continue
        agreed = info[0] == 1
        if agreed:
            relational.add(sop_class)
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = UID(sop_class)
        item.service_class_application_information = bytes([agreed]) + bytes(len(info) - 1)
        items.append(item)
    return relational, items
