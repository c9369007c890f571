"""WADO-RS metadata (DICOM JSON without bulk data), built once per series.

A viewer asks for a series' metadata every time it opens it; reading every
file again each time would cost a disk read and a pydicom parse per instance.
The JSON of each instance is built once from its file (everything up to the
Pixel Data, which becomes a BulkDataURI like any large binary value) and
kept: by content hash, so the entry of a stored file never goes stale (a
re-stored or compressed instance has a new hash).  Each series' answer is the
concatenation, kept under a signature read from the index in one transaction:
its instances' UIDs and content hashes.  A new, replaced or removed instance
changes the signature, and the series is rebuilt from the per-instance entries,
so only the changed files are read again.  Memory is bounded (LRU by bytes).
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

from engine.index.reader import IndexReader
from engine.store.blob_store import FilesystemBlobStore
from engine.web.dicom_json import dataset_json, tag_key
from engine.web.frames import read_stored_dataset

_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # Float, Double Float, Pixel Data


@dataclass(frozen=True)
class InstanceRef:
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    content_hash: str
    path: str
    dataset_offset: int
    transfer_syntax_uid: str


class _LRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.items: OrderedDict = OrderedDict()

    def get(self, key):
        found = self.items.get(key)
        if found is not None:
            self.items.move_to_end(key)
        return found

    def put(self, key, value: tuple) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.size -= len(old[1])
        self.items[key] = value
        self.size += len(value[1])
        while self.size > self.max_bytes and len(self.items) > 1:
            _, dropped = self.items.popitem(last=False)
            self.size -= len(dropped[1])


class MetadataCache:
    """Series and instance metadata as DICOM JSON bytes; methods block (call on a thread)."""

    def __init__(self, reader: IndexReader, store: FilesystemBlobStore,
                 max_bytes: int = 128 << 20) -> None:
        self.reader = reader
        self.store = store
        self._lock = threading.Lock()
        self._instances = _LRU(max_bytes // 2)
        self._series = _LRU(max_bytes // 2)
        #: Files read to build entries (the tests check the cache with it).
        self.files_read = 0

    def series_refs(self, study_uid: str, series_uid: str) -> list[InstanceRef] | None:
        """The series' instances as the index has them now (one snapshot), None if unknown."""
        with self.reader.snapshot() as ix:
            series = ix.series(series_uid)
            if series is None or series.study_instance_uid != study_uid:
                return None
            refs = []
            for sop_uid in ix.instances_of_series(series_uid):
                record = ix.instance(sop_uid)
                if record is None:
                    continue
                path = ix.external_path(record.content_hash) or \
                    self.store.path_of(record.content_hash)
                refs.append(InstanceRef(sop_uid, series_uid, study_uid, record.content_hash,
                                        str(path), record.dataset_offset,
                                        record.transfer_syntax_uid))
            return refs

    def study_series(self, study_uid: str) -> list[str] | None:
        with self.reader.snapshot() as ix:
            if ix.study(study_uid) is None:
                return None
            return ix.series_of_study(study_uid)

    def series_json(self, study_uid: str, series_uid: str, base_url: str) -> bytes | None:
        """The JSON array of the series' instances, or None when there is no such series."""
        refs = self.series_refs(study_uid, series_uid)
        if refs is None:
            return None
        signature = hashlib.blake2b("\n".join(
            f"{r.sop_instance_uid} {r.content_hash}" for r in refs).encode(),
            digest_size=16).digest()
        key = (series_uid, base_url)
        with self._lock:
            found = self._series.get(key)
        if found is not None and found[0] == signature:
            return found[1]
        body = b"[" + b",".join(self.instance_json(r, base_url) for r in refs) + b"]"
        with self._lock:
            self._series.put(key, (signature, body))
        return body

    def instance_json(self, ref: InstanceRef, base_url: str) -> bytes:
        """The JSON object of one instance (from the cache, else from its file)."""
        key = (ref.content_hash, ref.sop_instance_uid, base_url)
        with self._lock:
            found = self._instances.get(key)
        if found is not None:
            return found[1]
        body = json.dumps(self._build(ref, base_url), ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
        with self._lock:
            self._instances.put(key, (None, body))
        return body

    def _build(self, ref: InstanceRef, base_url: str) -> dict:
        prefix = (f"{base_url}/studies/{ref.study_instance_uid}/series/"
                  f"{ref.series_instance_uid}/instances/{ref.sop_instance_uid}/bulkdata/")
        stopped_at: list[tuple[int, str | None]] = []

        def stop(tag, vr, length) -> bool:
            if int(tag) in _PIXEL_TAGS:
                stopped_at.append((int(tag), vr))
                return True
            return False

        self.files_read += 1
        ds = read_stored_dataset(ref.path, ref.dataset_offset, ref.transfer_syntax_uid,
                                 stop_when=stop, defer_size=256 * 1024)
        out = dataset_json(ds, lambda path: prefix + path)
        if stopped_at:
            tag, vr = stopped_at[0]
            vr = vr if vr in ("OB", "OW", "OF", "OD") else \
                {0x7FE00008: "OF", 0x7FE00009: "OD"}.get(tag, "OW")
            out[tag_key(tag)] = {"vr": vr, "BulkDataURI": prefix + tag_key(tag)}
        return out
