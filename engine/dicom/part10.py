"""DICOM Part 10 file framing (PS3.10 7.1): preamble, "DICM", file meta group.

The server writes the file meta itself, before the received dataset bytes are
appended untouched; pydicom would need a Dataset, and we never build one on the
ingest path.
"""
from __future__ import annotations

import struct

from engine.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group_element: int, vr: bytes, value: bytes) -> bytes:
    tag = struct.pack("<HH", group_element >> 16, group_element & 0xFFFF)
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _pad(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                       source_ae_title: str = "") -> bytes:
    """Preamble, "DICM" and the file meta group, ready to precede the dataset bytes.

    UIDs must already be validated (UI grammar): they are written as ASCII.
    """
    body = b"".join((
        _element(0x00020001, b"OB", b"\x00\x01"),
        _element(0x00020002, b"UI", _pad(sop_class_uid, b"\x00")),
        _element(0x00020003, b"UI", _pad(sop_instance_uid, b"\x00")),
        _element(0x00020010, b"UI", _pad(transfer_syntax_uid, b"\x00")),
        _element(0x00020012, b"UI", _pad(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _element(0x00020013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME, b" ")),
        *((_element(0x00020016, b"AE", _pad(source_ae_title.strip(), b" ")),)
          if source_ae_title.strip() else ()),
    ))
    return PREAMBLE + _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def dataset_offset(header: bytes) -> int:
    """Offset of the dataset in a Part 10 file that starts with a group length.

    `header` is at least the first 144 bytes of the file.  Raises ValueError for
    files not laid out as this server writes them.
    """
    if len(header) < 144 or header[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    if header[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise ValueError("file meta does not start with its group length")
    (group_length,) = struct.unpack_from("<I", header, 140)
    return 144 + group_length
