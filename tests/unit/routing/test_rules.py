"""Routing rules: conditions, route(), validation at load, wanted_keywords, apply_changes."""
from __future__ import annotations

import dataclasses
import io
import json
import re
import tomllib
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from engine.config import Config, ConfigError, RoutingConfig, config_from_mapping, load_config
from engine.routing.changes import AttributeChange, apply_changes, changes_from_json
from engine.routing.conditions import parse_condition
from engine.routing.destinations import DicomDestination, FolderDestination
from engine.routing.rules import (
    Forward, RoutingContext, route, wanted_keywords, wanted_tags)
from engine.routing.schema import RoutingConfigError

REPO = Path(__file__).resolve().parents[3]

DESTINATIONS = """
[routing.destinations.VIEWER]
type = "dicom"
ae_title = "VIEWER"
host = "10.0.0.5"
port = 104
[routing.destinations.BACKUP]
type = "dicom"
ae_title = "BACKUP"
host = "backup"
port = 11112
transfer_syntax = "jpeg2000-lossless"
[routing.destinations.EXPORT]
type = "folder"
path = "/srv/export"
"""


def routing(rules: str, destinations: str = DESTINATIONS) -> RoutingConfig:
    """The [routing] section built from TOML text, as the config loader does it."""
    return config_from_mapping(tomllib.loads(destinations + "\n" + rules)).routing


def one_rule(when: str) -> RoutingConfig:
    return routing(f'[[routing.rules]]\nname = "r"\nforward = ["VIEWER"]\nwhen = {when}\n')


def matches(when: str, **context) -> bool:
    attributes = context.pop("attributes", {})
    rules = one_rule(when).rules
    return bool(route(rules, RoutingContext(attributes=attributes, **context)))


def attr(when: str, **attributes: str) -> bool:
    return matches(when, attributes=attributes)


def load_error(rules: str, destinations: str = DESTINATIONS) -> str:
    with pytest.raises(ConfigError) as caught:
        routing(rules, destinations)
    return str(caught.value)


# --- the documented shape ------------------------------------------------------------------
def test_default_routing_is_off_with_no_rules_and_no_destinations():
    assert Config().routing.rules == () and Config().routing.destinations == {}
    assert not Config().routing.enabled


def test_commented_example_in_pacs_example_toml_loads():
    text = (REPO / "pacs.example.toml").read_text()
    block = text[text.index("#   [[routing.rules]]"):text.index("\nrules = []")]
    example = "\n".join(line[4:] if line.startswith("#   ") else ""
                        for line in block.splitlines())
    config = routing(example, destinations="")
    assert [r.name for r in config.rules] == ["ct-mr-to-viewer", "everything-to-backup"]
    assert set(config.destinations) == {"VIEWER", "BACKUP", "EXPORT"}


def test_routing_section_loads_from_a_config_file(tmp_path):
    path = tmp_path / "pacs.toml"
    path.write_text(DESTINATIONS + """
[routing]
max_attempts = 3
retention = 3600
[[routing.rules]]
name = "all-ct"
when = { Modality = "CT" }
forward = ["VIEWER"]
""")
    config = load_config(path).routing
    assert config.enabled and config.max_attempts == 3 and config.retention == 3600.0
    assert config.rules[0].forwards == (Forward("VIEWER", "all-ct"),)


def test_destinations_are_parsed_with_their_defaults():
    destinations = routing("").destinations
    assert destinations["VIEWER"] == DicomDestination("VIEWER", "VIEWER", "10.0.0.5", 104)
    assert destinations["EXPORT"] == FolderDestination("EXPORT", Path("/srv/export"))
    assert destinations["BACKUP"].transfer_syntax == "jpeg2000-lossless"


def test_loaded_routing_config_is_immutable_and_comparable():
    text = ('[[routing.rules]]\nname = "r"\nforward = ["VIEWER"]\n'
            'when = { Modality = { regex = "C." } }\n')
    assert routing(text) == routing(text)
    with pytest.raises(AttributeError):
        routing(text).rules[0].name = "x"  # type: ignore[misc]


# --- conditions: context subjects ------------------------------------------------------------
def test_equals_on_calling_ae_ignores_padding():
    assert matches('{ calling_ae = { equals = "CT1" } }', calling_ae="CT1  ")
    assert not matches('{ calling_ae = { equals = "CT1" } }', calling_ae="CT2")


