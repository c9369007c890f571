"""DICOM JSON (PS3.18 F.2) for the two shapes the API answers in.

QIDO-RS results are C-FIND values (text, ``\\``-separated, as the index or a
stored file gave them): `ValueEncoder` turns each into its JSON attribute
object by VR without building a pydicom Dataset (pydicom's ``to_json_dict``
costs ~20x more per attribute, and a study search answers thousands).
Metadata is a stored dataset: `dataset_json` walks it, writes large binary
values (and anything pydicom deferred) as BulkDataURI, never reading them, and
lets pydicom convert the rest element by element.
"""
from __future__ import annotations

import json
import math
from json.encoder import encode_basestring as _encode_string  # C-accelerated
from typing import Callable

from pydicom.dataset import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.tag import Tag

from engine.web.errors import WebError

#: VRs whose values are JSON numbers (PS3.18 F.2.3).
_INTEGER_VRS = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
#: VRs whose large values are sent as BulkDataURI in metadata.
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Binary values up to this many bytes are inlined (InlineBinary) in metadata.
BULK_THRESHOLD = 1024
#: Deepest sequence nesting written (the tag scanner's limit at ingest; a stored file may
#: hold deeper defined-length sequences, which ingest skips unparsed).
MAX_SEQUENCE_DEPTH = 64


def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def _number(text: str, vr: str):
    text = text.strip()
    if not text:
        return None
    try:
        if vr in _INTEGER_VRS:
            return int(text)
        number = float(text)
    except ValueError:
        return text  # not a number: the received text, rather than dropping it
    if not math.isfinite(number):
        return text  # JSON has no inf / nan
    return int(number) if number.is_integer() and "e" not in text.lower() and \
        "." not in text else number


def _person_name(text: str):
    if not text:
        return None
    groups = text.split("=")
    out = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups):
        if group:
            out[name] = group
    return out or None


def _converter(vr: str) -> Callable[[str], list]:
    """text (multi-valued with '\\') -> the JSON "Value" list of that VR."""
    if vr == "PN":
        return lambda text: [_person_name(v) for v in text.split("\\")]
    if vr in _INTEGER_VRS or vr in _FLOAT_VRS:
        return lambda text: [_number(v, vr) for v in text.split("\\")]
    if vr in ("LT", "ST", "UT", "UR"):  # single-valued: a backslash is text
        return lambda text: [text]
    return lambda text: [v.strip() if v.strip() else None for v in text.split("\\")]


def _json_text(value: str) -> str:
    return _encode_string(value)


def _json_number(text: str, vr: str) -> str:
    value = _number(text, vr)
    if value is None:
        return "null"
    if isinstance(value, str):
        return _encode_string(value)
    return repr(value) if isinstance(value, float) else str(value)


def _json_person_name(text: str) -> str:
    if not text:
        return "null"
    groups = text.split("=")
    parts = [f'"{name}":{_encode_string(group)}'
             for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups) if group]
    return "{" + ",".join(parts) + "}" if parts else "null"


def _json_fragment(vr: str) -> Callable[[str], str]:
    """text -> the JSON text of the attribute object (what ValueEncoder.encode gives)."""
    head = '{"vr":"' + vr + '"'
    empty = head + "}"
    head += ',"Value":['
    if vr == "PN":
        def one(text):
            return head + ",".join(_json_person_name(v) for v in text.split("\\")) + "]}"
    elif vr in _INTEGER_VRS or vr in _FLOAT_VRS:
        def one(text):
            return head + ",".join(_json_number(v, vr) for v in text.split("\\")) + "]}"
    elif vr in ("LT", "ST", "UT", "UR"):
        def one(text):
            return head + _encode_string(text) + "]}"
    else:
        def one(text):
            if "\\" not in text:
                value = text.strip()
                return head + (_encode_string(value) if value else "null") + "]}"
            return head + ",".join(_encode_string(v.strip()) if v.strip() else "null"
                                   for v in text.split("\\")) + "]}"
    return lambda text: one(text) if text else empty


