"""A batch of scanned files into the index: one job in the writer's transaction.

Each file goes through `IndexTransaction.apply`, the code path of a received
instance (hierarchy, secondary indexes, blob counts, duplicate policy,
conflicts, forward jobs), then its journal row is written in the same
transaction, so "journaled" always means "indexed and durable".

A content address has one file, so one layout (size, dataset offset): when
the address is already referenced, the new record must describe the file that
is already there (in objects/ or imported in place), not the one just read,
whose file meta may differ.  An in-place file's path is recorded only when its
content was not referenced before.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from engine.index import external, import_journal
from engine.index.entry import IndexEntry, IndexOutcome
from engine.index.records import ConflictRecord, InstanceRecord
from engine.index.writer import IndexTransaction


@dataclass(frozen=True, slots=True)
class Pending:
    """One scanned file waiting for its index transaction."""

    entry: IndexEntry
    source_path: str
    journal_key: bytes
    source_size: int
    source_mtime_ns: int
    #: Copy mode: this run's rename created objects/<address>.
    created: bool = False


def _key(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def existing_layout(tx: IndexTransaction, sop_uid: str, content_hash: str
                    ) -> tuple[int, int] | None:
    """(size, dataset offset) an index record already gives this content, if any."""
    raw = tx.txn.get(_key(sop_uid), db=tx.t.instances)
    if raw is not None:
        record = InstanceRecord.decode(raw)
        if record.content_hash == content_hash:
            return record.size, record.dataset_offset
    raw = tx.txn.get(_key(f"{sop_uid}\x00{content_hash}"), db=tx.t.conflicts)
    if raw is not None:
        conflict = ConflictRecord.decode(raw)
        return conflict.size, conflict.dataset_offset
    return None


def apply_batch(tx: IndexTransaction, batch: list[Pending], duplicate_policy: str,
                in_place: bool) -> list[IndexOutcome]:
    """Index every file of `batch`; runs inside GroupCommitWriter.run_job."""
    txn, tables = tx.txn, tx.t
    outcomes = []
    for item in batch:
        entry = item.entry
        address = _key(entry.content_hash)
        had_blob = txn.get(address, db=tables.blobs) is not None
        if had_blob:
            layout = existing_layout(tx, entry.sop_instance_uid, entry.content_hash)
            if layout is not None:
                entry = replace(entry, size=layout[0], dataset_offset=layout[1])
        outcome = tx.apply(entry, duplicate_policy)
        if outcome is not IndexOutcome.REJECTED_DUPLICATE:
            if in_place and not had_blob and txn.get(address, db=tables.blobs) is not None:
                external.put(txn, tables, entry.content_hash, item.source_path)
            import_journal.record(txn, tables, item.journal_key, item.source_size,
                                  item.source_mtime_ns, entry.content_hash)
        outcomes.append(outcome)
    return outcomes
