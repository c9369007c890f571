# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled streaming DICOM tag scanner (engine.dicom._tagscan_c).

Every received dataset goes through this to pull out the handful of attributes
the archive indexes, so it runs over raw C pointers into the caller's buffer:
skipped elements cost a few comparisons and no Python objects; only wanted
values become `bytes`.  Behaviour is defined by the pure-Python twin
engine/dicom/_tagscan_py.py (read its docstring for the level-counter model);
the two are parity-tested and must stay equivalent.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from engine.errors import TagScanError

cdef extern from *:
    """
    #define TS_ITEM 0xFFFEE000u
    #define TS_ITEM_DELIMITATION_ITEM 0xFFFEE00Du
    #define TS_SEQUENCE_DELIMITATION_ITEM 0xFFFEE0DDu
    #define TS_UNDEFINED_LENGTH 0xFFFFFFFFu
    """
    const uint32_t TS_ITEM
    const uint32_t TS_ITEM_DELIMITATION_ITEM
    const uint32_t TS_SEQUENCE_DELIMITATION_ITEM
    const uint32_t TS_UNDEFINED_LENGTH

MAX_SEQUENCE_DEPTH = 64

cdef enum:
    MAX_LEVEL = 128          # the item inside the 64th nested sequence
    NO_UN = 1 << 30          # _un_level when no UN sequence is open
    HEADER_MAX = 12
    ST_HEADER = 0
    ST_SKIP = 1
    ST_VALUE = 2
    ST_DONE = 3
    ST_FAILED = 4
    VR_LONG = 1              # 2 reserved bytes + 4-byte length
    VR_UNDEFINED_OK = 2      # may carry undefined length
    VR_UN = 4                # undefined length means implicit VR LE content

# Flags per VR, indexed by (c0 - 'A') * 26 + (c1 - 'A').
cdef uint8_t _VR_FLAGS[26 * 26]


cdef void _set_vr(bytes vr, uint8_t flags):
    _VR_FLAGS[(vr[0] - 65) * 26 + (vr[1] - 65)] = flags


for _i in range(26 * 26):
    _VR_FLAGS[_i] = 0
for _vr in (b"OD", b"OF", b"OL", b"OV", b"SV", b"UC", b"UR", b"UT", b"UV"):
    _set_vr(_vr, VR_LONG)
for _vr in (b"OB", b"OW", b"SQ"):
    _set_vr(_vr, VR_LONG | VR_UNDEFINED_OK)
_set_vr(b"UN", VR_LONG | VR_UNDEFINED_OK | VR_UN)


cdef inline uint32_t _rd16(const uint8_t* p, bint le) noexcept nogil:
    if le:
        return p[0] | (<uint32_t>p[1] << 8)
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t _rd32(const uint8_t* p, bint le) noexcept nogil:
    if le:
        return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef str _fmt(uint32_t tag):
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


