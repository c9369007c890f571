"""STOW-RS: reading the file meta of a part, and the response."""
from __future__ import annotations

import io

import pytest
from pydicom.data import get_testdata_file
import pydicom

from engine.web.stow import (
    PartResult, RejectedPart, parse_file_meta, response_json, response_status)


def part10(enforce: bool = True) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    buffer = io.BytesIO()
    if not enforce:
        ds.preamble = None
    ds.save_as(buffer, enforce_file_format=enforce)
    return buffer.getvalue()


def test_file_meta_is_read_from_a_prefix_of_the_file():
    data = part10()
    meta = None
    for length in range(0, len(data)):
        meta = parse_file_meta(data[:length])
        if meta is not None:
            break
    sop_class, sop_instance, ts, offset = meta
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (sop_class, sop_instance, ts) == (ds.SOPClassUID, ds.SOPInstanceUID,
                                            ds.file_meta.TransferSyntaxUID)
    assert data[offset:offset + 4] == b"\x08\x00\x05\x00"  # the dataset's first element


def test_file_meta_without_preamble_is_accepted():
    data = part10(enforce=False)
    assert parse_file_meta(data)[2] == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("data", [
    b"x" * 200, b"\x00" * 128 + b"DICM" + b"\x02\x00\x01\x00\x01\x02\x00\x00\x00\x00"])
def test_not_part10_is_rejected(data):
    with pytest.raises(RejectedPart):
        parse_file_meta(data)


def test_response_status_and_json():
    ok = PartResult("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.9")
    warned = PartResult("1.2.840.10008.5.1.4.1.1.2", "1.2.4", "1.2.9", warning=0xB000)
    failed = PartResult("", "", failure=0xC000)
    assert response_status([ok]) == 200
    assert response_status([ok, warned]) == 202
    assert response_status([ok, failed]) == 202
    assert response_status([failed]) == 409
    out = response_json([ok, failed], "http://h/dicomweb", None)
    assert out["00081190"]["Value"] == ["http://h/dicomweb/studies/1.2.9"]
    assert out["00081199"]["Value"][0]["00081155"]["Value"] == ["1.2.3"]
    assert out["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert pydicom.Dataset.from_json(out).FailedSOPSequence[0].FailureReason == 0xC000
