"""Checking the `[routing]` part of the TOML document: one error class and typed getters.

Every error names where in the document it was found (`rule "ct": when.all[1]`), so
a bad rule fails at load with a message an operator can act on.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword

from engine.errors import EngineError


class RoutingConfigError(EngineError, ValueError):
    """A routing rule, destination or attribute change in the config is invalid.

    The message starts with where the problem is; the config loader re-raises it as
    a `ConfigError` under `[routing]`.
    """


def fail(where: str, message: str) -> RoutingConfigError:
    return RoutingConfigError(f"{where}: {message}" if where else message)


def table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(where, f"expected a table, got {value!r}")
    return value


def string(value: Any, where: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise fail(where, f"expected a string, got {value!r}")
    if not empty and not value.strip():
        raise fail(where, "must not be empty")
    return value


def strings(value: Any, where: str) -> tuple[str, ...]:
    """A string or a non-empty list of strings, as a tuple."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not value or \
            not all(isinstance(v, str) for v in value):
        raise fail(where, f"expected a string or a non-empty list of strings, got {value!r}")
    return tuple(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, f"expected true/false, got {value!r}")
    return value


def number(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise fail(where, f"expected a number, got {value!r}")
    return float(value)


def integer(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(where, f"expected an integer, got {value!r}")
    return value


def only_keys(raw: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise fail(where, f"unknown option(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join(allowed)})")


def keyword_vr(keyword: str, where: str) -> str:
    """The dictionary VR of a top-level dataset attribute keyword (PS3.6)."""
    tag = tag_for_keyword(keyword) if isinstance(keyword, str) else None
    if tag is None:
        raise fail(where, f"unknown attribute keyword {keyword!r} (PS3.6 keywords, "
                          "e.g. Modality, StudyDescription)")
    if tag >> 16 == 0x0002:
        raise fail(where, f"{keyword} is a file meta attribute, not part of the dataset")
    if tag >> 16 == 0x0000:
        raise fail(where, f"{keyword} is a command attribute, not part of the dataset")
    return dictionary_VR(keyword)


def keyword_vm(keyword: str) -> str:
    return dictionary_VM(keyword)