cdef class TagScanner:
    """Collect raw values of wanted top-level elements from a streamed dataset."""

    cdef readonly bint done
    cdef readonly dict values
    cdef readonly int64_t bytes_consumed
    cdef bint _explicit
    cdef bint _little
    cdef uint32_t* _wanted       # sorted, unique
    cdef Py_ssize_t _nwanted
    cdef uint64_t _limit         # done at the first top-level tag >= _limit
    cdef uint64_t _max_value_length
    cdef int _state
    cdef int _level
    cdef int _un_level
    cdef uint64_t _remaining
    cdef uint32_t _value_tag
    cdef bytearray _value        # partial wanted value, None when not split
    cdef Py_ssize_t _value_fill
    cdef uint8_t _hdr[HEADER_MAX]
    cdef Py_ssize_t _hdr_len
    cdef int64_t _fed

    def __cinit__(self):
        self._wanted = NULL

    def __init__(self, explicit_vr, little_endian, wanted, stop_tag=0x7FE00010,
                 max_value_length=1 << 20):
        cdef Py_ssize_t i
        tags = sorted({int(t) for t in wanted})
        if tags and (tags[0] < 0 or tags[len(tags) - 1] > 0xFFFFFFFF):
            raise ValueError("wanted tags must be 32-bit unsigned integers")
        if stop_tag < 0:
            raise ValueError("stop_tag must not be negative")
        if max_value_length < 0:
            raise ValueError("max_value_length must not be negative")
        free(self._wanted)
        self._nwanted = len(tags)
        self._wanted = <uint32_t*>malloc(max(self._nwanted, 1) * sizeof(uint32_t))
        if self._wanted == NULL:
            raise MemoryError()
        for i in range(self._nwanted):
            self._wanted[i] = tags[i]
        limit = min(tags[len(tags) - 1] + 1, stop_tag) if tags else stop_tag
        self._limit = min(limit, 1 << 32)
        self._max_value_length = min(max_value_length, 1 << 32)
        self._explicit = bool(explicit_vr)
        self._little = bool(little_endian)
        self.done = False
        self.values = {}
        self.bytes_consumed = 0
        self._state = ST_HEADER
        self._level = 0
        self._un_level = NO_UN
        self._remaining = 0
        self._value = None
        self._value_fill = 0
        self._hdr_len = 0
        self._fed = 0

    def __dealloc__(self):
        free(self._wanted)

    # -- public API ---------------------------------------------------------
    def feed(self, data):
        """Consume the next piece of the stream; return True once the scan is done."""
        cdef Py_buffer view
        if self._state == ST_DONE:
            return True
        if self._state == ST_FAILED:
            raise TagScanError("scanner already failed on this stream")
        if type(data) is bytes:
            self._run(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._run(<const uint8_t*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        return self.done

    def finish(self):
        """Declare the end of the stream; a stream cut inside anything is an error."""
        if self._state == ST_DONE:
            return
        if self._state == ST_FAILED:
            raise TagScanError("scanner already failed on this stream")
        if self._state == ST_HEADER and self._hdr_len == 0 and self._level == 0:
            self._state = ST_DONE
            self.done = True
            self.bytes_consumed = self._fed
            return
        if self._state == ST_VALUE:
            where = f"in the value of {_fmt(self._value_tag)}"
        elif self._state == ST_SKIP:
            where = "in a skipped value or item"
        elif self._hdr_len:
            where = "in an element or item header"
        else:
            where = "inside a sequence"
        raise self._fail(f"truncated dataset: stream ended {where}")

    # -- machinery ------------------------------------------------------------
    cdef object _fail(self, str message):
        self._state = ST_FAILED
        return TagScanError(message)

    cdef inline bint _is_wanted(self, uint32_t tag) noexcept:
        cdef Py_ssize_t lo = 0, hi = self._nwanted, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._wanted[mid] < tag:
                lo = mid + 1
            else:
                hi = mid
        return lo < self._nwanted and self._wanted[lo] == tag

    cdef int _run(self, const uint8_t* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0, take, held, used
        cdef int64_t base = self._fed
        while pos < n:
            if self._state == ST_HEADER:
                if self._hdr_len == 0:
                    used = self._header(p + pos, n - pos, base + pos)
                    if used > 0:
                        pos += used
                    elif used == 0:
                        memcpy(self._hdr, p + pos, n - pos)
                        self._hdr_len = n - pos
                        pos = n
                    else:
                        return 0
                else:
                    held = self._hdr_len
                    take = min(<Py_ssize_t>HEADER_MAX - held, n - pos)
                    memcpy(self._hdr + held, p + pos, take)
                    used = self._header(self._hdr, held + take, base + pos - held)
                    if used > 0:
                        # Bytes past the header's end came from this chunk: re-read them.
                        pos += used - held
                        self._hdr_len = 0
                    elif used == 0:
                        self._hdr_len = held + take
                        pos += take
                    else:
                        return 0
            elif self._state == ST_SKIP:
                take = <Py_ssize_t>min(self._remaining, <uint64_t>(n - pos))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = ST_HEADER
            else:  # ST_VALUE
                take = <Py_ssize_t>min(self._remaining, <uint64_t>(n - pos))
                if self._value is None:
                    if <uint64_t>take == self._remaining:
                        self.values[self._value_tag] = PyBytes_FromStringAndSize(
                            <const char*>(p + pos), take)
                    else:
                        self._value = bytearray(<Py_ssize_t>self._remaining)
                        self._value_fill = 0
                if self._value is not None:
                    memcpy(PyByteArray_AS_STRING(self._value) + self._value_fill, p + pos, take)
                    self._value_fill += take
                    if <uint64_t>take == self._remaining:
                        self.values[self._value_tag] = bytes(self._value)
                        self._value = None
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = ST_HEADER
        self._fed = base + n
        self.bytes_consumed = self._fed
        return 0

    cdef Py_ssize_t _header(self, const uint8_t* b, Py_ssize_t avail, int64_t start) except -2:
        """Parse the header at b; return its size, 0 for "need more", -1 when done."""
        cdef int level = self._level
        cdef bint in_un = level >= self._un_level
        cdef bint le = self._little or in_un
        cdef uint32_t tag, length
        cdef uint8_t c0, c1, flags = 0
        cdef Py_ssize_t size
        if level & 1:
            # Inside an undefined-length sequence: an item or the sequence's end.
            if avail < 8:
                return 0
            tag = (_rd16(b, le) << 16) | _rd16(b + 2, le)
            length = _rd32(b + 4, le)
            if tag == TS_ITEM:
                if length == TS_UNDEFINED_LENGTH:
                    self._level = level + 1
                elif length:
                    self._remaining = length
                    self._state = ST_SKIP
                return 8
            if tag == TS_SEQUENCE_DELIMITATION_ITEM:
                self._pop(level)
                return 8
            raise self._fail(f"{_fmt(tag)} where an item or sequence delimiter was expected")

        if avail < 4:
            return 0
        tag = (_rd16(b, le) << 16) | _rd16(b + 2, le)
        if level == 0 and tag >= self._limit:
            self._state = ST_DONE
            self.done = True
            self.bytes_consumed = start
            return -1
        if (tag >> 16) == 0xFFFE and (tag == TS_ITEM or tag == TS_ITEM_DELIMITATION_ITEM
                                      or tag == TS_SEQUENCE_DELIMITATION_ITEM):
            if avail < 8:
                return 0
            if tag == TS_ITEM_DELIMITATION_ITEM and level:
                self._pop(level)
                return 8
            raise self._fail(f"unexpected {_fmt(tag)} where a data element was expected")

        if not self._explicit or in_un:
            if avail < 8:
                return 0
            length = _rd32(b + 4, le)
            size = 8
        else:
            if avail < 6:
                return 0
            c0 = b[4]
            c1 = b[5]
            if c0 < 65 or c0 > 90 or c1 < 65 or c1 > 90:
                raise self._fail(f"invalid VR {bytes((c0, c1))!r} in {_fmt(tag)}")
            flags = _VR_FLAGS[(c0 - 65) * 26 + (c1 - 65)]
            if flags & VR_LONG:
                if avail < 12:
                    return 0
                length = _rd32(b + 8, le)
                size = 12
            else:
                if avail < 8:
                    return 0
                length = _rd16(b + 6, le)
                size = 8
            if length == TS_UNDEFINED_LENGTH and not (flags & VR_UNDEFINED_OK):
                raise self._fail(
                    f"undefined length on VR {chr(c0)}{chr(c1)} in {_fmt(tag)}")

        if length == TS_UNDEFINED_LENGTH:
            # A sequence (or encapsulated pixel data, or UN holding implicit VR LE).
            if level + 1 > MAX_LEVEL:
                raise self._fail(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}")
            self._level = level + 1
            if flags & VR_UN:
                self._un_level = level + 1
            return size
        if level == 0 and self._is_wanted(tag):
            if length > self._max_value_length:
                raise self._fail(
                    f"{_fmt(tag)} value of {length} bytes exceeds {self._max_value_length}")
            if length:
                self._value_tag = tag
                self._remaining = length
                self._state = ST_VALUE
            else:
                self.values[tag] = b""
        elif length:
            self._remaining = length
            self._state = ST_SKIP
        return size

    cdef inline void _pop(self, int level) noexcept:
        self._level = level - 1
        if level - 1 < self._un_level:
            self._un_level = NO_UN
