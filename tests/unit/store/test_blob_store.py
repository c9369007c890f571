"""Content-addressed blob store on real files in tmp_path."""
from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import OutOfResources
from engine.store import blob_store
from engine.store.blob_store import BlobNotFound, FilesystemBlobStore, InvalidAddress

ADDRESS = "ab" + "0123456789abcdef" * 3 + "89abcdef012345"
OTHER = "f" * 64
assert len(ADDRESS) == 64

INVALID_ADDRESSES = [
    pytest.param("../x", id="dot-dot"),
    pytest.param("../" + "a" * 61, id="dot-dot-64-chars"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param(ADDRESS.upper(), id="uppercase-hex"),
    pytest.param("A" + ADDRESS[1:], id="one-uppercase-digit"),
    pytest.param(ADDRESS[:63], id="63-chars"),
    pytest.param(ADDRESS + "0", id="65-chars"),
    pytest.param(ADDRESS[:63] + "\x00", id="nul"),
    pytest.param(ADDRESS + "\n", id="trailing-newline"),
    pytest.param("g" * 64, id="non-hex"),
    pytest.param("", id="empty"),
    pytest.param(ADDRESS[:3] + "/" + ADDRESS[4:], id="slash"),
]


@pytest.fixture
def store(tmp_path) -> FilesystemBlobStore:
    s = FilesystemBlobStore(tmp_path / "data")
    s.open()
    return s


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> FilesystemBlobStore:
    """One opened store for tests that never write (opening makes 4,096 directories)."""
    s = FilesystemBlobStore(tmp_path_factory.mktemp("shared") / "data")
    s.open()
    return s


def put(store: FilesystemBlobStore, address: str, data: bytes) -> bool:
    temp = store.create_temp()
    temp.write(data)
    return store.commit(temp, address)


# --- open() -----------------------------------------------------------------------
def test_open_creates_the_4096_shard_directories(store):
    shards = sorted(p.name for p in store.objects.iterdir())
    assert shards == [f"{i:03x}" for i in range(4096)]
    assert all((store.objects / name).is_dir() for name in ("000", "abc", "fff"))


def test_open_creates_an_empty_tmp_directory(store):
    assert store.tmp.is_dir()
    assert list(store.tmp.iterdir()) == []


def test_open_removes_leftover_partial_files_and_counts_them(tmp_path):
    s = FilesystemBlobStore(tmp_path / "data")
    s.tmp.mkdir(parents=True)
    for name in ("a.partial", "b.partial"):
        (s.tmp / name).write_bytes(b"half a dataset")
    assert s.open() == 2
    assert list(s.tmp.iterdir()) == []


def test_open_leaves_files_in_tmp_that_are_not_partial_blobs(tmp_path):
    s = FilesystemBlobStore(tmp_path / "data")
    s.tmp.mkdir(parents=True)
    (s.tmp / "notes.txt").write_text("keep me")
    assert s.open() == 0
    assert (s.tmp / "notes.txt").read_text() == "keep me"


def test_open_twice_keeps_committed_blobs(store):
    put(store, ADDRESS, b"payload")
    assert store.open() == 0
    assert store.path_of(ADDRESS).read_bytes() == b"payload"


def test_open_recreates_a_missing_shard_directory(store):
    (store.objects / "abc").rmdir()
    store.open()
    assert (store.objects / "abc").is_dir()


# --- writing and committing ----------------------------------------------------------
def test_create_temp_makes_a_partial_file_in_tmp(store):
    temp = store.create_temp()
    try:
        assert temp.path.parent == store.tmp
        assert temp.path.name.endswith(".partial")
        assert temp.path.is_file()
    finally:
        temp.discard()


def test_temp_blob_counts_the_bytes_written(store):
    temp = store.create_temp()
    temp.write(b"abc")
    temp.write(memoryview(b"defgh"))
    assert temp.size == 8
    temp.discard()


def test_commit_puts_the_content_at_path_of_address(store):
    assert put(store, ADDRESS, b"dataset bytes") is True
    path = store.path_of(ADDRESS)
    assert path == store.objects / ADDRESS[:3] / ADDRESS
    assert path.read_bytes() == b"dataset bytes"


def test_commit_removes_the_temp_file(store):
    temp = store.create_temp()
    temp.write(b"x")
    store.commit(temp, ADDRESS)
    assert not temp.path.exists()
    assert list(store.tmp.iterdir()) == []


def test_second_commit_of_the_same_address_returns_false(store):
    put(store, ADDRESS, b"first")
    assert put(store, ADDRESS, b"second") is False


def test_second_commit_of_the_same_address_keeps_one_file_with_the_first_content(store):
    put(store, ADDRESS, b"first")
    put(store, ADDRESS, b"second")
    assert list(store.path_of(ADDRESS).parent.iterdir()) == [store.path_of(ADDRESS)]
    assert store.path_of(ADDRESS).read_bytes() == b"first"
    assert list(store.tmp.iterdir()) == []


def test_commit_to_an_invalid_address_raises_and_writes_nothing_in_objects(store):
    temp = store.create_temp()
    temp.write(b"x")
    with pytest.raises(InvalidAddress):
        store.commit(temp, "../../escape")
    temp.discard()
    assert list(store.iter_addresses()) == []
    assert not (store.root.parent / "escape").exists()


def test_discard_removes_the_temp_and_may_be_called_twice(store):
    temp = store.create_temp()
    temp.write(b"x")
    temp.discard()
    temp.discard()
    assert not temp.path.exists()


def test_committed_blob_exists_and_reports_its_size(store):
    put(store, ADDRESS, b"12345")
    assert store.exists(ADDRESS)
    assert store.size(ADDRESS) == 5
    assert not store.exists(OTHER)


# --- resources -----------------------------------------------------------------------
def test_create_temp_below_the_free_space_reserve_raises_out_of_resources(tmp_path):
    s = FilesystemBlobStore(tmp_path / "data", min_free_bytes=1 << 62)
    s.open()
    with pytest.raises(OutOfResources):
        s.create_temp()
    assert list(s.tmp.iterdir()) == []


def test_create_temp_with_room_above_the_reserve_succeeds(tmp_path):
    s = FilesystemBlobStore(tmp_path / "data", min_free_bytes=1)
    s.open()
    s.create_temp().discard()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG],
                         ids=["ENOSPC", "EDQUOT", "EFBIG"])
