"""Pure-Python twin of the compiled tag scanner (ext/tagscan.pyx).

It runs when ENGINE_NO_EXTENSIONS=1 and is the reference the compiled scanner
is parity-tested against, so the two must agree byte for byte: same values,
same `bytes_consumed`, and TagScanError on exactly the same inputs.

The parser is a push state machine over the dataset byte stream.  Nesting is
tracked by a single `level` counter instead of a stack of frames: sequences and
items alternate, so level 0 is the top-level dataset, an odd level is inside an
undefined-length sequence (an item or the Sequence Delimitation Item comes
next) and an even level > 0 is inside an undefined-length item (an element or
the Item Delimitation Item comes next).  Anything of defined length is skipped
by counter, never parsed or buffered.
"""
from __future__ import annotations

import struct

from engine.errors import TagScanError

ITEM = 0xFFFEE000
ITEM_DELIMITATION_ITEM = 0xFFFEE00D
SEQUENCE_DELIMITATION_ITEM = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
MAX_SEQUENCE_DEPTH = 64
# Deepest level reachable: the item inside the 64th nested sequence.
_MAX_LEVEL = 2 * MAX_SEQUENCE_DEPTH
_NO_UN = 1 << 30  # `_un_level` when no UN sequence (implicit VR LE content) is open

# PS3.5 7.1.2: these VRs carry 2 reserved bytes and a 4-byte length.
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
# PS3.5 7.5 / 6.2.2 / A.4: the only explicit VRs that may have undefined length.
_UNDEFINED_OK_VRS = frozenset((b"SQ", b"UN", b"OB", b"OW"))

_HEADER, _SKIP, _VALUE, _DONE, _FAILED = range(5)
_HEADER_MAX = 12  # explicit VR long form: tag 4 + VR 2 + reserved 2 + length 4


