# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled PDU framer, twin of engine/net/_pdu_framing_py.py (the reference).

Same contract, same events, same exceptions; see the pure twin for the event
format.  The hot path works on the raw buffer of the input: headers and PDV
items are parsed with pointer arithmetic, a PDU that arrives whole in an
immutable ``bytes`` is sliced without copying, and a PDU split across reads is
copied once, straight into the ``bytes`` object its fragments will view.
"""
import operator

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from engine.errors import MalformedPDU, PDUError, PDUTooLarge

__all__ = ["PDUFramer", "encode_p_data"]

cdef enum:
    HEADER_LENGTH = 6  # PDU type, reserved, uint32 PDU length
    PDV_HEADER_LENGTH = 6  # uint32 item length, context ID, message control header
    MIN_ASSOCIATE_LENGTH = 68  # PS3.8 9.3.2/9.3.3: fixed fields of A-ASSOCIATE-RQ/AC
    FIXED_LENGTH = 4  # PS3.8 9.3.4, 9.3.6-9.3.8: RJ, RELEASE-RQ/RP and ABORT
    P_DATA_TF = 0x04
    COMMAND = 0x01  # message control header bit 0: command (1) or data set (0)
    LAST = 0x02  # bit 1: last fragment

cdef uint64_t MAX_LENGTH_FIELD = 0xFFFFFFFF


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _put_be32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef int _check_type(uint8_t pdu_type) except -1:
    if pdu_type < 0x01 or pdu_type > 0x07:
        raise MalformedPDU(f"unknown PDU type 0x{pdu_type:02x}")
    return 0


cdef int _check_header(uint8_t pdu_type, uint64_t length, uint64_t max_length,
                       object max_pdu_length) except -1:
    """Refuse a PDU from its header alone, before its body costs memory."""
    _check_type(pdu_type)
    if length > max_length:
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
    elif length != FIXED_LENGTH:
        raise MalformedPDU(f"PDU type 0x{pdu_type:02x} must be 4 bytes long, not {length}")
    return 0


cdef object _byte_view(object data):
    view = memoryview(data)
    if not view.c_contiguous:
        raise TypeError("PDU data must be a contiguous bytes-like object")
    if view.ndim != 1 or view.itemsize != 1 or view.format != "B":
        view = view.cast("B")
    return view


cdef bint _is_immutable(object data) except -1:
    """True when slices of `data` may be handed out without copying."""
    if type(data) is bytes:
        return True
    if type(data) is memoryview:
        return data.readonly and type(data.obj) is bytes
    return False


cdef int _emit(list events, object owner, const uint8_t* base, Py_ssize_t start,
               Py_ssize_t end, object raw) except -1:
    """Append the events of the complete PDU at base[start:end].

    `owner` is a byte memoryview over immutable memory whose buffer is `base`;
    fragments are its slices.  A P-DATA-TF is validated whole before any of
    its PDVs is emitted.  `raw` is the PDU as bytes when already at hand.
    """
    cdef uint8_t pdu_type = base[start]
    cdef Py_ssize_t pos = start + HEADER_LENGTH
    cdef uint32_t item_length
    cdef uint8_t context_id
    cdef list items
    if pdu_type != P_DATA_TF:
        if raw is None:
            raw = PyBytes_FromStringAndSize(<const char*>base + start, end - start)
        events.append((pdu_type, 0, 0, raw))
        return 0
    items = []
    while pos < end:
        if end - pos < PDV_HEADER_LENGTH:
            raise MalformedPDU(f"{end - pos} trailing bytes in P-DATA-TF are not a PDV item")
        item_length = _be32(base + pos)
        if item_length < 2:
            raise MalformedPDU(f"PDV item length {item_length} is below 2")
        if item_length > <uint64_t>(end - pos - 4):
            raise MalformedPDU(f"PDV item length {item_length} overruns its P-DATA-TF")
        context_id = base[pos + 4]
        if not context_id & 1:
            raise MalformedPDU(f"presentation context ID {context_id} is not odd")
        items.append((P_DATA_TF, context_id, base[pos + 5] & (COMMAND | LAST),
                      owner[pos + PDV_HEADER_LENGTH:pos + 4 + item_length]))
        pos += 4 + item_length
    events.extend(items)
    return 0


cdef int _emit_owned(list events, bytes pdu) except -1:
    cdef const uint8_t* base = <const uint8_t*>PyBytes_AS_STRING(pdu)
    cdef Py_ssize_t n = len(pdu)
    if base[0] == P_DATA_TF:
        return _emit(events, memoryview(pdu), base, 0, n, pdu)
    return _emit(events, None, base, 0, n, pdu)


cdef class PDUFramer:
    """Split a byte stream from a peer into PDUs (PS3.8 9.3) and PDV fragments.

    ``max_pdu_length`` bounds the PDU length field; it is settable because the
    acceptor first caps an A-ASSOCIATE-RQ, then raises the bound to the maximum
    it negotiated.  Memory held between reads is at most max_pdu_length + 6.
    0 is not "unlimited" here: a receive bound must be concrete.
    """

    cdef object _max_obj
    cdef uint64_t _max
    cdef bint _failed
    cdef uint8_t _header[HEADER_LENGTH]  # a PDU header split across reads
    cdef Py_ssize_t _header_fill
    cdef bytes _pdu  # a PDU under assembly, header included; never shared until full
    cdef Py_ssize_t _fill

    def __init__(self, max_pdu_length):
        self.max_pdu_length = max_pdu_length
        self._failed = False
        self._header_fill = 0
        self._pdu = None
        self._fill = 0

    @property
    def max_pdu_length(self):
        return self._max_obj

    @max_pdu_length.setter
    def max_pdu_length(self, value):
        value = operator.index(value)
        if value < 0:
            raise ValueError(f"max_pdu_length must not be negative, got {value}")
        self._max_obj = value
        self._max = min(value, MAX_LENGTH_FIELD)

    cdef int _start_pdu(self, const uint8_t* header, uint32_t length) except -1:
        # A fresh bytes object nobody else can see yet, filled in place: the
        # single copy of a PDU that spans reads.
        self._pdu = PyBytes_FromStringAndSize(NULL, HEADER_LENGTH + <Py_ssize_t>length)
        memcpy(PyBytes_AS_STRING(self._pdu), header, HEADER_LENGTH)
        self._fill = HEADER_LENGTH
        return 0

    def feed(self, data):
        """Consume `data` (any split of the stream) and return the completed events.

        Raises PDUTooLarge or MalformedPDU; the framer is then unusable, as the
        association must be aborted.
        """
        cdef Py_buffer buffer
        cdef const uint8_t* buf
        cdef Py_ssize_t n, total, take
        cdef Py_ssize_t pos = 0
        cdef uint32_t length
        cdef uint8_t pdu_type
        cdef bint immutable
        cdef list events = []
        cdef object owner = None
        cdef bytes pdu
        if self._failed:
            raise MalformedPDU("the PDU stream failed earlier; the association must be aborted")
        immutable = _is_immutable(data)
        if type(data) is not bytes and type(data) is not bytearray:
            data = _byte_view(data)  # same checks and errors as the pure twin
        PyObject_GetBuffer(data, &buffer, PyBUF_SIMPLE)
        try:
            buf = <const uint8_t*>buffer.buf
            n = buffer.len
            while True:
                if self._pdu is not None:
                    total = len(self._pdu)
                    take = min(total - self._fill, n - pos)
                    memcpy(PyBytes_AS_STRING(self._pdu) + self._fill, buf + pos, take)
                    self._fill += take
                    pos += take
                    if self._fill < total:
                        break
                    pdu = self._pdu
                    self._pdu = None
                    _emit_owned(events, pdu)
                    continue
                if pos >= n:
                    break
                if self._header_fill == 0 and n - pos >= HEADER_LENGTH:
                    pdu_type = buf[pos]
                    length = _be32(buf + pos + 2)
                    _check_header(pdu_type, length, self._max, self._max_obj)
                    total = HEADER_LENGTH + <Py_ssize_t>length
                    if n - pos >= total:
                        if immutable:
                            if owner is None:
                                owner = memoryview(data) if type(data) is bytes else data
                            _emit(events, owner, buf, pos, pos + total, None)
                        else:
                            _emit_owned(events, PyBytes_FromStringAndSize(
                                <const char*>buf + pos, total))
                        pos += total
                    else:
                        self._start_pdu(buf + pos, length)
                        pos += HEADER_LENGTH
                    continue
                # Fewer than 6 header bytes at hand: keep them for the next read.
                if self._header_fill == 0:
                    _check_type(buf[pos])
                take = min(HEADER_LENGTH - self._header_fill, n - pos)
                memcpy(self._header + self._header_fill, buf + pos, take)
                self._header_fill += take
                pos += take
                if self._header_fill < HEADER_LENGTH:
                    break
                length = _be32(self._header + 2)
                _check_header(self._header[0], length, self._max, self._max_obj)
                self._header_fill = 0
                self._start_pdu(self._header, length)
        except PDUError as exc:
            self._failed = True
            self._pdu = None
            exc.events = events
            raise
        finally:
            PyBuffer_Release(&buffer)
        return events


def encode_p_data(context_id, is_command, payload, max_pdu_length):
    """Fragment one command set or data set into P-DATA-TF PDUs of one PDV each.

    Every PDU length is <= max_pdu_length, the peer's receive maximum (0 means
    unlimited, PS3.8 D.1); the last PDV is flagged.  Each PDU is one ``bytes``
    so it goes out in a single write.
    """
    cdef Py_buffer buffer
    cdef const uint8_t* src
    cdef uint8_t* out
    cdef Py_ssize_t n, size, room, pos = 0
    cdef uint8_t control, ctx
    cdef bint last
    cdef list pdus = []
    cdef bytes pdu
    context_id = operator.index(context_id)
    if not (1 <= context_id <= 255 and context_id & 1):
        raise ValueError(f"presentation context ID must be odd and 1..255, got {context_id}")
    ctx = context_id
    limit = operator.index(max_pdu_length)
    if limit < 0:
        raise ValueError(f"max_pdu_length must not be negative, got {limit}")
    if limit == 0 or limit > MAX_LENGTH_FIELD:
        limit = MAX_LENGTH_FIELD
    room = limit - PDV_HEADER_LENGTH
    if type(payload) is not bytes and type(payload) is not bytearray:
        payload = _byte_view(payload)
    PyObject_GetBuffer(payload, &buffer, PyBUF_SIMPLE)
    try:
        src = <const uint8_t*>buffer.buf
        n = buffer.len
        if room < 0 or (room == 0 and n):
            raise ValueError(f"max_pdu_length {max_pdu_length} cannot carry a PDV fragment")
        control = COMMAND if is_command else 0
        while True:
            size = min(room, n - pos)
            last = pos + size == n
            pdu = PyBytes_FromStringAndSize(NULL, HEADER_LENGTH + PDV_HEADER_LENGTH + size)
            out = <uint8_t*>PyBytes_AS_STRING(pdu)
            out[0] = P_DATA_TF
            out[1] = 0
            _put_be32(out + 2, <uint32_t>(PDV_HEADER_LENGTH + size))
            _put_be32(out + 6, <uint32_t>(2 + size))
            out[10] = ctx
            out[11] = control | (LAST if last else 0)
            memcpy(out + 12, src + pos, size)
            pdus.append(pdu)
            pos += size
            if last:
                return pdus
    finally:
        PyBuffer_Release(&buffer)
