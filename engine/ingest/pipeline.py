"""Ingest: stream → hash → scan → store → index, then acknowledge.

`IngestPipeline.begin()` returns an `InstanceReceiver` for one incoming
dataset.  Fragments are written to a temp file inside the data dir as they
arrive, hashed, and scanned for the indexed attributes; nothing is buffered
beyond the scanner's small window, so memory does not grow with instance size.
`complete()` then makes the instance durable in the promised order —
fsync(file) → rename to its content address → fsync(dir) → index commit — and
only then returns the outcome that becomes the C-STORE status.
"""
from __future__ import annotations

import asyncio
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping, Protocol

from engine.dicom.attributes import decode_indexed, decode_tags
from engine.dicom.part10 import encode_file_header
from engine.dicom.tags import INDEXED_TAGS
from engine.dicom.tagscan import TagScanner
from engine.dicom.uids import require_valid_uid, transfer_syntax_encoding
from engine.errors import DatasetMismatch, DuplicateRejected, OutOfResources, TagScanError
from engine.index.entry import IndexEntry, IndexOutcome
from engine.index.forward_queue import ForwardOrder
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter
from engine.store.blob_store import FilesystemBlobStore, TempBlob
from engine.store.content_hash import new_hasher

log = logging.getLogger(__name__)

#: Inflate deflated datasets in bounded steps (a small deflate stream can expand hugely).
_INFLATE_STEP = 256 * 1024


def content_hasher(transfer_syntax_uid: str):
    """The content address covers the transfer syntax and the dataset bytes as received.

    The file meta (source AE title, our implementation UID) is left out so that
    the same object sent by two modalities has one address.
    """
    hasher = new_hasher()
    hasher.update(transfer_syntax_uid.encode("ascii") + b"\x00")
    return hasher


def sanitize_ae_title(title: str) -> str:
    """Printable ASCII without backslash, ≤ 16 characters (AE VR), for the file meta."""
    return "".join(c for c in title if " " <= c <= "~" and c != "\\")[:16].strip()


@dataclass(frozen=True)
class StoreResult:
    outcome: IndexOutcome
    content_hash: str
    size: int


@dataclass(frozen=True)
class Origin:
    """Where an instance came from, as routing rules see it."""

    calling_ae_title: str
    called_ae_title: str = ""
    peer_ip: str = ""


class Router(Protocol):
    """What ingest asks of the router (engine.routing): forwards, decided at ingest."""

    #: Tags beyond the indexed ones that the rules look at (the scanner extracts them).
    extra_tags: tuple[int, ...]

    def route(self, origin: Origin, sop_class_uid: str,
              attributes: Mapping[str, object]) -> tuple[ForwardOrder, ...]: ...

    def queued(self, forwards: tuple[ForwardOrder, ...]) -> None:
        """Called after the commit that queued `forwards`: time to deliver."""


