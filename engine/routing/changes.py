"""Attribute changes a rule makes to the copy it sends (never to the archived instance).

    changes = [
      { set = "InstitutionName", value = "General Hospital" },
      { remove = "PatientComments" },
      { copy = "AccessionNumber", to = "StudyID" },
      { prefix = "PatientID", value = "EXT-" },
    ]

Applied in order.  `set` creates or replaces a text attribute (its value checked
against the VR at load; backslash separates values of a multi-valued one);
`remove` deletes an attribute if present; `copy` puts the source's value into the
target (nothing when the source is absent); `prefix` puts text in front of each
value of a text attribute (nothing when absent or empty).  Only top-level attributes
by keyword.  SOP Class / Instance UID and Specific Character Set cannot be changed:
the C-STORE request must agree with the dataset, and values must stay decodable.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pydicom.config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

from engine.routing.schema import fail, keyword_vm, keyword_vr, only_keys, string, table

ACTIONS = ("set", "remove", "copy", "prefix")
#: Never changed by a rule (de-identification replaces UIDs by its own rules).
PROTECTED = frozenset({"SOPClassUID", "SOPInstanceUID", "SpecificCharacterSet"})
#: VRs whose value is text a rule may set or copy into.
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                      "TM", "UC", "UI", "UR", "UT"})
#: Text VRs where putting text in front keeps the value valid in form.
PREFIX_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: VRs whose single value may contain a backslash.
_BACKSLASH_VRS = frozenset({"LT", "ST", "UT", "UR"})
#: Values of these VRs have no text form to copy from.
_NOT_COPYABLE = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW",
                           "US or OW", "US or SS or OW"})


@dataclass(frozen=True)
class AttributeChange:
    """One change; its fields are plain strings so a queue can store it as JSON."""

    action: str  # "set" | "remove" | "copy" | "prefix"
    #: The attribute changed (for copy: the target).
    keyword: str
    #: set: the new value; prefix: the text put in front.
    value: str = ""
    #: copy: the attribute whose value is copied.
    source: str = ""

    def to_json(self) -> dict[str, str]:
        return {"action": self.action, "keyword": self.keyword, "value": self.value,
                "source": self.source}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> "AttributeChange":
        """Inverse of `to_json` (also from sorted key/value pairs); checked like the config."""
        doc = dict(doc)
        action = doc.get("action")
        raw = {action: doc.get("keyword")} if isinstance(action, str) else {}
        if action in ("set", "prefix"):
            raw["value"] = doc.get("value", "")
        elif action == "copy":
            raw = {"copy": doc.get("source"), "to": doc.get("keyword")}
        return parse_change(raw, "change")


def changes_from_json(docs: Iterable[Any]) -> tuple[AttributeChange, ...]:
    """Changes as a queue stored them (`to_json` objects, or their sorted key/value pairs)."""
    return tuple(AttributeChange.from_json(doc) for doc in docs)


def parse_changes(raw: Any, where: str) -> tuple[AttributeChange, ...]:
    """A list of change tables (see the module docstring)."""
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise fail(where, "expected a list of tables like { set = \"Keyword\", value = \"...\" }")
    return tuple(parse_change(item, f"{where}[{i}]") for i, item in enumerate(raw))


def parse_change(raw: Any, where: str) -> AttributeChange:
    body = table(raw, where)
    actions = [a for a in ACTIONS if a in body]
    if len(actions) != 1:
        raise fail(where, f"expected exactly one of {', '.join(ACTIONS)}, got {sorted(body)}")
    action = actions[0]
    here = f"{where}.{action}"
    if action == "remove":
        only_keys(body, ("remove",), where)
        keyword = _target(body["remove"], here, None)
        return AttributeChange("remove", keyword)
    if action == "copy":
        only_keys(body, ("copy", "to"), where)
        if "to" not in body:
            raise fail(where, "copy needs to = \"TargetKeyword\"")
        source = string(body["copy"], here)
        source_vr = keyword_vr(source, here)
        if source_vr in _NOT_COPYABLE:
            raise fail(here, f"{source} has VR {source_vr}, which has no text value to copy")
        target = _target(body["to"], f"{where}.to", TEXT_VRS)
        return AttributeChange("copy", target, source=source)
    only_keys(body, (action, "value"), where)
    if "value" not in body:
        raise fail(where, f"{action} needs value = \"...\"")
    keyword = _target(body[action], here, TEXT_VRS if action == "set" else PREFIX_VRS)
    value = string(body["value"], f"{where}.value", empty=action == "set")
    _check_value(keyword, value, f"{where}.value")
    return AttributeChange(action, keyword, value=value)


def _target(value: Any, where: str, vrs: frozenset[str] | None) -> str:
    keyword = string(value, where)
    vr = keyword_vr(keyword, where)
    if keyword in PROTECTED:
        raise fail(where, f"{keyword} cannot be changed by a rule")
    if vrs is not None and vr not in vrs:
        raise fail(where, f"{keyword} has VR {vr}; this change needs one of "
                          f"{', '.join(sorted(vrs))}")
    return keyword


def _check_value(keyword: str, value: str, where: str) -> None:
    vr = keyword_vr(keyword, where)
    if vr in _BACKSLASH_VRS:
        parts = [value]
    else:
        parts = value.split("\\")
        if len(parts) > 1 and keyword_vm(keyword) == "1":
            raise fail(where, f"{keyword} has one value; a backslash would make several")
    for part in parts:
        try:
            validate_value(vr, part, pydicom.config.RAISE)
        except ValueError as exc:
            raise fail(where, f"not a valid {vr} value for {keyword}: {exc}") from None


# --- applying ---------------------------------------------------------------------------------
def apply_changes(dataset: Dataset, changes: Iterable[AttributeChange]) -> Dataset:
    """A copy of `dataset` with `changes` applied in order; `dataset` is left as it was.

    The copy has its own top-level element table but shares unchanged elements (pixel
    data included: nothing large is copied); changed elements are new objects.  File
    meta, preamble and the original encoding are carried over.
    """
    result = Dataset({tag: dataset.get_item(tag) for tag in dataset.keys()})
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        result.file_meta = copy.deepcopy(file_meta)
    preamble = getattr(dataset, "preamble", None)
    if preamble is not None:
        result.preamble = preamble
    implicit, little = dataset.original_encoding
    result.set_original_encoding(implicit, little, dataset.original_character_set)
    for change in changes:
        _apply(result, change)
    return result


def _apply(dataset: Dataset, change: AttributeChange) -> None:
    tag = tag_for_keyword(change.keyword)
    if change.action == "remove":
        if tag in dataset:
            del dataset[tag]
        return
    vr = _text_vr(dataset, tag, change.keyword)
    if change.action == "set":
        dataset[tag] = DataElement(tag, vr, change.value)
    elif change.action == "copy":
        source_tag = tag_for_keyword(change.source)
        if source_tag not in dataset:
            return
        source = dataset[source_tag]
        if source.VR == vr:
            value = copy.deepcopy(source.value)
        else:
            value = "\\".join(_texts(source.value))
        dataset[tag] = DataElement(tag, vr, value)
    elif change.action == "prefix":
        if tag not in dataset:
            return
        values = [v for v in _texts(dataset[tag].value)]
        if not any(values):
            return
        prefixed = [change.value + v if v else v for v in values]
        dataset[tag] = DataElement(
            tag, vr, prefixed[0] if len(prefixed) == 1 else prefixed)
    else:  # not reachable from parse_change
        raise ValueError(f"unknown attribute change {change.action!r}")


def _text_vr(dataset: Dataset, tag: int, keyword: str) -> str:
    """The VR to write: the element's own if it is text, else the dictionary's."""
    if tag in dataset:
        vr = dataset[tag].VR
        if vr in TEXT_VRS:
            return vr
    return keyword_vr(keyword, "")


def _texts(value: Any) -> list[str]:
    """An element value as a list of text values (numbers, names, bytes of UN)."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("latin-1").rstrip(" \x00")
        return text.split("\\") if text else []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    return [text] if text else []
