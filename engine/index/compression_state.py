"""The compression stage's state in the index: queue, failures, cursor, totals, swaps.

    compress_queue     SOPInstanceUID -> b""          instances waiting (bounded by the sweep)
    compress_failures  SOPInstanceUID -> reason       not compressed, and why (not retried)
    meta  compress_cursor                             where the next sweep continues
    meta  compressed:<Modality>                       "count bytes_before bytes_after"

Everything here runs inside a transaction it is given: the writer thread's for
changes, any read transaction for reads.  The swap of an instance's file is
the one place an existing instance record changes content; it happens only if
the record still points at the file that was compressed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from engine.index.records import InstanceRecord

_CURSOR = b"compress_cursor"
_TOTALS_PREFIX = b"compressed:"


def _k(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class SwapResult:
    swapped: bool
    #: No index entry references the previous file any more: it may be removed.
    old_unreferenced: bool = False
    #: Not swapped and nothing references the new file: it may be removed.
    new_unreferenced: bool = False


@dataclass(frozen=True)
class CompressionTotals:
    count: int
    bytes_before: int
    bytes_after: int


# -- writes (inside the writer's transaction) -------------------------------------
def queue(txn, tables, uids: list[str], cursor: str) -> None:
    for uid in uids:
        txn.put(_k(uid), b"", db=tables.compress_queue)
    txn.put(_CURSOR, _k(cursor), db=tables.meta)


def dequeue(txn, tables, uid: str) -> None:
    txn.delete(_k(uid), db=tables.compress_queue)


def record_failure(txn, tables, uid: str, reason: str) -> None:
    txn.put(_k(uid), reason.encode("utf-8", "replace"), db=tables.compress_failures)
    dequeue(txn, tables, uid)


def clear_failures(txn, tables) -> int:
    """Forget every recorded failure (so they are tried again); returns how many."""
    count = txn.stat(tables.compress_failures)["entries"]
    txn.drop(tables.compress_failures, delete=False)
    return count


def swap_content(tx, uid: str, expected_hash: str, new_hash: str, transfer_syntax_uid: str,
                 size: int, dataset_offset: int, modality: str) -> SwapResult:
    """Point instance `uid` at its compressed file, if it still points at `expected_hash`.

    `tx` is the writer's IndexTransaction (blob reference counts, totals).
    """
    txn, tables = tx.txn, tx.t
    dequeue(txn, tables, uid)
    raw = txn.get(_k(uid), db=tables.instances)
    record = None if raw is None else InstanceRecord.decode(raw)
    if record is None or record.content_hash != expected_hash:
        return SwapResult(False, new_unreferenced=txn.get(_k(new_hash), db=tables.blobs) is None)
    txn.put(_k(uid), replace(record, transfer_syntax_uid=transfer_syntax_uid,
                             content_hash=new_hash, size=size,
                             dataset_offset=dataset_offset).encode(), db=tables.instances)
    tx.add_blob_reference(new_hash, size, +1)
    tx.add_blob_reference(expected_hash, record.size, -1)
    key = _TOTALS_PREFIX + _k(modality or "-")
    old = totals_from(txn.get(key, db=tables.meta))
    txn.put(key, f"{old.count + 1} {old.bytes_before + record.size} "
                 f"{old.bytes_after + size}".encode(), db=tables.meta)
    return SwapResult(True, old_unreferenced=txn.get(_k(expected_hash), db=tables.blobs) is None)


# -- reads --------------------------------------------------------------------------
def totals_from(raw) -> CompressionTotals:
    if raw is None:
        return CompressionTotals(0, 0, 0)
    count, before, after = bytes(raw).split()
    return CompressionTotals(int(count), int(before), int(after))


def queued(txn, tables, limit: int) -> list[str]:
    with txn.cursor(db=tables.compress_queue) as cur:
        found = []
        for key in cur.iternext(keys=True, values=False):
            found.append(bytes(key).decode("utf-8", "surrogateescape"))
            if len(found) >= limit:
                break
        return found


def queue_length(txn, tables) -> int:
    return txn.stat(tables.compress_queue)["entries"]


def failure(txn, tables, uid: str) -> str | None:
    raw = txn.get(_k(uid), db=tables.compress_failures)
    return None if raw is None else bytes(raw).decode("utf-8", "replace")


def failures(txn, tables) -> list[tuple[str, str]]:
    with txn.cursor(db=tables.compress_failures) as cur:
        return [(bytes(k).decode("utf-8", "surrogateescape"), bytes(v).decode("utf-8", "replace"))
                for k, v in cur]


def cursor(txn, tables) -> str:
    raw = txn.get(_CURSOR, db=tables.meta)
    return "" if raw is None else bytes(raw).decode("utf-8", "surrogateescape")


def totals_by_modality(txn, tables) -> dict[str, CompressionTotals]:
    found = {}
    with txn.cursor(db=tables.meta) as cur:
        if cur.set_range(_TOTALS_PREFIX):
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(_TOTALS_PREFIX):
                    break
                found[key[len(_TOTALS_PREFIX):].decode()] = totals_from(value)
    return found


__all__ = ["CompressionTotals", "SwapResult", "clear_failures", "cursor", "dequeue", "failure",
           "failures", "queue", "queue_length", "queued", "record_failure", "swap_content",
           "totals_by_modality"]