def test_a_plain_string_is_short_for_equals():
    assert matches('{ called_ae = "ARCHIVE" }', called_ae="ARCHIVE")
    assert not matches('{ called_ae = "ARCHIVE" }', called_ae="archive")


def test_sop_class_uid_matches_by_glob():
    when = '{ sop_class_uid = { glob = "1.2.840.10008.5.1.4.1.1.2*" } }'
    assert matches(when, sop_class_uid="1.2.840.10008.5.1.4.1.1.2.1")
    assert not matches(when, sop_class_uid="1.2.840.10008.5.1.4.1.1.4")


def test_source_ip_matches_networks_ipv4_ipv6_and_mapped():
    when = '{ source_ip = { network = ["10.0.0.0/8", "fd00::/8"] } }'
    assert matches(when, source_ip="10.1.2.3")
    assert matches(when, source_ip="fd00::1")
    assert matches(when, source_ip="::ffff:10.0.0.1")
    assert not matches(when, source_ip="192.168.1.1")
    assert not matches(when, source_ip="not an address")


# --- conditions: attributes -------------------------------------------------------------------
def test_one_of_matches_any_listed_value():
    when = '{ Modality = { one_of = ["CT", "MR"] } }'
    assert attr(when, Modality="MR") and not attr(when, Modality="US")


def test_multi_valued_attribute_matches_whole_text_or_any_value():
    assert attr('{ ImageType = "LOCALIZER" }', ImageType="ORIGINAL\\PRIMARY\\LOCALIZER")
    assert attr('{ ImageType = "ORIGINAL\\\\PRIMARY" }', ImageType="ORIGINAL\\PRIMARY")
    assert not attr('{ ImageType = "AXIAL" }', ImageType="ORIGINAL\\PRIMARY")


def test_glob_star_and_question_mark_are_the_only_wildcards():
    when = '{ StudyDescription = { glob = "CT?HEAD*" } }'
    assert attr(when, StudyDescription="CT HEAD W/O")
    assert not attr(when, StudyDescription="ct head")
    assert attr('{ PatientID = { glob = "A.[1]*" } }', PatientID="A.[1]x")
    assert not attr('{ PatientID = { glob = "A.[1]*" } }', PatientID="AB1x")


def test_glob_matches_across_newlines():
    assert attr('{ StudyDescription = { glob = "A*B" } }', StudyDescription="A\nB")


def test_regex_must_match_the_whole_value():
    assert attr('{ SeriesDescription = { regex = "(?i).*scout.*" } }', SeriesDescription="Scout 1")
    assert not attr('{ SeriesDescription = { regex = "scout" } }', SeriesDescription="scout 1")


@pytest.mark.parametrize("value, expected", [
    ("20240101", True), ("20241231", True), ("20240615", True),
    ("20231231", False), ("20250101", False),
    ("2024.06.15", True),           # ACR-NEMA style date
    ("", False), ("2024", False), ("yesterday", False), ("٢٠٢٤٠٦١٥", False),
])
def test_date_range_compares_dicom_dates(value, expected):
    assert attr('{ StudyDate = { date_range = "20240101-20241231" } }', StudyDate=value) \
        is expected


def test_date_range_with_an_open_side_and_a_single_date():
    assert attr('{ StudyDate = { date_range = "20240101-" } }', StudyDate="20990101")
    assert not attr('{ StudyDate = { date_range = "-20240101" } }', StudyDate="20240102")
    assert attr('{ StudyDate = { date_range = "20240102" } }', StudyDate="20240102")
    assert not attr('{ StudyDate = { date_range = "20240102" } }', StudyDate="20240103")


def test_date_range_on_a_datetime_compares_its_date():
    when = '{ AcquisitionDateTime = { date_range = "20240101-20240131" } }'
    assert attr(when, AcquisitionDateTime="20240115093000.123456+0100")
    assert not attr(when, AcquisitionDateTime="20240201000000")


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("10", True), ("5.5", True), (" 7 ", True), ("1e1", True), ("+3", True),
    ("0.99", False), ("10.01", False), ("-1", False), ("abc", False), ("NaN", False),
    ("Infinity", False), ("1e99999", False), ("", False),
])
def test_number_range_is_inclusive_and_decimal(value, expected):
    assert attr('{ SliceThickness = { number_range = { min = 1, max = 10 } } }',
                SliceThickness=value) is expected


