"""The import journal: which source files `pacs import` has already indexed.

A row is written in the same transaction as the file's index entry, so after a
crash the journal never claims a file whose entry is missing, and a re-run
skips a file only if it was fully imported and has not changed since (same
size and modification time).  Keys are a 128-bit hash of the path, not the
path: LMDB keys are limited to 511 bytes and paths are not, and a migration of
10^8 files should keep the rows small (~64 bytes each).

    import_journal   blake2b-128(absolute path)  ->  size u64, mtime_ns i64, content hash (32 bytes)
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

_ROW = struct.Struct("<Qq32s")


@dataclass(frozen=True)
class JournalRow:
    size: int
    mtime_ns: int
    content_hash: str


def key(path: str) -> bytes:
    return hashlib.blake2b(os.fsencode(path), digest_size=16).digest()


def lookup(txn, tables, path_key: bytes) -> JournalRow | None:
    table = tables.import_journal
    if table is None:
        return None
    raw = txn.get(path_key, db=table)
    if raw is None:
        return None
    size, mtime_ns, digest = _ROW.unpack(bytes(raw))
    return JournalRow(size, mtime_ns, digest.hex())


def record(txn, tables, path_key: bytes, size: int, mtime_ns: int, content_hash: str) -> None:
    txn.put(path_key, _ROW.pack(size, mtime_ns, bytes.fromhex(content_hash)),
            db=tables.import_journal)


def count(txn, tables) -> int:
    table = tables.import_journal
    return 0 if table is None else txn.stat(table)["entries"]
