"""One source file, in a worker process: read, check, hash, scan, and (copy mode) store.

The dataset bytes are read once: they feed the content hasher (the same
address network ingest computes: transfer syntax + dataset bytes, file meta
excluded), the tag scanner (the compiled one; no pydicom parse) and, in copy
mode, a temp file in the data dir's tmp/ behind a file meta we write, as
ingest does.  The scanner walks the whole dataset, not only up to the indexed
attributes, so a file cut short anywhere (a truncated copy, a file still being
written) is refused instead of archived broken.

In copy mode the copies of one task (a few dozen files) are made durable here,
together: sync of the file system, rename of each to its address, sync again
(`FilesystemBlobStore.adopt_many`: two syncfs(2) per task instead of two fsyncs
per file, which bound small files); the parent indexes them afterwards.  A crash
in between leaves unindexed files in objects/ that the next run adopts again
(or `pacs verify` reports as orphans).  Nothing outside the data dir is ever
written: a source file is opened read-only, without following links.
"""
from __future__ import annotations

import errno
import io
import os
import secrets
import signal
import stat
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from engine.dicom.attributes import decode_indexed, decode_tags
from engine.dicom.part10 import dataset_offset as stored_dataset_offset
from engine.dicom.part10 import encode_file_header
from engine.dicom.tags import INDEXED_TAGS
from engine.dicom.tagscan import TagScanner
from engine.dicom.uids import (
    ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES, is_valid_uid, transfer_syntax_encoding)
from engine.errors import OutOfResources, TagScanError
from engine.ingest.pipeline import content_hasher
from engine.store.blob_store import FilesystemBlobStore

CHUNK = 1 << 20
#: Our temp files in the data dir's tmp/: never named *.partial (the server's, cleared at
#: its start-up); `pacs import` removes leftovers of its own under its lock.
TEMP_PREFIX, TEMP_SUFFIX = "import-", ".importing"
_INFLATE_STEP = 256 * 1024
_EARLY_WRITEBACK = 256 * 1024
# A wanted tag above every real one makes the scanner walk the dataset to its end.
_END = 0xFFFFFFFF
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"))
_ACCEPTED = frozenset(ACCEPTED_TRANSFER_SYNTAXES)
_STORAGE = frozenset(STORAGE_SOP_CLASSES)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

OK, REJECTED, RETRY, FATAL = "ok", "rejected", "retry", "fatal"


@dataclass(frozen=True)
class ScanSettings:
    data_dir: str
    copy: bool
    ae_title: str
    min_free_bytes: int = 0
    #: Tags beyond the indexed ones (what `--route` rules look at).
    extra_tags: tuple[int, ...] = ()
    #: The importing process: a worker whose parent is gone exits at once.
    parent_pid: int = 0


@dataclass(slots=True)
class Scanned:
    """What the parent needs to index one file (or why it cannot)."""

    path: str
    #: Size and mtime of the source file as read (the journal's change detector).
    size: int
    mtime_ns: int
    status: str
    reason: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    content_hash: str = ""
    #: The file the index points to: the stored copy (copy mode) or the source (in place).
    stored_size: int = 0
    dataset_offset: int = 0
    attributes: dict = field(default_factory=dict)
    extra_attributes: dict = field(default_factory=dict)
    #: Copy mode: this file's rename created objects/<hash> (it did not exist).
    created: bool = False


