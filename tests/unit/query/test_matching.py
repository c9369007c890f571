"""C-FIND attribute matching (PS3.4 C.2.2.2): each VR's rules, refusal of bad keys."""
from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.query.matching import MatchError, compile_date_time_range, compile_matcher


def matches(vr: str, key: str, value: str, **kwargs) -> bool:
    matcher = compile_matcher(vr, key, **kwargs)
    assert matcher is not None, "expected a non-universal key"
    return matcher(value)


# --- universal matching ----------------------------------------------------------

@pytest.mark.parametrize("vr", ["LO", "CS", "PN", "UI", "DA", "TM", "DT", "IS", "LT"])
@pytest.mark.parametrize("key", ["", "*", "**", "  "])
def test_empty_or_star_only_key_is_universal(vr, key):
    assert compile_matcher(vr, key) is None


def test_value_list_with_a_star_alternative_is_universal():
    assert compile_matcher("CS", "CT\\*") is None


# --- UI ------------------------------------------------------------------------

def test_uid_single_value_matches_only_equal_uid():
    m = compile_matcher("UI", "1.2.3")
    assert m("1.2.3") and not m("1.2.30") and not m("1.2")


def test_uid_list_matches_any_listed_uid():
    m = compile_matcher("UI", "1.2\\1.3")
    assert m("1.2") and m("1.3") and not m("1.4")


def test_uid_value_padding_is_ignored():
    assert matches("UI", "1.2.3", "1.2.3\0")


def test_uid_wildcard_characters_are_literal():
    m = compile_matcher("UI", "1.2.*")
    assert not m("1.2.3") and m("1.2.*")
    assert not matches("UI", "1.?", "1.2")


def test_uid_list_with_empty_element_is_refused():
    with pytest.raises(MatchError):
        compile_matcher("UI", "1.2\\\\1.3")


# --- DA --------------------------------------------------------------------------

def test_date_single_value_matches_same_day_only():
    m = compile_matcher("DA", "20240131")
    assert m("20240131") and not m("20240130")


def test_date_closed_range_is_inclusive():
    m = compile_matcher("DA", "20240101-20240131")
    assert m("20240101") and m("20240115") and m("20240131")
    assert not m("20231231") and not m("20240201")


def test_date_range_open_at_start_means_on_or_before():
    m = compile_matcher("DA", "-20240131")
    assert m("19000101") and m("20240131") and not m("20240201")


def test_date_range_open_at_end_means_on_or_after():
    m = compile_matcher("DA", "20240101-")
    assert m("20240101") and m("29991231") and not m("20231231")


def test_legacy_dotted_dates_are_tolerated_in_key_and_value():
    assert matches("DA", "2024.01.31", "20240131")
    assert matches("DA", "20240101-2024.02.01", "2024.01.15")


def test_date_stored_empty_matches_only_universal():
    assert not matches("DA", "20240101-", "")
    assert compile_matcher("DA", "") is None


def test_date_unparsable_stored_value_does_not_match():
    assert not matches("DA", "-20240131", "garbage")


@pytest.mark.parametrize("key", ["2024ab-", "20240101-20240102-20240103", "-", "2024013",
                                 "20240230", "20241301", "20240201-20240101", "2024-01-31"])
def test_invalid_date_key_is_refused(key):
    with pytest.raises(MatchError):
        compile_matcher("DA", key)


def test_date_value_list_matches_any_alternative():
    m = compile_matcher("DA", "20240101\\20240301-20240302")
    assert m("20240101") and m("20240302") and not m("20240201")


# --- TM --------------------------------------------------------------------------

@pytest.mark.parametrize("stored", ["100000", "1000", "10", "100000.000", "10:00:00"])
def test_time_single_value_compares_zero_padded(stored):
    assert matches("TM", "10", stored)


def test_time_single_value_with_fraction():
    m = compile_matcher("TM", "101500.123")
    assert m("101500.123000") and not m("101500.124") and not m("101500")


