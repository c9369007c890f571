"""C-FIND response identifiers: as pydicom Datasets, or encoded straight from values.

A match is the list of returned values in the order of the query's keys: text
(multiple values joined by ``\\``), or for an SQ key the list of response items
(pydicom Datasets, engine.query.sequence).  `response_dataset` builds the
pydicom Dataset (`pacs find`, and the reference of the tests);
`ResponseEncoder` writes the same bytes without building it, once per match on
the SCP's path, except for a match with a non-empty sequence, which pydicom
encodes (sequences are read from files, which costs far more than encoding).

Responses are in UTF-8 (Specific Character Set ``ISO_IR 192``) when any value
is not ASCII, whatever character set the request or the stored files used:
values are decoded text by the time they get here.
"""
from __future__ import annotations

from collections.abc import MutableSequence
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from engine.dicom.identifier import IdentifierEncoder, encode_with_pydicom, typed_value

if TYPE_CHECKING:
    from engine.query.find import FindQuery

_SPECIFIC_CHARACTER_SET, _QUERY_RETRIEVE_LEVEL = 0x00080005, 0x00080052
UTF8 = "ISO_IR 192"


def _has_non_ascii(value) -> bool:
    """Whether a value (text, a list of texts, or response items) holds non-ASCII text."""
    if isinstance(value, (str, PersonName)):
        return not str(value).isascii()
    if isinstance(value, Dataset):
        return any(_has_non_ascii(element.value) for element in value)
    if isinstance(value, (MutableSequence, tuple)):  # lists, MultiValue, Sequence
        return any(_has_non_ascii(v) for v in value)
    return False


def response_dataset(query: FindQuery, values: list) -> Dataset:
    """The response identifier of one match as a pydicom Dataset."""
    ds = Dataset()
    if any(_has_non_ascii(v) for v in values):
        ds.SpecificCharacterSet = UTF8
    ds.QueryRetrieveLevel = query.level
    for key, value in zip(query.keys, values):
        if key.vr == "SQ":
            ds.add_new(key.tag, "SQ", value or [])
            continue
        ds.add_new(key.tag, key.vr, typed_value(key.vr, value))
    return ds


class ResponseEncoder:
    """Encodes the response identifiers of one query without pydicom objects,
    byte for byte as `encode_identifier(response_dataset(...))` would."""

    def __init__(self, query: FindQuery, explicit_vr: bool) -> None:
        layout = [(_QUERY_RETRIEVE_LEVEL, "CS")] + [(k.tag, k.vr) for k in query.keys]
        self._ascii = IdentifierEncoder(layout, explicit_vr)
        self._utf8 = IdentifierEncoder(layout + [(_SPECIFIC_CHARACTER_SET, "CS")], explicit_vr)
        self._level = query.level
        self._query = query
        self._explicit_vr = explicit_vr
        self._sequences = [i for i, k in enumerate(query.keys) if k.vr == "SQ"]

    def encode(self, values: list) -> bytes:
        if self._sequences:
            return self._encode_with_sequences(values)
        for value in values:
            if not value.isascii():
                return self._utf8.encode([self._level, *values, UTF8])
        return self._ascii.encode([self._level, *values])

    def _encode_with_sequences(self, values: list) -> bytes:
        if any(values[i] for i in self._sequences):
            return encode_with_pydicom(response_dataset(self._query, values), self._explicit_vr)
        if any(_has_non_ascii(v) for v in values):  # empty sequences: the flat encoder
            return self._utf8.encode([self._level, *values, UTF8])
        return self._ascii.encode([self._level, *values])
