"""Files the archive indexes but does not own: `pacs import --in-place`.

An in-place import registers a file where it lies instead of copying it into
objects/.  Its content address is computed as for any stored object; the table
`external_files` maps that address to the file's absolute path, written in the
transaction that first references the address and deleted in the one that
drops its last reference (`IndexTransaction.add_blob_reference`).  Every reader
of a stored file asks here first and falls back to the blob store's path.

Nothing ever deletes or rewrites an external file: the store only removes
paths under objects/, which an external path never is.  The table is absent
in an index that predates it and was only opened read-only since: readers
then see no external files, which is exactly right for such an index.
"""
from __future__ import annotations

import os
from pathlib import Path


def _k(content_hash: str) -> bytes:
    return content_hash.encode("ascii")


def path(txn, tables, content_hash: str) -> Path | None:
    """The external file holding `content_hash`, or None (in objects/, or unknown)."""
    table = tables.external_files
    if table is None:
        return None
    raw = txn.get(_k(content_hash), db=table)
    return None if raw is None else Path(os.fsdecode(bytes(raw)))


def put(txn, tables, content_hash: str, file_path: str | Path) -> None:
    """Record that `content_hash` lives at `file_path` (absolute, outside objects/)."""
    file_path = os.fspath(file_path)
    if not os.path.isabs(file_path):
        raise ValueError("external file paths must be absolute")
    txn.put(_k(content_hash), os.fsencode(file_path), db=tables.external_files)


def forget(txn, tables, content_hash: str) -> None:
    """Nothing references `content_hash` any more: forget where it was (never touch the file)."""
    if tables.external_files is not None:
        txn.delete(_k(content_hash), db=tables.external_files)
