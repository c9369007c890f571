"""DIMSE command sets (PS3.7 9.3, E): decode, encode, and message reassembly.

Command sets are short, always Implicit VR Little Endian, group 0000 only; this
hand-written codec is the ingest hot path's fast lane (tests check it encodes
exactly as pynetdicom does).  Datasets are never assembled here: their fragments
are handed on as they arrive.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.dicom.tags import (
    CMD_AFFECTED_SOP_CLASS_UID, CMD_AFFECTED_SOP_INSTANCE_UID, CMD_COMMAND_FIELD,
    CMD_DATA_SET_TYPE, CMD_ERROR_COMMENT, CMD_GROUP_LENGTH, CMD_MESSAGE_ID,
    CMD_MESSAGE_ID_BEING_RESPONDED_TO, CMD_STATUS, COMMAND_VR, NO_DATASET)
from engine.errors import DIMSEError

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
C_CANCEL_RQ = 0x0FFF
N_EVENT_REPORT_RQ = 0x0100
N_EVENT_REPORT_RSP = 0x8100
N_ACTION_RQ = 0x0130
N_ACTION_RSP = 0x8130

#: Command Field bit set in every response (PS3.7 E.1).
RESPONSE_BIT = 0x8000

MAX_COMMAND_SET_LENGTH = 64 * 1024
#: Largest query/retrieve identifier we gather (a request beyond it gets a failure status).
MAX_IDENTIFIER_LENGTH = 1 << 20

_ELEMENT_HEAD = struct.Struct("<HHI")


@dataclass(frozen=True)
class Command:
    """A decoded command set: raw values by tag, with typed accessors."""

    elements: dict[int, bytes]

    def us(self, tag: int) -> int | None:
        raw = self.elements.get(tag)
        if raw is None or len(raw) != 2:
            return None
        return raw[0] | raw[1] << 8

    def text(self, tag: int) -> str | None:
        raw = self.elements.get(tag)
        if raw is None:
            return None
        return raw.rstrip(b"\x00 ").decode("ascii", "replace")

    @property
    def command_field(self) -> int | None:
        return self.us(CMD_COMMAND_FIELD)

    @property
    def message_id(self) -> int | None:
        return self.us(CMD_MESSAGE_ID)

    @property
    def has_dataset(self) -> bool:
        return self.us(CMD_DATA_SET_TYPE) != NO_DATASET

    @property
    def is_response(self) -> bool:
        return bool((self.command_field or 0) & RESPONSE_BIT)

    @property
    def status(self) -> int | None:
        return self.us(CMD_STATUS)


class DatasetBuffer:
    """The dataset of a request that is decoded whole (identifiers, action information),
    gathered from its fragments up to a bound; beyond it only `too_long` is kept."""

    __slots__ = ("data", "limit", "too_long")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.too_long = False

    def feed(self, fragment: memoryview) -> None:
        if self.too_long or len(self.data) + len(fragment) > self.limit:
            self.too_long = True
            return
        self.data += fragment


class MessageIds:
    """Message IDs for the requests we send on one association (1..65535, wrapping)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 1

    def __call__(self) -> int:
        message_id = self._next
        self._next = message_id % 0xFFFF + 1
        return message_id


def decode_command(data: bytes) -> Command:
    """Decode a command set; DIMSEError for anything that is not group 0000 implicit LE."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            raise DIMSEError("command set truncated inside an element header")
        group, element, length = _ELEMENT_HEAD.unpack_from(data, offset)
        offset += 8
        if group != 0x0000:
            raise DIMSEError(f"command set holds a non-command element ({group:04X},{element:04X})")
        if length > end - offset:
            raise DIMSEError("command element length runs past the command set")
        elements[element] = bytes(data[offset:offset + length])
        offset += length
    if CMD_COMMAND_FIELD not in elements:
        raise DIMSEError("command set has no Command Field")
    if CMD_DATA_SET_TYPE not in elements:
        raise DIMSEError("command set has no Command Data Set Type")
    group_length = elements.get(CMD_GROUP_LENGTH)
    if group_length is not None:
        if len(group_length) != 4:
            raise DIMSEError("Command Group Length is not 4 bytes")
        # Elements after the group length must fill exactly the length it declares.
        if int.from_bytes(group_length, "little") != end - 12:
            raise DIMSEError("command set length differs from its Command Group Length")
    return Command(elements)


def _encode_value(tag: int, value: int | str) -> bytes:
    vr = COMMAND_VR[tag]
    if vr == "US":
        return struct.pack("<H", value)
    if vr == "UL":
        return struct.pack("<I", value)
    raw = str(value).encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def encode_command(values: dict[int, int | str]) -> bytes:
    """Encode a command set (elements in tag order, group length first)."""
    body = b"".join(
        _ELEMENT_HEAD.pack(0, tag, len(v)) + v
        for tag, v in ((t, _encode_value(t, values[t])) for t in sorted(values))
        if tag != CMD_GROUP_LENGTH)
    return _ELEMENT_HEAD.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def encode_response(command_field: int, request: Command, status: int,
                    error_comment: str = "", has_dataset: bool = False,
                    extra: dict[int, int | str] | None = None) -> bytes:
    """Response command set to `request`; `extra` adds elements (sub-operation counts...)."""
    values: dict[int, int | str] = {
        CMD_COMMAND_FIELD: command_field,
        CMD_MESSAGE_ID_BEING_RESPONDED_TO: request.message_id or 0,
        CMD_DATA_SET_TYPE: 0x0000 if has_dataset else NO_DATASET,
        CMD_STATUS: status,
    }
    sop_class = request.text(CMD_AFFECTED_SOP_CLASS_UID)
    if sop_class:
        values[CMD_AFFECTED_SOP_CLASS_UID] = sop_class
    sop_instance = request.text(CMD_AFFECTED_SOP_INSTANCE_UID)
    if sop_instance:
        values[CMD_AFFECTED_SOP_INSTANCE_UID] = sop_instance
    if error_comment and status != 0:
        values[CMD_ERROR_COMMENT] = error_comment[:64]
    if extra:
        values.update(extra)
    return encode_command(values)


__all__ = [
    "Command", "DatasetBuffer", "MessageIds", "decode_command", "encode_command",
    "encode_response", "C_STORE_RQ",
    "C_STORE_RSP", "C_ECHO_RQ", "C_ECHO_RSP", "C_FIND_RQ", "C_FIND_RSP", "C_CANCEL_RQ",
    "C_GET_RQ", "C_GET_RSP", "C_MOVE_RQ", "C_MOVE_RSP", "N_ACTION_RQ", "N_ACTION_RSP",
    "N_EVENT_REPORT_RQ", "N_EVENT_REPORT_RSP", "MAX_COMMAND_SET_LENGTH", "MAX_IDENTIFIER_LENGTH",
]
