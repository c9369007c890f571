"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered images.

Instances go out as multipart/related; type="application/dicom", one Part 10
file per part, streamed: a stored file is read in 1 MiB steps on a thread and
written as the transport drains (a study is never held in memory).  The
transfer syntax comes from the Accept header: ``transfer-syntax=*`` sends what
is stored; a named syntax is sent as stored when it is the stored one, else
made in a codec worker (engine/codec/transcode.py, lossless only, as for a
C-MOVE peer that did not accept the stored syntax), a few instances ahead of
the one being sent; no acceptable syntax for some instance means 406 before
anything is sent.  No transfer-syntax parameter means Explicit VR Little
Endian (PS3.18 8.7.3.5.2).
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import AsyncIterator

from pydicom import uid as pdu

from engine.codec.transcode import can_transcode, transcode_file
from engine.codec.workers import CodecWorkers
from engine.dicom.part10 import encode_file_header
from engine.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from engine.errors import EngineError
from engine.index.reader import IndexReader
from engine.query.retrieve import RetrieveRequest, RetrieveResolver, StoredInstance
from engine.web.errors import WebError, bad_request, not_acceptable, not_found
from engine.web.frames import FRAME_MEDIA_TYPES, FrameError, read_frames
from engine.web.multipart import (
    MediaType, closing, matches, part_header, part_separator)

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
_SMALL_READ = 256 * 1024  # read on the loop: not worth a thread hop
ANY = "*"


@dataclass(frozen=True)
class Planned:
    """One instance of a retrieve and the syntax it is sent in."""

    instance: StoredInstance
    size: int
    target: str

    @property
    def as_stored(self) -> bool:
        return self.target == self.instance.transfer_syntax_uid


# --- Accept negotiation --------------------------------------------------------------------
def dicom_ranges(accept: list[MediaType]) -> list[str]:
    """Transfer syntaxes (or "*") the client takes application/dicom parts in, best first."""
    syntaxes = []
    for media in accept:
        if media.type == "multipart/related":
            part_type = media.params.get("type", "application/dicom").lower()
        else:
            part_type = media.type
        if part_type == "application/dicom" or part_type in ("*/*", "application/*") or \
                media.type in ("*/*", "application/*"):
            syntaxes.append(media.params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN)
                            .strip() or EXPLICIT_VR_LITTLE_ENDIAN)
    if not syntaxes:
        raise not_acceptable('only multipart/related; type="application/dicom" is served '
                             "for instances")
    return syntaxes


def choose_syntax(stored: str, wanted: list[str]) -> str | None:
    for ts in wanted:
        if ts == ANY or ts == stored:
            return stored
        if can_transcode(stored, ts):
            return ts
    return None


# --- files ---------------------------------------------------------------------------------
def _read_at(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"stored file shorter than its index entry ({len(data)} of {length})")
    return data