class _Refused(Exception):
    """The file cannot be imported; the message is the reason reported."""

    def __init__(self, reason: str, status: str = REJECTED) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class FileMeta:
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    #: Where the dataset starts (after preamble, "DICM" and the group 0002 elements).
    dataset_offset: int


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def parse_file_meta(head: bytes) -> FileMeta:
    """The file meta group of a Part 10 file (PS3.10 7.1): Explicit VR Little Endian.

    The elements are walked rather than trusting the group length, which some
    writers get wrong.  Raises _Refused with the reason.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        raise _Refused("not a DICOM Part 10 file (no 'DICM' at byte 128)")
    pos, values = 132, {}
    while True:
        if pos + 8 > len(head):
            if len(head) < CHUNK:
                raise _Refused("file ends inside its file meta")
            raise _Refused("file meta larger than 1 MiB")
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = bytes(head[pos + 4:pos + 6])
        if not vr.isalpha() or not vr.isupper():
            raise _Refused("file meta is not in Explicit VR Little Endian")
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                raise _Refused("file ends inside its file meta")
            (length,) = struct.unpack_from("<I", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if start + length > len(head):
            if len(head) < CHUNK and length != 0xFFFFFFFF:
                raise _Refused("file ends inside its file meta")
            raise _Refused("file meta element has an impossible length")
        values[element] = bytes(head[start:start + length])
        pos = start + length
    ts = _text(values.get(0x0010, b""))
    if not ts:
        raise _Refused("no Transfer Syntax UID in the file meta")
    return FileMeta(ts, _text(values.get(0x0002, b"")), _text(values.get(0x0003, b"")), pos)


# -- the worker process ---------------------------------------------------------------
_settings: ScanSettings | None = None
_store: FilesystemBlobStore | None = None
_wanted: tuple[int, ...] = ()


def init_worker(settings: ScanSettings) -> None:
    """Process-pool initializer: Ctrl-C is the parent's to handle (it drains, then stops)."""
    global _settings, _store, _wanted
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(settings.parent_pid)
    _settings = settings
    _store = FilesystemBlobStore(Path(settings.data_dir), settings.min_free_bytes)
    _wanted = tuple(sorted(set(INDEXED_TAGS) | set(settings.extra_tags) | {_END}))


