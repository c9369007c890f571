"""Tests of the streaming tag scanner, run against both twins.

The pure-Python twin is the reference; the compiled scanner must match it on
real files, on synthetic edge cases and on fuzzed garbage, whatever the
chunking of the stream.
"""
from __future__ import annotations

import io
import os
import random
import struct
import tracemalloc
import warnings
import zlib
from functools import lru_cache
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement, convert_raw_data_element

from engine.dicom import _tagscan_c, _tagscan_py
from engine.errors import TagScanError
from tests.support import run_python

REPO = Path(__file__).resolve().parents[3]
IMPLS = [pytest.param(_tagscan_c, id="compiled"), pytest.param(_tagscan_py, id="python")]

UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
DEFLATED = "1.2.840.10008.1.2.1.99"


# -- stream builders ------------------------------------------------------------
def element(tag, vr, value=b"", *, explicit=True, little=True, length=None):
    """Encode one data element; `length` overrides the value's real length."""
    o = "<" if little else ">"
    n = len(value) if length is None else length
    g, e = tag >> 16, tag & 0xFFFF
    if not explicit:
        return struct.pack(o + "HHI", g, e, n) + value
    if vr in LONG_VRS:
        return struct.pack(o + "HH2s2xI", g, e, vr.encode(), n) + value
    return struct.pack(o + "HH2sH", g, e, vr.encode(), n) + value


def item(content=b"", *, little=True, length=None):
    n = len(content) if length is None else length
    return struct.pack("<HHI" if little else ">HHI", 0xFFFE, 0xE000, n) + content


def item_end(little=True):
    return struct.pack("<HHI" if little else ">HHI", 0xFFFE, 0xE00D, 0)


def seq_end(little=True):
    return struct.pack("<HHI" if little else ">HHI", 0xFFFE, 0xE0DD, 0)


def chunked(data, sizes):
    """Split `data` into pieces whose sizes cycle through `sizes`."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


def scan(impl, data, wanted, *, explicit=True, little=True, chunks=None, **kw):
    s = impl.TagScanner(explicit, little, wanted, **kw)
    for piece in chunks if chunks is not None else [data]:
        s.feed(piece)
    s.finish()
    return s


def outcome(impl, data, wanted, chunks, explicit=True, little=True, **kw):
    """Comparable result of one scan: the three attributes, or the error message."""
    try:
        s = scan(impl, data, wanted, explicit=explicit, little=little, chunks=chunks, **kw)
    except TagScanError as exc:
        return ("TagScanError", str(exc))
    return (s.done, dict(s.values), s.bytes_consumed)


# -- real files -------------------------------------------------------------------
def dataset_offset(raw: bytes) -> int:
    """Offset of the dataset: past the preamble and every group 0002 element."""
    off = 132
    while off + 8 <= len(raw) and struct.unpack_from("<H", raw, off)[0] == 0x0002:
        vr = raw[off + 4 : off + 6].decode("latin-1")
        if vr in LONG_VRS:
            off += 12 + struct.unpack_from("<I", raw, off + 8)[0]
        else:
            off += 8 + struct.unpack_from("<H", raw, off + 6)[0]
    return off


@lru_cache(maxsize=None)
def real_dataset(path: str):
    """(dataset bytes, explicit, little, wanted, pydicom dataset) of a Part 10 file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    raw = Path(path).read_bytes()
    data = raw[dataset_offset(raw) :]
    if ds.file_meta.get("TransferSyntaxUID") == DEFLATED:
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    implicit, little = ds.original_encoding
    wanted = frozenset(int(t) for t in ds.keys() if t < 0x7FE00008)
    return data, not implicit, little, wanted, ds


def readable_files():
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(get_testdata_files()):
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                if f.read(132)[128:] != b"DICM":
                    continue
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # not a file pydicom reads: out of scope
                continue
            paths.append(path)
    return paths


REAL_FILES = readable_files()
# Files pydicom reads only through its leniency; the scanner must reject them cleanly.
REJECTED = {
    "SC_rgb_jpeg.dcm": "invalid VR",  # implicit VR elements inside an explicit VR dataset
    "rtplan_truncated.dcm": "truncated",
}


def file_id(path):
    return path.split("test_files/")[-1]


