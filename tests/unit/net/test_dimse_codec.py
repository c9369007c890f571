"""DIMSE command-set codec against pynetdicom's encoder and decoder."""
from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.dsutils import decode, encode

from engine.dicom.tags import (
    CMD_AFFECTED_SOP_CLASS_UID, CMD_AFFECTED_SOP_INSTANCE_UID, CMD_COMMAND_FIELD,
    CMD_DATA_SET_TYPE, CMD_ERROR_COMMENT, CMD_MESSAGE_ID, CMD_STATUS, NO_DATASET)
from engine.errors import DIMSEError
from engine.net import dimse
from engine.net.dimse import (
    C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP, Command, decode_command, encode_command,
    encode_response)

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SOP_ODD = "1.2.826.0.1.3680043.2.1125.12" # odd length: padded with NUL
SOP_EVEN = "1.2.826.0.1.3680043.2.1125.1"  # even length: no padding
assert len(SOP_ODD) % 2 and not len(SOP_EVEN) % 2

STATUSES = [
    pytest.param(0x0000, "", id="success"),
    pytest.param(0xB000, "different object under existing SOP Instance UID", id="B000-comment"),
    pytest.param(0xB000, "odd", id="B000-odd-comment"),
    pytest.param(0xA700, "storage volume below its free-space reserve", id="A700"),
    pytest.param(0xC210, "dataset truncated", id="C210"),
    pytest.param(0xC210, "", id="C210-no-comment"),
]


def pynetdicom_bytes(message) -> bytes:
    return encode(message.command_set, True, True)


def store_rq_bytes(message_id: int = 7, sop_instance: str = SOP_ODD,
                   sop_class: str = CT_IMAGE) -> bytes:
    p = dimse_primitives.C_STORE()
    p.MessageID = message_id
    p.AffectedSOPClassUID = sop_class
    p.AffectedSOPInstanceUID = sop_instance
    p.Priority = 0x0000
    p.DataSet = io.BytesIO(b"\x08\x00\x16\x00")
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(p)
    return pynetdicom_bytes(message)


def echo_rq_bytes(message_id: int = 3) -> bytes:
    p = dimse_primitives.C_ECHO()
    p.MessageID = message_id
    p.AffectedSOPClassUID = VERIFICATION
    message = dimse_messages.C_ECHO_RQ()
    message.primitive_to_message(p)
    return pynetdicom_bytes(message)


def store_rsp_by_pynetdicom(message_id: int, sop_instance: str, status: int,
                            comment: str) -> bytes:
    p = dimse_primitives.C_STORE()
    p.MessageIDBeingRespondedTo = message_id
    p.AffectedSOPClassUID = CT_IMAGE
    p.AffectedSOPInstanceUID = sop_instance
    p.Status = status
    if comment:
        p.ErrorComment = comment
    message = dimse_messages.C_STORE_RSP()
    message.primitive_to_message(p)
    return pynetdicom_bytes(message)


def echo_rsp_by_pynetdicom(message_id: int, status: int) -> bytes:
    p = dimse_primitives.C_ECHO()
    p.MessageIDBeingRespondedTo = message_id
    p.AffectedSOPClassUID = VERIFICATION
    p.Status = status
    message = dimse_messages.C_ECHO_RSP()
    message.primitive_to_message(p)
    return pynetdicom_bytes(message)


# --- responses: byte-identical to pynetdicom ------------------------------------------------
@pytest.mark.parametrize("sop_instance", [SOP_ODD, SOP_EVEN], ids=["odd-uid", "even-uid"])
@pytest.mark.parametrize("status, comment", STATUSES)
def test_c_store_rsp_bytes_equal_pynetdicom_encoding(status, comment, sop_instance):
    request = decode_command(store_rq_bytes(message_id=7, sop_instance=sop_instance))
    ours = encode_response(C_STORE_RSP, request, status, comment)
    assert ours == store_rsp_by_pynetdicom(7, sop_instance, status, comment)


