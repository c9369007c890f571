"""Imported files into a real LMDB index: external paths, journal rows, layouts, deletion."""
from __future__ import annotations

from dataclasses import replace

import pytest

from engine.index import import_journal
from engine.index.database import IndexDatabase
from engine.index.entry import IndexEntry, IndexOutcome
from engine.index.reader import IndexReader
from engine.index.writer import GroupCommitWriter
from engine.migration.indexing import Pending, apply_batch
from engine.store.blob_store import FilesystemBlobStore

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UID = "1.2.826.0.1.1.1.1"


def entry(content: int, size: int = 1000, offset: int = 300, uid: str = UID) -> IndexEntry:
    attrs = {"PatientID": "P1", "StudyInstanceUID": "1.2.826.0.1", "Modality": "CT",
             "SeriesInstanceUID": "1.2.826.0.1.1", "SOPInstanceUID": uid}
    return IndexEntry(uid, CT, EXPLICIT_LE, f"{content:064x}", size, offset,
                      "2024-01-01T00:00:00.000+00:00", "IMPORT", attrs)


def pending(e: IndexEntry, path: str) -> Pending:
    return Pending(e, path, import_journal.key(path), e.size, 123456789)


class Index:
    def __init__(self, tmp_path, policy="keep-first"):
        self.db = IndexDatabase(tmp_path / "index", 1 << 26)
        self.writer = GroupCommitWriter(self.db, policy, 64)
        self.writer.start()
        self.reader = IndexReader(self.db)
        self.policy = policy

    def run(self, items, in_place=True):
        return self.writer.run_job(lambda tx: apply_batch(tx, items, self.policy, in_place))

    def journal(self, path):
        with self.reader.snapshot() as ix:
            return import_journal.lookup(ix.txn, ix.t, import_journal.key(path))

    def close(self):
        self.writer.stop()
        self.db.close()


@pytest.fixture
def index(tmp_path):
    ix = Index(tmp_path)
    yield ix
    ix.close()


def test_in_place_records_the_path_and_the_journal_in_one_transaction(index, tmp_path):
    source = tmp_path / "legacy" / "a.dcm"
    source.parent.mkdir()
    source.write_bytes(b"x" * 1000)
    assert index.run([pending(entry(1), str(source))]) == [IndexOutcome.STORED]
    assert index.reader.external_path(f"{1:064x}") == source
    row = index.journal(str(source))
    assert (row.size, row.mtime_ns, row.content_hash) == (1000, 123456789, f"{1:064x}")
    # The same content found again elsewhere: a duplicate; the first path stays the file.
    assert index.run([pending(entry(1), str(tmp_path / "copy.dcm"))]) == [
        IndexOutcome.IDENTICAL]
    assert index.reader.external_path(f"{1:064x}") == source
    assert index.journal(str(tmp_path / "copy.dcm")) is not None


def test_deleting_an_in_place_instance_never_names_its_file(index, tmp_path):
    source = tmp_path / "a.dcm"
    source.write_bytes(b"x" * 1000)
    store = FilesystemBlobStore(tmp_path / "data")
    index.run([pending(entry(1), str(source))])
    address = index.writer.run_job(lambda tx: tx.delete_instance(UID))
    assert address == f"{1:064x}"  # unreferenced: the caller removes objects/<address> ...
    store.remove(address)
    assert source.read_bytes() == b"x" * 1000  # ... which is never the external file
    assert index.reader.external_path(address) is None
    assert index.reader.blob(address) is None


def test_content_already_stored_keeps_the_layout_of_its_file(index, tmp_path):
    # Received over the network first: objects/<address>, our file meta (offset 300).
    assert index.run([pending(entry(1), "/net")], in_place=False) == [IndexOutcome.STORED]
    # The legacy copy of the same content has another file meta: same address, a duplicate.
    legacy = entry(1, size=1500, offset=800)
    assert index.run([pending(legacy, str(tmp_path / "a.dcm"))]) == [IndexOutcome.IDENTICAL]
    assert index.reader.external_path(f"{1:064x}") is None
    # A conflict's content whose current instance was deleted, imported again in place:
    # the record must describe the stored file (offset 300), not the legacy one.
    assert index.run([pending(entry(2), "/net2")], in_place=False) == [
        IndexOutcome.CONFLICT_KEPT_FIRST]
    index.writer.run_job(lambda tx: tx.delete_instance(UID))
    outcome = index.run([pending(entry(2, size=1500, offset=800), str(tmp_path / "b.dcm"))])
    assert outcome == [IndexOutcome.STORED]
    record = index.reader.instance(UID)
    assert (record.content_hash, record.size, record.dataset_offset) == (
        f"{2:064x}", 1000, 300)
    assert index.reader.external_path(f"{2:064x}") is None


def test_an_in_place_conflict_is_read_from_its_path(index, tmp_path):
    index.run([pending(entry(1), str(tmp_path / "first.dcm"))])
    outcome = index.run([pending(entry(2), str(tmp_path / "second.dcm"))])
    assert outcome == [IndexOutcome.CONFLICT_KEPT_FIRST]
    assert index.reader.external_path(f"{2:064x}") == tmp_path / "second.dcm"


def test_rejected_duplicates_are_not_journaled(tmp_path):
    ix = Index(tmp_path, policy="reject")
    try:
        ix.run([pending(entry(1), str(tmp_path / "a"))])
        assert ix.run([pending(entry(2), str(tmp_path / "b"))]) == [
            IndexOutcome.REJECTED_DUPLICATE]
        assert ix.journal(str(tmp_path / "b")) is None
        assert ix.reader.external_path(f"{2:064x}") is None
    finally:
        ix.close()


def test_a_failing_batch_leaves_nothing_behind(index, tmp_path):
    bad = replace(entry(3), content_hash="not-hex")  # the journal row cannot be encoded
    with pytest.raises(ValueError):
        index.run([pending(entry(1), str(tmp_path / "a")), pending(bad, str(tmp_path / "b"))])
    assert index.reader.instance(UID) is None
    assert index.journal(str(tmp_path / "a")) is None


def test_read_only_open_of_an_index_without_the_new_tables(tmp_path):
    """An index written before these tables existed: read-only readers see no external
    files and no journal rather than failing."""
    import lmdb

    ix = Index(tmp_path)
    ix.close()
    env = lmdb.open(str(tmp_path / "index"), max_dbs=64)
    with env.begin(write=True) as txn:
        for name in (b"external_files", b"import_journal"):
            txn.drop(env.open_db(name, txn=txn), delete=True)
    env.close()
    db = IndexDatabase(tmp_path / "index", 1 << 26, readonly=True)
    try:
        reader = IndexReader(db)
        assert reader.external_path(f"{1:064x}") is None
        with reader.snapshot() as snap:
            assert import_journal.lookup(snap.txn, snap.t, b"k" * 16) is None
    finally:
        db.close()