class TagScanner:
    """Collect raw values of wanted top-level elements from a streamed dataset."""

    def __init__(
        self,
        explicit_vr: bool,
        little_endian: bool,
        wanted,
        stop_tag: int = 0x7FE00010,
        max_value_length: int = 1 << 20,
    ) -> None:
        tags = frozenset(int(t) for t in wanted)
        if any(t < 0 or t > 0xFFFFFFFF for t in tags):
            raise ValueError("wanted tags must be 32-bit unsigned integers")
        if stop_tag < 0:
            raise ValueError("stop_tag must not be negative")
        if max_value_length < 0:
            raise ValueError("max_value_length must not be negative")
        self.done = False
        self.values: dict[int, bytes] = {}
        self.bytes_consumed = 0
        self._explicit = bool(explicit_vr)
        self._little = bool(little_endian)
        self._wanted = tags
        # Scanning stops at the first top-level tag >= _limit.
        self._limit = min(max(tags) + 1, stop_tag) if tags else stop_tag
        self._max_value_length = max_value_length
        self._state = _HEADER
        self._level = 0
        self._un_level = _NO_UN
        self._remaining = 0
        self._value_tag = 0
        self._value = bytearray()
        self._hdr = bytearray()
        self._fed = 0

    # -- public API ---------------------------------------------------------
    def feed(self, data) -> bool:
        """Consume the next piece of the stream; return True once the scan is done."""
        if self._state == _DONE:
            return True
        if self._state == _FAILED:
            raise TagScanError("scanner already failed on this stream")
        with memoryview(data) as raw, raw.cast("B") as mv:
            self._run(mv)
        return self.done

    def finish(self) -> None:
        """Declare the end of the stream; a stream cut inside anything is an error."""
        state = self._state
        if state == _DONE:
            return
        if state == _FAILED:
            raise TagScanError("scanner already failed on this stream")
        if state == _HEADER and not self._hdr and self._level == 0:
            self._state = _DONE
            self.done = True
            self.bytes_consumed = self._fed
            return
        if state == _VALUE:
            where = f"in the value of {_fmt(self._value_tag)}"
        elif state == _SKIP:
            where = "in a skipped value or item"
        elif self._hdr:
            where = "in an element or item header"
        else:
            where = "inside a sequence"
        raise self._fail(f"truncated dataset: stream ended {where}")

    # -- machinery ------------------------------------------------------------
    def _fail(self, message: str) -> TagScanError:
        self._state = _FAILED
        return TagScanError(message)

    def _run(self, mv: memoryview) -> None:
        n = len(mv)
        pos = 0
        base = self._fed
        while pos < n:
            state = self._state
            if state == _SKIP:
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _HEADER
            elif state == _VALUE:
                take = min(self._remaining, n - pos)
                if take == self._remaining and not self._value:
                    self.values[self._value_tag] = bytes(mv[pos : pos + take])
                else:
                    self._value += mv[pos : pos + take]
                    if take == self._remaining:
                        self.values[self._value_tag] = bytes(self._value)
                        self._value = bytearray()
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _HEADER
            else:
                hdr = self._hdr
                if not hdr:
                    used = self._header(mv, pos, n - pos, base + pos)
                    if used == 0:
                        self._hdr = bytearray(mv[pos:])
                        pos = n
                    elif used < 0:
                        return
                    else:
                        pos += used
                else:
                    held = len(hdr)
                    take = min(_HEADER_MAX - held, n - pos)
                    hdr += mv[pos : pos + take]
                    used = self._header(hdr, 0, held + take, base + pos - held)
                    if used == 0:
                        pos += take
                    elif used < 0:
                        return
                    else:
                        # Bytes past the header's end came from this chunk: re-read them.
                        pos += used - held
                        self._hdr = bytearray()
        self._fed = base + n
        self.bytes_consumed = self._fed

    def _header(self, buf, off: int, avail: int, start: int) -> int:
        """Parse the header at buf[off:]; return its size, 0 for "need more", -1 when done."""
        level = self._level
        in_un = level >= self._un_level
        le = self._little or in_un
        if level & 1:
            # Inside an undefined-length sequence: an item or the sequence's end.
            if avail < 8:
                return 0
            group, element, length = struct.unpack_from("<HHI" if le else ">HHI", buf, off)
            tag = group << 16 | element
            if tag == ITEM:
                if length == UNDEFINED_LENGTH:
                    self._level = level + 1
                elif length:
                    self._remaining = length
                    self._state = _SKIP
                return 8
            if tag == SEQUENCE_DELIMITATION_ITEM:
                self._pop(level)
                return 8
            raise self._fail(f"{_fmt(tag)} where an item or sequence delimiter was expected")

        if avail < 4:
            return 0
        group, element = struct.unpack_from("<HH" if le else ">HH", buf, off)
        tag = group << 16 | element
        if level == 0 and tag >= self._limit:
            self._state = _DONE
            self.done = True
            self.bytes_consumed = start
            return -1
        if group == 0xFFFE and (
            tag == ITEM or tag == ITEM_DELIMITATION_ITEM or tag == SEQUENCE_DELIMITATION_ITEM
        ):
            if avail < 8:
                return 0
            if tag == ITEM_DELIMITATION_ITEM and level:
                self._pop(level)
                return 8
            raise self._fail(f"unexpected {_fmt(tag)} where a data element was expected")

        vr = b""
        if not self._explicit or in_un:
            if avail < 8:
                return 0
            (length,) = struct.unpack_from("<I" if le else ">I", buf, off + 4)
            size = 8
        else:
            if avail < 6:
                return 0
            c0 = buf[off + 4]
            c1 = buf[off + 5]
            if not (65 <= c0 <= 90 and 65 <= c1 <= 90):
                raise self._fail(f"invalid VR {bytes((c0, c1))!r} in {_fmt(tag)}")
            vr = bytes((c0, c1))
            if vr in _LONG_VRS:
                if avail < 12:
                    return 0
                (length,) = struct.unpack_from("<I" if le else ">I", buf, off + 8)
                size = 12
            else:
                if avail < 8:
                    return 0
                (length,) = struct.unpack_from("<H" if le else ">H", buf, off + 6)
                size = 8
            if length == UNDEFINED_LENGTH and vr not in _UNDEFINED_OK_VRS:
                raise self._fail(f"undefined length on VR {vr.decode()} in {_fmt(tag)}")

        if length == UNDEFINED_LENGTH:
            # A sequence (or encapsulated pixel data, or UN holding implicit VR LE).
            if level + 1 > _MAX_LEVEL:
                raise self._fail(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}")
            self._level = level + 1
            if vr == b"UN":
                self._un_level = level + 1
            return size
        if level == 0 and tag in self._wanted:
            if length > self._max_value_length:
                raise self._fail(
                    f"{_fmt(tag)} value of {length} bytes exceeds {self._max_value_length}"
                )
            if length:
                self._value_tag = tag
                self._remaining = length
                self._state = _VALUE
            else:
                self.values[tag] = b""
        elif length:
            self._remaining = length
            self._state = _SKIP
        return size

    def _pop(self, level: int) -> None:
        self._level = level - 1
        if level - 1 < self._un_level:
            self._un_level = _NO_UN


def _fmt(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