@pytest.mark.parametrize("status", [0x0000, 0x0122])
def test_c_echo_rsp_bytes_equal_pynetdicom_encoding(status):
    request = decode_command(echo_rq_bytes(message_id=3))
    assert encode_response(C_ECHO_RSP, request, status) == echo_rsp_by_pynetdicom(3, status)


@pytest.mark.parametrize("message_id", [0, 1, 0x7FFF, 0xFFFF])
def test_message_id_being_responded_to_is_the_request_message_id(message_id):
    request = decode_command(store_rq_bytes(message_id=message_id))
    ours = encode_response(C_STORE_RSP, request, 0)
    assert ours == store_rsp_by_pynetdicom(message_id, SOP_ODD, 0, "")


def test_pynetdicom_decodes_our_c_store_rsp_to_the_same_values():
    request = decode_command(store_rq_bytes(message_id=42))
    ds = decode(io.BytesIO(encode_response(C_STORE_RSP, request, 0xB000, "kept as conflict")),
                True, True)
    assert ds.CommandField == C_STORE_RSP
    assert ds.MessageIDBeingRespondedTo == 42
    assert ds.CommandDataSetType == NO_DATASET
    assert ds.Status == 0xB000
    assert ds.ErrorComment == "kept as conflict"
    assert ds.AffectedSOPClassUID == CT_IMAGE
    assert ds.AffectedSOPInstanceUID == SOP_ODD
    assert ds.CommandGroupLength == len(encode_response(
        C_STORE_RSP, request, 0xB000, "kept as conflict")) - 12


def test_success_response_carries_no_error_comment():
    request = decode_command(store_rq_bytes())
    response = decode_command(encode_response(C_STORE_RSP, request, 0x0000, "ignored"))
    assert CMD_ERROR_COMMENT not in response.elements


def test_error_comment_is_cut_to_64_characters():
    request = decode_command(store_rq_bytes())
    response = decode_command(encode_response(C_STORE_RSP, request, 0xC210, "x" * 100))
    assert response.text(CMD_ERROR_COMMENT) == "x" * 64


def test_response_to_a_request_without_uids_omits_them():
    request = decode_command(encode_command({CMD_COMMAND_FIELD: C_ECHO_RQ, CMD_MESSAGE_ID: 5,
                                             CMD_DATA_SET_TYPE: NO_DATASET}))
    response = decode_command(encode_response(C_ECHO_RSP, request, 0))
    assert CMD_AFFECTED_SOP_CLASS_UID not in response.elements
    assert CMD_AFFECTED_SOP_INSTANCE_UID not in response.elements
    assert response.us(CMD_STATUS) == 0


# --- requests encoded by pynetdicom --------------------------------------------------------
def test_decode_c_store_rq_gives_command_field_and_message_id():
    command = decode_command(store_rq_bytes(message_id=513))
    assert (command.command_field, command.message_id) == (C_STORE_RQ, 513)


def test_decode_c_store_rq_gives_the_uids_without_padding():
    command = decode_command(store_rq_bytes(sop_instance=SOP_ODD))
    assert command.text(CMD_AFFECTED_SOP_CLASS_UID) == CT_IMAGE
    assert command.text(CMD_AFFECTED_SOP_INSTANCE_UID) == SOP_ODD


def test_decode_c_store_rq_announces_a_dataset():
    assert decode_command(store_rq_bytes()).has_dataset is True


def test_decode_c_echo_rq_gives_command_field_message_id_and_uid():
    command = decode_command(echo_rq_bytes(message_id=9))
    assert (command.command_field, command.message_id) == (C_ECHO_RQ, 9)
    assert command.text(CMD_AFFECTED_SOP_CLASS_UID) == VERIFICATION


def test_decode_c_echo_rq_announces_no_dataset():
    assert decode_command(echo_rq_bytes()).has_dataset is False