def test_time_range_hour_only_upper_bound_covers_the_whole_hour():
    m = compile_matcher("TM", "-11")
    assert m("115959.5") and m("115959.999999") and not m("120000")


def test_time_range_lower_bound_pads_with_zeros():
    m = compile_matcher("TM", "10-")
    assert m("100000") and not m("095959.999999")


def test_time_range_minute_precision_upper_bound():
    m = compile_matcher("TM", "0900-0930")
    assert m("090000") and m("093059.9") and not m("093100") and not m("085959")


def test_time_range_partial_fraction_upper_bound():
    assert matches("TM", "-101500.5", "101500.59")
    assert not matches("TM", "-101500.5", "101500.6")


@pytest.mark.parametrize("key", ["25", "1060", "10x-", "2300-0100", "1-2", "10-11-12"])
def test_invalid_time_key_is_refused(key):
    with pytest.raises(MatchError):
        compile_matcher("TM", key)


# --- DT ----------------------------------------------------------------------------

def test_datetime_range_with_partial_bounds():
    m = compile_matcher("DT", "202401-20240131")
    assert m("20240101000000") and m("20240131235959.999999") and not m("20240201")


def test_datetime_year_only_upper_bound_covers_the_whole_year():
    m = compile_matcher("DT", "2023-2024")
    assert m("2023") and m("20241231235959.9") and not m("2025") and not m("20221231")


def test_datetime_timezone_offsets_are_ignored():
    assert matches("DT", "20240101120000", "20240101120000+0100")
    assert matches("DT", "20240101120000-0500", "20240101120000")


def test_datetime_range_bound_may_carry_a_negative_offset():
    m = compile_matcher("DT", "20240101-0500-20240102")
    assert m("20240101120000") and not m("20240103")


def test_datetime_single_value_with_negative_offset_is_not_a_range():
    m = compile_matcher("DT", "20240101120000-0500")
    assert m("20240101120000") and not m("20240101120001")


@pytest.mark.parametrize("key", ["2024-", "-2024"])
def test_datetime_open_ranges(key):
    m = compile_matcher("DT", key)
    assert m("20240615")


@pytest.mark.parametrize("key", ["2024ab", "20241301", "2025-2024", "-", "202401011-"])
def test_invalid_datetime_key_is_refused(key):
    with pytest.raises(MatchError):
        compile_matcher("DT", key)


# --- combined DA + TM ------------------------------------------------------------

def test_combined_range_crosses_midnight():
    m = compile_date_time_range("20240101-20240102", "2300-0100")
    assert m("20240101", "233000") and m("20240102", "003000") and m("20240102", "0100")
    assert not m("20240101", "220000") and not m("20240102", "020000")


def test_combined_range_keeps_the_days_in_between_whole():
    m = compile_date_time_range("20240101-20240103", "2300-0100")
    assert m("20240102", "120000")


def test_combined_range_open_end():
    m = compile_date_time_range("20240101-", "2300-")
    assert m("20250101", "000000") and not m("20240101", "225959")


def test_combined_range_record_without_time_matches_if_its_day_overlaps():
    m = compile_date_time_range("20240101-20240102", "2300-0100")
    assert m("20240101", "") and m("20240102", "") and not m("20240103", "")


def test_combined_range_record_without_date_does_not_match():
    m = compile_date_time_range("20240101-20240102", "2300-0100")
    assert not m("", "233000")


def test_combined_falls_back_to_independent_matching_unless_both_are_ranges():
    m = compile_date_time_range("20240101", "2300-")
    assert m("20240101", "233000") and not m("20240101", "120000")
    assert not m("20240102", "233000")


def test_combined_with_only_date_key_ignores_time():
    m = compile_date_time_range("20240101-", "")
    assert m("20240101", "") and m("20240101", "garbage")


def test_combined_both_universal_is_none():
    assert compile_date_time_range("", "*") is None


def test_combined_reversed_range_is_refused():
    with pytest.raises(MatchError):
        compile_date_time_range("20240102-20240101", "0100-2300")


# --- strings and wildcards ---------------------------------------------------------