def test_number_range_with_one_bound_and_multiple_values():
    assert attr('{ InstanceNumber = { number_range = { min = 100 } } }', InstanceNumber="100")
    assert attr('{ WindowCenter = { number_range = { max = 0 } } }', WindowCenter="40\\-600")
    assert not attr('{ WindowCenter = { number_range = { max = 0 } } }', WindowCenter="40\\60")


def test_present_means_a_non_empty_value():
    assert attr('{ AccessionNumber = { present = true } }', AccessionNumber="A1")
    assert not attr('{ AccessionNumber = { present = true } }', AccessionNumber="  ")
    assert not attr('{ AccessionNumber = { present = true } }')
    assert attr('{ AccessionNumber = { present = false } }')
    assert attr('{ AccessionNumber = { present = false } }', AccessionNumber="")


def test_absent_attribute_matches_no_operator_but_its_negation_does():
    assert not attr('{ Modality = "CT" }')
    assert attr('{ not = { Modality = "CT" } }')


def test_all_any_not_combine():
    when = ('{ all = [ { Modality = { one_of = ["CT", "MR"] } }, '
            '{ any = [ { calling_ae = "CT1" }, { BodyPartExamined = "HEAD" } ] }, '
            '{ not = { SeriesDescription = { glob = "*SCOUT*" } } } ] }')
    assert matches(when, calling_ae="CT1", attributes={"Modality": "CT"})
    assert matches(when, attributes={"Modality": "MR", "BodyPartExamined": "HEAD"})
    assert not matches(when, attributes={"Modality": "MR"})
    assert not matches(when, calling_ae="CT1",
                       attributes={"Modality": "CT", "SeriesDescription": "A SCOUT"})


def test_rule_without_when_takes_every_instance():
    config = routing('[[routing.rules]]\nname = "all"\nforward = ["BACKUP"]\n')
    assert [f.destination for f in route(config.rules, RoutingContext())] == ["BACKUP"]


# --- route ----------------------------------------------------------------------------------
RULES = """
[[routing.rules]]
name = "ct"
when = { Modality = "CT" }
forward = ["VIEWER", "EXPORT"]
transfer_syntax = { VIEWER = "uncompressed" }
changes = [ { prefix = "PatientID", value = "EXT-" } ]
deidentify = true
trigger = "study"
stable_seconds = 30

[[routing.rules]]
name = "everything"
forward = ["BACKUP", "VIEWER"]
"""


def test_route_gives_one_forward_per_destination_first_rule_wins():
    forwards = route(routing(RULES).rules, RoutingContext(attributes={"Modality": "CT"}))
    assert [(f.destination, f.rule) for f in forwards] == [
        ("VIEWER", "ct"), ("EXPORT", "ct"), ("BACKUP", "everything")]


def test_route_carries_how_to_send_resolved_per_destination():
    viewer, export, backup = route(routing(RULES).rules,
                                   RoutingContext(attributes={"Modality": "CT"}))
    assert viewer == Forward("VIEWER", "ct", "uncompressed",
                             (AttributeChange("prefix", "PatientID", value="EXT-"),),
                             deidentify=True, trigger="study", stable_seconds=30.0)
    assert export.transfer_syntax == "as-stored"            # the destination's default
    assert backup.transfer_syntax == "jpeg2000-lossless"     # the destination's own
    assert (backup.trigger, backup.stable_seconds, backup.changes) == ("instance", 0.0, ())


def test_route_without_a_matching_rule_is_empty():
    rules = routing(RULES.split("[[routing.rules]]\nname = \"everything\"")[0]).rules
    assert route(rules, RoutingContext(attributes={"Modality": "MR"})) == []
    assert route((), RoutingContext()) == []


def test_rule_transfer_syntax_for_all_destinations_overrides_theirs():
    config = routing('[[routing.rules]]\nname = "r"\nforward = ["VIEWER", "BACKUP"]\n'
                     'transfer_syntax = "uncompressed"\n')
    assert {f.transfer_syntax for f in config.rules[0].forwards} == {"uncompressed"}


def test_series_trigger_defaults_to_sixty_stable_seconds():
    config = routing('[[routing.rules]]\nname = "r"\nforward = ["VIEWER"]\ntrigger = "series"\n')
    assert (config.rules[0].forwards[0].trigger,
            config.rules[0].forwards[0].stable_seconds) == ("series", 60.0)