def _die_with_parent(parent_pid: int) -> None:
    """A kill -9 of `pacs import` must not leave workers writing into the data dir."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the line above: nobody will read our results


def ready() -> None:
    """A no-op task: makes the pool start its workers before there is work."""


def scan_batch(candidates: list[tuple[str, int, int, int, int]]) -> list[Scanned]:
    """Worker entry point: candidates as (path, size, mtime_ns, dev, ino) from the walk."""
    assert _settings is not None and _store is not None, "init_worker was not run"
    return scan_many(candidates, _settings, _store, _wanted)


def scan_file(candidate: tuple[str, int, int, int, int], settings: ScanSettings,
              store: FilesystemBlobStore, wanted: tuple[int, ...]) -> Scanned:
    return scan_many([candidate], settings, store, wanted)[0]


def scan_many(candidates: list[tuple[str, int, int, int, int]], settings: ScanSettings,
              store: FilesystemBlobStore, wanted: tuple[int, ...]) -> list[Scanned]:
    """Read each file; copy mode: then make all their copies durable at once."""
    results, copies = [], []
    for candidate in candidates:
        result, temp = _scan_one(candidate, settings, store, wanted)
        results.append(result)
        if temp is not None:
            copies.append((result, temp))
    if copies:
        _commit_copies(copies, store)
    return results


def _scan_one(candidate: tuple[str, int, int, int, int], settings: ScanSettings,
              store: FilesystemBlobStore, wanted: tuple[int, ...]
              ) -> tuple[Scanned, "_Temp | None"]:
    path, size, mtime_ns, dev, ino = candidate
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            reason = "disappeared before it was read"
        elif exc.errno == errno.ELOOP:
            reason = "replaced by a symbolic link since the walk: not followed"
        else:
            reason = f"unreadable: {exc.strerror}"
        return Scanned(path, size, mtime_ns, REJECTED, reason), None
    temp: _Temp | None = None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("not a regular file")
        if (st.st_dev, st.st_ino) != (dev, ino):
            raise _Refused("replaced since the walk", RETRY)
        result = Scanned(path, st.st_size, st.st_mtime_ns, OK)
        if st.st_size == 0:
            raise _Refused("empty file")
        with io.FileIO(fd, closefd=False) as fh:
            temp = _read(fh, st, result, settings, store, wanted)
        if temp is None:
            result.stored_size = st.st_size
            return result, None
        temp.close()
        # Our file meta, then the dataset bytes: the layout the index records.
        result.dataset_offset = temp.size - (result.size - result.dataset_offset)
        result.stored_size = temp.size
        committed, temp = temp, None
        return result, committed
    except _Refused as exc:
        return Scanned(path, size, mtime_ns, exc.status, str(exc)), None
    except OutOfResources as exc:
        return Scanned(path, size, mtime_ns, FATAL, str(exc)), None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return Scanned(path, size, mtime_ns, FATAL, f"data volume full: {exc.strerror}"), None
        return Scanned(path, size, mtime_ns, REJECTED, f"read error: {exc.strerror or exc}"), None
    except Exception as exc:  # a bug must not stop a migration: report the file
        return Scanned(path, size, mtime_ns, REJECTED, f"internal error: {exc!r}"), None
    finally:
        os.close(fd)
        if temp is not None:
            temp.discard()


def _commit_copies(copies: list[tuple[Scanned, "_Temp"]], store: FilesystemBlobStore) -> None:
    """sync → rename each to its address → sync: two file-system syncs for the whole task
    instead of a file fsync and a directory fsync per file (small files are fsync-bound)."""
    try:
        created = store.adopt_many([(temp.path, result.content_hash) for result, temp in copies])
    except (OSError, OutOfResources) as exc:
        for result, temp in copies:
            temp.discard()
            result.status, result.reason = FATAL, f"cannot make the copies durable: {exc}"
        return
    for (result, _), made in zip(copies, created):
        result.created = made
        if made:
            continue
        # Already stored (a duplicate, or a file renamed by an interrupted run): the
        # index must describe that file, whose file meta may differ from ours.
        try:
            with open(store.path_of(result.content_hash), "rb") as fh:
                result.dataset_offset = stored_dataset_offset(fh.read(4096))
                result.stored_size = os.fstat(fh.fileno()).st_size
        except (OSError, ValueError):
            pass  # the layout of our copy; `pacs verify` judges the existing file


class _Temp:
    """A copy being written to tmp/ under our own name; made durable with its task's batch."""

    __slots__ = ("path", "_fd", "size", "_flushed")

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / f"{TEMP_PREFIX}{secrets.token_hex(12)}{TEMP_SUFFIX}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o640)
        self.size = 0
        self._flushed = 0

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self.size += written
        if self.size - self._flushed >= _EARLY_WRITEBACK:
            # Start writeback now, so the batch's sync waits for less.
            os.posix_fadvise(self._fd, self._flushed, self.size - self._flushed,
                             os.POSIX_FADV_DONTNEED)
            self._flushed = self.size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _read(fh: io.FileIO, st: os.stat_result, result: Scanned, settings: ScanSettings,
          store: FilesystemBlobStore, wanted: tuple[int, ...]) -> _Temp | None:
    """Read the file once; fill `result`; returns the copy, not yet durable (copy mode)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    n = _fill(fh, view)
    meta = parse_file_meta(view[:n])
    ts = meta.transfer_syntax_uid
    if ts not in _ACCEPTED:
        raise _Refused(f"transfer syntax not accepted ({ts})")
    encoding = transfer_syntax_encoding(ts)
    scanner = TagScanner(encoding.explicit_vr, encoding.little_endian, wanted,
                         stop_tag=1 << 32)
    inflater = zlib.decompressobj(-15) if encoding.deflated else None
    hasher = content_hasher(ts)
    total = n
    chunk = view[meta.dataset_offset:n]
    _scan(scanner, inflater, chunk)
    temp, header_uids = None, ("", "")
    if settings.copy:
        # The file meta we write names the dataset's UIDs (known from the first chunk in
        # practice: group 0008 comes first); if they differ at the end, copy again.
        header_uids = _header_uids(scanner.values, meta)
        if header_uids is not None:
            temp = _start_copy(store, header_uids, ts, settings.ae_title)
    try:
        while True:
            hasher.update(chunk)
            if temp is not None:
                temp.write(chunk)
            n = _fill(fh, view)
            if n == 0:
                break
            total += n
            chunk = view[:n]
            _scan(scanner, inflater, chunk)
        try:
            if inflater is not None:
                scanner.feed(inflater.flush())
            scanner.finish()
        except (TagScanError, zlib.error) as exc:
            raise _Refused(f"dataset incomplete or corrupt: {exc}") from None
        after = os.fstat(fh.fileno())
        if total != st.st_size or (after.st_size, after.st_mtime_ns) != (st.st_size,
                                                                           st.st_mtime_ns):
            raise _Refused("changed while being read (still being written?)", RETRY)
        attrs = decode_indexed(scanner.values, encoding.little_endian)
        _check(attrs)
        result.transfer_syntax_uid = ts
        result.sop_instance_uid = attrs["SOPInstanceUID"]
        result.sop_class_uid = attrs["SOPClassUID"]
        result.attributes = attrs
        result.content_hash = hasher.hexdigest()
        result.dataset_offset = meta.dataset_offset
        if settings.extra_tags:
            result.extra_attributes = decode_tags(scanner.values, settings.extra_tags,
                                                  encoding.little_endian)
        if settings.copy and header_uids != (result.sop_class_uid, result.sop_instance_uid):
            if temp is not None:
                temp.discard()
            temp = None
            temp = _copy_again(fh, meta, result, store, settings.ae_title)
        return temp
    except BaseException:
        if temp is not None:
            temp.discard()
        raise


def _fill(fh: io.FileIO, view: memoryview) -> int:
    """Read until `view` is full or the file ends; returns the bytes read."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _scan(scanner, inflater, chunk) -> None:
    if scanner.done:
        return
    try:
        if inflater is None:
            scanner.feed(chunk)
        else:
            data = bytes(chunk)
            while data and not scanner.done:
                scanner.feed(inflater.decompress(data, _INFLATE_STEP))
                data = inflater.unconsumed_tail
    except (TagScanError, zlib.error) as exc:
        raise _Refused(f"dataset not parseable: {exc}") from None


