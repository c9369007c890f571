"""Attribute matching for C-FIND identifiers (DICOM PS3.4 C.2.2.2).

A query key is compiled once into a predicate over the value as the index stores
it (decoded ``str``; multiple values joined by ``\\``), because the predicate runs
once per candidate record and the key's parsing, validation and regex building
must not be repeated there.

Choices beyond the letter of PS3.4, made so that real SCUs get useful answers:

* A key containing ``\\`` is a list of alternatives for every VR that can be
  multi-valued, not only for UI (extended / relational negotiation permits value
  lists for more keys; treating them as alternatives is the only sensible reading).
  LT, ST, UT and UR are single-valued and may contain ``\\`` as data, so their keys
  and values are taken literally.  An alternative that is universal (``*``) makes
  the whole key universal.
* A stored value matches a key if any of its values matches any alternative.
* Range bounds given with less precision than the attribute holds cover their whole
  period: the lower bound is padded with the smallest value, the upper bound with
  the largest (TM ``-11`` reaches 11:59:59.999999).  Single values are padded with
  zeros on both sides, so TM ``10`` equals ``100000``.
* DT timezone offsets (``+hhmm``/``-hhmm``) are ignored when comparing: the index
  keeps the value as sent and has no reliable offset for values that lack one, so
  converting to UTC would make offset-less values incomparable.
* A range whose lower bound is after its upper bound is refused rather than read as
  wrapping (a TM range across midnight needs the date; see
  :func:`compile_date_time_range`).
"""
from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from decimal import Decimal

from engine.dicom.person_name import fold, trim_group

__all__ = ["MatchError", "compile_date_time_range", "compile_matcher"]

Matcher = Callable[[str], bool]


class MatchError(ValueError):
    """The query key itself is invalid (e.g. a malformed range)."""


# Single-valued VRs whose values may legitimately contain a backslash.
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
# VRs whose values are numbers; matched by numeric value, not by spelling.
_NUMERIC_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "SV", "UV", "FL", "FD"})
_TEMPORAL_VRS = frozenset({"DA", "TM", "DT"})

# Sorts after every normalised date/time string (digits and '.'), so it serves as
# the upper bound of a range that is open at the top.
_OPEN_TOP = "~"
_OPEN_BOTTOM = ""


def _is_universal(key: str) -> bool:
    stripped = key.strip(" \0")
    return not stripped or not stripped.strip("*")


def compile_matcher(vr: str, key: str, *,
                    fuzzy_person_names: bool = False) -> Matcher | None:
    """Compile the query ``key`` for an attribute of ``vr`` into a predicate.

    Returns None for universal matching (empty key or only ``*``): the caller then
    returns the stored value unconditionally, including an empty one.  Raises
    MatchError if the key cannot be a valid key for ``vr``.
    """
    vr = vr.upper().split(" OR ")[0]  # pydicom's ambiguous "US or SS": all numeric
    if _is_universal(key):
        return None
    if vr not in _TEXT_VRS and vr != "UI" and any(map(_is_universal, _alternatives(key))):
        return None
    if vr == "UI":
        return _compile_uid(key)
    if vr in _TEMPORAL_VRS:
        return _compile_temporal(vr, key)
    if vr in _NUMERIC_VRS:
        return _compile_numeric(key)
    if vr == "PN":
        return _compile_person_name(key, fuzzy_person_names)
    return _compile_string(key, literal=vr in _TEXT_VRS)


def _alternatives(key: str) -> list[str]:
    """Split a value-list key, refusing empty elements (they have no meaning)."""
    parts = key.split("\\")
    if len(parts) > 1 and any(not p.strip(" \0") for p in parts):
        raise MatchError(f"value list {key!r} has an empty element")
    return parts


# --- UI ----------------------------------------------------------------------

def _compile_uid(key: str) -> Matcher:
    """List of UID matching (C.2.2.2.2): equality with any listed UID, no wildcards."""
    wanted = frozenset(uid.strip(" \0") for uid in _alternatives(key))

    def match(value: str) -> bool:
        return any(v.strip(" \0") in wanted for v in value.split("\\"))
    return match


# --- wildcards and plain strings -------------------------------------------------

_STARS = re.compile(r"\*+")


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def _segment_pattern(segment: str) -> str:
    """Regex for a star-free piece of a key: ``?`` is any one character."""
    return ".".join(re.escape(piece) for piece in segment.split("?"))