def test_disk_full_during_write_raises_out_of_resources(store, monkeypatch, code):
    temp = store.create_temp()

    def full(fd, data):
        raise OSError(code, os.strerror(code))

    with monkeypatch.context() as m:
        m.setattr(blob_store.os, "write", full)
        with pytest.raises(OutOfResources):
            temp.write(b"dataset")
    temp.discard()


def test_other_write_errors_stay_os_errors(store, monkeypatch):
    temp = store.create_temp()

    def broken(fd, data):
        raise OSError(errno.EIO, "I/O error")

    with monkeypatch.context() as m:
        m.setattr(blob_store.os, "write", broken)
        with pytest.raises(OSError) as info:
            temp.write(b"dataset")
    temp.discard()
    assert not isinstance(info.value, OutOfResources)
    assert info.value.errno == errno.EIO


def test_short_writes_are_continued_until_everything_is_written(store, monkeypatch):
    real_write = os.write
    temp = store.create_temp()
    with monkeypatch.context() as m:
        m.setattr(blob_store.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
        temp.write(b"0123456789")
    store.commit(temp, ADDRESS)
    assert store.path_of(ADDRESS).read_bytes() == b"0123456789"


# --- reading ---------------------------------------------------------------------------
def test_read_range_returns_the_requested_bytes(store):
    put(store, ADDRESS, bytes(range(100)))
    assert store.read_range(ADDRESS, 10, 5) == bytes([10, 11, 12, 13, 14])


def test_read_range_past_the_end_returns_what_there_is(store):
    put(store, ADDRESS, b"abcdef")
    assert store.read_range(ADDRESS, 4, 100) == b"ef"


def test_open_blob_of_an_absent_address_raises_blob_not_found(store):
    with pytest.raises(BlobNotFound):
        store.open_blob(OTHER)


def test_blob_not_found_is_a_file_not_found_error(store):
    with pytest.raises(FileNotFoundError):
        store.read_range(OTHER, 0, 1)


def test_size_of_an_absent_address_raises_blob_not_found(store):
    with pytest.raises(BlobNotFound):
        store.size(OTHER)


# --- removing and listing -------------------------------------------------------------
def test_remove_deletes_the_blob(store):
    put(store, ADDRESS, b"x")
    store.remove(ADDRESS)
    assert not store.exists(ADDRESS)


def test_remove_of_an_absent_address_is_a_no_op(store):
    store.remove(OTHER)
    assert list(store.iter_addresses()) == []


def test_iter_addresses_lists_exactly_the_committed_blobs(store):
    addresses = sorted({ADDRESS, OTHER, "0" * 64, "0" * 63 + "1", "fff" + "e" * 61})
    for i, address in enumerate(addresses):
        put(store, address, str(i).encode())
    store.create_temp()  # a partial blob is not a committed one
    assert list(store.iter_addresses()) == addresses


def test_iter_addresses_skips_files_that_are_not_addresses(store):
    put(store, ADDRESS, b"x")
    (store.objects / ADDRESS[:3] / "stray.tmp").write_bytes(b"?")
    (store.objects / "README").write_text("not a shard")
    assert list(store.iter_addresses()) == [ADDRESS]


def test_iter_addresses_of_an_unopened_store_is_empty(tmp_path):
    assert list(FilesystemBlobStore(tmp_path / "nothing").iter_addresses()) == []


# --- addresses never name a path outside the root -----------------------------------------
@pytest.mark.parametrize("address", INVALID_ADDRESSES)
@pytest.mark.parametrize("operation", ["path_of", "open_blob", "remove", "exists", "size"])
def test_invalid_address_raises_invalid_address(shared_store, address, operation):
    with pytest.raises(InvalidAddress):
        getattr(shared_store, operation)(address)


@pytest.mark.parametrize("address", INVALID_ADDRESSES)
def test_read_range_of_an_invalid_address_raises_invalid_address(shared_store, address):
    with pytest.raises(InvalidAddress):
        shared_store.read_range(address, 0, 1)


def test_invalid_address_is_a_value_error(shared_store):
    with pytest.raises(ValueError):
        shared_store.path_of("../x")


@given(address=st.one_of(st.text(max_size=80), st.text(alphabet="0123456789abcdefABCDEF./\x00",
                                                         min_size=60, max_size=68)))
def test_every_address_is_refused_or_names_a_file_inside_a_shard(shared_store, address):
    try:
        path = shared_store.path_of(address)
    except InvalidAddress:
        return
    assert path.parent.parent == shared_store.objects
    assert path.resolve().is_relative_to(shared_store.objects.resolve())
    assert path.name == address and len(address) == 64


def test_valid_address_maps_to_its_three_digit_shard(shared_store):
    assert shared_store.path_of("abc" + "0" * 61).parent == shared_store.objects / "abc"
