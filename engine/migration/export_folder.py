"""`pacs export --folder`: Part 10 files and a DICOMDIR, written durably.

The folder must be empty or new, and apart from the archive.  Every file is
written under a temporary name in the folder, fsynced, renamed to its PS3.10
File ID (engine.migration.dicomdir: names from record positions only, so nothing
lands outside the folder); the directories are fsynced and the DICOMDIR is
written last, so a folder without one is an interrupted export.  An error
writing the folder (disk full) stops the export; an instance that cannot be
read or prepared fails alone.  Files are prepared on a few threads (codec work
in CodecWorkers processes), at most two per thread ahead of the one renamed.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom

from engine.codec.workers import CodecWorkers
from engine.dicom.part10 import encode_file_header
from engine.errors import EngineError
from engine.migration.dicomdir import DicomDirectory, DicomDirError, fsync_directory
from engine.migration.export import ExportError, ExportReport, InstanceFailed, Transform
from engine.query.retrieve import RetrieveResolver, StoredInstance


def _read(source) -> bytes:
    try:
        return source.read(1 << 20)
    except OSError as exc:
        raise InstanceFailed(f"cannot read the stored file: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename or 'the stored file'}: {exc.strerror or exc}"
    return f"cannot prepare the copy: {exc}"


def prepare_folder(folder: Path, data_dir: Path) -> Path:
    """The export folder, created if missing; it must be empty and outside the archive."""
    real = Path(folder).expanduser().resolve()
    archive = Path(data_dir).expanduser().resolve()
    if real == archive or archive in real.parents or real in archive.parents:
        raise ExportError(f"{folder}: the export folder and the archive ({data_dir}) "
                          "must not contain each other")
    try:
        if real.exists():
            if not real.is_dir():
                raise ExportError(f"{folder} exists and is not a folder")
            if any(real.iterdir()):
                raise ExportError(f"{folder} is not empty: an export writes a new file-set "
                                  "(DICOMDIR), into an empty or new folder")
        else:
            real.mkdir(parents=True)
    except OSError as exc:
        raise ExportError(f"cannot use {folder}: {exc.strerror or exc}") from exc
    return real


@dataclass
class _Written:
    temp: Path
    size: int
    header: pydicom.Dataset


class FolderExport:
    def __init__(self, folder: Path, resolver: RetrieveResolver, transform: Transform,
                 codec: CodecWorkers | None) -> None:
        self.folder = folder
        self.resolver = resolver
        self.transform = transform
        self.codec = codec

    def prepare(self, index: int, instance: StoredInstance) -> _Written:
        """Instance → a fsynced temporary file in the folder (on a pool thread)."""
        try:
            return self._write(index, instance)
        except ExportError:
            raise
        except (EngineError, OSError) as exc:
            fresh = self.resolver.refresh(instance)
            if fresh is None:
                raise InstanceFailed("no longer in the archive") from None
            if fresh == instance:
                raise InstanceFailed(_reason(exc)) from None
        try:  # re-stored (compressed) since it was selected: the current file
            return self._write(index, fresh)
        except ExportError:
            raise
        except (EngineError, OSError) as exc:
            raise InstanceFailed(_reason(exc)) from None

    def _write(self, index: int, instance: StoredInstance) -> _Written:
        """Read errors raise OSError or InstanceFailed (this instance fails); write errors
        raise ExportError (the folder is unusable: the export stops)."""
        transform = self.transform
        if transform.as_stored(instance):
            source = open(instance.path, "rb")
            chunks = iter(lambda: _read(source), b"")
        else:
            source = None
            target = transform.target(instance)
            function, extra = transform.recipe()
            dataset = self.codec.run(function, str(instance.path), instance.dataset_offset,
                                     instance.transfer_syntax_uid, target, *extra)
            chunks = iter((encode_file_header(instance.sop_class_uid,
                                              transform.sop_uid(instance), target), dataset))
        temp = self.folder / f".export-{index:08d}.partial"
        try:
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
                with os.fdopen(fd, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                    size = out.tell()
            except OSError as exc:
                raise ExportError(f"cannot write to {self.folder}: {exc.strerror or exc}; "
                                  "the export stopped (no DICOMDIR written)") from exc
            try:
                header = pydicom.dcmread(temp, stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types for a bad header
                raise InstanceFailed(f"unreadable header: {type(exc).__name__}: {exc}") from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        finally:
            if source is not None:
                source.close()
        return _Written(temp, size, header)

    def run(self, instances: list[StoredInstance], report: ExportReport, progress,
            threads: int) -> None:
        directory = DicomDirectory()
        folders: set[Path] = {self.folder}
        pending: deque[tuple[StoredInstance, Future]] = deque()

        def finish(instance: StoredInstance, future: Future) -> None:
            try:
                written = future.result()
            except InstanceFailed as exc:
                report.failures.append((instance.sop_instance_uid, exc.reason))
                return
            try:
                components = directory.add(written.header)
            except DicomDirError as exc:
                written.temp.unlink(missing_ok=True)
                report.failures.append((instance.sop_instance_uid, f"no DICOMDIR record: {exc}"))
                return
            target = self.folder.joinpath(*components)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(written.temp, target)
            except OSError as exc:
                written.temp.unlink(missing_ok=True)
                raise ExportError(f"cannot write to {self.folder}: {exc.strerror}") from exc
            folders.update(p for p in target.parents if self.folder in p.parents)
            report.exported += 1
            report.bytes += written.size

        with ThreadPoolExecutor(threads, thread_name_prefix="export") as pool:
            try:
                for index, instance in enumerate(instances):
                    pending.append((instance, pool.submit(self.prepare, index, instance)))
                    if len(pending) >= 2 * threads:
                        finish(*pending.popleft())
                        progress(report.exported + len(report.failures), report.bytes)
                while pending:
                    finish(*pending.popleft())
                    progress(report.exported + len(report.failures), report.bytes)
            finally:  # interrupted or stopped: no temporary file stays behind
                for _, future in pending:
                    future.cancel()
                for _, future in pending:
                    if not future.cancelled() and future.exception() is None:
                        future.result().temp.unlink(missing_ok=True)
        for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            fsync_directory(path)  # the renames (and new directories) are durable
        if report.exported:
            directory.write(self.folder)


__all__ = ["FolderExport", "prepare_folder"]