def _wildcard_pattern(text: str) -> str:
    """Regex source for a wildcard key: ``*`` any run, ``?`` one char, rest literal.

    A naive ``.*`` per star lets the regex engine backtrack through every way of
    distributing the value over the stars (``a*a*a*...b`` on a long run of ``a``
    never finishes).  The pieces between stars have fixed length, so taking each
    middle piece at its earliest occurrence is always safe; atomic groups commit to
    that occurrence and keep the match linear in the number of pieces.
    """
    pieces = _STARS.split(text)
    if len(pieces) == 1:
        return _segment_pattern(text)
    first, *middle, last = pieces
    return (_segment_pattern(first)
            + "".join(f"(?>.*?{_segment_pattern(p)})" for p in middle)
            + ".*" + _segment_pattern(last))


def _exact_or_pattern(keys: list[str]) -> Matcher:
    """Predicate over one normalised value: in the exact set, or fullmatching a wildcard.

    Exact alternatives go to a set lookup and all wildcard alternatives into one
    alternation, so a value is tested in at most two steps whatever the list length.
    """
    exact = frozenset(k for k in keys if not _has_wildcard(k))
    patterns = [_wildcard_pattern(k) for k in keys if _has_wildcard(k)]
    if not patterns:
        return exact.__contains__
    regex = re.compile("|".join(f"(?:{p})" for p in patterns), re.DOTALL)
    fullmatch = regex.fullmatch
    if not exact:
        return lambda v: fullmatch(v) is not None
    return lambda v: v in exact or fullmatch(v) is not None


def _compile_string(key: str, *, literal: bool) -> Matcher:
    """Single value and wildcard matching (C.2.2.2.1, C.2.2.2.4), case-sensitive.

    Leading and trailing spaces are padding for the short string VRs; for the text
    VRs (``literal``) only trailing spaces are, and backslash is data.
    """
    if literal:
        test = _exact_or_pattern([key.rstrip(" ")])
        return lambda value: test(value.rstrip(" "))
    test = _exact_or_pattern([k.strip(" ") for k in _alternatives(key)])

    def match(value: str) -> bool:
        return any(test(v.strip(" ")) for v in value.split("\\"))
    return match


# --- PN ------------------------------------------------------------------------

def _compile_person_name(key: str, fuzzy: bool) -> Matcher | None:
    """PN matching on whole component groups, optionally fuzzy.

    A key without ``=`` matches if any component group of the value matches it; a
    key with ``=`` matches group by group (an empty key group constrains nothing).
    In fuzzy mode a key without ``^`` also matches the family name alone, so
    ``muller`` finds ``Müller^Jürgen``.
    """
    norm = (lambda s: fold(trim_group(s))) if fuzzy else trim_group
    alternatives: list[tuple[bool, list[Callable[[str, str], bool] | None]]] = []
    for alt in _alternatives(key):
        key_groups = alt.split("=")
        if len(key_groups) > 3:
            raise MatchError(f"person name {alt!r} has more than three component groups")
        tests: list[Callable[[str, str], bool] | None] = []
        for group in key_groups:
            group_key = norm(group)
            if _is_universal(group_key):
                tests.append(None)
                continue
            test = _exact_or_pattern([group_key])
            if fuzzy and "^" not in group_key:
                tests.append(lambda whole, family, t=test: t(whole) or t(family))
            else:
                tests.append(lambda whole, family, t=test: t(whole))
        if all(t is None for t in tests):
            return None  # e.g. "=": no group constrains anything
        alternatives.append((len(key_groups) > 1, tests))

    def groups_of(value: str) -> list[tuple[str, str]]:
        out = []
        for group in value.split("="):
            whole = norm(group)
            out.append((whole, whole.split("^", 1)[0]))
        return out

    def match(value: str) -> bool:
        for single in value.split("\\"):
            groups = groups_of(single)
            for by_group, tests in alternatives:
                if by_group:
                    if all(t is None or t(*(groups[i] if i < len(groups) else ("", "")))
                           for i, t in enumerate(tests)):
                        return True
                elif any(tests[0](whole, family) for whole, family in groups):
                    return True
        return False
    return match


# --- numbers -----------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _number(text: str) -> Decimal | None:
    text = text.strip(" ")
    return Decimal(text) if _NUMBER.fullmatch(text) else None


