"""Pure-Python PDU framer: the reference twin of ext/pdu_framing.pyx.

Sans-I/O (PS3.8 9.3): bytes in, events out, no sockets and no clocks, so the
same state machine serves asyncio, tests and fuzzers.  The compiled twin must
behave identically; the parity tests compare the two on arbitrary input.

Events are 4-tuples ``(pdu_type, presentation_context_id, message_control_header,
payload)``:

* one per PDV item of a P-DATA-TF, with ``payload`` a read-only memoryview of
  the fragment, backed by an immutable ``bytes`` so it outlives ``feed``;
* one per other PDU, ``(pdu_type, 0, 0, raw)`` with ``raw`` the whole PDU
  (header included) as ``bytes``, ready for pynetdicom's PDU decoders.

A PDU that arrives whole in an immutable ``bytes`` is sliced without copying.
A PDU spanning reads is gathered in a bytearray and frozen into ``bytes``
(two copies; the compiled twin fills a ``bytes`` in place, one copy).

When ``feed`` raises, the events completed earlier in the same call are
attached to the exception as ``exc.events``: what the caller sees before the
error then does not depend on how the stream was split into reads.
"""
from __future__ import annotations

import operator
from struct import Struct

from engine.errors import MalformedPDU, PDUError, PDUTooLarge

__all__ = ["PDUFramer", "encode_p_data"]

P_DATA_TF = 0x04
HEADER_LENGTH = 6  # PDU type, reserved, uint32 PDU length
PDV_HEADER_LENGTH = 6  # uint32 item length, context id, message control header
MAX_LENGTH_FIELD = 0xFFFFFFFF

# PS3.8 9.3.2/9.3.3: an A-ASSOCIATE-RQ/AC carries 68 bytes of fixed fields
# before its variable items; 9.3.4 and 9.3.6-9.3.8: RJ, RELEASE-RQ/RP and
# ABORT are always exactly 4 bytes long.  Checked at the header, so garbage is
# refused before any of its body is buffered.
MIN_ASSOCIATE_LENGTH = 68
FIXED_LENGTH = {0x03: 4, 0x05: 4, 0x06: 4, 0x07: 4}

_HEADER = Struct(">BxI")
_PDV_HEADER = Struct(">IBB")
_P_DATA_HEADER = Struct(">BxIIBB")  # PDU header followed by the single PDV item header

_COMMAND = 0x01  # message control header bit 0: command (1) or data set (0)
_LAST = 0x02  # bit 1: last fragment of the command set or data set


def _check_type(pdu_type: int) -> None:
    if not 0x01 <= pdu_type <= 0x07:
        raise MalformedPDU(f"unknown PDU type 0x{pdu_type:02x}")


def _check_header(pdu_type: int, length: int, max_pdu_length: int) -> None:
    """Refuse a PDU from its header alone, before its body costs memory."""
    _check_type(pdu_type)
    if length > max_pdu_length:
        raise PDUTooLarge(
            f"PDU type 0x{pdu_type:02x} declares {length} bytes, maximum is {max_pdu_length}"
        )
    if pdu_type == P_DATA_TF:
        if length < PDV_HEADER_LENGTH:
            raise MalformedPDU(f"P-DATA-TF of {length} bytes cannot hold a PDV item")
    elif pdu_type <= 0x02:
        if length < MIN_ASSOCIATE_LENGTH:
            raise MalformedPDU(f"A-ASSOCIATE PDU of {length} bytes is shorter than its "
                               "fixed fields")
    elif length != FIXED_LENGTH[pdu_type]:
        raise MalformedPDU(f"PDU type 0x{pdu_type:02x} must be 4 bytes long, not {length}")


def _byte_view(data) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise TypeError("PDU data must be a contiguous bytes-like object")
    if view.ndim != 1 or view.itemsize != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _is_immutable(view: memoryview) -> bool:
    """True when slices of `view` may be handed out without copying."""
    return view.readonly and type(view.obj) is bytes


def _emit(events: list, view: memoryview, start: int, pdu_type: int, end: int,
          raw: bytes | None = None) -> None:
    """Append the events of the complete PDU ``view[start:end]``.

    A P-DATA-TF is validated whole before any of its PDVs is emitted, so a
    malformed PDU never delivers half of its fragments.  `raw` is the PDU
    as bytes when the caller already holds it.
    """
    if pdu_type != P_DATA_TF:
        events.append((pdu_type, 0, 0, raw if raw is not None else view[start:end].tobytes()))
        return
    items = []
    pos = start + HEADER_LENGTH
    while pos < end:
        if end - pos < PDV_HEADER_LENGTH:
            raise MalformedPDU(f"{end - pos} trailing bytes in P-DATA-TF are not a PDV item")
        item_length, context_id, control = _PDV_HEADER.unpack_from(view, pos)
        if item_length < 2:
            raise MalformedPDU(f"PDV item length {item_length} is below 2")
        if item_length > end - pos - 4:
            raise MalformedPDU(f"PDV item length {item_length} overruns its P-DATA-TF")
        if not context_id & 1:
            raise MalformedPDU(f"presentation context ID {context_id} is not odd")
        items.append((P_DATA_TF, context_id, control & (_COMMAND | _LAST),
                      view[pos + PDV_HEADER_LENGTH:pos + 4 + item_length]))
        pos += 4 + item_length
    events.extend(items)


