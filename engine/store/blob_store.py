"""Content-addressed storage of immutable blobs; knows nothing of DICOM.

Layout under the root::

    objects/abc/abc…     one file per blob, named by its content hash only, under
                         one of 4,096 shard directories made once at open()
    tmp/<random>.partial  blobs being received; removed at start-up

A name in objects/ is derived from the hash alone (64 lowercase hex digits are
checked), never from anything a peer sent, so no network input can name a path
outside the root.  `commit()` promises durability: when it returns, the blob is
fsync'd, renamed to its address, and the directory entry is fsync'd too.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from engine.errors import EngineError, OutOfResources

_ADDRESS = re.compile(r"[0-9a-f]{64}")
_TEMP_SUFFIX = ".partial"
_EARLY_WRITEBACK = 256 * 1024
_SHARDS = 4096  # first three hex digits of the address


class InvalidAddress(EngineError, ValueError):
    """A content address is not 64 lowercase hex digits."""


class BlobNotFound(EngineError, FileNotFoundError):
    """No blob is stored at that address."""


def _check(address: str) -> str:
    if not _ADDRESS.fullmatch(address):
        raise InvalidAddress("content address must be 64 lowercase hex digits")
    return address


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> None:
    """syncfs(2): flush the file system holding `fd`, reporting write-back errors (Linux
    >= 5.8); os.sync() (every file system, no error report) where libc lacks it."""
    global _libc_syncfs
    if _libc_syncfs is None:
        try:
            import ctypes

            _libc_syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        except (OSError, AttributeError):
            _libc_syncfs = False
    if _libc_syncfs is False:
        os.sync()
        return
    if _libc_syncfs(fd) != 0:
        import ctypes

        code = ctypes.get_errno()
        exc = OSError(code, os.strerror(code))
        _raise_resources(exc, "syncing the store")
        raise exc


_libc_syncfs = None


def _raise_resources(exc: OSError, what: str) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise OutOfResources(f"{what}: {os.strerror(exc.errno)}") from exc


class TempBlob:
    """A blob being written; lives in tmp/ until committed or discarded.

    Writes go through the OS page cache; `commit()` makes them durable.
    """

    __slots__ = ("path", "_fd", "size", "_flushed")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        self.size = 0
        self._flushed = 0

    def write(self, data) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.size += written
        except OSError as exc:
            _raise_resources(exc, "writing received object")
            raise
        if self.size - self._flushed >= _EARLY_WRITEBACK:
            # Start writeback of what we have now, so the final fsync waits for less.
            os.posix_fadvise(self._fd, self._flushed, self.size - self._flushed,
                             os.POSIX_FADV_DONTNEED)
            self._flushed = self.size

    def fsync_and_close(self) -> None:
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            _raise_resources(exc, "flushing received object")
            raise
        finally:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Throw the partial blob away (error paths); safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class FilesystemBlobStore:
    """Blobs as files under `root`, two directory levels deep by hash prefix."""

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.min_free_bytes = min_free_bytes
        self._free_checked_at = 0.0
        self._free_ok = True

    # -- lifecycle -------------------------------------------------------------
    def open(self, clear_temp: bool = True) -> int:
        """Create the layout and remove leftover temp blobs; returns how many were removed.

        The shard directories are made (and made durable) here, once, so a commit
        never has to create and fsync a new directory on the ingest path.
        `clear_temp=False` for tools that may run beside a server (`pacs import`):
        tmp/ then holds the server's files in flight.
        """
        for path in (self.root, self.objects, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        existing = set(os.listdir(self.objects))
        missing = [f"{i:03x}" for i in range(_SHARDS) if f"{i:03x}" not in existing]
        for name in missing:
            os.mkdir(self.objects / name)
        if missing:
            _fsync_dir(self.objects)
            _fsync_dir(self.root)
        removed = 0
        if not clear_temp:
            return removed
        for leftover in self.tmp.iterdir():
            if leftover.is_file() and leftover.name.endswith(_TEMP_SUFFIX):
                leftover.unlink()
                removed += 1
        return removed

    # -- writing ---------------------------------------------------------------
    def check_free_space(self) -> None:
        """Raise OutOfResources when the volume is below the configured reserve.

        Checked at most every 0.5 s: statvfs is cheap but not free at 1,000 stores/s.
        """
        now = time.monotonic()
        if now - self._free_checked_at > 0.5:
            st = os.statvfs(self.root)
            self._free_ok = st.f_bavail * st.f_frsize >= self.min_free_bytes
            self._free_checked_at = now
        if not self._free_ok:
            raise OutOfResources("storage volume below its free-space reserve")

    def create_temp(self) -> TempBlob:
        self.check_free_space()
        try:
            return TempBlob(self.tmp / f"{secrets.token_hex(12)}{_TEMP_SUFFIX}")
        except OSError as exc:
            _raise_resources(exc, "creating temp file")
            raise

    def commit(self, temp: TempBlob, address: str) -> bool:
        """Make `temp` durable under `address`.

        Order: fsync(file) → rename → fsync(directory).  Returns False when a blob
        with that address already existed (identical content): the temp is removed
        and the existing blob is kept.
        """
        final = self.path_of(address)
        temp.fsync_and_close()
        if final.exists():
            temp.discard()
            return False
        try:
            os.rename(temp.path, final)
        except OSError as exc:
            temp.discard()
            _raise_resources(exc, "renaming received object")
            raise
        _fsync_dir(final.parent)
        return True

    def adopt(self, path: Path, address: str) -> bool:
        """Move an already fsync'd file from tmp/ to `address` (rename, fsync dir).

        For blobs written elsewhere (a codec worker process).  Returns False when
        that address already existed: the file is removed, the existing blob kept.
        """
        path = Path(path)
        if path.parent != self.tmp:
            raise InvalidAddress("only files in the store's tmp/ can be adopted")
        final = self.path_of(address)
        if final.exists():
            path.unlink(missing_ok=True)
            return False
        try:
            os.rename(path, final)
        except OSError as exc:
            path.unlink(missing_ok=True)
            _raise_resources(exc, "renaming compressed object")
            raise
        _fsync_dir(final.parent)
        return True

    def adopt_many(self, paths_and_addresses: list[tuple[Path, str]]) -> list[bool]:
        """`adopt()` for many files written by the caller, with two file-system syncs in
        all instead of two fsyncs per file (`pacs import` of small files).

        Order: sync (every file durable) → rename each → sync (every rename durable).
        Returns, per file, whether it created its address.  A failed sync raises and
        leaves the files in tmp/ (nothing of them counts as stored).
        """
        for path, address in paths_and_addresses:
            if Path(path).parent != self.tmp:
                raise InvalidAddress("only files in the store's tmp/ can be adopted")
            _check(address)
        self.sync()
        created = []
        for path, address in paths_and_addresses:
            final = self.path_of(address)
            if final.exists():
                os.unlink(path)
                created.append(False)
                continue
            try:
                os.rename(path, final)
            except OSError as exc:
                _raise_resources(exc, "renaming imported object")
                raise
            created.append(True)
        if any(created):
            self.sync()
        return created

    def sync(self) -> None:
        """Make everything written to the store's file system durable (syncfs(2))."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------
    def path_of(self, address: str) -> Path:
        _check(address)
        return self.objects / address[:3] / address

    def exists(self, address: str) -> bool:
        return self.path_of(address).is_file()

    def open_blob(self, address: str) -> BinaryIO:
        try:
            return open(self.path_of(address), "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(address) from exc

    def read_range(self, address: str, offset: int, length: int) -> bytes:
        with self.open_blob(address) as fh:
            fh.seek(offset)
            return fh.read(length)

    def size(self, address: str) -> int:
        try:
            return self.path_of(address).stat().st_size
        except FileNotFoundError as exc:
            raise BlobNotFound(address) from exc

    def remove(self, address: str) -> None:
        try:
            os.unlink(self.path_of(address))
        except FileNotFoundError:
            pass

    def iter_addresses(self) -> Iterator[str]:
        """Every stored address (a full walk: for verification tools, not hot paths)."""
        if not self.objects.is_dir():
            return
        for shard in sorted(self.objects.iterdir()):
            if shard.is_dir():
                for blob in sorted(shard.iterdir()):
                    if _ADDRESS.fullmatch(blob.name):
                        yield blob.name