async def file_chunks(path, offset: int, length: int) -> AsyncIterator[bytes]:
    """[offset, offset + length) of a file, in READ_CHUNK steps read on a thread."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < length:
            n = min(READ_CHUNK, length - done)
            if n <= _SMALL_READ:
                data = _read_at(fd, offset + done, n)
            else:
                data = await asyncio.to_thread(_read_at, fd, offset + done, n)
            done += n
            yield data
    finally:
        os.close(fd)


class Wado:
    """Resolves WADO-RS requests against the index and produces their bodies."""

    def __init__(self, reader: IndexReader, resolver: RetrieveResolver, codec: CodecWorkers
                 ) -> None:
        self.reader = reader
        self.resolver = resolver
        self.codec = codec
        self.lookahead = max(1, min(4, codec.processes))

    # -- what a URL names ---------------------------------------------------------------------
    def resolve(self, study: str, series: str | None = None, sop: str | None = None
                ) -> list[StoredInstance]:
        """The stored instances a study / series / instance URL names (blocking)."""
        keys = {"StudyInstanceUID": (study,)}
        level = "STUDY"
        if series is not None:
            keys["SeriesInstanceUID"] = (series,)
            level = "SERIES"
        if sop is not None:
            keys["SOPInstanceUID"] = (sop,)
            level = "IMAGE"
        return self.resolver.resolve(RetrieveRequest(level, keys))

    def instance(self, study: str, series: str, sop: str) -> StoredInstance:
        record = self.reader.instance(sop)
        if record is None or record.series_instance_uid != series or \
                record.study_instance_uid != study:
            raise not_found("no such instance")
        stored = self.resolver.stored(sop)
        if stored is None:
            raise not_found("no such instance")
        return stored

    def plan(self, instances: list[StoredInstance], accept: list[MediaType]) -> list[Planned]:
        wanted = dicom_ranges(accept)
        planned = []
        for instance in instances:
            target = choose_syntax(instance.transfer_syntax_uid, wanted)
            if target is None:
                raise not_acceptable(
                    f"instance {instance.sop_instance_uid} is stored in "
                    f"{instance.transfer_syntax_uid}, which cannot be converted to "
                    f"{', '.join(wanted)} without loss (ask for transfer-syntax=*)")
            planned.append(Planned(instance, instance.dataset_offset +
                                   instance.dataset_length, target))
        return planned

    # -- instances ------------------------------------------------------------------------------
    async def _transcoded(self, item: Planned) -> bytes:
        instance = item.instance
        data = await asyncio.to_thread(
            self.codec.run, transcode_file, instance.path, instance.dataset_offset,
            instance.transfer_syntax_uid, item.target)
        return encode_file_header(instance.sop_class_uid, instance.sop_instance_uid,
                                  item.target) + data

    async def instances_body(self, planned: list[Planned], boundary: str
                             ) -> AsyncIterator[bytes]:
        """The multipart body: each instance as a Part 10 file, then the closing delimiter."""
        pending: dict[int, asyncio.Task] = {}

        def start_ahead(position: int) -> None:
            for j in range(position, min(len(planned), position + self.lookahead)):
                if j not in pending and not planned[j].as_stored:
                    pending[j] = asyncio.ensure_future(self._transcoded(planned[j]))

        try:
            for i, item in enumerate(planned):
                header = part_header(boundary, f"application/dicom; transfer-syntax="
                                     f"{item.target}")
                if item.as_stored:
                    first = True
                    async for chunk in self._stored_chunks(item):
                        yield header + chunk if first else chunk
                        first = False
                    if first:
                        yield header
                else:
                    start_ahead(i)
                    try:
                        data = await pending.pop(i)
                    except (EngineError, OSError) as exc:
                        log.warning("WADO-RS: cannot send %s in %s: %s",
                                    item.instance.sop_instance_uid, item.target, exc)
                        raise
                    yield header + data
                start_ahead(i + 1)
                yield part_separator()
            yield closing(boundary)
        finally:
            for task in pending.values():
                task.cancel()

    async def _stored_chunks(self, item: Planned) -> AsyncIterator[bytes]:
        instance = item.instance
        try:
            fd_test = os.open(instance.path, os.O_RDONLY | os.O_CLOEXEC)
            os.close(fd_test)
        except FileNotFoundError:
            # Re-stored since it was resolved (the compression stage): take the new file,
            # if it is still in the syntax promised in the part header.
            fresh = await asyncio.to_thread(self.resolver.refresh, instance)
            if fresh is None or fresh.transfer_syntax_uid != instance.transfer_syntax_uid:
                raise
            instance = fresh
        async for chunk in file_chunks(instance.path, 0,
                                       instance.dataset_offset + instance.dataset_length):
            yield chunk

    # -- frames and bulk data ----------------------------------------------------------------
    async def frames(self, instance: StoredInstance, numbers: list[int],
                     accept: list[MediaType]) -> tuple[list[bytes], str, str]:
        """(frames, part media type, transfer syntax) for the request's Accept."""
        stored = instance.transfer_syntax_uid
        compressed = pdu.UID(stored).is_encapsulated
        stored_type = FRAME_MEDIA_TYPES.get(stored) if compressed else None
        as_stored = None
        for media in accept:
            part_type = media.params.get("type", "*/*").lower() \
                if media.type == "multipart/related" else media.type
            ts = media.params.get("transfer-syntax", "").strip()
            if stored_type and ts in ("", ANY, stored) and (
                    part_type in ("*/*", "*") or matches(part_type, stored_type)):
                as_stored = True  # the stored frames: no decoding
                break
            if matches(part_type, "application/octet-stream") and \
                    ts in ("", ANY, EXPLICIT_VR_LITTLE_ENDIAN):
                as_stored = False  # uncompressed little endian (native data: sliced)
                break
        if as_stored is None:
            raise not_acceptable("frames are served as application/octet-stream "
                                 "(uncompressed)" + (
                                     f" or as stored ({stored_type}; transfer-syntax={stored})"
                                     if stored_type else ""))
        try:
            if compressed and not as_stored:
                frames = await asyncio.to_thread(
                    self.codec.run, read_frames, str(instance.path), instance.dataset_offset,
                    stored, numbers, False)
            else:
                frames = await asyncio.to_thread(read_frames, str(instance.path),
                                                 instance.dataset_offset, stored, numbers,
                                                 as_stored)
        except FrameError as exc:
            raise _frame_error(exc) from exc
        except EngineError as exc:  # the codec worker's errors arrive as TranscodeError text
            raise _frame_error(exc) from exc
        if as_stored and compressed:
            return frames, FRAME_MEDIA_TYPES[stored], stored
        return frames, "application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN

    async def rendered(self, instance: StoredInstance, frame: int, params, accept
                       ) -> tuple[bytes, str]:
        from engine.web.render import parse_window, render_frame

        media_type = None
        for media in accept:
            for candidate in ("image/jpeg", "image/png"):
                if matches(media.type, candidate):
                    media_type = candidate
                    break
            if media_type:
                break
        if media_type is None:
            raise not_acceptable("rendered images are served as image/jpeg or image/png")
        window = None
        if params.get("window"):
            try:
                window = parse_window(params["window"])
            except ValueError as exc:
                raise bad_request(f"window: {exc}") from exc
        try:
            quality = int(params.get("quality", "90"))
            if not 1 <= quality <= 100:
                raise ValueError
        except ValueError:
            raise bad_request("quality must be an integer from 1 to 100") from None
        viewport = None
        if params.get("viewport"):
            try:
                width, height = (int(v) for v in params["viewport"].split(",")[:2])
                if width < 1 or height < 1 or width > 8192 or height > 8192:
                    raise ValueError
                viewport = (width, height)
            except ValueError:
                raise bad_request("viewport must be width,height (1-8192)") from None
        try:
            data = await asyncio.to_thread(
                self.codec.run, render_frame, str(instance.path), instance.dataset_offset,
                instance.transfer_syntax_uid, frame, window, media_type, quality, viewport)
        except EngineError as exc:
            raise _frame_error(exc) from exc
        return data, media_type


def _frame_error(exc: Exception) -> WebError:
    text = str(exc)
    if "does not exist" in text:
        return not_found(text.split(": ", 1)[-1] if text.startswith("FrameError") else text)
    if "no Pixel Data" in text:
        return not_found("the instance has no Pixel Data")
    log.warning("WADO-RS frames failed: %s", text)
    return WebError(500, f"cannot produce the frames: {text}")


def parse_frame_list(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise bad_request("frame list must be 1-based frame numbers separated by commas") \
            from None
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > 10000:
        raise bad_request("frame list must be 1-based frame numbers separated by commas")
    return numbers


__all__ = ["Planned", "Wado", "dicom_ranges", "choose_syntax", "parse_frame_list"]