class PDUFramer:
    """Split a byte stream from a peer into PDUs (PS3.8 9.3) and PDV fragments.

    ``max_pdu_length`` bounds the PDU length field; it is settable because the
    acceptor first caps an A-ASSOCIATE-RQ, then raises the bound to the maximum
    it negotiated.  Memory held between reads is at most max_pdu_length + 6.
    0 is not "unlimited" here: a receive bound must be concrete.
    """

    __slots__ = ("_max", "_failed", "_header", "_pdu", "_missing")

    def __init__(self, max_pdu_length: int) -> None:
        self.max_pdu_length = max_pdu_length
        self._failed = False
        self._header = bytearray()  # a PDU header split across reads
        self._pdu: bytearray | None = None  # a PDU under assembly, header included
        self._missing = 0  # bytes still to come for self._pdu

    @property
    def max_pdu_length(self) -> int:
        return self._max

    @max_pdu_length.setter
    def max_pdu_length(self, value: int) -> None:
        value = operator.index(value)
        if value < 0:
            raise ValueError(f"max_pdu_length must not be negative, got {value}")
        self._max = value

    def feed(self, data) -> list:
        """Consume `data` (any split of the stream) and return the completed events.

        Raises PDUTooLarge or MalformedPDU; the framer is then unusable, as the
        association must be aborted.
        """
        if self._failed:
            raise MalformedPDU("the PDU stream failed earlier; the association must be aborted")
        view = _byte_view(data)
        immutable = _is_immutable(view)
        n = len(view)
        pos = 0
        events: list = []
        try:
            while True:
                if self._pdu is not None:
                    take = min(self._missing, n - pos)
                    self._pdu += view[pos:pos + take]
                    pos += take
                    self._missing -= take
                    if self._missing:
                        break
                    pdu = bytes(self._pdu)
                    self._pdu = None
                    _emit(events, memoryview(pdu), 0, pdu[0], len(pdu), pdu)
                    continue
                if pos >= n:
                    break
                if not self._header and n - pos >= HEADER_LENGTH:
                    pdu_type, length = _HEADER.unpack_from(view, pos)
                    _check_header(pdu_type, length, self._max)
                    end = pos + HEADER_LENGTH + length
                    if end <= n:
                        if immutable:
                            _emit(events, view, pos, pdu_type, end)
                        else:
                            pdu = view[pos:end].tobytes()
                            _emit(events, memoryview(pdu), 0, pdu_type, len(pdu), pdu)
                        pos = end
                    else:
                        self._pdu = bytearray(view[pos:pos + HEADER_LENGTH])
                        self._missing = length
                        pos += HEADER_LENGTH
                    continue
                # Fewer than 6 header bytes at hand: keep them for the next read.
                if not self._header:
                    _check_type(view[pos])
                take = min(HEADER_LENGTH - len(self._header), n - pos)
                self._header += view[pos:pos + take]
                pos += take
                if len(self._header) < HEADER_LENGTH:
                    break
                pdu_type, length = _HEADER.unpack(self._header)
                _check_header(pdu_type, length, self._max)
                self._pdu = self._header
                self._header = bytearray()
                self._missing = length
        except PDUError as exc:
            self._failed = True
            self._pdu = None
            exc.events = events
            raise
        return events


def encode_p_data(context_id: int, is_command: bool, payload, max_pdu_length: int) -> list[bytes]:
    """Fragment one command set or data set into P-DATA-TF PDUs of one PDV each.

    Every PDU length is <= max_pdu_length, the peer's receive maximum (0 means
    unlimited, PS3.8 D.1); the last PDV is flagged.  Each PDU is one ``bytes``
    so it goes out in a single write.
    """
    context_id = operator.index(context_id)
    if not (1 <= context_id <= 255 and context_id & 1):
        raise ValueError(f"presentation context ID must be odd and 1..255, got {context_id}")
    limit = operator.index(max_pdu_length)
    if limit < 0:
        raise ValueError(f"max_pdu_length must not be negative, got {limit}")
    if limit == 0 or limit > MAX_LENGTH_FIELD:
        limit = MAX_LENGTH_FIELD
    room = limit - PDV_HEADER_LENGTH  # fragment bytes that fit in one PDU
    view = _byte_view(payload)
    n = len(view)
    if room < 0 or (room == 0 and n):
        raise ValueError(f"max_pdu_length {max_pdu_length} cannot carry a PDV fragment")
    control = _COMMAND if is_command else 0
    pdus = []
    pos = 0
    while True:
        size = min(room, n - pos)
        last = pos + size == n
        header = _P_DATA_HEADER.pack(P_DATA_TF, PDV_HEADER_LENGTH + size, 2 + size,
                                     context_id, control | (_LAST if last else 0))
        pdus.append(b"".join((header, view[pos:pos + size])))
        pos += size
        if last:
            return pdus
