"""Sequence matching for C-FIND identifiers (PS3.4 C.2.2.2.6), and element values as text.

A sequence key holds one item whose Item Key Attributes are matched, item by
item, against the items of the stored sequence: a stored item matches when all
its keys match (recursively for nested sequences), and the key matches when at
least one stored item does.  The response carries one item per matching
stored item with only the requested keys.  A key with no item, or one empty
item, matches everything and returns the entire stored sequence.

Sequences are not indexed: the stored sequence comes from a stored file of the
match.  Response items are rebuilt from decoded values (never the stored raw
bytes), because the response is encoded in its own character set, which need
not be the stored file's.
"""
from __future__ import annotations

from dataclasses import dataclass

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from engine.dicom.identifier import typed_value
from engine.errors import TagScanError
from engine.query.matching import Matcher, MatchError, compile_matcher

__all__ = ["SequenceKey", "compile_sequence_key", "element_text"]

_SPECIFIC_CHARACTER_SET = 0x00080005
#: Deepest sequence nesting matched or returned (as deep as ingest parses: the tag scanner's
#: limit). A stored file may hold deeper defined-length sequences, which ingest skips
#: unparsed; recursing into 1,000 levels would end in a RecursionError.
MAX_DEPTH = 64
#: VRs whose response values are rebuilt from text (as the flat keys are); other VRs
#: (binary numbers, bytes, AT...) keep the decoded value pydicom read.
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                         "TM", "UC", "UI", "UR", "UT"})


def element_text(element) -> str:
    """An element's value as text, multiple values joined by backslash (as on the wire)."""
    value = element.value
    if value is None or isinstance(value, pydicom.sequence.Sequence):
        # A sequence has no text value; its str() would pretty-print every nested item,
        # which for a hostile file nested 1,000 deep grew the server by gigabytes.
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value)


def _response_element(tag: int, vr: str, stored: DataElement | None,
                      depth: int = 1) -> DataElement:
    """The response element for a requested item key, from the stored one (or empty)."""
    if stored is None:
        return DataElement(tag, vr, None)
    if stored.VR == "SQ":
        return DataElement(tag, "SQ", [_whole_item(item, depth + 1)
                                       for item in stored.value or ()])
    if stored.VR in _STRING_VRS:
        return DataElement(tag, stored.VR, typed_value(stored.VR, element_text(stored)))
    return DataElement(tag, stored.VR, stored.value)


def _whole_item(item: Dataset, depth: int = 1) -> Dataset:
    """A stored item with all its attributes, re-encodable in any character set."""
    if depth > MAX_DEPTH:
        raise TagScanError(f"stored sequence nested deeper than {MAX_DEPTH} levels")
    out = Dataset()
    for element in item:
        if element.tag == _SPECIFIC_CHARACTER_SET or element.tag.element == 0:
            continue  # the response's own character set applies; group lengths are retired
        out.add(_response_element(int(element.tag), element.VR, element, depth))
    return out


@dataclass(frozen=True)
class ItemKey:
    """One Item Key Attribute: matched (unless universal) and returned."""

    tag: int
    vr: str
    matcher: Matcher | None = None
    nested: "SequenceKey | None" = None


@dataclass(frozen=True)
class SequenceKey:
    """A compiled sequence key; `select` runs once per candidate."""

    tag: int
    keys: tuple[ItemKey, ...]
    #: No Item Key Attribute: every entity matches, the entire stored sequence is returned.
    whole: bool

    @property
    def constrains(self) -> bool:
        """Whether some item key can reject a stored item."""
        return any(k.matcher is not None or (k.nested is not None and k.nested.constrains)
                   for k in self.keys)

    def select(self, stored: DataElement | None) -> list[Dataset] | None:
        """The response items for the stored element (None when absent), or None when
        the key does not match."""
        items = stored.value if stored is not None and stored.VR == "SQ" else None
        items = list(items or ())
        if self.whole:
            return [_whole_item(item) for item in items]
        selected = []
        for item in items:
            response = self._match_item(item)
            if response is not None:
                selected.append(response)
        if not selected and self.constrains:
            return None
        return selected

    def _match_item(self, item: Dataset) -> Dataset | None:
        response = Dataset()
        for key in self.keys:
            stored = item.get(key.tag)
            if key.nested is not None:
                nested = key.nested.select(stored)
                if nested is None:
                    return None
                response.add(DataElement(key.tag, "SQ", nested))
                continue
            if key.matcher is not None:
                if not key.matcher(element_text(stored) if stored is not None else ""):
                    return None
            response.add(_response_element(key.tag, key.vr, stored))
        return response


def compile_sequence_key(element: DataElement, fuzzy_person_names: bool,
                         depth: int = 1) -> SequenceKey:
    """Compile a request's SQ element; MatchError if it is not a valid sequence key."""
    if depth > MAX_DEPTH:
        raise MatchError(f"sequence keys nested deeper than {MAX_DEPTH} levels")
    items = list(element.value or ())
    if len(items) > 1:
        raise MatchError(f"a sequence key holds one item, not {len(items)}")
    keys = []
    for sub in items[0] if items else ():
        if sub.tag == _SPECIFIC_CHARACTER_SET or sub.tag.element == 0:
            continue
        if sub.VR == "SQ":
            keys.append(ItemKey(int(sub.tag), "SQ",
                                nested=compile_sequence_key(sub, fuzzy_person_names,
                                                            depth + 1)))
        else:
            keys.append(ItemKey(int(sub.tag), sub.VR,
                                compile_matcher(sub.VR, element_text(sub),
                                                fuzzy_person_names=fuzzy_person_names)))
    return SequenceKey(int(element.tag), tuple(keys), whole=not keys)