def test_string_single_value_is_exact_and_case_sensitive():
    m = compile_matcher("CS", "CT")
    assert m("CT") and not m("ct") and not m("CTX")


def test_string_padding_spaces_are_ignored():
    assert matches("CS", "CT", "CT ") and matches("LO", "ABC ", " ABC")


def test_star_matches_empty_sequence():
    assert matches("LO", "AB*", "AB") and matches("LO", "*AB", "AB")


def test_star_matches_any_sequence_anywhere():
    assert matches("LO", "A*C*E", "ABCDE") and not matches("LO", "A*C*E", "ABCD")


def test_question_mark_matches_exactly_one_character():
    m = compile_matcher("LO", "A?C")
    assert m("ABC") and not m("AC") and not m("ABBC")


def test_wildcard_does_not_match_empty_stored_value():
    assert not matches("LO", "?*", "")


def test_regex_metacharacters_in_key_are_literal():
    assert not matches("LO", "A.B", "AXB") and matches("LO", "A.B", "A.B")
    assert matches("LO", "(x)*", "(x) y") and not matches("LO", "(x)*", "x y")
    assert matches("LO", "a+b[c]^$|", "a+b[c]^$|")


def test_wildcard_matches_across_newlines():
    assert matches("LT", "line1*", "line1\nline2")


@pytest.mark.timeout(5)
def test_many_stars_do_not_backtrack_catastrophically():
    assert not matches("LO", "a*" * 30 + "b", "a" * 64)
    assert matches("LO", "a*" * 30 + "b", "a" * 64 + "b")


def test_multi_valued_stored_value_matches_any_of_its_values():
    m = compile_matcher("CS", "MR")
    assert m("CT\\MR") and not m("CT\\PT")


def test_wildcard_applies_to_each_stored_value():
    assert matches("CS", "M?", "CT\\MR") and not matches("CS", "CT\\M?", "PT\\US")


def test_key_value_list_matches_any_alternative():
    m = compile_matcher("CS", "CT\\MR")
    assert m("MR") and m("CT\\PT") and not m("US")


def test_key_value_list_mixes_exact_and_wildcard_alternatives():
    m = compile_matcher("LO", "ABC\\X*")
    assert m("ABC") and m("XYZ") and not m("AB")


def test_text_vrs_treat_backslash_as_data():
    m = compile_matcher("LT", "a\\b")
    assert m("a\\b") and not m("a") and not m("b")


def test_string_value_list_with_empty_element_is_refused():
    with pytest.raises(MatchError):
        compile_matcher("CS", "CT\\")


# --- PN ------------------------------------------------------------------------------

def test_person_name_trailing_empty_components_are_ignored():
    assert matches("PN", "DOE^JOHN", "DOE^JOHN^^^")
    assert matches("PN", "DOE^JOHN^^", "DOE^JOHN")


def test_person_name_default_is_case_sensitive():
    assert not matches("PN", "doe^john", "DOE^JOHN")


def test_person_name_default_does_not_match_family_name_alone():
    assert not matches("PN", "DOE", "DOE^JOHN")


def test_person_name_wildcard_on_whole_string_reaches_past_the_family_name():
    assert matches("PN", "SMI*", "SMITH^JOHN") and matches("PN", "*^JOHN", "SMITH^JOHN")


def test_person_name_key_without_groups_matches_any_component_group():
    value = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert matches("PN", "山田^太郎", value) and matches("PN", "Yamada^Tarou", value)
    assert matches("PN", "やまだ*", value)


def test_person_name_key_with_groups_matches_group_by_group():
    value = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert matches("PN", "Yamada^Tarou=山田^太郎", value)
    assert matches("PN", "=山田*", value)
    assert not matches("PN", "山田^太郎=Yamada^Tarou", value)


def test_person_name_fuzzy_is_case_and_accent_insensitive():
    assert matches("PN", "muller", "Müller^Jürgen", fuzzy_person_names=True)
    assert matches("PN", "MULLER^jurgen", "Müller^Jürgen", fuzzy_person_names=True)
    assert matches("PN", "Mül*", "MULLER^J", fuzzy_person_names=True)


