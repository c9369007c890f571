"""`pacs verify`: re-hash every stored object against the index.

Finds index entries whose file is missing or whose content no longer matches
its address, and orphans (files no index entry references: left by a crash
between rename and index commit, never acknowledged, safe to remove).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from engine.index.reader import IndexReader
from engine.ingest.pipeline import content_hasher
from engine.store.blob_store import BlobNotFound, FilesystemBlobStore

_READ_SIZE = 1 << 20


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    orphans_removed: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched or
                    len(self.orphans) > self.orphans_removed)


def rehash(store: FilesystemBlobStore, address: str, transfer_syntax_uid: str,
           dataset_offset: int) -> str:
    """Content address recomputed from the stored file (transfer syntax + dataset bytes)."""
    hasher = content_hasher(transfer_syntax_uid)
    with store.open_blob(address) as fh:
        fh.seek(dataset_offset)
        while chunk := fh.read(_READ_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


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
            actual = rehash(store, address, ts, offset)
        except BlobNotFound:
            report.missing.append(uid)
        else:
            if actual != address:
                report.mismatched.append(uid)
        report.checked += 1
        if progress is not None:
            progress(1)
    for address in store.iter_addresses():
        if address not in referenced:
            report.orphans.append(address)
            if remove_orphans:
                store.remove(address)
                report.orphans_removed += 1
    return report
