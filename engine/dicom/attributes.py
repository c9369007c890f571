"""Turn the raw values the tag scanner found into typed indexed attributes.

Only the ~25 indexed values pass through here, so decoding with pydicom's
character-set machinery costs little while the scan itself stays in C.
"""
from __future__ import annotations

import struct
from typing import Mapping

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag

from engine.dicom.tags import INDEXED

_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}
# Delimiters that reset ISO 2022 code extensions inside a value (PS3.5 6.1.2.5.3).
_PN_DELIMITERS = {0x5E, 0x3D}  # '^', '='
_TEXT_DELIMITERS = {0x5C}  # '\'


def character_sets(raw: bytes | None) -> list[str]:
    """Python codec names for a Specific Character Set value (default ISO_IR 6)."""
    if not raw:
        return convert_encodings(["ISO_IR 6"])
    terms = [t.strip() for t in raw.decode("ascii", "replace").split("\\")]
    if terms and terms[0] == "":
        terms[0] = "ISO_IR 6"
    try:
        return convert_encodings(terms)
    except LookupError:
        return convert_encodings(["ISO_IR 6"])


def decode_value(vr: str, raw: bytes, encodings: list[str], little_endian: bool) -> str | int | None:
    """Decode one raw value of an indexed attribute; None when empty or unreadable."""
    if vr == "US":
        if len(raw) < 2:
            return None
        return struct.unpack("<H" if little_endian else ">H", raw[:2])[0]
    if vr == "UI":
        text = raw.rstrip(b"\x00 ").decode("ascii", "replace")
        return text or None
    if vr == "IS":
        text = raw.decode("ascii", "replace").strip(" \x00")
        if not text:
            return None
        try:
            return int(text.split("\\")[0].strip())
        except ValueError:
            try:
                return int(float(text.split("\\")[0]))
            except ValueError:
                return None
    if vr in _TEXT_VRS:
        delims = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
        text = decode_bytes(raw, encodings, delims)
        text = text.rstrip(" \x00")
        return text or None
    text = raw.decode("ascii", "replace").strip(" \x00")
    return text or None


def decode_indexed(values: Mapping[int, bytes], little_endian: bool = True) -> dict[str, str | int]:
    """Decode raw scanner values to {keyword: value}; absent or empty values are omitted."""
    encodings = character_sets(values.get(0x00080005))
    out: dict[str, str | int] = {}
    for attr in INDEXED:
        raw = values.get(attr.tag)
        if raw is None:
            continue
        value = decode_value(attr.vr, bytes(raw), encodings, little_endian)
        if value is not None:
            out[attr.keyword] = value
    return out



def decode_tags(values: Mapping[int, bytes], tags: tuple[int, ...],
                little_endian: bool = True) -> dict[str, str | int]:
    """Decode raw scanner values of any dictionary tags to {keyword: value} (as text,
    multiple values joined by backslash); for attributes beyond the indexed ones."""
    encodings = character_sets(values.get(0x00080005))
    out: dict[str, str | int] = {}
    for tag in tags:
        raw = values.get(tag)
        keyword = keyword_for_tag(tag)
        if raw is None or not keyword:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            continue
        if vr in ("US", "SS", "UL", "SL", "FL", "FD"):
            size = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8}[vr]
            code = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}[vr]
            raw = bytes(raw)
            count = len(raw) // size
            if not count:
                continue
            numbers = struct.unpack(("<" if little_endian else ">") + code * count,
                                    raw[:count * size])
            out[keyword] = "\\".join(str(n) for n in numbers)
            continue
        value = decode_value(vr if vr in _TEXT_VRS or vr == "UI" else "CS", bytes(raw),
                             encodings, little_endian)
        if value is not None:
            out[keyword] = value
    return out