def test_person_name_fuzzy_key_without_caret_matches_family_name_only():
    m = compile_matcher("PN", "DOE*", fuzzy_person_names=True)
    assert m("doering^jane") and not m("SMITH^DOE")
    assert not matches("PN", "john", "DOE^JOHN", fuzzy_person_names=True)


def test_person_name_non_fuzzy_is_accent_sensitive():
    assert not matches("PN", "Muller^Jurgen", "Müller^Jürgen")


def test_person_name_value_list_and_multi_valued_names():
    m = compile_matcher("PN", "DOE^JOHN\\ROE^JANE")
    assert m("ROE^JANE") and m("X^Y\\DOE^JOHN^^") and not m("DOE^JANE")


def test_person_name_with_too_many_groups_is_refused():
    with pytest.raises(MatchError):
        compile_matcher("PN", "a=b=c=d")


# --- numbers ----------------------------------------------------------------------------

@pytest.mark.parametrize("stored", ["1", "01", "1.0", " +1 ", "1e0", "1.000"])
def test_decimal_string_matches_numerically(stored):
    assert matches("DS", "1", stored)


def test_integer_string_matches_numerically():
    m = compile_matcher("IS", "007")
    assert m("7") and not m("70") and m("3\\7")


def test_numeric_unparsable_stored_value_does_not_match():
    assert not matches("US", "512", "abc")


@pytest.mark.parametrize("key", ["1*", "abc", "NaN", "1..2"])
def test_numeric_key_that_is_not_a_number_is_refused(key):
    with pytest.raises(MatchError):
        compile_matcher("IS", key)


# --- properties ------------------------------------------------------------------------

# Printable text as an SCU could send it: no wildcard or value delimiter, and no
# padding spaces at either end (those are not part of the value).
plain_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="*?\\"),
    min_size=1, max_size=30).map(lambda s: s.strip(" ")).filter(bool)


@given(plain_text)
def test_property_plain_key_matches_itself(s):
    assert compile_matcher("LO", s)(s)


@given(plain_text, st.text(max_size=30))
def test_property_trailing_star_matches_any_suffix(s, suffix):
    suffix = suffix.replace("\\", "")
    assert compile_matcher("LO", s + "*")(s + suffix)


# Keys and values over a tiny alphabet, so wildcard keys often nearly match.
glob_key = st.text(alphabet="ab*?.", max_size=8)
glob_value = st.text(alphabet="ab.", max_size=10)


@given(glob_key, glob_value)
def test_property_wildcards_agree_with_fnmatch(key, value):
    matcher = compile_matcher("LO", key)
    expected = fnmatch.fnmatchcase(value, key)
    assert (matcher is None and key.strip("*") == "") or matcher(value) == expected


@given(plain_text, plain_text)
def test_property_plain_key_matches_only_equal_values(key, value):
    assert compile_matcher("LO", key)(value) == (key == value)


def da(d) -> str:
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


@given(st.dates(), st.dates(), st.dates())
def test_property_date_range_agrees_with_date_comparison(a, b, probe):
    low, high = min(a, b), max(a, b)
    m = compile_matcher("DA", f"{da(low)}-{da(high)}")
    assert m(da(probe)) == (low <= probe <= high)


@given(st.times(), st.times(), st.times())
def test_property_time_range_agrees_with_time_comparison(a, b, probe):
    low, high = min(a, b), max(a, b)
    m = compile_matcher("TM", f"{low:%H%M%S.%f}-{high:%H%M%S.%f}")
    assert m(f"{probe:%H%M%S.%f}") == (low <= probe <= high)


@given(st.decimals(allow_nan=False, allow_infinity=False, places=3))
def test_property_decimal_matches_its_own_respellings(d):
    m = compile_matcher("DS", str(d))
    assert m(f"{d:f}") and m(f"{d:e}")


def test_ambiguous_vr_from_pydicom_uses_its_first_reading():
    assert matches("US or SS", "1", "01")