def _check(attrs: dict) -> None:
    """The checks network ingest makes (UIDs present and valid), plus: a storage SOP class."""
    for keyword, what in (("SOPInstanceUID", "SOP Instance UID"),
                          ("SOPClassUID", "SOP Class UID"),
                          ("StudyInstanceUID", "Study Instance UID"),
                          ("SeriesInstanceUID", "Series Instance UID")):
        value = attrs.get(keyword, "")
        if not value:
            raise _Refused(f"no {what}")
        if not is_valid_uid(str(value)):
            raise _Refused(f"{what} is not a valid UID ({len(str(value))} characters)")
    if attrs["SOPClassUID"] not in _STORAGE:
        raise _Refused(f"not a storage SOP class ({attrs['SOPClassUID']})")


def _header_uids(values: dict, meta: FileMeta) -> tuple[str, str] | None:
    sop_class = _text(values[0x00080016]) if 0x00080016 in values else meta.sop_class_uid
    sop_uid = _text(values[0x00080018]) if 0x00080018 in values else meta.sop_instance_uid
    if is_valid_uid(sop_class) and is_valid_uid(sop_uid):
        return sop_class, sop_uid
    return None  # refused later for it, or copied again with the dataset's UIDs


def _start_copy(store: FilesystemBlobStore, uids: tuple[str, str], ts: str,
                ae_title: str) -> _Temp:
    store.check_free_space()
    temp = _Temp(store.tmp)
    try:
        temp.write(encode_file_header(uids[0], uids[1], ts, ae_title))
    except BaseException:
        temp.discard()
        raise
    return temp


def _copy_again(fh: io.FileIO, meta: FileMeta, result: Scanned,
                store: FilesystemBlobStore, ae_title: str) -> _Temp:
    """Second pass when the first chunk did not name the dataset's UIDs (rare)."""
    temp = _start_copy(store, (result.sop_class_uid, result.sop_instance_uid),
                       result.transfer_syntax_uid, ae_title)
    try:
        hasher = content_hasher(result.transfer_syntax_uid)
        fh.seek(meta.dataset_offset)
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
            temp.write(chunk)
        if hasher.hexdigest() != result.content_hash:
            raise _Refused("changed while being read (still being written?)", RETRY)
    except BaseException:
        temp.discard()
        raise
    return temp