def _compile_numeric(key: str) -> Matcher | None:
    """Numeric equality, so ``1``, ``01`` and ``1.0`` are the same IS/DS value.

    Decimal rather than float keeps DS values exact; equal Decimals hash equal, so
    the alternatives can live in a set.
    """
    wanted = set()
    for alt in _alternatives(key):
        if _is_universal(alt):
            return None
        number = _number(alt)
        if number is None:
            raise MatchError(f"{alt!r} is not a number")
        wanted.add(number)

    def match(value: str) -> bool:
        for v in value.split("\\"):
            number = _number(v)
            if number is not None and number in wanted:
                return True
        return False
    return match


# --- DA / TM / DT --------------------------------------------------------------------
# Each parser returns a fixed-width string whose lexical order is chronological, or
# None if the text is not a value of the VR.  ``upper`` pads missing precision with
# the largest value instead of the smallest; ``strict`` also checks field ranges
# (done for keys, skipped for stored values where it would only cost time).

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})|(\d{4})\.(\d{2})\.(\d{2})")
_TM = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6})\d*)?)?)?")
_DT = re.compile(r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})"
                 r"(?:\.(\d{1,6})\d*)?)?)?)?)?)?(?:([+-])(\d{2})(\d{2}))?")


def _parse_date(text: str, upper: bool = False, strict: bool = False) -> str | None:
    m = _DA.fullmatch(text.strip(" "))
    if m is None:
        return None
    year, month, day = (g for g in m.groups() if g is not None)
    if strict and not _valid_date(year, month, day):
        return None
    return year + month + day


def _valid_date(year: str, month: str, day: str) -> bool:
    m = int(month)
    return 1 <= m <= 12 and 1 <= int(day) <= calendar.monthrange(int(year), m)[1]


def _pad_time(hh: str, mm: str | None, ss: str | None, frac: str | None,
              upper: bool) -> str:
    fill = "9" if upper else "0"
    return (hh + (mm or ("59" if upper else "00")) + (ss or ("59" if upper else "00"))
            + "." + (frac or "").ljust(6, fill))


def _valid_time(hh: str, mm: str | None, ss: str | None) -> bool:
    return int(hh) < 24 and int(mm or 0) < 60 and int(ss or 0) <= 60  # 60: leap second


def _parse_time(text: str, upper: bool = False, strict: bool = False) -> str | None:
    m = _TM.fullmatch(text.strip(" "))
    if m is None:
        return None
    hh, mm, ss, frac = m.groups()
    if strict and not _valid_time(hh, mm, ss):
        return None
    return _pad_time(hh, mm, ss, frac, upper)


def _parse_datetime(text: str, upper: bool = False, strict: bool = False) -> str | None:
    m = _DT.fullmatch(text.strip(" "))
    if m is None:
        return None
    year, month, day, hh, mm, ss, frac, sign, off_h, off_m = m.groups()
    if strict:
        if month is not None and not 1 <= int(month) <= 12:
            return None
        if day is not None and not _valid_date(year, month, day):
            return None
        if hh is not None and not _valid_time(hh, mm, ss):
            return None
        if sign is not None and (int(off_h) > 14 or int(off_m) > 59):
            return None
    if month is None:
        month = "12" if upper else "01"
    if day is None:
        day = str(calendar.monthrange(int(year), int(month))[1]) if upper else "01"
    if hh is None:
        hh = "23" if upper else "00"
    return year + month + day + _pad_time(hh, mm, ss, frac, upper)


_PARSERS = {"DA": _parse_date, "TM": _parse_time, "DT": _parse_datetime}


def _split_range(vr: str, key: str) -> tuple[str, str] | None:
    """The two sides of a range key, or None if ``key`` is a single value.

    DT needs care because a timezone offset may itself start with ``-``: a key
    that is a valid single DT value is read as one; otherwise every ``-`` is tried
    as the separator and exactly one reading must give two valid (or empty) sides.
    """
    key = key.strip(" ")
    if vr != "DT":
        if key.count("-") > 1:
            raise MatchError(f"{vr} range {key!r} has more than one '-'")
        if "-" not in key:
            return None
        low, _, high = key.partition("-")
        return low, high
    if _parse_datetime(key, strict=True) is not None:
        return None
    readings = []
    for i, ch in enumerate(key):
        if ch != "-":
            continue
        low, high = key[:i], key[i + 1:]
        if all(not side or _parse_datetime(side, strict=True) for side in (low, high)):
            readings.append((low, high))
    if len(readings) > 1:
        raise MatchError(f"DT range {key!r} is ambiguous")
    if not readings:
        if "-" in key:
            raise MatchError(f"{key!r} is not a valid DT range")
        return None
    return readings[0]


