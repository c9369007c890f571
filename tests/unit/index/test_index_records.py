"""Index record layout: round trips, zero-copy decoding, and refusal of bad buffers."""
from __future__ import annotations

import struct
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.index.records import (
    LAYOUT_VERSION, BlobRecord, ConflictRecord, InstanceRecord, PatientRecord, Record,
    RecordError, RecordView, SeriesRecord, StudyRecord, encode_fields)

RECORD_CLASSES = [PatientRecord, StudyRecord, SeriesRecord, InstanceRecord, ConflictRecord,
                  BlobRecord]
IDS = [cls.__name__ for cls in RECORD_CLASSES]

# Text as it reaches the index: any Unicode (no lone surrogates, which UTF-8 cannot
# carry), and undecodable bytes carried as surrogate escapes (U+DC80..U+DCFF).  Built
# from bytes so every value is one that surrogateescape encoding can reproduce.
_unicode = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
record_text = st.one_of(
    _unicode,
    st.tuples(_unicode, st.binary(max_size=20), _unicode).map(
        lambda parts: (parts[0].encode() + parts[1] + parts[2].encode()).decode(
            "utf-8", "surrogateescape")),
)


def record_strategy(cls: type[Record]) -> st.SearchStrategy:
    return st.builds(cls, **{
        f.name: st.integers() if f.name in cls._INT_FIELDS else record_text
        for f in fields(cls)})


def sample(cls: type[Record]) -> Record:
    """A record of `cls` with every field set to a non-default value."""
    return cls(**{f.name: (1000 + i if f.name in cls._INT_FIELDS else f"v{i}-é")
                  for i, f in enumerate(fields(cls))})


# --- round trips -----------------------------------------------------------------
@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=IDS)
@given(data=st.data())
def test_every_record_kind_round_trips_through_encode_and_decode(cls, data):
    record = data.draw(record_strategy(cls))
    assert cls.decode(record.encode()) == record


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=IDS)
@given(data=st.data())
def test_every_record_kind_decodes_from_a_memoryview(cls, data):
    record = data.draw(record_strategy(cls))
    assert cls.decode(memoryview(record.encode())) == record


def test_decodes_from_a_memoryview_slice_of_a_larger_buffer():
    record = sample(InstanceRecord)
    encoded = record.encode()
    buffer = bytearray(b"\xff" * 7 + encoded + b"\xee" * 5)
    view = memoryview(buffer)[7:7 + len(encoded)]
    assert InstanceRecord.decode(view) == record


def test_surrogate_escaped_bytes_come_back_as_the_same_bytes():
    raw = b"ID\xff\xfe-\xc3(\x80"
    record = PatientRecord(patient_id=raw.decode("utf-8", "surrogateescape"))
    decoded = PatientRecord.decode(record.encode())
    assert decoded.patient_id.encode("utf-8", "surrogateescape") == raw


def test_non_ascii_text_is_stored_as_utf8():
    record = PatientRecord(patient_name="Müller^Jürgen=山田^太郎")
    assert "Müller^Jürgen=山田^太郎".encode("utf-8") in record.encode()


def test_record_view_decodes_a_single_field_without_the_others():
    view = RecordView(sample(StudyRecord).encode())
    assert view.kind == StudyRecord.KIND
    assert view.field(2) == "v2-é"


def test_record_view_reads_a_field_past_the_stored_count_as_empty():
    view = RecordView(encode_fields(1, ["a", "b"]))
    assert view.field(5) == ""


# --- layout checks --------------------------------------------------------------
@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=IDS)
def test_decoding_as_a_different_kind_raises_record_error(cls):
    other = next(c for c in RECORD_CLASSES if c is not cls)
    with pytest.raises(RecordError, match="kind"):
        cls.decode(other().encode())


@pytest.mark.parametrize("version", [0, LAYOUT_VERSION + 1, 255])
def test_unknown_layout_version_raises_record_error(version):
    encoded = bytearray(sample(SeriesRecord).encode())
    encoded[0] = version
    with pytest.raises(RecordError, match="layout"):
        SeriesRecord.decode(bytes(encoded))


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=IDS)
def test_every_truncation_of_a_record_raises_record_error(cls):
    encoded = sample(cls).encode()
    for length in range(len(encoded)):
        with pytest.raises(RecordError):
            cls.decode(encoded[:length])


def test_truncation_inside_the_payload_raises_record_error_not_shortened_text():
    encoded = InstanceRecord(sop_class_uid="1.2.3", size=123456).encode()
    with pytest.raises(RecordError):
        InstanceRecord.decode(encoded[:-1])


def test_empty_buffer_raises_record_error():
    with pytest.raises(RecordError):
        BlobRecord.decode(b"")


def test_offset_table_claiming_more_fields_than_present_raises_record_error():
    # Header says 200 fields, but only one offset follows.
    buf = struct.pack("<BBH", LAYOUT_VERSION, BlobRecord.KIND, 200) + struct.pack("<I", 0)
    with pytest.raises(RecordError):
        BlobRecord.decode(buf)


def test_decreasing_field_offsets_raise_record_error():
    buf = (struct.pack("<BBH", LAYOUT_VERSION, PatientRecord.KIND, 2)
           + struct.pack("<2I", 4, 2) + b"abcd")
    with pytest.raises(RecordError):
        PatientRecord.decode(buf)


def test_bytes_after_the_last_field_raise_record_error():
    with pytest.raises(RecordError):
        PatientRecord.decode(PatientRecord(patient_id="P").encode() + b"junk")


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=IDS)
@given(garbage=st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_record_error_only(cls, garbage):
    try:
        cls.decode(garbage)
    except RecordError:
        pass


@given(count=st.integers(0, 20), ends=st.lists(st.integers(0, 2**32 - 1), max_size=20),
       payload=st.binary(max_size=64))
def test_structured_garbage_with_a_valid_header_raises_record_error_only(count, ends, payload):
    buf = (struct.pack("<BBH", LAYOUT_VERSION, PatientRecord.KIND, count)
           + struct.pack(f"<{len(ends)}I", *ends) + payload)
    try:
        PatientRecord.decode(buf)
    except RecordError:
        pass


def test_non_numeric_integer_field_raises_record_error():
    with pytest.raises(RecordError):
        BlobRecord.decode(encode_fields(BlobRecord.KIND, ["many", "10"]))


# --- layout evolution -------------------------------------------------------------
@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=IDS)
def test_older_record_with_fewer_fields_reads_missing_trailing_fields_as_defaults(cls):
    full = sample(cls)
    names = [f.name for f in fields(cls)]
    kept = len(names) // 2
    older = encode_fields(cls.KIND, [str(getattr(full, n)) for n in names[:kept]])
    decoded = cls.decode(older)
    for name in names[:kept]:
        assert getattr(decoded, name) == getattr(full, name)
    for name in names[kept:]:
        assert getattr(decoded, name) == (0 if name in cls._INT_FIELDS else "")


def test_record_with_zero_stored_fields_reads_as_all_defaults():
    assert StudyRecord.decode(encode_fields(StudyRecord.KIND, [])) == StudyRecord()


def test_newer_record_with_extra_trailing_fields_decodes_the_known_ones():
    record = sample(SeriesRecord)
    values = [str(getattr(record, f.name)) for f in fields(SeriesRecord)]
    newer = encode_fields(SeriesRecord.KIND, values + ["a field added later"])
    assert SeriesRecord.decode(newer) == record


def test_empty_integer_field_reads_as_zero():
    assert BlobRecord.decode(encode_fields(BlobRecord.KIND, ["", "7"])) == BlobRecord(0, 7)
