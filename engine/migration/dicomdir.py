"""The DICOMDIR of an exported file-set (PS3.10 8, PS3.3 F), built in linear time.

pydicom's `FileSet.add` compares each new instance with every instance already
added and every sibling record (about two minutes for one 5,000-image series),
so the directory is built here: one PATIENT / STUDY / SERIES / leaf record chain
per instance, merged by Patient ID and Study / Series Instance UID in dicts.  The
records' contents come from pydicom's own record creators
(`pydicom.fileset.DIRECTORY_RECORDERS`), and the file is encoded the way
`FileSet.write` encodes it, so pydicom's `FileSet` and DCMTK read it back.

File IDs follow pydicom's layout, `PTnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn`: eight
uppercase characters per component (PS3.10 8.2), made from record positions
only, never from a UID or a name in the data.  A Type 1 key the instance lacks
(an empty Study ID is common) is invented in the record only, as DCMTK's
`dcmgpdir +I` does; the exported file keeps its bytes.
"""
from __future__ import annotations

import os
import re
import secrets
import struct
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from engine.dicom.part10 import encode_file_header
from engine.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from engine.errors import EngineError

try:  # pydicom's SOP class -> leaf record type table (private: hence the fallback)
    from pydicom.fileset import _four_level_record_type as _leaf_type
except ImportError:  # pragma: no cover - a pydicom without it: every leaf is an IMAGE
    def _leaf_type(ds: Dataset) -> str:
        return "IMAGE"

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_LEVELS = (("PATIENT", "PT", "PatientID"), ("STUDY", "ST", "StudyInstanceUID"),
           ("SERIES", "SE", "SeriesInstanceUID"))
_MAX_INDEX = 999_999  # two letters + six digits per component
_MISSING = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")
_INVENTED = {"DA": "19000101", "TM": "000000", "IS": "1", "DS": "0"}


class DicomDirError(EngineError):
    """An instance cannot be given a directory record."""


class _Node:
    __slots__ = ("record", "component", "children", "by_key")

    def __init__(self, record: Dataset | None, component: str) -> None:
        self.record = record
        self.component = component
        self.children: list[_Node] = []
        self.by_key: dict[str, _Node] = {}


def _record(record_type: str, ds: Dataset) -> Dataset:
    """A record from pydicom's creator, inventing missing Type 1 keys (record only)."""
    source = ds
    for _ in range(16):
        try:
            record = DIRECTORY_RECORDERS[record_type](source)
            break
        except (KeyError, AttributeError, TypeError) as exc:  # no creator, odd values
            raise DicomDirError(f"no {record_type} record: {type(exc).__name__}: {exc}") \
                from None
        except ValueError as exc:  # "The instance's (0020,0010) 'Study ID' element is ..."
            found = _MISSING.search(str(exc))
            tag = int(found.group(1) + found.group(2), 16) if found else None
            vr = dictionary_VR(tag) if tag is not None else None
            if source is ds:
                source = Dataset()  # a shallow copy: the caller's dataset is not changed
                source.update(ds)
            if tag is None or vr in ("UI", "SQ") or tag in source and source[tag].VM:
                raise DicomDirError(f"no {record_type} record: {exc}") from None
            source.add_new(tag, vr, _INVENTED.get(vr, "UNKNOWN"))
    else:
        raise DicomDirError(f"no {record_type} record: too many missing attributes")
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    if "SpecificCharacterSet" in ds:
        record.SpecificCharacterSet = ds.SpecificCharacterSet
    return record