# --- wanted_keywords ----------------------------------------------------------------------------
def test_wanted_keywords_collects_attributes_of_every_rule_not_context_fields():
    rules = routing(RULES + """
[[routing.rules]]
name = "nested"
when = { any = [ { not = { StudyDate = { date_range = "20240101-" } } }, { calling_ae = "X" },
                 { all = [ { PatientID = { present = true } } ] } ] }
forward = ["EXPORT"]
""").rules
    assert wanted_keywords(rules) == {"Modality", "StudyDate", "PatientID"}


def test_wanted_keywords_of_no_rules_is_empty():
    assert wanted_keywords(()) == frozenset() and wanted_tags(()) == ()


def test_wanted_tags_are_the_keywords_tags_sorted():
    assert wanted_tags(routing(RULES).rules + one_rule('{ StudyDate = "20240101" }').rules) \
        == (0x00080020, 0x00080060)


def test_forward_as_a_dict_is_json_and_its_changes_come_back():
    (viewer, *_) = route(routing(RULES).rules, RoutingContext(attributes={"Modality": "CT"}))
    doc = json.loads(json.dumps(dataclasses.asdict(viewer)))
    assert doc["destination"] == "VIEWER" and doc["trigger"] == "study"
    assert changes_from_json(doc["changes"]) == viewer.changes


# --- validation at load ------------------------------------------------------------------------
def rule(**fields: str) -> str:
    body = {"name": '"bad"', "forward": '["VIEWER"]', **fields}
    return "[[routing.rules]]\n" + "".join(f"{k} = {v}\n" for k, v in body.items())


@pytest.mark.parametrize("fields, message", [
    ({"when": '{ Modalty = "CT" }'}, r"rule 'bad': when.Modalty: unknown attribute keyword"),
    ({"when": '{ Modality = { regex = "C(T" } }'}, "when.Modality.regex: invalid regular"),
    ({"when": '{ Modality = { regex = "%s" } }' % ("a" * 513)}, "longer than 512"),
    ({"forward": '["VIEWR"]'}, "rule 'bad': forward: unknown destination 'VIEWR'"),
    ({"forward": '["VIEWER", "VIEWER"]'}, "named twice"),
    ({"forward": "[]"}, "forward"),
    ({"trigger": '"hourly"'}, "rule 'bad': trigger: must be one of instance, series, study"),
    ({"stable_seconds": "10"}, "stable_seconds: applies only to trigger"),
    ({"trigger": '"study"', "stable_seconds": "0"}, "stable_seconds: must be above 0"),
    ({"trigger": '"study"', "stable_seconds": '"soon"'}, "stable_seconds: expected a number"),
    ({"when": '{ Modality = { equal = "CT" } }'}, "unknown operator 'equal'"),
    ({"when": '{ Modality = "CT", calling_ae = "X" }'}, "exactly one key"),
    ({"when": '{ Modality = { equals = "CT", glob = "C*" } }'}, "exactly one operator"),
    ({"when": "{ all = [] }"}, "when.all: expected a non-empty list"),
    ({"when": '{ all = ["CT"] }'}, r"when.all\[0\]: expected a table"),
    ({"when": '{ Modality = { equals = "" } }'}, "use present = false"),
    ({"when": '{ Modality = { one_of = "CT" } }'}, "use equals"),
    ({"when": '{ Modality = { date_range = "20240101-" } }'}, "needs an attribute of VR DA"),
    ({"when": '{ StudyDate = { date_range = "2024-01-01" } }'}, "YYYYMMDD"),
    ({"when": '{ StudyDate = { date_range = "20240230" } }'}, "not a calendar date"),
    ({"when": '{ StudyDate = { date_range = "20241231-20240101" } }'}, "empty range"),
    ({"when": '{ StudyDate = { date_range = "-" } }'}, "at least one bound"),
    ({"when": '{ PatientID = { number_range = { min = 1 } } }'}, "needs a numeric attribute"),
    ({"when": '{ Rows = { number_range = { min = 5, max = 1 } } }'}, "empty range"),
    ({"when": '{ Rows = { number_range = { least = 5 } } }'}, "unknown option"),
    ({"when": '{ Rows = { number_range = { max = nan } } }'}, "finite"),
    ({"when": '{ calling_ae = { network = "10.0.0.0/8" } }'}, "source_ip only"),
    ({"when": '{ source_ip = { network = "10.0.0.1/8" } }'}, "CIDR"),
    ({"when": '{ ReferencedSeriesSequence = { present = true } }'}, "VR SQ"),
    ({"when": '{ PixelData = { present = true } }'}, "binary"),
    ({"when": '{ TransferSyntaxUID = "1.2" }'}, "file meta"),
    ({"when": '{ MessageID = "1" }'}, "command attribute"),
    ({"when": '{ Modality = { present = "yes" } }'}, "expected true/false"),
    ({"colour": '"red"'}, "unknown option"),
    ({"transfer_syntax": '"jpeg"'}, "transfer_syntax: must be one of as-stored"),
    ({"transfer_syntax": '{ BACKUP = "uncompressed" }'}, "not one of this rule's forward"),
    ({"deidentify": '"basic"'}, "deidentify: expected true/false"),
    ({"changes": '[ { set = "SOPInstanceUID", value = "1.2" } ]'}, "cannot be changed"),
    ({"changes": '[ { set = "StudyDate", value = "yesterday" } ]'}, "not a valid DA value"),
    ({"changes": '[ { set = "PatientID", value = "A\\\\B" } ]'}, "has one value"),
    ({"changes": '[ { set = "Rows", value = "5" } ]'}, "has VR US"),
    ({"changes": '[ { prefix = "StudyInstanceUID", value = "9." } ]'}, "has VR UI"),
    ({"changes": '[ { prefix = "Modality", value = "x-" } ]'}, "not a valid CS value"),
    ({"changes": '[ { copy = "AccessionNumber" } ]'}, "copy needs to"),
    ({"changes": '[ { copy = "PixelData", to = "StudyID" } ]'}, "no text value"),
    ({"changes": '[ { replace = "PatientID" } ]'}, r"changes\[0\]: expected exactly one of"),
    ({"changes": '[ { remove = "PatientID", value = "x" } ]'}, "unknown option"),
    ({"changes": '[ { remove = "Nonsense" } ]'}, "unknown attribute keyword"),
    ({"changes": '{ remove = "PatientID" }'}, "expected a list"),
])
def test_invalid_rule_fails_at_load_naming_rule_and_field(fields, message):
    error = load_error(rule(**fields))
    assert error.startswith("[routing] rule 'bad'"), error
    assert re.search(message, error), error


