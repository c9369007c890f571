"""Versioned binary layout of index records, decoded without pydicom.

Layout (little endian)::

    u8 layout version | u8 record kind | u16 field count n
    u32 end offset of each field (n of them, relative to the payload start)
    payload: the fields' UTF-8 bytes, back to back

A record is read straight from LMDB's zero-copy buffer: `RecordView` slices the
memoryview and decodes only the fields asked for.  Adding a field at the end of
a kind keeps old records readable (missing trailing fields read as "").
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import ClassVar, TypeVar

LAYOUT_VERSION = 1
_HEAD = struct.Struct("<BBH")


class RecordError(ValueError):
    """A stored record is not in a layout this version can read."""


def encode_fields(kind: int, values: list[str]) -> bytes:
    """Encode a list of text fields as one record of `kind`."""
    encoded = [v.encode("utf-8", "surrogateescape") for v in values]
    ends = []
    total = 0
    for item in encoded:
        total += len(item)
        ends.append(total)
    return b"".join((_HEAD.pack(LAYOUT_VERSION, kind, len(encoded)),
                     struct.pack(f"<{len(ends)}I", *ends), *encoded))


class RecordView:
    """Lazy view of one record inside a buffer (bytes or an LMDB memoryview)."""

    __slots__ = ("_buf", "_ends", "_base", "kind")

    def __init__(self, buf: bytes | memoryview) -> None:
        if len(buf) < _HEAD.size:
            raise RecordError("record shorter than its header")
        version, kind, count = _HEAD.unpack_from(buf, 0)
        if version != LAYOUT_VERSION:
            raise RecordError(f"record layout {version} is not readable by layout {LAYOUT_VERSION}")
        self._buf = buf
        self._base = _HEAD.size + 4 * count
        self.kind = kind
        if len(buf) < self._base:
            raise RecordError("record offset table truncated")
        # Check the offsets once, so field() never slices past the payload (a
        # truncated or garbage record must not decode to silently shortened text).
        self._ends = struct.unpack_from(f"<{count}I", buf, _HEAD.size)
        previous = 0
        for end in self._ends:
            if end < previous:
                raise RecordError("record field offsets out of order")
            previous = end
        if self._base + previous != len(buf):
            raise RecordError("record payload truncated" if self._base + previous > len(buf)
                              else "record has bytes after its last field")

    def field(self, index: int) -> str:
        ends = self._ends
        if index >= len(ends):
            return ""
        start = ends[index - 1] if index else 0
        return bytes(self._buf[self._base + start:self._base + ends[index]]).decode(
            "utf-8", "surrogateescape")


R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    """Base of the typed records: each subclass lists its fields in stored order."""

    KIND: ClassVar[int] = 0
    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def encode(self) -> bytes:
        return encode_fields(self.KIND, [str(getattr(self, name)) for name, _ in self._layout()])

    @classmethod
    def _layout(cls) -> tuple[tuple[str, bool], ...]:
        """(field name, is integer) in stored order, computed once per class."""
        layout = cls.__dict__.get("_LAYOUT")
        if layout is None:
            layout = tuple((f.name, f.name in cls._INT_FIELDS) for f in fields(cls))
            cls._LAYOUT = layout
        return layout

    @classmethod
    def decode(cls: type[R], buf: bytes | memoryview) -> R:
        """Decode a whole record with one copy out of the buffer.

        Refuses exactly what `RecordView` refuses.  This runs once per candidate
        of every query, so it avoids per-field views: an ASCII payload (the usual
        case) is decoded in one call and sliced, and the frozen instance is
        filled through its ``__dict__`` instead of one ``__setattr__`` per field.
        """
        raw = bytes(buf)
        size = len(raw)
        if size < _HEAD.size:
            raise RecordError("record shorter than its header")
        version, kind, count = _HEAD.unpack_from(raw, 0)
        if version != LAYOUT_VERSION:
            raise RecordError(f"record layout {version} is not readable by layout {LAYOUT_VERSION}")
        base = _HEAD.size + 4 * count
        if size < base:
            raise RecordError("record offset table truncated")
        ends = _offsets(count).unpack_from(raw, _HEAD.size)
        if count > 1 and list(ends) != sorted(ends):
            raise RecordError("record field offsets out of order")
        if base + (ends[-1] if count else 0) != size:
            raise RecordError("record payload truncated" if count and base + ends[-1] > size
                              else "record has bytes after its last field")
        if kind != cls.KIND:
            raise RecordError(f"expected record kind {cls.KIND}, found {kind}")
        names, int_indexes = cls._decode_plan()
        wanted = len(names)
        starts = (0,) + ends[:wanted - 1]
        if raw.isascii():
            payload = raw[base:].decode("ascii")
            values = [payload[a:b] for a, b in zip(starts, ends)]
        else:
            values = [raw[base + a:base + b].decode("utf-8", "surrogateescape")
                      for a, b in zip(starts, ends)]
        if len(values) < wanted:
            values.extend([""] * (wanted - len(values)))
        for i in int_indexes:
            try:
                values[i] = int(values[i] or 0)
            except ValueError as exc:
                raise RecordError(f"{cls.__name__}.{names[i]} is not an integer") from exc
        record = object.__new__(cls)
        record.__dict__.update(zip(names, values))
        return record

    @classmethod
    def _decode_plan(cls) -> tuple[tuple[str, ...], tuple[int, ...]]:
        plan = cls.__dict__.get("_PLAN")
        if plan is None:
            layout = cls._layout()
            plan = (tuple(name for name, _ in layout),
                    tuple(i for i, (_, is_int) in enumerate(layout) if is_int))
            cls._PLAN = plan
        return plan


_OFFSET_STRUCTS: dict[int, struct.Struct] = {}


def _offsets(count: int) -> struct.Struct:
    found = _OFFSET_STRUCTS.get(count)
    if found is None:
        found = _OFFSET_STRUCTS[count] = struct.Struct(f"<{count}I")
    return found


@dataclass(frozen=True)
class PatientRecord(Record):
    KIND: ClassVar[int] = 1
    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset({"number_of_studies"})
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    number_of_studies: int = 0


@dataclass(frozen=True)
class StudyRecord(Record):
    KIND: ClassVar[int] = 2
    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"number_of_series", "number_of_instances"})
    patient_key: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    modalities_in_study: str = ""  # backslash-separated, as the DICOM value
    sop_classes_in_study: str = ""  # backslash-separated
    number_of_series: int = 0
    number_of_instances: int = 0
    specific_character_set: str = ""


@dataclass(frozen=True)
class SeriesRecord(Record):
    KIND: ClassVar[int] = 3
    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset({"number_of_instances"})
    study_instance_uid: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    body_part_examined: str = ""
    number_of_instances: int = 0


@dataclass(frozen=True)
class InstanceRecord(Record):
    KIND: ClassVar[int] = 4
    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset({"size", "dataset_offset"})
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    instance_number: str = ""
    transfer_syntax_uid: str = ""
    content_hash: str = ""
    size: int = 0
    #: Offset of the dataset inside the stored Part 10 file (after the file meta).
    dataset_offset: int = 0
    received_at: str = ""  # UTC, ISO 8601
    calling_ae_title: str = ""
    number_of_frames: str = ""
    rows: str = ""
    columns: str = ""


@dataclass(frozen=True)
class ConflictRecord(Record):
    """A second, different object received under an existing SOP Instance UID."""

    KIND: ClassVar[int] = 5
    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset({"size", "dataset_offset"})
    content_hash: str = ""
    size: int = 0
    dataset_offset: int = 0
    transfer_syntax_uid: str = ""
    received_at: str = ""
    calling_ae_title: str = ""
    resolution: str = ""  # "kept-first" or "replaced"


@dataclass(frozen=True)
class BlobRecord(Record):
    """How many index entries (current or conflict) reference a stored blob."""

    KIND: ClassVar[int] = 6
    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset({"references", "size"})
    references: int = 0
    size: int = 0