def test_decode_accepts_a_memoryview():
    command = decode_command(memoryview(echo_rq_bytes(message_id=4)))
    assert command.message_id == 4


def test_encode_command_round_trips_through_decode_command():
    values = {CMD_COMMAND_FIELD: C_STORE_RQ, CMD_MESSAGE_ID: 77, CMD_DATA_SET_TYPE: 0,
              CMD_AFFECTED_SOP_CLASS_UID: CT_IMAGE, CMD_AFFECTED_SOP_INSTANCE_UID: SOP_EVEN}
    command = decode_command(encode_command(values))
    assert command.command_field == C_STORE_RQ and command.message_id == 77
    assert command.text(CMD_AFFECTED_SOP_INSTANCE_UID) == SOP_EVEN
    assert command.has_dataset is True


def test_us_accessor_returns_none_for_a_value_of_the_wrong_length():
    command = Command({CMD_COMMAND_FIELD: b"\x01\x00", CMD_MESSAGE_ID: b"\x01\x00\x00"})
    assert command.message_id is None


# --- refusal of bad input ------------------------------------------------------------------
def test_empty_input_raises_dimse_error():
    with pytest.raises(DIMSEError):
        decode_command(b"")


@pytest.mark.parametrize("cut", [1, 4, 7, 9, 20])
def test_truncated_command_set_raises_dimse_error(cut):
    data = store_rq_bytes()
    with pytest.raises(DIMSEError):
        decode_command(data[:-cut])


def element_boundaries(data: bytes) -> set[int]:
    boundaries, offset = {0}, 0
    while offset < len(data):
        offset += 8 + struct.unpack_from("<I", data, offset + 4)[0]
        boundaries.add(offset)
    return boundaries


def test_every_truncation_inside_an_element_raises_dimse_error():
    data = echo_rq_bytes()
    boundaries = element_boundaries(data)
    for length in range(len(data)):
        if length not in boundaries:
            with pytest.raises(DIMSEError):
                decode_command(data[:length])


def test_command_set_shorter_than_its_group_length_raises_dimse_error():
    data = store_rq_bytes()
    cut = max(b for b in element_boundaries(data) if b < len(data))  # drop the last element
    with pytest.raises(DIMSEError):
        decode_command(data[:cut])


def test_non_group_0000_element_raises_dimse_error():
    data = echo_rq_bytes() + struct.pack("<HHI", 0x0008, 0x0016, 2) + b"1\x00"
    with pytest.raises(DIMSEError, match="non-command"):
        decode_command(data)


def test_command_set_without_command_field_raises_dimse_error():
    data = encode_command({CMD_MESSAGE_ID: 1, CMD_DATA_SET_TYPE: NO_DATASET})
    with pytest.raises(DIMSEError, match="Command Field"):
        decode_command(data)


def test_element_length_past_the_end_raises_dimse_error():
    data = struct.pack("<HHI", 0, 0x0100, 0xFFFFFFFF) + b"\x01\x00"
    with pytest.raises(DIMSEError):
        decode_command(data)


def test_explicit_vr_command_set_raises_dimse_error():
    # (0000,0100) US 2 in Explicit VR: the "length" reads as 0x00025355, past the end.
    data = struct.pack("<HH", 0, 0x0100) + b"US" + struct.pack("<H", 2) + b"\x01\x00"
    with pytest.raises(DIMSEError):
        decode_command(data)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_dimse_error_only(data):
    try:
        decode_command(data)
    except DIMSEError:
        pass


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=20)), max_size=10),
       st.binary(max_size=12))
def test_group_0000_element_streams_decode_or_raise_dimse_error_only(elements, tail):
    data = b"".join(struct.pack("<HHI", 0, tag, len(v)) + v for tag, v in elements) + tail
    try:
        command = decode_command(data)
    except DIMSEError:
        return
    assert dimse.CMD_COMMAND_FIELD & 0xFFFF in command.elements