def expected_values(ds):
    """Raw bytes pydicom read for each defined-length top-level element."""
    raw, decoded = {}, {}
    for tag in ds.keys():
        if tag >= 0x7FE00008:
            continue
        el = ds.get_item(tag, keep_deferred=True)
        if isinstance(el, RawDataElement):
            if el.length != UNDEFINED:
                raw[int(tag)] = el.value or b""
        elif el.VR != "SQ" and not el.is_undefined_length:
            decoded[int(tag)] = el  # already converted by pydicom (e.g. the charset)
    return raw, decoded


def check_against_pydicom(scanner, path):
    data, explicit, little, _, ds = real_dataset(path)
    raw, decoded = expected_values(ds)
    assert scanner.done
    assert {t: v for t, v in scanner.values.items() if t not in decoded} == raw
    for tag, el in decoded.items():
        value = scanner.values[tag]
        mine = convert_raw_data_element(
            RawDataElement(el.tag, el.VR, len(value), value, 0, not explicit, little)
        )
        assert mine.value == el.value


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("path", REAL_FILES, ids=file_id)
def test_real_file_fed_whole_matches_pydicom(impl, path):
    data, explicit, little, wanted, _ = real_dataset(path)
    reason = REJECTED.get(Path(path).name)
    if reason:
        with pytest.raises(TagScanError, match=reason):
            scan(impl, data, wanted, explicit=explicit, little=little, max_value_length=1 << 30)
        return
    s = scan(impl, data, wanted, explicit=explicit, little=little, max_value_length=1 << 30)
    check_against_pydicom(s, path)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("path", REAL_FILES, ids=file_id)
def test_real_file_fed_in_random_chunks_matches_whole(impl, path):
    data, explicit, little, wanted, _ = real_dataset(path)
    rng = random.Random(path)
    sizes = [rng.randint(1, 4096) for _ in range(64)]
    whole = outcome(impl, data, wanted, None, explicit, little, max_value_length=1 << 30)
    pieces = outcome(
        impl, data, wanted, chunked(data, sizes), explicit, little, max_value_length=1 << 30
    )
    assert pieces == whole
    assert whole[0] == ("TagScanError" if Path(path).name in REJECTED else True)


def test_real_files_cover_all_three_encodings():
    seen = {real_dataset(p)[1:3] for p in REAL_FILES}
    assert {(True, True), (False, True), (True, False)} <= seen


# -- selector ---------------------------------------------------------------------
def _selected(env_value):
    return run_python("from engine.dicom import tagscan; "
                      "print(tagscan.IMPLEMENTATION, tagscan.TagScanner.__module__)",
                      env_value == "1").split()


def test_selector_uses_compiled_scanner_by_default():
    assert _selected(None) == ["compiled", "engine.dicom._tagscan_c"]


def test_selector_uses_python_twin_when_extensions_disabled():
    assert _selected("1") == ["python", "engine.dicom._tagscan_py"]


# -- encodings ----------------------------------------------------------------------
PATIENT_NAME, PATIENT_ID, STUDY_UID = 0x00100010, 0x00100020, 0x0020000D


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "explicit,little", [(True, True), (False, True), (True, False)], ids=["EVRLE", "IVRLE", "EVRBE"]
)
def test_collects_wanted_values_in_each_encoding(impl, explicit, little):
    kw = dict(explicit=explicit, little=little)
    data = (
        element(0x00080060, "CS", b"CT", **kw)
        + element(PATIENT_NAME, "PN", b"Doe^Jane", **kw)
        + element(0x00100030, "DA", b"19700101", **kw)
        + element(STUDY_UID, "UI", b"1.2.3\0", **kw)
    )
    s = scan(impl, data, {PATIENT_NAME, STUDY_UID}, **kw)
    assert s.values == {PATIENT_NAME: b"Doe^Jane", STUDY_UID: b"1.2.3\0"}


@pytest.mark.parametrize("impl", IMPLS)
def test_big_endian_values_keep_their_byte_order(impl):
    data = element(0x00280010, "US", b"\x02\x00", little=False)
    assert scan(impl, data, {0x00280010}, little=False).values == {0x00280010: b"\x02\x00"}


