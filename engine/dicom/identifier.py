"""Encoding of flat identifiers (C-FIND responses) without building pydicom objects.

A C-FIND answers one identifier per match, all with the same tags and VRs, so
the element headers are fixed per query and only the values change.
`IdentifierEncoder` is built once per query and turns a list of text values
(multiple values joined by ``\\``, as the index stores them) into the bytes
pydicom's ``write_dataset`` writes for the same values in a Dataset (little
endian, explicit or implicit VR): tags sorted, values padded to even length
(UI with NUL, other strings with a space), IS/DS values stripped, empty
trailing PN component groups dropped, binary
integers packed, an empty sequence as pydicom writes it, and an explicit VR
value longer than 0xFFFF written as UN.  Text values are UTF-8 (the caller adds
Specific Character Set ``ISO_IR 192`` when any value is not ASCII); the short
ASCII VRs fall back to UTF-8 where Latin-1 cannot hold a character (pydicom
refuses those).  VRs without a rule here (FL, FD, AT, OB, ambiguous VRs...) are
encoded by pydicom, element by element.
"""
from __future__ import annotations

import struct
from typing import Callable, Sequence

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

__all__ = ["IdentifierEncoder", "encode_with_pydicom", "typed_value"]

#: Text VRs encoded with the Specific Character Set (UTF-8 here).
_CHARSET_VRS = frozenset({"LO", "SH", "ST", "LT", "UC", "UT", "PN"})
#: VRs pydicom writes as an ASCII (Latin-1) string padded with a space.
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR"})
_NUMBER_STRING_VRS = frozenset({"IS", "DS"})
_BINARY = {"US": struct.Struct("<H"), "UL": struct.Struct("<L"), "SS": struct.Struct("<h"),
           "SL": struct.Struct("<l")}
#: Explicit VR little endian: VRs with a reserved field and a 32-bit length.
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT",
                       "UV"})
#: Single-valued text VRs: a backslash is data, not a separator.
_SINGLE_VALUED = frozenset({"LT", "ST", "UT"})

_TAG = struct.Struct("<HH")


def typed_value(vr: str, text: str):
    """The value a response Dataset holds for `text` (None for an empty value)."""
    if not text:
        return None
    if vr in ("US", "UL", "SS", "SL"):
        try:
            return int(text)
        except ValueError:
            return None
    if "\\" in text and vr not in _SINGLE_VALUED:
        return text.split("\\")
    return text


def encode_with_pydicom(ds: Dataset, explicit_vr: bool, little_endian: bool = True) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian = little_endian
    buf.is_implicit_VR = not explicit_vr
    write_dataset(buf, ds)
    return buf.getvalue()


# How a value is turned into bytes (see IdentifierEncoder.encode).
_TEXT, _PERSON_NAME, _STRING, _UID, _NUMBER_STRING, _BINARY_INT, _PYDICOM = range(7)


def _kind(vr: str) -> int:
    if vr == "PN":
        return _PERSON_NAME
    if vr in _CHARSET_VRS:
        return _TEXT
    if vr in _STRING_VRS:
        return _STRING
    if vr == "UI":
        return _UID
    if vr in _NUMBER_STRING_VRS:
        return _NUMBER_STRING
    if vr in _BINARY:
        return _BINARY_INT
    return _PYDICOM  # SQ (always empty here) and VRs without a rule of their own


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # undecodable bytes the index kept as surrogate escapes
        return text.encode("utf-8", "surrogateescape")


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return _utf8(text)


def _binary(vr: str, text: str) -> bytes:
    number = typed_value(vr, text)
    if number is None:
        return b""
    try:
        return _BINARY[vr].pack(number)
    except struct.error:  # out of range for the VR: returned empty
        return b""


def _pydicom_element(tag: int, vr: str, explicit_vr: bool) -> Callable[[str], bytes]:
    def encode(text: str) -> bytes:
        ds = Dataset()
        ds.add_new(tag, vr, [] if vr == "SQ" else typed_value(vr, text))
        return encode_with_pydicom(ds, explicit_vr)
    if vr == "SQ":  # always written empty: encode once
        fixed = encode("")
        return lambda text: fixed
    return encode


class IdentifierEncoder:
    """Encodes value lists of one fixed (tag, VR) layout, in the layout's order.

    `elements` lists (tag, VR) pairs in the order the values will be given; the
    output has them sorted by tag, as DICOM requires.  The element headers are
    built once here; `encode` runs once per response and stays one flat loop.
    """

    def __init__(self, elements: Sequence[tuple[int, str]], explicit_vr: bool) -> None:
        plan = []
        for i in sorted(range(len(elements)), key=lambda i: elements[i][0]):
            tag, vr = elements[i]
            kind = _kind(vr)
            tag_bytes = _TAG.pack(tag >> 16, tag & 0xFFFF)
            if kind == _PYDICOM:
                plan.append((i, kind, _pydicom_element(tag, vr, explicit_vr), 0, vr))
            elif not explicit_vr:
                plan.append((i, kind, tag_bytes, 4, vr))
            elif vr in _LONG_VRS:
                plan.append((i, kind, tag_bytes + vr.encode("ascii") + b"\0\0", 4, vr))
            else:
                plan.append((i, kind, tag_bytes + vr.encode("ascii"), 2, vr))
        self._plan = plan

    def encode(self, values: Sequence[str]) -> bytes:
        parts: list[bytes] = []
        add = parts.append
        for i, kind, head, width, vr in self._plan:
            text = values[i]
            if kind == _TEXT:
                data = _utf8(text)
            elif kind == _STRING:
                data = _latin1(text)
            elif kind == _UID:
                data = _latin1(text)
                if len(data) & 1:
                    data += b"\0"
            elif kind == _PERSON_NAME:
                if "=" in text:  # pydicom drops empty trailing component groups of a name
                    text = "\\".join(v.rstrip("=") for v in text.split("\\"))
                data = _utf8(text)
            elif kind == _NUMBER_STRING:
                if text:  # pydicom keeps each value stripped unless it is blank
                    text = "\\".join(v.strip() or v for v in text.split("\\"))
                data = _latin1(text)
            elif kind == _BINARY_INT:
                data = _binary(vr, text)
            else:
                add(head(text))  # a whole element from pydicom
                continue
            size = len(data)
            if size & 1:
                data += b" "
                size += 1
            if width == 2 and size > 0xFFFF:  # PS3.5 6.2.2: too long for a 16-bit length
                add(head[:4] + b"UN\0\0" + size.to_bytes(4, "little"))
            else:
                add(head + size.to_bytes(width, "little"))
            add(data)
        return b"".join(parts)
