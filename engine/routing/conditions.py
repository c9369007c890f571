"""Conditions of routing rules: parsed once from the config, evaluated per instance.

A condition is an inline TOML table with exactly one key:

    { all = [cond, ...] }   { any = [cond, ...] }   { not = cond }
    { SUBJECT = { OPERATOR = operand } }             { SUBJECT = "text" }  (= equals)

SUBJECT is a field of the association or command (`calling_ae`, `called_ae`,
`source_ip`, `sop_class_uid`) or a top-level attribute keyword of PS3.6
(`Modality`, `StudyDescription`, ...).  Operators:

    equals = "CT"                    one_of = ["CT", "MR"]
    glob = "CT*"                     (* any run, ? one character; whole value, case-sensitive)
    regex = "(?i).*scout.*"          (Python syntax, must match the whole value)
    date_range = "20240101-20241231" (DICOM range syntax, either side may be empty; DA or DT)
    number_range = { min = 1, max = 9.5 }  (inclusive decimals, either bound optional)
    network = "10.0.0.0/8"           (or a list; source_ip only)
    present = true | false           (false: absent or empty)

Values are compared as text with surrounding spaces (and NUL padding) removed.  A
multi-valued attribute (values joined by backslash) matches when its whole text or
any one of its values matches.  An absent or empty subject matches nothing except
`present = false`.  Evaluation never raises, whatever the values: regular
expressions and bounds are checked and compiled when the config is loaded, and a
value that is not a valid date or number simply does not match a range.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Mapping, Sequence, Union

from engine.routing.schema import (
    boolean, fail, keyword_vr, only_keys, string, strings, table)

#: Subjects that are not dataset attributes: where the instance came from, and how.
CONTEXT_SUBJECTS = ("calling_ae", "called_ae", "source_ip", "sop_class_uid")
#: Longest regular expression accepted (characters).  Rules come from a trusted file,
#: but a pasted monster of a pattern is a mistake worth refusing.
MAX_REGEX_LENGTH = 512

_DATE_VRS = frozenset({"DA", "DT"})
_NUMBER_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD",
                         "US or SS"})
#: Values of these VRs have no text form a condition could look at.
_UNMATCHABLE_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW",
                              "US or OW", "US or SS or OW"})

_DATE = re.compile(r"([0-9]{8})(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?)?"
                   r"(?:[+-][0-9]{4})?")
_LEGACY_DATE = re.compile(r"([0-9]{4})\.([0-9]{2})\.([0-9]{2})")
#: DS / IS / binary numbers as text; the exponent is bounded so Decimal stays exact.
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})"
                     r"(?:[eE][+-]?[0-9]{1,4})?")


@dataclass(frozen=True)
class RoutingContext:
    """What the rules look at for one received instance.

    `attributes` maps keyword → value as text (multi-values joined by backslash);
    it needs to hold only `wanted_keywords(rules)`.
    """

    calling_ae: str = ""
    called_ae: str = ""
    source_ip: str = ""
    sop_class_uid: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


def _candidates(value: Any) -> tuple[str, ...]:
    """The whole value and, if multi-valued, each value; all unpadded. () if empty."""
    if value is None:
        return ()
    text = value if isinstance(value, str) else str(value)
    whole = text.strip(" \x00")
    if "\\" not in text:
        return (whole,) if whole else ()
    parts = tuple(part.strip(" \x00") for part in text.split("\\"))
    return (whole, *parts) if any(parts) else ()


# --- value tests: one value (text) → bool, never raising -----------------------------------
@dataclass(frozen=True)
class Equals:
    expected: str

    def test(self, value: str) -> bool:
        return value == self.expected


@dataclass(frozen=True)
class OneOf:
    options: frozenset[str]

    def test(self, value: str) -> bool:
        return value in self.options


@dataclass(frozen=True)
class Glob:
    pattern: str
    compiled: re.Pattern[str] = field(compare=False, repr=False)

    def test(self, value: str) -> bool:
        return self.compiled.fullmatch(value) is not None


@dataclass(frozen=True)
class Regex:
    pattern: str
    compiled: re.Pattern[str] = field(compare=False, repr=False)

    def test(self, value: str) -> bool:
        return self.compiled.fullmatch(value) is not None


@dataclass(frozen=True)
class DateRange:
    """Inclusive range of DICOM dates (YYYYMMDD); a DT value is compared by its date."""

    low: str | None
    high: str | None

    def test(self, value: str) -> bool:
        found = _DATE.fullmatch(value)
        if found:
            day = found.group(1)
        else:
            legacy = _LEGACY_DATE.fullmatch(value)
            if not legacy:
                return False
            day = "".join(legacy.groups())
        return (self.low is None or day >= self.low) and (self.high is None or day <= self.high)


@dataclass(frozen=True)
class NumberRange:
    """Inclusive range of decimals (IS, DS and binary numbers as text)."""

    low: Decimal | None
    high: Decimal | None

    def test(self, value: str) -> bool:
        if len(value) > 100 or not _NUMBER.fullmatch(value):
            return False
        number = Decimal(value)
        return (self.low is None or number >= self.low) and \
            (self.high is None or number <= self.high)


@dataclass(frozen=True)
class InNetwork:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def test(self, value: str) -> bool:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


ValueTest = Union[Equals, OneOf, Glob, Regex, DateRange, NumberRange, InNetwork]


# --- condition nodes: RoutingContext → bool -------------------------------------------------
@dataclass(frozen=True)
class Test:
    """One subject (context field or attribute keyword) against one value test."""

    subject: str
    is_attribute: bool
    check: ValueTest

    def matches(self, context: RoutingContext) -> bool:
        value = context.attributes.get(self.subject) if self.is_attribute \
            else getattr(context, self.subject)
        return any(self.check.test(v) for v in _candidates(value))

    def keywords(self) -> frozenset[str]:
        return frozenset({self.subject}) if self.is_attribute else frozenset()


@dataclass(frozen=True)
class Present:
    """The subject has a non-empty value (`expected` true) or has none (false)."""

    subject: str
    is_attribute: bool
    expected: bool

    def matches(self, context: RoutingContext) -> bool:
        value = context.attributes.get(self.subject) if self.is_attribute \
            else getattr(context, self.subject)
        return bool(_candidates(value)) == self.expected

    def keywords(self) -> frozenset[str]:
        return frozenset({self.subject}) if self.is_attribute else frozenset()


@dataclass(frozen=True)
class All:
    conditions: tuple["Condition", ...]

    def matches(self, context: RoutingContext) -> bool:
        return all(c.matches(context) for c in self.conditions)

    def keywords(self) -> frozenset[str]:
        return frozenset().union(*(c.keywords() for c in self.conditions))


@dataclass(frozen=True)
class AnyOf:
    conditions: tuple["Condition", ...]

    def matches(self, context: RoutingContext) -> bool:
        return any(c.matches(context) for c in self.conditions)

    def keywords(self) -> frozenset[str]:
        return frozenset().union(*(c.keywords() for c in self.conditions))


@dataclass(frozen=True)
class Not:
    condition: "Condition"

    def matches(self, context: RoutingContext) -> bool:
        return not self.condition.matches(context)

    def keywords(self) -> frozenset[str]:
        return self.condition.keywords()


Condition = Union[Test, Present, All, AnyOf, Not]
#: The condition of a rule without `when`: every instance.
ALWAYS: Condition = All(())


# --- parsing ----------------------------------------------------------------------------------
_OPERATORS = ("equals", "one_of", "glob", "regex", "date_range", "number_range", "network",
              "present")


def parse_condition(raw: Any, where: str) -> Condition:
    """Parse one condition tree (see the module docstring); errors name `where`."""
    node = table(raw, where)
    if len(node) != 1:
        raise fail(where, "a condition is a table with exactly one key (all, any, not, "
                          f"{', '.join(CONTEXT_SUBJECTS)} or an attribute keyword); "
                          f"got {sorted(node) or 'none'}; combine several with all = [...]")
    ((key, value),) = node.items()
    here = f"{where}.{key}"
    if key in ("all", "any"):
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise fail(here, "expected a non-empty list of conditions")
        children = tuple(parse_condition(c, f"{here}[{i}]") for i, c in enumerate(value))
        return All(children) if key == "all" else AnyOf(children)
    if key == "not":
        return Not(parse_condition(value, here))
    is_attribute = key not in CONTEXT_SUBJECTS
    vr = _subject_vr(key, here) if is_attribute else None
    if isinstance(value, str):
        return Test(key, is_attribute, _parse_test(key, vr, "equals", value, here))
    operation = table(value, here)
    if len(operation) != 1:
        raise fail(here, f"expected exactly one operator ({', '.join(_OPERATORS)}), "
                         f"got {sorted(operation) or 'none'}")
    ((operator, operand),) = operation.items()
    at = f"{here}.{operator}"
    if operator == "present":
        return Present(key, is_attribute, boolean(operand, at))
    return Test(key, is_attribute, _parse_test(key, vr, operator, operand, at))


def _subject_vr(keyword: str, where: str) -> str:
    vr = keyword_vr(keyword, where)
    if vr in _UNMATCHABLE_VRS:
        raise fail(where, f"{keyword} has VR {vr}, which conditions cannot look at "
                          "(sequences and binary values have no text form)")
    return vr


def _parse_test(subject: str, vr: str | None, operator: str, operand: Any,
                where: str) -> ValueTest:
    if operator == "equals":
        return Equals(_comparable(string(operand, where), where))
    if operator == "one_of":
        if isinstance(operand, str):
            raise fail(where, "expected a list of strings (use equals for one value)")
        return OneOf(frozenset(_comparable(v, where) for v in strings(operand, where)))
    if operator == "glob":
        return _parse_glob(string(operand, where, empty=False), where)
    if operator == "regex":
        return _parse_regex(string(operand, where, empty=False), where)
    if operator == "date_range":
        if vr not in _DATE_VRS:
            raise fail(where, f"date_range needs an attribute of VR DA or DT, {subject} is "
                              f"{vr or 'not an attribute'}")
        return _parse_date_range(string(operand, where), where)
    if operator == "number_range":
        if vr not in _NUMBER_VRS:
            raise fail(where, f"number_range needs a numeric attribute (IS, DS, US, ...), "
                              f"{subject} is {vr or 'not an attribute'}")
        return _parse_number_range(operand, where)
    if operator == "network":
        if subject != "source_ip":
            raise fail(where, "network applies to source_ip only")
        return _parse_networks(operand, where)
    raise fail(where, f"unknown operator {operator!r} (allowed: {', '.join(_OPERATORS)})")


def _comparable(text: str, where: str) -> str:
    """A value to compare with, unpadded as values are; empty would never match."""
    text = text.strip(" \x00")
    if not text:
        raise fail(where, "an empty value never matches; use present = false")
    return text


def _parse_glob(pattern: str, where: str) -> Glob:
    pieces = []
    for char in pattern:
        if char == "*":
            if not pieces or pieces[-1] != ".*":  # runs of * are one (no backtracking blow-up)
                pieces.append(".*")
        elif char == "?":
            pieces.append(".")
        else:
            pieces.append(re.escape(char))
    if len(pattern) > MAX_REGEX_LENGTH:
        raise fail(where, f"pattern longer than {MAX_REGEX_LENGTH} characters")
    return Glob(pattern, re.compile("".join(pieces), re.DOTALL))


def _parse_regex(pattern: str, where: str) -> Regex:
    if len(pattern) > MAX_REGEX_LENGTH:
        raise fail(where, f"regular expression longer than {MAX_REGEX_LENGTH} characters")
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise fail(where, f"invalid regular expression {pattern!r}: {exc}") from None
    return Regex(pattern, compiled)


def _parse_date_range(text: str, where: str) -> DateRange:
    low_text, dash, high_text = text.strip().partition("-")
    if not dash:
        high_text = low_text  # a single date: that day only
    bounds = []
    for bound in (low_text.strip(), high_text.strip()):
        if not bound:
            bounds.append(None)
            continue
        if not re.fullmatch(r"[0-9]{8}", bound):
            raise fail(where, f"expected \"YYYYMMDD-YYYYMMDD\" (either side may be empty), "
                              f"got {text!r}")
        try:
            date(int(bound[:4]), int(bound[4:6]), int(bound[6:]))
        except ValueError:
            raise fail(where, f"{bound} is not a calendar date") from None
        bounds.append(bound)
    low, high = bounds
    if low is None and high is None:
        raise fail(where, "a date range needs at least one bound")
    if low is not None and high is not None and low > high:
        raise fail(where, f"empty range: {low} is after {high}")
    return DateRange(low, high)


def _parse_number_range(operand: Any, where: str) -> NumberRange:
    bounds = table(operand, where)
    only_keys(bounds, ("min", "max"), where)
    if not bounds:
        raise fail(where, "a number range needs min, max or both")
    parsed: dict[str, Decimal | None] = {"min": None, "max": None}
    for name, value in bounds.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise fail(f"{where}.{name}", f"expected a number, got {value!r}")
        number = Decimal(str(value))
        if not number.is_finite():
            raise fail(f"{where}.{name}", "must be a finite number")
        parsed[name] = number
    low, high = parsed["min"], parsed["max"]
    if low is not None and high is not None and low > high:
        raise fail(where, f"empty range: min {low} is above max {high}")
    return NumberRange(low, high)


def _parse_networks(operand: Any, where: str) -> InNetwork:
    networks = []
    for text in strings(operand, where):
        try:
            networks.append(ipaddress.ip_network(text.strip()))
        except ValueError as exc:
            raise fail(where, f"not a network in CIDR notation: {exc}") from None
    return InNetwork(tuple(networks))