@pytest.mark.parametrize("impl", IMPLS)
def test_long_form_vr_uses_four_byte_length(impl):
    text = b"x" * 70000  # longer than a 2-byte length can say
    data = element(0x00081030, "UT", text) + element(PATIENT_ID, "LO", b"ID")
    s = scan(impl, data, {0x00081030, PATIENT_ID})
    assert s.values == {0x00081030: text, PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_uppercase_vr_uses_two_byte_length(impl):
    data = element(0x00090010, "ZZ", b"ab") + element(PATIENT_ID, "LO", b"ID")
    assert scan(impl, data, {PATIENT_ID}).values == {PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_unwanted_elements_are_not_reported(impl):
    data = element(0x00080060, "CS", b"CT") + element(PATIENT_ID, "LO", b"ID")
    assert scan(impl, data, {PATIENT_ID}).values == {PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_is_kept(impl):
    data = element(PATIENT_ID, "LO", b"ID ")
    assert scan(impl, data, {PATIENT_ID}).values[PATIENT_ID] == b"ID "


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_length_wanted_value_is_empty_bytes(impl):
    assert scan(impl, element(PATIENT_ID, "LO"), {PATIENT_ID}).values == {PATIENT_ID: b""}


@pytest.mark.parametrize("impl", IMPLS)
def test_tags_out_of_order_are_accepted(impl):
    data = element(PATIENT_ID, "LO", b"ID") + element(PATIENT_NAME, "PN", b"N")
    assert scan(impl, data, {PATIENT_NAME, PATIENT_ID}).values == {
        PATIENT_ID: b"ID",
        PATIENT_NAME: b"N",
    }


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_feed_accepts_bytes_like_objects(impl, kind):
    data = element(PATIENT_ID, "LO", b"ID")
    buf = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](data)
    assert scan(impl, buf, {PATIENT_ID}).values == {PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_feed_keeps_no_reference_to_the_callers_buffer(impl):
    data = element(PATIENT_NAME, "PN", b"N" * 10) + element(PATIENT_ID, "LO", b"ID")
    s = impl.TagScanner(True, True, {PATIENT_NAME, PATIENT_ID})
    for start, stop in ((0, 5), (5, 14), (14, 25), (25, len(data))):
        # Cuts fall inside a header, inside a value, inside the next header.
        buf = bytearray(data[start:stop])
        with memoryview(buf) as view:
            s.feed(view)
        # release() above and extend() here raise BufferError if an export is held.
        buf.extend(b"\0" * 100)
    s.finish()
    assert s.values == {PATIENT_NAME: b"N" * 10, PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_value_split_across_feeds_is_reassembled(impl):
    value = bytes(range(200))
    data = element(0x00091010, "OB", value) + element(PATIENT_ID, "LO", b"ID")
    s = scan(impl, data, {0x00091010}, chunks=chunked(data, [1, 7, 3, 50]))
    assert s.values == {0x00091010: value}


# -- stopping -----------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_done_at_first_element_beyond_max_wanted(impl):
    head = element(PATIENT_NAME, "PN", b"N") + element(PATIENT_ID, "LO", b"ID")
    data = head + element(0x00100030, "DA", b"19700101")
    s = impl.TagScanner(True, True, {PATIENT_NAME, PATIENT_ID})
    assert s.feed(data) is True
    assert s.done and s.bytes_consumed == len(head)
    assert s.values == {PATIENT_NAME: b"N", PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_done_at_stop_tag_with_empty_wanted(impl):
    head = element(PATIENT_ID, "LO", b"ID")
    s = impl.TagScanner(True, True, (), stop_tag=0x00100030)
    s.feed(head + element(0x00100030, "DA", b"19700101"))
    assert (s.done, s.values, s.bytes_consumed) == (True, {}, len(head))


@pytest.mark.parametrize("impl", IMPLS)
def test_stop_tag_wins_over_a_higher_wanted_tag(impl):
    head = element(PATIENT_ID, "LO", b"ID")
    data = head + element(PIXEL_DATA, "OW", b"\0\0") + element(0x7FE10010, "LO", b"x")
    s = scan(impl, data, {PATIENT_ID, 0x7FE10010})
    assert (s.values, s.bytes_consumed) == ({PATIENT_ID: b"ID"}, len(head))


@pytest.mark.parametrize("impl", IMPLS)
def test_done_needs_only_the_tag_of_the_stopping_element(impl):
    head = element(PATIENT_ID, "LO", b"ID")
    s = impl.TagScanner(True, True, {PATIENT_ID})
    assert s.feed(head + struct.pack("<HH", 0x7FE0, 0x0010)) is True
    assert s.bytes_consumed == len(head)


@pytest.mark.parametrize("impl", IMPLS)
def test_stopping_element_value_is_not_read(impl):
    # A 4 GiB pixel data length after the stop must not matter.
    data = element(PATIENT_ID, "LO", b"ID") + element(PIXEL_DATA, "OB", length=0xFFFFFFF0)
    s = scan(impl, data, {PATIENT_ID})
    assert s.done and s.values == {PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_feeds_after_done_are_ignored(impl):
    s = impl.TagScanner(True, True, {PATIENT_ID})
    s.feed(element(PATIENT_ID, "LO", b"ID") + element(STUDY_UID, "UI", b"1"))
    consumed = s.bytes_consumed
    assert s.feed(b"\xff" * 10) is True
    s.finish()
    assert (s.values, s.bytes_consumed) == ({PATIENT_ID: b"ID"}, consumed)


@pytest.mark.parametrize("impl", IMPLS)
def test_feed_returns_false_until_done(impl):
    s = impl.TagScanner(True, True, {STUDY_UID})
    assert s.feed(element(PATIENT_ID, "LO", b"ID")) is False
    assert not s.done


# -- end of stream --------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_finish_between_elements_is_done_at_total_length(impl):
    data = element(PATIENT_NAME, "PN", b"N") + element(PATIENT_ID, "LO", b"ID")
    s = scan(impl, data, {STUDY_UID})
    assert (s.done, s.values, s.bytes_consumed) == (True, {}, len(data))


@pytest.mark.parametrize("impl", IMPLS)
def test_finish_on_empty_stream_is_done(impl):
    s = scan(impl, b"", {PATIENT_ID})
    assert (s.done, s.bytes_consumed) == (True, 0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "data",
    [
        element(PATIENT_ID, "LO", b"ID")[:5],
        element(PATIENT_ID, "LO", b"IDENT")[:10],
        element(0x00091010, "OB", b"12345678")[:15],
        element(0x00081140, "SQ", length=UNDEFINED) + item(element(PATIENT_ID, "LO", b"ID"))[:-1],
        element(0x00081140, "SQ", length=UNDEFINED) + item(length=UNDEFINED),
        element(0x00081140, "SQ", length=UNDEFINED),
    ],
    ids=["header", "wanted-value", "skipped-value", "item", "undefined-item", "sequence"],
)
def test_finish_inside_anything_raises_truncated(impl, data):
    s = impl.TagScanner(True, True, {PATIENT_ID, 0x00100021})
    s.feed(data)
    with pytest.raises(TagScanError, match="truncated"):
        s.finish()


# -- sequences ----------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_elements_inside_undefined_length_sequence_are_not_reported(impl):
    nested = element(PATIENT_ID, "LO", b"inner")
    data = (
        element(0x00081140, "SQ", length=UNDEFINED)
        + item(nested + item_end(), length=UNDEFINED)
        + item(nested)
        + seq_end()
        + element(PATIENT_ID, "LO", b"outer")
    )
    assert scan(impl, data, {PATIENT_ID}).values == {PATIENT_ID: b"outer"}


@pytest.mark.parametrize("impl", IMPLS)
def test_defined_length_sequence_is_skipped_whole(impl):
    # The content would be an error if parsed: skipping by counter never looks.
    seq = element(0x00081140, "SQ", b"\x01" * 16)
    data = seq + element(PATIENT_ID, "LO", b"ID")
    assert scan(impl, data, {PATIENT_ID}).values == {PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_defined_length_item_is_skipped_by_counter(impl):
    data = (
        element(0x00081140, "SQ", length=UNDEFINED)
        + item(b"\x01garbage!")
        + seq_end()
        + element(PATIENT_ID, "LO", b"ID")
    )
    assert scan(impl, data, {PATIENT_ID}).values == {PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_wanted_defined_length_sequence_is_collected_raw(impl):
    content = item(element(PATIENT_ID, "LO", b"ID"))
    data = element(0x00081140, "SQ", content)
    assert scan(impl, data, {0x00081140}).values == {0x00081140: content}


@pytest.mark.parametrize("impl", IMPLS)
def test_wanted_undefined_length_sequence_is_not_collected(impl):
    data = (
        element(0x00081140, "SQ", length=UNDEFINED)
        + item(element(PATIENT_ID, "LO", b"ID"))
        + seq_end()
        + element(0x00081150, "UI", b"1.2")
    )
    assert scan(impl, data, {0x00081140, 0x00081150}).values == {0x00081150: b"1.2"}


@pytest.mark.parametrize("impl", IMPLS)
def test_encapsulated_pixel_data_is_skipped_as_a_sequence(impl):
    data = (
        element(PIXEL_DATA, "OB", length=UNDEFINED)
        + item()
        + item(b"\xff\xd8fragment\xff\xd9")
        + seq_end()
        + element(0xFFFAFFFA, "SQ", length=0)
    )
    s = scan(impl, data, {0xFFFAFFFA}, stop_tag=0xFFFFFFFF)
    assert s.values == {0xFFFAFFFA: b""}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("little", [True, False], ids=["LE", "BE"])
def test_undefined_length_un_content_is_implicit_vr_little_endian(impl, little):
    # PS3.5 6.2.2: whatever the transfer syntax, the UN value is implicit VR LE.
    inner = element(PATIENT_ID, "", b"inner", explicit=False)
    data = (
        element(0x00091010, "UN", length=UNDEFINED, little=little)
        + item(inner + item_end(), length=UNDEFINED)
        + seq_end()
        + element(PATIENT_ID, "LO", b"outer", little=little)
    )
    assert scan(impl, data, {PATIENT_ID}, little=little).values == {PATIENT_ID: b"outer"}


@pytest.mark.parametrize("impl", IMPLS)
def test_implicit_vr_undefined_length_element_is_a_sequence(impl):
    data = (
        element(0x00091010, "", length=UNDEFINED, explicit=False)
        + item(element(PATIENT_ID, "", b"in", explicit=False) + item_end(), length=UNDEFINED)
        + seq_end()
        + element(PATIENT_ID, "", b"out", explicit=False)
    )
    assert scan(impl, data, {PATIENT_ID, 0x00091010}, explicit=False).values == {PATIENT_ID: b"out"}


@pytest.mark.parametrize("impl", IMPLS)
def test_big_endian_sequence_delimiters_are_big_endian(impl):
    data = (
        element(0x00081140, "SQ", length=UNDEFINED, little=False)
        + item(
            element(PATIENT_ID, "LO", b"in", little=False) + item_end(False),
            little=False,
            length=UNDEFINED,
        )
        + seq_end(False)
        + element(PATIENT_ID, "LO", b"out", little=False)
    )
    assert scan(impl, data, {PATIENT_ID}, little=False).values == {PATIENT_ID: b"out"}


def nested(depth):
    """`depth` undefined-length sequences, each in an undefined-length item of the last."""
    open_ = (element(0x00081140, "SQ", length=UNDEFINED) + item(length=UNDEFINED)) * depth
    return open_ + (item_end() + seq_end()) * depth + element(PATIENT_ID, "LO", b"ID")


@pytest.mark.parametrize("impl", IMPLS)
def test_sequences_nested_64_deep_are_accepted(impl):
    assert scan(impl, nested(64), {PATIENT_ID}).values == {PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_sequences_nested_65_deep_raise(impl):
    with pytest.raises(TagScanError, match="deeper"):
        scan(impl, nested(65), {PATIENT_ID})


# -- malformed input ------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vr", [b"lo", b"L0", b"\x00\x00", b"\xff\xff"], ids=repr)
def test_invalid_vr_raises(impl, vr):
    data = struct.pack("<HH2sH", 0x0010, 0x0020, vr, 0)
    with pytest.raises(TagScanError, match="invalid VR"):
        scan(impl, data, {PATIENT_ID})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vr", ["UT", "UC", "UR", "OF", "OD"])
def test_undefined_length_on_other_vr_raises(impl, vr):
    with pytest.raises(TagScanError, match="undefined length"):
        scan(impl, element(0x00091010, vr, length=UNDEFINED), {PATIENT_ID})


@pytest.mark.parametrize("impl", IMPLS)
def test_element_where_an_item_is_expected_raises(impl):
    data = element(0x00081140, "SQ", length=UNDEFINED) + element(PATIENT_ID, "LO", b"ID")
    with pytest.raises(TagScanError, match="where an item"):
        scan(impl, data, {PATIENT_ID})


@pytest.mark.parametrize("impl", IMPLS)
def test_sequence_delimiter_inside_an_item_raises(impl):
    data = element(0x00081140, "SQ", length=UNDEFINED) + item(length=UNDEFINED) + seq_end()
    with pytest.raises(TagScanError, match="where a data element"):
        scan(impl, data, {PATIENT_ID})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "piece", [item(), item_end(), seq_end()], ids=["item", "item-end", "seq-end"]
)
def test_item_tags_at_top_level_raise(impl, piece):
    with pytest.raises(TagScanError, match="where a data element"):
        scan(impl, piece, (), stop_tag=0xFFFFFFFF)


@pytest.mark.parametrize("impl", IMPLS)
def test_wanted_value_longer_than_max_value_length_raises(impl):
    data = element(PATIENT_ID, "LO", b"x" * 65)
    with pytest.raises(TagScanError, match="exceeds"):
        scan(impl, data, {PATIENT_ID}, max_value_length=64)


@pytest.mark.parametrize("impl", IMPLS)
def test_wanted_value_of_max_value_length_is_collected(impl):
    data = element(PATIENT_ID, "LO", b"x" * 64)
    assert scan(impl, data, {PATIENT_ID}, max_value_length=64).values == {PATIENT_ID: b"x" * 64}


@pytest.mark.parametrize("impl", IMPLS)
def test_unwanted_value_longer_than_max_value_length_is_skipped(impl):
    data = element(0x00091010, "OB", b"x" * 65) + element(PATIENT_ID, "LO", b"ID")
    assert scan(impl, data, {PATIENT_ID}, max_value_length=64).values == {PATIENT_ID: b"ID"}


@pytest.mark.parametrize("impl", IMPLS)
def test_scanner_stays_failed_after_an_error(impl):
    s = impl.TagScanner(True, True, {PATIENT_ID})
    with pytest.raises(TagScanError):
        s.feed(struct.pack("<HH2sH", 0x0010, 0x0020, b"??", 0))
    with pytest.raises(TagScanError):
        s.feed(element(PATIENT_ID, "LO", b"ID"))
    with pytest.raises(TagScanError):
        s.finish()


# -- command sets -------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_c_store_rq_command_set_fields_are_extracted(impl):
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    primitive.Priority = 0
    primitive.DataSet = io.BytesIO(b"")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    data = encode(message.command_set, True, True)
    s = scan(impl, data, {0x00000002, 0x00000100, 0x00001000}, explicit=False)
    assert s.values == {
        0x00000002: b"1.2.840.10008.5.1.4.1.1.2\0",
        0x00000100: struct.pack("<H", 1),
        0x00001000: b"1.2.826.0.1.3680043.2.1125.1",  # even length: no padding
    }
    assert s.bytes_consumed == len(data)


# -- memory -----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_huge_unwanted_value_is_skipped_in_bounded_memory(impl):
    size = 256 << 20
    mib = bytes(1 << 20)  # fed 256 times: the element is never held whole
    head = element(0x00080016, "UI", b"1.2.3\0") + element(0x00091010, "OB", length=size)
    wanted_tail = element(PATIENT_ID, "LO", b"PATIENT42")
    s = impl.TagScanner(True, True, {0x00080016, PATIENT_ID})
    tracemalloc.start()
    try:
        s.feed(head)
        for _ in range(size >> 20):
            s.feed(mib)
        s.feed(wanted_tail + element(PIXEL_DATA, "OW", length=4))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s.done and s.values == {0x00080016: b"1.2.3\0", PATIENT_ID: b"PATIENT42"}
    assert s.bytes_consumed == len(head) + size + len(wanted_tail)
    assert peak < 8 << 20


# -- truncation and fuzzing ------------------------------------------------------------
def sample_files():
    """Small real headers: one per encoding, plus sequences and a UN sequence."""
    names = {"CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm",
             "UN_sequence.dcm", "nested_priv_SQ.dcm"}
    return [p for p in REAL_FILES if Path(p).name in names]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("path", sample_files(), ids=file_id)
def test_truncation_at_every_byte_raises_or_gives_a_prefix(impl, path):
    data, explicit, little, wanted, _ = real_dataset(path)
    full = scan(impl, data, wanted, explicit=explicit, little=little)
    end = min(len(data), full.bytes_consumed + 16, 3000)
    for cut in range(end):
        try:
            s = scan(impl, data[:cut], wanted, explicit=explicit, little=little)
        except TagScanError:
            continue
        assert s.done and s.bytes_consumed <= cut
        assert all(full.values[t] == v for t, v in s.values.items())


TAG_POOL = [0x00000100, 0x00080005, 0x00080018, PATIENT_NAME, PATIENT_ID, 0x00100030, STUDY_UID,
            0x00280010, 0x7FE00010]
chunk_sizes = st.lists(st.integers(1, 4096), min_size=1, max_size=8)
small_chunks = st.lists(st.integers(1, 16), min_size=1, max_size=8)
encodings = st.sampled_from([(True, True), (False, True), (True, False)])


def assert_parity(data, explicit, little, wanted, sizes, **kw):
    reference = outcome(_tagscan_py, data, wanted, None, explicit, little, **kw)
    for impl in (_tagscan_py, _tagscan_c):
        for chunks in (None, chunked(data, sizes)):
            assert outcome(impl, data, wanted, chunks, explicit, little, **kw) == reference


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    data=st.binary(max_size=600),
    encoding=encodings,
    wanted=st.frozensets(st.sampled_from(TAG_POOL)),
    sizes=st.one_of(small_chunks, chunk_sizes),
    max_len=st.sampled_from([0, 8, 1 << 20]),
)
def test_garbage_gives_identical_results_in_both_twins_and_any_chunking(
    data, encoding, wanted, sizes, max_len
):
    assert_parity(data, *encoding, wanted, sizes, max_value_length=max_len, stop_tag=0xFFFFFFFF)


@FUZZ
@given(
    data=st.lists(
        st.sampled_from(
            [element(PATIENT_ID, "LO", b"ID"), element(0x00081140, "SQ", length=UNDEFINED),
             element(0x00091010, "UN", length=UNDEFINED), item(length=UNDEFINED), item(b"abcd"),
             item_end(), seq_end(), element(0x00091011, "OB", length=UNDEFINED),
             element(0x00100030, "DA", b"19700101"), b"\x00", b"\xff\xff\xff\xff"]
        ),
        max_size=40,
    ).map(b"".join),
    wanted=st.frozensets(st.sampled_from(TAG_POOL)),
    sizes=st.one_of(small_chunks, chunk_sizes),
)
def test_structured_garbage_gives_identical_results(data, wanted, sizes):
    assert_parity(data, True, True, wanted, sizes, stop_tag=0xFFFFFFFF)


@st.composite
def mutated_header(draw):
    path = draw(st.sampled_from(sample_files()))
    data, explicit, little, wanted, _ = real_dataset(path)
    buf = bytearray(data[: draw(st.integers(0, 4000))])
    for _ in range(draw(st.integers(0, 4))):
        if not buf:
            break
        pos = draw(st.integers(0, len(buf) - 1))
        kind = draw(st.sampled_from(["flip", "huge32", "huge16", "undefined", "truncate"]))
        if kind == "flip":
            buf[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del buf[pos:]
        else:
            patch = {"huge32": struct.pack("<I", draw(st.integers(1 << 20, 0xFFFFFFFE))),
                     "huge16": b"\xff\xff", "undefined": b"\xff" * 4}[kind]
            buf[pos : pos + len(patch)] = patch
    return bytes(buf), explicit, little, wanted


@FUZZ
@given(case=mutated_header(), sizes=st.one_of(small_chunks, chunk_sizes),
       max_len=st.sampled_from([16, 1 << 20]))
def test_mutated_real_headers_give_identical_results(case, sizes, max_len):
    data, explicit, little, wanted = case
    assert_parity(data, explicit, little, wanted, sizes, max_value_length=max_len)
