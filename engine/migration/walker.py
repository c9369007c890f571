"""Which files an import reads: a walk of the trees it is given.

Directories are opened relative to their parent with O_NOFOLLOW, so a directory
swapped for a symbolic link during the walk is not entered, and every path
yielded is a real path below the (resolved) root.  Symbolic links are never
followed: one pointing inside the tree is skipped because its target is walked
under its own name, one pointing outside is reported.  FIFOs, sockets and
devices are reported and skipped (opening a FIFO would block).

A directory holding a DICOMDIR is read through it first (the media's own list
of files, in its order; files it lists but that are missing are reported),
then walked like any other, so files the DICOMDIR does not list are imported
too.  DICOMDIR file IDs come from file content: each component must be a plain
name, and the file must resolve below the root, or it is refused.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Candidate:
    """A regular file to read, as the walk saw it (the reader checks it is still the same)."""

    path: str
    size: int
    mtime_ns: int
    dev: int
    ino: int

    @classmethod
    def from_stat(cls, path: str, st: os.stat_result) -> "Candidate":
        return cls(path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something the walk will not import; `rejected`: bad input, not a skip by design."""

    path: str
    reason: str
    rejected: bool = False


Found = Candidate | Skipped


def _special(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe): skipped"
    if stat.S_ISSOCK(mode):
        return "socket: skipped"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file: skipped"
    return "not a regular file: skipped"


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _symlink(path: str, top: str) -> Skipped:
    try:
        target = os.path.realpath(path, strict=True)
    except OSError:
        return Skipped(path, "broken symbolic link: skipped")
    if _inside(target, top):
        return Skipped(path, "symbolic link inside the tree: its target is imported under "
                             "its own path")
    return Skipped(path, f"symbolic link outside the import tree (to {target}): not followed")


def distinct_roots(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Resolved roots, without those lying inside another (each file is read once)."""
    roots = sorted({os.path.realpath(p) for p in paths})
    kept: list[str] = []
    for root in roots:
        if not any(_inside(root, k) for k in kept):
            kept.append(root)
    return kept


def walk(paths: Iterable[str | os.PathLike], exclude: Iterable[str] = (),
         use_dicomdir: bool = True) -> Iterator[Found]:
    """Every file below `paths` as a Candidate or a Skipped, in a stable (sorted) order.

    `exclude`: directories never entered (the archive's own data directory).
    """
    excluded = {os.path.realpath(p) for p in exclude}
    for top in distinct_roots(paths):
        try:
            st = os.stat(top)  # the user named this root: following it is what they asked
        except OSError as exc:
            yield Skipped(top, f"cannot read: {exc.strerror}", rejected=True)
            continue
        if stat.S_ISREG(st.st_mode):
            yield Candidate.from_stat(top, st)
        elif not stat.S_ISDIR(st.st_mode):
            yield Skipped(top, _special(st.st_mode))
        elif any(_inside(top, e) for e in excluded):
            yield Skipped(top, "inside the archive's own data directory: not imported",
                          rejected=True)
        else:
            try:
                fd = os.open(top, _DIR_FLAGS)
            except OSError as exc:
                yield Skipped(top, f"directory not readable: {exc.strerror}", rejected=True)
                continue
            try:
                yield from _walk_dir(fd, top, top, _Walk(excluded, set(), use_dicomdir))
            finally:
                os.close(fd)


@dataclass(slots=True)
class _Walk:
    excluded: set[str]
    #: Files already yielded from a DICOMDIR (the walk skips them when it meets them).
    listed: set[str]
    use_dicomdir: bool


def _walk_dir(fd: int, path: str, top: str, w: _Walk) -> Iterator[Found]:
    try:
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield Skipped(path, f"directory not readable: {exc.strerror}", rejected=True)
        return
    dicomdir = None
    if w.use_dicomdir:
        dicomdir = next((e for e in entries if e.name.upper() == "DICOMDIR"
                         and e.is_file(follow_symlinks=False)), None)
        if dicomdir is not None:
            yield from _from_dicomdir(os.path.join(path, dicomdir.name), path, w.listed)
    for entry in entries:
        full = os.path.join(path, entry.name)
        if entry is dicomdir or full in w.listed:
            w.listed.discard(full)  # each name is met once: keep the set small
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            yield Skipped(full, f"cannot stat: {exc.strerror}", rejected=True)
            continue
        if stat.S_ISLNK(st.st_mode):
            yield _symlink(full, top)
        elif stat.S_ISDIR(st.st_mode):
            if full in w.excluded:
                yield Skipped(full, "the archive's own data directory: not imported")
                continue
            try:
                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                yield Skipped(full, f"directory not readable: {exc.strerror}", rejected=True)
                continue
            try:
                yield from _walk_dir(sub, full, top, w)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            yield Candidate.from_stat(full, st)
        else:
            yield Skipped(full, _special(st.st_mode))


def _from_dicomdir(dicomdir: str, directory: str, listed: set[str]) -> Iterator[Found]:
    """The files a DICOMDIR lists (relative to its directory), in its order."""
    try:
        file_ids = dicomdir_file_ids(dicomdir)
    except Exception as exc:  # any parse failure: the plain walk still finds the files
        yield Skipped(dicomdir, f"DICOMDIR not readable ({exc}): directory walked instead")
        return
    names: dict[str, dict[str, str] | None] = {}  # directory -> {NAME: name}, case-insensitive
    for components in file_ids:
        if not components or any(c in ("", ".", "..") or "/" in c or "\0" in c
                                 or c != c.strip() for c in components):
            yield Skipped(dicomdir, f"unsafe file ID in DICOMDIR ({components!r}): ignored",
                          rejected=True)
            continue
        found = _resolve(directory, components, names)
        shown = os.path.join(directory, *components)
        if found is None:
            yield Skipped(shown, "listed in DICOMDIR, not found", rejected=True)
            continue
        try:
            st = os.lstat(found)
        except OSError as exc:
            yield Skipped(found, f"cannot stat: {exc.strerror}", rejected=True)
            continue
        if found in listed:
            continue  # listed twice
        if stat.S_ISLNK(st.st_mode) or os.path.realpath(found) != found:
            continue  # a symbolic link on the way: the walk reports it where it lies
        if stat.S_ISREG(st.st_mode):
            listed.add(found)
            yield Candidate.from_stat(found, st)


def _resolve(directory: str, components: list[str],
             names: dict[str, dict[str, str] | None]) -> str | None:
    """The path of a DICOMDIR file ID, matching names case-insensitively (ISO 9660 media
    copied to disk often changes their case); None if it does not exist."""
    path = directory
    for component in components:
        if path not in names:
            try:
                names[path] = {n.upper(): n for n in os.listdir(path)}
            except OSError:
                names[path] = None
        listing = names[path]
        actual = listing.get(component.upper()) if listing else None
        if actual is None:
            return None
        path = os.path.join(path, actual)
    return path


def dicomdir_file_ids(path: str) -> list[list[str]]:
    """Referenced File IDs of a DICOMDIR's directory records, as path components."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ids = []
    for record in ds.get("DirectoryRecordSequence", []):
        value = record.get("ReferencedFileID")
        if value is None:
            continue
        parts = [str(value)] if isinstance(value, str) else [str(v) for v in value]
        ids.append(parts)
    return ids