def test_rule_without_name_is_named_by_position():
    error = load_error('[[routing.rules]]\nname = "ok"\nforward = ["VIEWER"]\n'
                       '[[routing.rules]]\nforward = ["VIEWER"]\n')
    assert "rule #2: a rule needs a name" in error


def test_rule_without_forward_fails():
    assert "needs forward" in load_error('[[routing.rules]]\nname = "r"\n')


def test_two_rules_with_one_name_fail():
    text = '[[routing.rules]]\nname = "r"\nforward = ["VIEWER"]\n'
    assert "same name" in load_error(text + text)


def test_unknown_destination_is_reported_with_the_known_ones():
    error = load_error('[[routing.rules]]\nname = "r"\nforward = ["PACS2"]\n', destinations="")
    assert "unknown destination 'PACS2'" in error and "none defined" in error


@pytest.mark.parametrize("body, message", [
    ('type = "ftp"', "type: must be \"dicom\" or \"folder\""),
    ('type = "dicom"\nae_title = "A"\nhost = "h"', "needs port"),
    ('type = "dicom"\nae_title = "A"\nhost = "h"\nport = 70000', "port: out of range"),
    ('type = "dicom"\nae_title = "SEVENTEEN_CHARS__"\nhost = "h"\nport = 1', "ae_title"),
    ('type = "dicom"\nae_title = "A"\nhost = "h"\nport = 1\nmax_associations = 0',
     "max_associations"),
    ('type = "dicom"\nae_title = "A"\nhost = "h"\nport = 1\ntransfer_syntax = "raw"',
     "transfer_syntax"),
    ('type = "folder"', "needs path"),
    ('type = "folder"\npath = "/x"\nport = 1', "unknown option"),
])
def test_invalid_destination_fails_at_load_naming_it(body, message):
    error = load_error("", destinations=f"[routing.destinations.PEER]\n{body}\n")
    assert error.startswith("[routing] destination 'PEER'") and message in error, error


