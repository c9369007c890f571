"""Integrity of stored objects: `pacs verify`, and the storage-commitment check.

`verify_archive` finds index entries whose file is missing or whose content no
longer matches its address, and orphans (files no index entry references: left
by a crash between rename and index commit, never acknowledged, safe to
remove).  `commitment_failure` answers one storage-commitment reference.
Files registered by an in-place import are read where they lie (the index's
external path); they are never orphans and never removed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import IntEnum
from typing import BinaryIO, Callable

from engine.index.reader import IndexReader
from engine.ingest.pipeline import content_hasher
from engine.store.blob_store import BlobNotFound, FilesystemBlobStore

log = logging.getLogger(__name__)

_READ_SIZE = 1 << 20


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    orphans_removed: int = 0
    #: Objects read from an in-place import's path rather than from objects/.
    external: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched or
                    len(self.orphans) > self.orphans_removed)


def rehash_file(fh: BinaryIO, transfer_syntax_uid: str, dataset_offset: int) -> str:
    """Content address of a Part 10 file's bytes (transfer syntax + dataset bytes)."""
    hasher = content_hasher(transfer_syntax_uid)
    fh.seek(dataset_offset)
    while chunk := fh.read(_READ_SIZE):
        hasher.update(chunk)
    return hasher.hexdigest()


def open_stored(store: FilesystemBlobStore, reader: IndexReader, address: str) -> BinaryIO:
    """The file holding `address`: an in-place import's path, else the blob store's."""
    external = reader.external_path(address)
    if external is None:
        return store.open_blob(address)
    try:
        return open(external, "rb")
    except OSError as exc:  # gone or unreadable: for us, the object is missing
        raise BlobNotFound(f"{address} (imported in place at {external}: {exc})") from exc


def rehash(store: FilesystemBlobStore, reader: IndexReader, address: str,
           transfer_syntax_uid: str, dataset_offset: int) -> str:
    """Content address recomputed from the stored file."""
    with open_stored(store, reader, address) as fh:
        return rehash_file(fh, transfer_syntax_uid, dataset_offset)


def verify_archive(store: FilesystemBlobStore, reader: IndexReader, remove_orphans: bool = False,
                   progress: Callable[[int], None] | None = None) -> VerifyReport:
    report = VerifyReport()
    referenced: set[str] = set()
    entries = [(uid, r.content_hash, r.transfer_syntax_uid, r.dataset_offset)
               for uid, r in reader.iter_instances()]
    entries += [(uid, r.content_hash, r.transfer_syntax_uid, r.dataset_offset)
                for uid, r in reader.iter_conflicts()]
    for uid, address, ts, offset in entries:
        referenced.add(address)
        try:
            actual = rehash(store, reader, address, ts, offset)
        except BlobNotFound:
            report.missing.append(uid)
        else:
            if actual != address:
                report.mismatched.append(uid)
        report.checked += 1
        if reader.external_path(address) is not None:
            report.external += 1
        if progress is not None:
            progress(1)
    for address in store.iter_addresses():
        if address not in referenced:
            report.orphans.append(address)
            if remove_orphans:
                store.remove(address)
                report.orphans_removed += 1
    return report


class CommitmentFailure(IntEnum):
    """Failure Reason (0008,1197) values of PS3.4 J.3.2.1.2 / C.4.1.1.4 we report."""

    PROCESSING_FAILURE = 0x0110  # the stored copy is missing or corrupted
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119


def commitment_failure(store: FilesystemBlobStore, reader: IndexReader, sop_class_uid: str,
                       sop_instance_uid: str) -> CommitmentFailure | None:
    """None when the instance is indexed and its file re-hashes to its address.

    A modality deletes its copy on our word, so "committed" requires reading
    every byte back, not just finding an index entry, and a file we own: content
    imported in place lives on someone else's storage, which may go away.
    """
    for attempt in range(2):  # the compression stage may swap the file under us once
        record = reader.instance(sop_instance_uid)
        if record is None:
            return CommitmentFailure.NO_SUCH_OBJECT_INSTANCE
        if record.sop_class_uid != sop_class_uid:
            return CommitmentFailure.CLASS_INSTANCE_CONFLICT
        if reader.external_path(record.content_hash) is not None:
            log.info("storage commitment refused for an instance imported in place (its "
                     "file is not in the archive's store)")
            return CommitmentFailure.PROCESSING_FAILURE
        try:
            actual = rehash(store, reader, record.content_hash, record.transfer_syntax_uid,
                            record.dataset_offset)
        except (BlobNotFound, OSError):
            actual = None
        if actual == record.content_hash:
            return None
        current = reader.instance(sop_instance_uid)
        if current is None or current.content_hash == record.content_hash:
            break
    return CommitmentFailure.PROCESSING_FAILURE
