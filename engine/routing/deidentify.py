"""De-identified copies of instances for routed destinations (PS3.15 Annex E).

The router may send a destination (an AI node, a research archive) a copy of an
instance with the Basic Application Level Confidentiality Profile applied
(PS3.15 E.1.1, "Basic Profile").  `deidentify` builds that copy as a new
pydicom Dataset; the archived instance is never changed, and the input Dataset
is left as it was.

What is promised
----------------
* Every attribute of PS3.15 Table E.1-1 (edition 2024b, transcribed in
  `_basic_profile.py`, 617 rows plus the repeating-group rows) gets the action of
  the table's Basic Profile column, at every nesting depth: attributes inside
  sequence items are looked up in the same table.
* The compound actions are resolved without IOD Type knowledge, the way that
  keeps a Storage object valid whatever the attribute's Type is:
  Z/D -> D, X/Z -> Z, X/D -> D, X/Z/D -> D, X/Z/U* -> U (the sequence is kept and
  the UIDs inside it are replaced, through the rows of the referenced UIDs).
  C (only reachable through options here) is applied as `options.clean_as`.
* D on a sequence keeps its items and applies the table inside them; Z on a
  sequence leaves it with no items; D on a UI attribute is a U.
* U replaces each UID by the `UIDMapper`'s consistent replacement, so the same
  Study / Series / Frame of Reference / SOP Instance UID maps to the same value
  in every instance and every reference (Referenced SOP Instance UID inside
  sequences, Referenced Frame of Reference UID, the file meta's Media Storage
  SOP Instance UID...).  Well-known UIDs (anything under 1.2.840.10008: SOP
  classes, transfer syntaxes, coding schemes) are never replaced; attributes not
  in the table, such as SOP Class UID and Referenced SOP Class UID, are kept.
* Private attributes (odd groups, their creators included) are removed, at every
  depth.  Curve groups (50xx) are removed.  Overlay groups (60xx) are removed
  whole: the table removes Overlay Data and Overlay Comments, and an Overlay
  Plane left without its data would not be valid.  Group Length elements
  (gggg,0000) are dropped since the lengths they state no longer hold.
* Pixel Data and every attribute not in the table are kept with their values;
  binary values (Pixel Data) are shared with the input, not copied.
* Patient Identity Removed (0012,0062) = YES, De-identification Method
  (0012,0063) names the profile and the table's edition, and De-identification
  Method Code Sequence (0012,0064) gets (113100, DCM, "Basic Application
  Confidentiality Profile"); values already present are kept and ours appended.
* File meta, when present, goes through the same table (Media Storage SOP
  Instance UID is U) and loses the Source / Sending / Receiving AE titles and
  Private Information.

Deliberately not handled
------------------------
* The options of PS3.15 E.3 (Retain Safe Private, Retain UIDs, Retain Device
  Identity, Retain Institution Identity, Retain Patient Characteristics, Retain
  Longitudinal Temporal Information with Full or Modified Dates, Clean
  Descriptors, Clean Structured Content, Clean Graphics, Clean Pixel Data, Clean
  Recognizable Visual Features): none is implemented.  `options.overrides` lets
  a caller change the action of chosen (non-private) attributes, which is enough
  to express some of them by hand, but we make no claim of conformance to any.
* Pixel data is never examined: burned-in annotation (Burned In Annotation =
  YES, secondary captures, scanned documents) and recognizable faces stay as
  they are.  Overlay data embedded in the high bits of Pixel Data is not cleared.
* Free text inside kept sequences that the table does not list (Text Value and
  Code Meaning in SR content items or in an Institution Code Sequence item) is
  kept: removing it is the Clean Structured Content / Clean Descriptors option.
* D values are fixed dummies per VR (see `_DUMMY_BY_VR`), not pseudonyms;
  `options.dummy_values` lets the caller supply its own (a per-patient pseudonym
  for Patient ID, say).
"""
from __future__ import annotations

import copy
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from engine.routing._basic_profile import (
    BASIC_PROFILE_ATTRIBUTES,
    REPEATING_GROUP_ROWS,
    TABLE_EDITION,
)