class ValueEncoder:
    """JSON attribute objects for one query's keys (tag, VR), from C-FIND values."""

    def __init__(self, keys: list[tuple[int, str]]) -> None:
        self._plan = [(tag_key(tag), vr, _converter(vr)) for tag, vr in keys]
        self._fragments = [(f'"{tag_key(tag)}":', _json_fragment(vr) if vr != "SQ" else None)
                           for tag, vr in keys]

    def encode_json(self, values: list, extra: dict[int, str] | None = None) -> str:
        """The JSON text of `encode(values)` (plus `extra`: tag → JSON text of attribute
        objects), attributes in tag order when `keys` and `extra` are; no dicts built."""
        parts = []
        for (name, fragment), value in zip(self._fragments, values):
            if fragment is None:  # SQ: items through pydicom
                parts.append(name + json.dumps(
                    {"vr": "SQ", "Value": [item.to_json_dict() for item in value]}
                    if value else {"vr": "SQ"}, ensure_ascii=False, separators=(",", ":")))
            else:
                parts.append(name + fragment(value))
        return "{" + ",".join(parts) + "}"

    def encode(self, values: list) -> dict:
        out = {}
        for (key, vr, convert), value in zip(self._plan, values):
            if vr == "SQ":
                out[key] = {"vr": "SQ", "Value": [item.to_json_dict() for item in value]} \
                    if value else {"vr": "SQ"}
            elif value:
                out[key] = {"vr": vr, "Value": convert(value)}
            else:
                out[key] = {"vr": vr}
        return out


def _vr_of(raw, tag: int) -> str:
    vr = raw.VR
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    return "OW" if " or " in vr else vr


def dataset_json(ds: Dataset, bulk_uri: Callable[[str], str], path: str = "") -> dict:
    """The JSON object of a dataset read from a stored file.

    `bulk_uri(path)` gives the BulkDataURI of a value at `path` ("7FE00010", or
    "00540016/0/00181072" inside a sequence item).  Values larger than
    BULK_THRESHOLD of a binary VR, and values pydicom left unread (deferred),
    are referenced, never read.
    """
    out: dict = {}
    for tag in ds.keys():
        tag = int(tag)
        if tag >> 16 == 0x0002 or tag & 0xFFFF == 0 and tag >> 16 != 0:  # meta, group lengths
            continue
        raw = ds.get_item(tag)
        vr = _vr_of(raw, tag)
        key = tag_key(tag)
        length = getattr(raw, "length", 0) if raw.is_raw else None
        deferred = raw.is_raw and raw.value is None and length not in (0, None)
        if vr != "SQ" and (deferred or (vr in BULK_VRS and length is not None and
                                        (length > BULK_THRESHOLD or length == 0xFFFFFFFF))):
            out[key] = {"vr": vr, "BulkDataURI": bulk_uri(path + key)}
            continue
        element = ds[tag]
        if element.VR == "SQ":
            if path.count("/") >= 2 * MAX_SEQUENCE_DEPTH:  # "tag/index/" per level
                raise WebError(500, f"stored instance nests sequences deeper than "
                                    f"{MAX_SEQUENCE_DEPTH} levels")
            items = [dataset_json(item, bulk_uri, f"{path}{key}/{i}/")
                     for i, item in enumerate(element.value)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if element.VR in BULK_VRS and element.value is not None and \
                len(element.value) > BULK_THRESHOLD:
            out[key] = {"vr": element.VR, "BulkDataURI": bulk_uri(path + key)}
            continue
        try:
            out[key] = element.to_json_dict(None, BULK_THRESHOLD)
        except Exception:  # noqa: BLE001 - one undecodable value must not hide the rest
            out[key] = {"vr": element.VR}
    return out


def parse_tag(text: str) -> int | None:
    """A keyword or ggggeeee as a tag, or None."""
    text = text.strip()
    if len(text) == 8:
        try:
            return int(text, 16)
        except ValueError:
            pass
    try:
        return int(Tag(text))
    except (ValueError, TypeError, OverflowError):
        return None