class DicomDirectory:
    """Directory records of a new file-set; `add()` each instance, then `write()`."""

    def __init__(self) -> None:
        self._root = _Node(None, "")
        self.count = 0

    def add(self, ds: Dataset) -> tuple[str, ...]:
        """Record the instance whose header (file meta included) is `ds`; returns its
        File ID components, where the caller must put the file.  Nothing is recorded
        when DicomDirError is raised."""
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if not uid or "TransferSyntaxUID" not in getattr(ds, "file_meta", ()):
            raise DicomDirError("no SOP Instance UID or transfer syntax")
        # Records merge by Patient ID (one record for all without one) and the UIDs.
        keys = [str(ds.get(keyword, "") or "") or "UNKNOWN" for _, _, keyword in _LEVELS]
        chain: list[_Node | None] = []  # the existing record of each level, if any
        node: _Node | None = self._root
        for key in keys:
            node = node.by_key.get(key) if node is not None else None
            chain.append(node)
        parent = next((n for n in reversed(chain) if n is not None), self._root)
        if chain[-1] is not None and uid in chain[-1].by_key:
            raise DicomDirError(f"{uid} is already in the file-set")
        if len(parent.children) > _MAX_INDEX:
            raise DicomDirError(f"more than {_MAX_INDEX + 1} entries under one record")
        records = [_record(record_type, ds) if existing is None else None
                   for (record_type, _, _), existing in zip(_LEVELS, chain)]
        leaf = _record(_leaf_type(ds), ds)
        leaf.ReferencedSOPClassUIDInFile = ds.SOPClassUID
        leaf.ReferencedSOPInstanceUIDInFile = uid
        leaf.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
        # Every record exists: link them (nothing below can fail).
        node, components = self._root, []
        for (_, prefix, _), key, existing, record in zip(_LEVELS, keys, chain, records):
            node = existing or self._child(node, key, record, prefix)
            components.append(node.component)
        components.append(self._child(node, uid, leaf, "IM").component)
        leaf.ReferencedFileID = components
        self.count += 1
        return tuple(components)

    @staticmethod
    def _child(parent: _Node, key: str, record: Dataset, prefix: str) -> _Node:
        child = _Node(record, f"{prefix}{len(parent.children):06d}")
        parent.children.append(child)
        parent.by_key[key] = child
        return child

    def _walk(self, node: _Node | None = None):
        """Records in the order of the Directory Record Sequence (depth first)."""
        for child in (node or self._root).children:
            yield child
            yield from self._walk(child)

    # -- encoding ---------------------------------------------------------------------
    def encode(self, fileset_uid: str | None = None) -> bytes:
        """The DICOMDIR file: file meta, then the records with their offsets."""
        head = encode_file_header(MEDIA_STORAGE_DIRECTORY, fileset_uid or generate_uid(),
                                  EXPLICIT_VR_LITTLE_ENDIAN)
        top = Dataset()
        top.FileSetID = ""
        top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
        top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
        top.FileSetConsistencyFlag = 0
        nodes = list(self._walk())
        # Offsets are fixed-size values: a first encoding gives every record's place.
        offset = len(head) + len(_encode(top)) + 12  # + the sequence's own header
        starts: dict[int, int] = {}
        for node in nodes:
            starts[id(node)] = offset
            offset += 8 + len(_encode(node.record))
        for parent in [self._root, *nodes]:
            for at, child in enumerate(parent.children):
                following = parent.children[at + 1] if at + 1 < len(parent.children) else None
                child.record.OffsetOfTheNextDirectoryRecord = (
                    starts[id(following)] if following is not None else 0)
                child.record.OffsetOfReferencedLowerLevelDirectoryEntity = (
                    starts[id(child.children[0])] if child.children else 0)
        roots = self._root.children
        if roots:
            top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = starts[id(roots[0])]
            top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = starts[id(roots[-1])]
        items = [b"".join((b"\xfe\xff\x00\xe0", struct.pack("<I", len(raw)), raw))
                 for raw in (_encode(node.record) for node in nodes)]
        body = b"".join(items)
        sequence = b"\x04\x00\x20\x12SQ\x00\x00" + struct.pack("<I", len(body))
        return head + _encode(top) + sequence + body

    def write(self, folder: Path) -> Path:
        """Write folder/DICOMDIR durably (temporary file, fsync, rename, fsync folder)."""
        final = folder / "DICOMDIR"
        temp = folder / f".DICOMDIR.{secrets.token_hex(4)}.partial"
        data = self.encode()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(folder)
        return final


def _encode(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = False
    write_dataset(out, ds)
    return out.getvalue()


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["DicomDirError", "DicomDirectory", "fsync_directory"]