def _bounds(vr: str, key: str) -> tuple[str, str]:
    """The inclusive normalised interval a single-value or range key selects."""
    parse = _PARSERS[vr]
    sides = _split_range(vr, key)
    if sides is None:
        value = parse(key, strict=True)
        if value is None:
            raise MatchError(f"{key!r} is not a valid {vr} value")
        return value, value
    low_text, high_text = sides
    if not low_text and not high_text:
        raise MatchError(f"{vr} range {key!r} has neither bound")
    low = parse(low_text, strict=True) if low_text else _OPEN_BOTTOM
    high = parse(high_text, upper=True, strict=True) if high_text else _OPEN_TOP
    if low is None or high is None:
        raise MatchError(f"{key!r} is not a valid {vr} range")
    if low > high:
        raise MatchError(f"{vr} range {key!r} ends before it starts")
    return low, high


def _compile_temporal(vr: str, key: str) -> Matcher:
    """Single value and range matching (C.2.2.2.1, C.2.2.2.5) on normalised text.

    Normalised values are fixed-width digit strings, so range tests are plain
    string comparisons.  An empty or unparsable stored value never matches.
    """
    intervals = [_bounds(vr, alt) for alt in _alternatives(key)]
    parse = _PARSERS[vr]

    if len(intervals) == 1:
        low, high = intervals[0]

        def match_one(value: str) -> bool:
            for v in value.split("\\"):
                n = parse(v)
                if n is not None and low <= n <= high:
                    return True
            return False
        return match_one

    def match(value: str) -> bool:
        for v in value.split("\\"):
            n = parse(v)
            if n is not None and any(lo <= n <= hi for lo, hi in intervals):
                return True
        return False
    return match


# --- combined DA + TM -----------------------------------------------------------------

_DAY_START = _pad_time("00", None, None, None, upper=False)
_DAY_END = _pad_time("23", None, None, None, upper=True)


def compile_date_time_range(date_key: str,
                            time_key: str) -> Callable[[str, str], bool] | None:
    """Predicate over (date, time) for a DA key and a TM key of the same event.

    When both keys are ranges, PS3.4 C.2.2.2.5 reads them as one range of instants
    ``date1time1-date2time2``, which is how a range across midnight is asked for.
    An absent date bound leaves that end open whatever its time bound says, and an
    absent time bound means the start (or end) of its day.  A record with a date
    but no time matches if its day overlaps the range.  Otherwise the keys are
    matched independently.  Returns None if both keys are universal.
    """
    if _is_universal(date_key) and _is_universal(time_key):
        return None
    date_sides = None if _is_universal(date_key) else _single_range("DA", date_key)
    time_sides = None if _is_universal(time_key) else _single_range("TM", time_key)
    if date_sides is None or time_sides is None:
        date_match = compile_matcher("DA", date_key)
        time_match = compile_matcher("TM", time_key)

        def independent(date: str, time: str) -> bool:
            return ((date_match is None or date_match(date))
                    and (time_match is None or time_match(time)))
        return independent

    (d1, d2), (t1, t2) = date_sides, time_sides
    if not (d1 or d2) or not (t1 or t2):
        raise MatchError(f"date-time range {date_key!r} {time_key!r} lacks a bound")
    low = _OPEN_BOTTOM
    if d1:
        low = _strict(_parse_date, d1) + (_strict(_parse_time, t1) if t1 else _DAY_START)
    high = _OPEN_TOP
    if d2:
        high = _strict(_parse_date, d2) + (
            _strict(_parse_time, t2, upper=True) if t2 else _DAY_END)
    if low > high:
        raise MatchError(f"date-time range {date_key!r} {time_key!r} ends before it starts")

    def combined(date: str, time: str) -> bool:
        day = _parse_date(date)
        if day is None:
            return False
        if not time.strip(" "):
            return day + _DAY_START <= high and day + _DAY_END >= low
        clock = _parse_time(time)
        return clock is not None and low <= day + clock <= high
    return combined


def _strict(parse: Callable[..., str | None], text: str, upper: bool = False) -> str:
    value = parse(text, upper=upper, strict=True)
    if value is None:
        raise MatchError(f"{text!r} is not a valid range bound")
    return value


def _single_range(vr: str, key: str) -> tuple[str, str] | None:
    """Both sides of ``key`` if it is one range (not a value list), else None."""
    if "\\" in key:
        return None
    return _split_range(vr, key)