def test_destination_name_must_be_a_plain_identifier():
    assert "names are" in load_error("", destinations='[routing.destinations."a b"]\n'
                                                      'type = "folder"\npath = "/x"\n')


@pytest.mark.parametrize("option, value", [
    ("max_attempts", "0"), ("max_age", "0"), ("backoff_base", "0"), ("retention", "-1"),
    ("backoff_max", "1"), ("max_attempts", '"many"'), ("rules", '"none"'),
    ("destinations", "[]"), ("delay", "1"),
])
def test_invalid_queue_setting_fails_at_load(option, value):
    assert option in load_error(f"[routing]\n{option} = {value}\n", destinations="")


# --- never raises at evaluation -------------------------------------------------------------------
EVERY_OPERATOR = DESTINATIONS + """
[[routing.rules]]
name = "every-operator"
forward = ["VIEWER"]
when = { any = [
  { calling_ae = { glob = "CT*" } }, { called_ae = { regex = "(?i)a.*" } },
  { source_ip = { network = ["10.0.0.0/8", "::1/128"] } }, { sop_class_uid = "1.2" },
  { Modality = { one_of = ["CT", "MR"] } }, { StudyDate = { date_range = "20200101-" } },
  { AcquisitionDateTime = { date_range = "-20200101" } },
  { SliceThickness = { number_range = { min = -1.5, max = 1e3 } } },
  { Rows = { number_range = { min = 0 } } }, { PatientID = { present = true } },
  { not = { all = [ { ImageType = "LOCALIZER" }, { PatientName = { glob = "*^?" } } ] } },
] }
"""
_KEYWORDS = ["Modality", "StudyDate", "AcquisitionDateTime", "SliceThickness", "Rows",
             "PatientID", "ImageType", "PatientName"]
_TEXT = st.one_of(st.text(), st.text(alphabet="0123456789.+-eE\\ :/af", max_size=30))


@given(attributes=st.dictionaries(st.sampled_from(_KEYWORDS), _TEXT),
       context=st.tuples(_TEXT, _TEXT, _TEXT, _TEXT))
def test_evaluation_never_raises_on_arbitrary_values(attributes, context):
    rules = _EVERY_OPERATOR_RULES
    calling, called, ip, sop = context
    forwards = route(rules, RoutingContext(calling, called, ip, sop, attributes))
    assert forwards in ([], list(rules[0].forwards))


_EVERY_OPERATOR_RULES = config_from_mapping(tomllib.loads(EVERY_OPERATOR)).routing.rules

_TOML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["all", "any", "not", "Modality", "StudyDate", "Rows", "calling_ae",
                       "source_ip", "equals", "one_of", "glob", "regex", "date_range",
                       "number_range", "network", "present", "20240101-", "10.0.0.0/8"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["all", "any", "not", "Modality", "StudyDate", "Rows", "calling_ae",
                         "source_ip", "equals", "one_of", "glob", "regex", "date_range",
                         "number_range", "network", "present", "min", "max", "x"]),
        children, max_size=2),
    max_leaves=8)


@given(_TOML_VALUES)
def test_parsing_a_condition_only_ever_raises_routing_config_error(raw):
    try:
        parse_condition(raw, "when")
    except RoutingConfigError:
        pass


# --- apply_changes ---------------------------------------------------------------------------
def dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientID = "P1"
    ds.PatientName = "Doe^John"
    ds.AccessionNumber = "ACC7"
    ds.OtherPatientIDs = ["O1", "O2"]
    ds.Rows = 2
    ds.BitsAllocated = 8
    ds.PixelData = b"\x01\x02\x03\x04"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.set_original_encoding(False, True, "ISO_IR 100")
    return ds


def changes(text: str) -> tuple[AttributeChange, ...]:
    config = routing(f'[[routing.rules]]\nname = "r"\nforward = ["VIEWER"]\nchanges = {text}\n')
    return config.rules[0].forwards[0].changes


def test_set_creates_and_replaces_text_attributes():
    out = apply_changes(dataset(), changes(
        '[ { set = "InstitutionName", value = "General" }, { set = "PatientID", value = "X" },'
        '  { set = "ImageType", value = "DERIVED\\\\SECONDARY" } ]'))
    assert (out.InstitutionName, out.PatientID) == ("General", "X")
    assert list(out.ImageType) == ["DERIVED", "SECONDARY"]


