"""C-FIND response identifiers: as pydicom Datasets, or encoded straight from values.

A match is the list of returned values (text, multiple values joined by ``\\``)
in the order of the query's keys.  `response_dataset` builds the pydicom
Dataset (`pacs find`, and the reference of the tests); `ResponseEncoder`
writes the same bytes without building it, once per match on the SCP's path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from engine.dicom.identifier import IdentifierEncoder, typed_value

if TYPE_CHECKING:
    from engine.query.find import FindQuery

_SPECIFIC_CHARACTER_SET, _QUERY_RETRIEVE_LEVEL = 0x00080005, 0x00080052


def response_dataset(query: FindQuery, values: list[str]) -> Dataset:
    """The response identifier of one match as a pydicom Dataset."""
    ds = Dataset()
    if any(not v.isascii() for v in values):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = query.level
    for key, text in zip(query.keys, values):
        if key.vr == "SQ":
            ds.add_new(key.tag, "SQ", [])
            continue
        ds.add_new(key.tag, key.vr, typed_value(key.vr, text))
    return ds


class ResponseEncoder:
    """Encodes the response identifiers of one query without pydicom objects,
    byte for byte as `encode_identifier(response_dataset(...))` would."""

    def __init__(self, query: FindQuery, explicit_vr: bool) -> None:
        layout = [(_QUERY_RETRIEVE_LEVEL, "CS")] + [(k.tag, k.vr) for k in query.keys]
        self._ascii = IdentifierEncoder(layout, explicit_vr)
        self._utf8 = IdentifierEncoder(layout + [(_SPECIFIC_CHARACTER_SET, "CS")], explicit_vr)
        self._level = query.level

    def encode(self, values: list[str]) -> bytes:
        for value in values:
            if not value.isascii():
                return self._utf8.encode([self._level, *values, "ISO_IR 192"])
        return self._ascii.encode([self._level, *values])