#: Action codes of PS3.15 E.1.1 that a row or an override may name.
SIMPLE_ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U"})
COMPOUND_ACTIONS = frozenset({"Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})
ACTIONS = SIMPLE_ACTIONS | COMPOUND_ACTIONS

#: How a compound action is resolved without knowing the attribute's Type in the
#: IOD: the choice that is valid for the strictest Type the action allows
#: (Type 1 -> D, Type 2 -> Z, sequences of UID references -> U).
COMPOUND_RESOLUTION: Mapping[str, str] = {
    "Z/D": "D",
    "X/Z": "Z",
    "X/D": "D",
    "X/Z/D": "D",
    "X/Z/U*": "U",
}

#: The Basic Profile column: tag -> action, as in the table (compounds unresolved).
BASIC_PROFILE: Mapping[int, str] = {tag: action for tag, _, action in BASIC_PROFILE_ATTRIBUTES}

#: Root of the UIDs that DICOM itself defines (SOP classes, transfer syntaxes,
#: well-known instances, coding schemes); never replaced.
WELL_KNOWN_UID_ROOT = "1.2.840.10008"

#: De-identification Method Code Sequence item for the Basic Profile (PS3.16 CID 7050).
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

DEFAULT_METHOD = f"PS3.15 E.1.1 Basic Profile (Table E.1-1 {TABLE_EDITION}), pacs-engine"

# Dummy values for D, one per VR: non-zero length and valid for the VR (PS3.5 6.2).
_ZERO_BYTES = b"\x00" * 8  # a multiple of every binary VR's unit size (OB..OV)
_DUMMY_BY_VR: Mapping[str, Any] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "AT": 0,
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "FD": 0.0,
    "FL": 0.0,
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "OB": _ZERO_BYTES,
    "OD": _ZERO_BYTES,
    "OF": _ZERO_BYTES,
    "OL": _ZERO_BYTES,
    "OV": _ZERO_BYTES,
    "OW": _ZERO_BYTES,
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "SL": 0,
    "SS": 0,
    "ST": "ANONYMIZED",
    "SV": 0,
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UL": 0,
    "UN": _ZERO_BYTES,
    "UR": "http://anonymized.invalid",
    "US": 0,
    "UT": "ANONYMIZED",
    "UV": 0,
}

# File meta elements that name the systems an instance passed through.
_FILE_META_REMOVED = frozenset({
    0x00020016,  # Source Application Entity Title
    0x00020017,  # Sending Application Entity Title
    0x00020018,  # Receiving Application Entity Title
    0x00020100,  # Private Information Creator UID
    0x00020102,  # Private Information
})

# Curves (50xx: the table removes the whole group) and overlays (60xx: the table
# removes Overlay Data and Overlay Comments; we remove the rest of the group too).
_REPEATING_GROUPS_REMOVED_WHOLE = frozenset({0x5000, 0x6000})

_PATIENT_IDENTITY_REMOVED = 0x00120062
_DEIDENTIFICATION_METHOD = 0x00120063
_DEIDENTIFICATION_METHOD_CODE_SEQUENCE = 0x00120064


class UIDMapper:
    """Consistent replacement UIDs: `2.25.<keyed BLAKE2b-128 of the UID>`.

    The same input UID maps to the same output for every mapper built with the
    same secret, so references stay consistent across instances, across routed
    copies and across restarts, and nobody without the secret can recompute
    (or confirm a guess of) the original UID from the replacement.  Outputs
    are UIDs of the UUID-derived root (PS3.5 B.2): at most 44 characters, always
    valid UI whatever the input was.  A UID never maps to itself; well-known
    UIDs (under 1.2.840.10008) and empty values are returned unchanged.
    """

    _PERSONALIZATION = b"pacs-deid-uid"  # domain separation from other uses of the secret

    def __init__(self, secret: bytes | str) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ValueError("UIDMapper needs a non-empty secret")
        if len(key) > hashlib.blake2b.MAX_KEY_SIZE:
            key = hashlib.blake2b(key).digest()
        self._key = key

    @staticmethod
    def new_secret() -> bytes:
        """A fresh random secret (32 bytes); store it to keep mappings across restarts."""
        return secrets.token_bytes(32)

    @staticmethod
    def is_well_known(uid: str) -> bool:
        """True for UIDs that DICOM defines itself (never replaced)."""
        return uid == WELL_KNOWN_UID_ROOT or uid.startswith(WELL_KNOWN_UID_ROOT + ".")

    def map(self, uid: str) -> str:
        """The replacement of `uid` (trailing NUL / space padding ignored)."""
        uid = str(uid).strip("\x00 ")
        if not uid or self.is_well_known(uid):
            return uid
        data = uid.encode("utf-8", "surrogateescape")
        attempt = 0
        while True:
            digest = hashlib.blake2b(
                data if attempt == 0 else data + b"\x00" + str(attempt).encode(),
                key=self._key,
                digest_size=16,
                person=self._PERSONALIZATION,
            ).digest()
            mapped = f"2.25.{int.from_bytes(digest, 'big')}"
            if mapped != uid:
                return mapped
            attempt += 1  # the input was our own output for itself: 2^-128, but never map to self

    __call__ = map


@dataclass(frozen=True)
class DeidentifyOptions:
    """Choices a route may make on top of the Basic Profile.

    `overrides` maps a tag (int) or keyword to an action code that replaces the
    table's action for that attribute at every depth (private tags excepted:
    they are always removed).  `dummy_values` maps a tag or keyword to the value
    a D action writes instead of the per-VR dummy.  `clean_as` is how a C
    action is applied ("D" or "X"; the table itself has no C in the Basic
    Profile column).  `method` is written to De-identification Method.
    """

    overrides: Mapping[int | str, str] = field(default_factory=dict)
    dummy_values: Mapping[int | str, Any] = field(default_factory=dict)
    clean_as: str = "D"
    method: str = DEFAULT_METHOD

    def __post_init__(self) -> None:
        if self.clean_as not in ("D", "X"):
            raise ValueError(f"clean_as must be 'D' or 'X', not {self.clean_as!r}")
        for key, action in self.overrides.items():
            if action not in ACTIONS:
                raise ValueError(f"override for {key!r}: unknown action {action!r}")
        if not 0 < len(self.method) <= 64:
            raise ValueError("method must be 1 to 64 characters (LO)")
        _by_tag(self.overrides, "overrides")  # unknown keywords fail here, not mid-route
        _by_tag(self.dummy_values, "dummy_values")


def _by_tag(mapping: Mapping[int | str, Any], what: str) -> dict[int, Any]:
    resolved: dict[int, Any] = {}
    for key, value in mapping.items():
        tag = tag_for_keyword(key) if isinstance(key, str) else int(Tag(key))
        if tag is None:
            raise ValueError(f"{what}: {key!r} is not a DICOM keyword")
        resolved[tag] = value
    return resolved


def resolve_action(action: str, clean_as: str = "D") -> str:
    """The simple action (D, Z, X, K, U) that `action` is applied as for Storage."""
    action = COMPOUND_RESOLUTION.get(action, action)
    return clean_as if action == "C" else action


def basic_profile_action(tag: int) -> str:
    """The table's action for `tag`, repeating groups and private tags included.

    K for an attribute the table does not list.
    """
    tag = int(tag)
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        return "X"  # private attributes
    action = BASIC_PROFILE.get(tag)
    if action is not None:
        return action
    for row_group, mask, row_element, row_action, _ in REPEATING_GROUP_ROWS:
        if group & mask == row_group and (row_element is None or row_element == element):
            return row_action
    return "K"


def deidentify(
    ds: Dataset, uid_map: UIDMapper, options: DeidentifyOptions | None = None
) -> Dataset:
    """A new Dataset: `ds` with the Basic Profile applied; `ds` is not modified."""
    options = options if options is not None else DeidentifyOptions()
    job = _Job(uid_map, options)
    out = job.dataset(ds)
    implicit_vr, little_endian = ds.original_encoding
    out.set_original_encoding(implicit_vr, little_endian, ds.original_character_set)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        out.file_meta = job.file_meta(meta)
    _mark_deidentified(out, options.method)
    return out


class _Job:
    """One de-identification: the mapper and the options, applied recursively."""

    def __init__(self, uid_map: UIDMapper, options: DeidentifyOptions) -> None:
        self.uid_map = uid_map
        self.options = options
        self.overrides = _by_tag(options.overrides, "overrides")
        self.dummies = _by_tag(options.dummy_values, "dummy_values")

    def action(self, tag: int) -> str:
        if (tag >> 16) & 1:
            return "X"  # private: always removed, whatever the overrides say
        if tag & 0xFFFF == 0:
            return "X"  # group length: stale once anything in the group changed
        if (tag >> 16) & 0xFF00 in _REPEATING_GROUPS_REMOVED_WHOLE:
            return "X"  # an Overlay Plane without its Overlay Data would be invalid
        action = self.overrides.get(tag) or basic_profile_action(tag)
        return resolve_action(action, self.options.clean_as)

    def dataset(self, src: Dataset) -> Dataset:
        out = Dataset()
        for tag in sorted(src.keys()):
            action = self.action(int(tag))
            if action != "X":  # removed elements are never decoded (nor can fail to be)
                out.add(self.element(src[tag], action))  # bytes values stay shared
        return out

    def file_meta(self, src: Dataset) -> FileMetaDataset:
        out = FileMetaDataset()
        for tag in sorted(src.keys()):
            if tag in _FILE_META_REMOVED:
                continue
            action = self.action(int(tag))  # group length: recomputed when written
            if action != "X":
                out.add(self.element(src[tag], action))
        return out

    def element(self, elem: DataElement, action: str) -> DataElement:
        """`elem` with `action` (anything but X) applied."""
        tag = int(elem.tag)
        vr = elem.VR.split(" or ")[0]  # "US or SS" etc.: any choice is the same size
        if vr == "SQ":
            if action == "Z":
                return _element(tag, "SQ", Sequence(), elem.is_undefined_length)
            # K, D, C->D, U*: keep the items, apply the table inside them.
            items = Sequence([self.dataset(item) for item in elem.value])
            return _element(tag, "SQ", items, elem.is_undefined_length)
        if action == "K":
            return _element(tag, elem.VR, _copy_value(elem.value), elem.is_undefined_length)
        if action == "Z":
            return _element(tag, elem.VR, empty_value_for_VR(vr))
        if action == "U" or (action == "D" and vr == "UI"):
            if vr == "UI":
                return _element(tag, "UI", self.map_uids(elem.value))
            action = "D"  # a U row read with another VR (UN): no UID to map
        if action == "D":
            return _element(tag, elem.VR, self.dummy(tag, vr))
        raise ValueError(f"unknown de-identification action {action!r} for {Tag(tag)}")

    def map_uids(self, value: Any) -> Any:
        if value is None or value == "":
            return value
        if isinstance(value, (MultiValue, list, tuple)):
            return [self.uid_map.map(uid) for uid in value]
        return self.uid_map.map(value)

    def dummy(self, tag: int, vr: str) -> Any:
        if tag in self.dummies:
            return self.dummies[tag]
        return _DUMMY_BY_VR.get(vr, _ZERO_BYTES)


def _copy_value(value: Any) -> Any:
    # bytes and str are immutable and shared (no copy of Pixel Data); MultiValue
    # and the like are copied so the output can be edited without touching the input.
    if value is None or isinstance(value, (bytes, str, int, float)):
        return value
    return copy.deepcopy(value)


def _element(tag: int, vr: str, value: Any, undefined_length: bool = False) -> DataElement:
    return DataElement(
        tag,
        vr,
        value,
        is_undefined_length=undefined_length,
        validation_mode=pydicom_config.IGNORE,  # values come from the input or from us
    )


def _mark_deidentified(out: Dataset, method: str) -> None:
    """Patient Identity Removed, De-identification Method (+ Code Sequence)."""
    out.add(_element(_PATIENT_IDENTITY_REMOVED, "CS", "YES"))
    methods: list[str] = []
    if _DEIDENTIFICATION_METHOD in out:
        previous = out[_DEIDENTIFICATION_METHOD].value
        if isinstance(previous, (MultiValue, list)):
            methods.extend(str(v) for v in previous)
        elif previous:
            methods.append(str(previous))
    methods.append(method)
    out.add(_element(_DEIDENTIFICATION_METHOD, "LO", methods if len(methods) > 1 else method))

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    items = Sequence()
    if _DEIDENTIFICATION_METHOD_CODE_SEQUENCE in out:
        items.extend(out[_DEIDENTIFICATION_METHOD_CODE_SEQUENCE].value)
    if not any(
        getattr(item, "CodeValue", None) == BASIC_PROFILE_CODE[0]
        and getattr(item, "CodingSchemeDesignator", None) == BASIC_PROFILE_CODE[1]
        for item in items
    ):
        items.append(code)
    out.add(_element(_DEIDENTIFICATION_METHOD_CODE_SEQUENCE, "SQ", items))