def test_set_to_empty_blanks_the_value():
    assert apply_changes(dataset(), changes('[ { set = "PatientID", value = "" } ]')).PatientID \
        == ""


def test_remove_deletes_and_ignores_absent_attributes():
    out = apply_changes(dataset(), changes('[ { remove = "PatientName" }, '
                                           '{ remove = "PatientComments" } ]'))
    assert "PatientName" not in out and "PatientID" in out


def test_copy_same_vr_and_across_vrs():
    out = apply_changes(dataset(), changes('[ { copy = "AccessionNumber", to = "StudyID" }, '
                                           '{ copy = "Rows", to = "PatientComments" }, '
                                           '{ copy = "OtherPatientIDs", to = "ImageComments" } ]'))
    assert out.StudyID == "ACC7" and out.PatientComments == "2"
    assert out.ImageComments == "O1\\O2"


def test_copy_from_an_absent_attribute_changes_nothing():
    out = apply_changes(dataset(), changes('[ { copy = "StudyDescription", to = "PatientID" } ]'))
    assert out.PatientID == "P1"


def test_prefix_each_value_and_person_names():
    out = apply_changes(dataset(), changes(
        '[ { prefix = "PatientID", value = "EXT-" }, { prefix = "OtherPatientIDs", value = "E" },'
        '  { prefix = "PatientName", value = "Z" },'
        '  { prefix = "StudyDescription", value = "A" } ]'))
    assert out.PatientID == "EXT-P1" and list(out.OtherPatientIDs) == ["EO1", "EO2"]
    assert str(out.PatientName) == "ZDoe^John" and "StudyDescription" not in out


def test_prefix_leaves_an_empty_value_empty():
    ds = dataset()
    ds.PatientID = ""
    assert apply_changes(ds, changes('[ { prefix = "PatientID", value = "E" } ]')).PatientID == ""


def test_changes_apply_in_order():
    out = apply_changes(dataset(), changes('[ { copy = "PatientID", to = "IssuerOfPatientID" },'
                                           '  { prefix = "PatientID", value = "E" } ]'))
    assert (out.IssuerOfPatientID, out.PatientID) == ("P1", "EP1")


def test_original_dataset_is_left_unchanged():
    original = dataset()
    before = [(e.tag, e.VR, e.value) for e in original]
    apply_changes(original, changes('[ { set = "PatientID", value = "X" }, { remove = "Rows" },'
                                    '  { prefix = "PatientName", value = "Z" },'
                                    '  { prefix = "OtherPatientIDs", value = "E" } ]'))
    assert [(e.tag, e.VR, e.value) for e in original] == before


def test_copy_keeps_meta_and_encoding_and_shares_pixel_data():
    original = dataset()
    out = apply_changes(original, ())
    assert out is not original and out.file_meta == original.file_meta
    assert out.file_meta is not original.file_meta
    assert out.original_encoding == (False, True)
    assert out.original_character_set == "ISO_IR 100"
    assert out.PixelData is original.PixelData


def test_changed_copy_of_a_read_file_writes_as_part10():
    buffer = io.BytesIO()
    dataset().save_as(buffer, enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    out = apply_changes(read, changes('[ { prefix = "PatientID", value = "E" } ]'))
    written = io.BytesIO()
    out.save_as(written, enforce_file_format=True)
    again = pydicom.dcmread(io.BytesIO(written.getvalue()))
    assert again.PatientID == "EP1" and again.PixelData == b"\x01\x02\x03\x04"
    assert pydicom.dcmread(io.BytesIO(buffer.getvalue())).PatientID == "P1"
    assert read.PatientID == "P1"


@pytest.mark.parametrize("text", [
    '{ set = "ImageType", value = "DERIVED\\\\PRIMARY" }', '{ remove = "PatientComments" }',
    '{ copy = "AccessionNumber", to = "StudyID" }', '{ prefix = "PatientID", value = "E-" }',
])
def test_change_survives_its_json_form_and_the_queues_sorted_pairs(text):
    (change,) = changes(f"[ {text} ]")
    assert AttributeChange.from_json(change.to_json()) == change
    assert AttributeChange.from_json(tuple(sorted(change.to_json().items()))) == change


def test_change_from_bad_json_raises_routing_config_error():
    with pytest.raises(RoutingConfigError):
        AttributeChange.from_json({"action": "set", "keyword": "SOPInstanceUID", "value": "1"})