class InstanceReceiver:
    """Receives one dataset; `feed()` on the event loop, `complete()` awaited after the last fragment."""

    def __init__(self, pipeline: "IngestPipeline", sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax_uid: str, calling_ae_title: str,
                 origin: Origin | None = None) -> None:
        self._pipeline = pipeline
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.calling_ae_title = sanitize_ae_title(calling_ae_title)
        self.origin = origin or Origin(calling_ae_title)
        encoding = transfer_syntax_encoding(transfer_syntax_uid)
        self._scanner = TagScanner(encoding.explicit_vr, encoding.little_endian,
                                   pipeline.wanted_tags)
        self._little_endian = encoding.little_endian
        self._inflater = zlib.decompressobj(-15) if encoding.deflated else None
        self._scan_error: TagScanError | None = None
        self._hasher = content_hasher(transfer_syntax_uid)
        self._temp: TempBlob = pipeline.store.create_temp()
        header = encode_file_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid,
                                    self.calling_ae_title)
        self._dataset_offset = len(header)
        self._temp.write(header)
        self._write_error: OutOfResources | None = None
        #: Values of the tags only routing rules look at, by keyword.
        self.extra_attributes: dict = {}
        #: Set by complete() (the audit trail names the study and patient of a store).
        self.study_instance_uid = ""
        self.patient_id = ""

    def feed(self, fragment: memoryview) -> None:
        """Write, hash and scan one P-DATA fragment of the dataset."""
        if self._write_error is None:
            try:
                self._temp.write(fragment)
            except OutOfResources as exc:
                self._write_error = exc  # keep draining the message, answer 0xA700 at the end
                return
        else:
            return
        self._hasher.update(fragment)
        scanner = self._scanner
        if scanner.done or self._scan_error is not None:
            return
        try:
            if self._inflater is None:
                scanner.feed(fragment)
            else:
                data = bytes(fragment)
                while data and not scanner.done:
                    scanner.feed(self._inflater.decompress(data, _INFLATE_STEP))
                    data = self._inflater.unconsumed_tail
        except (TagScanError, zlib.error) as exc:
            self._scan_error = TagScanError(f"dataset not parseable: {exc}")

    def abort(self) -> None:
        """The association ended mid-message: nothing of this instance is kept."""
        self._temp.discard()

    def _attributes(self) -> dict:
        scanner = self._scanner
        if self._scan_error is None and not scanner.done:
            try:
                if self._inflater is not None:
                    scanner.feed(self._inflater.flush())
                scanner.finish()
            except (TagScanError, zlib.error) as exc:
                self._scan_error = TagScanError(f"dataset not parseable: {exc}")
        if self._scan_error is not None:
            raise self._scan_error
        attrs = decode_indexed(scanner.values, self._little_endian)
        router = self._pipeline.router
        if router is not None and router.extra_tags:
            self.extra_attributes = decode_tags(scanner.values, router.extra_tags,
                                                self._little_endian)
        if attrs.get("SOPInstanceUID") != self.sop_instance_uid:
            raise DatasetMismatch("SOP Instance UID of the dataset differs from the command's")
        if attrs.get("SOPClassUID") != self.sop_class_uid:
            raise DatasetMismatch("SOP Class UID of the dataset differs from the command's")
        require_valid_uid(attrs.get("StudyInstanceUID", ""), "Study Instance UID")
        require_valid_uid(attrs.get("SeriesInstanceUID", ""), "Series Instance UID")
        return attrs

    def attributes(self) -> dict:
        """The indexed attributes of the dataset, once its last fragment was fed (STOW-RS
        checks the study before committing); raises what complete() would for a dataset
        that cannot be indexed."""
        return self._attributes()

    async def complete(self) -> StoreResult:
        """Make the instance durable and indexed; raises an EngineError for a failure status."""
        try:
            if self._write_error is not None:
                raise self._write_error
            attrs = self._attributes()
        except BaseException:
            self._temp.discard()
            raise
        self.study_instance_uid = attrs.get("StudyInstanceUID", "")
        self.patient_id = attrs.get("PatientID", "")
        address = self._hasher.hexdigest()
        router = self._pipeline.router
        forwards = () if router is None else router.route(
            self.origin, self.sop_class_uid, {**attrs, **self.extra_attributes})
        entry = IndexEntry(
            self.sop_instance_uid, self.sop_class_uid, self.transfer_syntax_uid, address,
            self._temp.size, self._dataset_offset,
            datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            self.calling_ae_title, attrs, forwards)
        result = await self._pipeline.commit(self._temp, entry)
        if forwards and result.outcome in (IndexOutcome.STORED, IndexOutcome.CONFLICT_REPLACED):
            router.queued(forwards)
        return result


class IngestPipeline:
    """Shared by all associations: the blob store, the index writer and the I/O threads."""

    def __init__(self, store: FilesystemBlobStore, writer: GroupCommitWriter,
                 reader: IndexReader, io_threads: int) -> None:
        self.store = store
        self.writer = writer
        self.reader = reader
        self._io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="store-io")
        self.router: Router | None = None
        self.wanted_tags = INDEXED_TAGS

    def set_router(self, router: Router | None) -> None:
        """Route every instance indexed from now on (None: no routing)."""
        self.router = router
        extra = router.extra_tags if router is not None else ()
        self.wanted_tags = tuple(sorted(set(INDEXED_TAGS) | set(extra)))

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
              calling_ae_title: str, origin: Origin | None = None) -> InstanceReceiver:
        return InstanceReceiver(self, sop_class_uid, sop_instance_uid, transfer_syntax_uid,
                                calling_ae_title, origin)

    async def commit(self, temp: TempBlob, entry: IndexEntry) -> StoreResult:
        """fsync + rename + dir fsync on an I/O thread, then the group-committed index write."""
        loop = asyncio.get_running_loop()
        try:
            created = await loop.run_in_executor(self._io, self.store.commit, temp,
                                                 entry.content_hash)
        except BaseException:
            temp.discard()
            raise
        try:
            outcome = await self.writer.submit(entry)
        except OutOfResources:
            await self._drop_if_unreferenced(created, entry.content_hash)
            raise
        if outcome is IndexOutcome.REJECTED_DUPLICATE:
            await self._drop_if_unreferenced(created, entry.content_hash)
            raise DuplicateRejected("different content already stored under this SOP Instance UID")
        if outcome is IndexOutcome.IDENTICAL and created and \
                self.reader.external_path(entry.content_hash) is not None:
            # Already indexed as an in-place import's file, which readers use: the copy
            # just renamed into objects/ would never be read.
            await asyncio.get_running_loop().run_in_executor(self._io, self.store.remove,
                                                             entry.content_hash)
        return StoreResult(outcome, entry.content_hash, entry.size)

    async def _drop_if_unreferenced(self, created: bool, address: str) -> None:
        if created and self.reader.blob(address) is None:
            await asyncio.get_running_loop().run_in_executor(self._io, self.store.remove, address)

    def close(self) -> None:
        self._io.shutdown(wait=True)
