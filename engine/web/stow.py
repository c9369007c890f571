"""STOW-RS (PS3.18 10.5): Part 10 files in a multipart/related request, stored
through the same ingest pipeline as a C-STORE.

The body is streamed through the multipart parser: each part's file meta is
read (at most 64 KiB, then checked: preamble, DICM, UIDs, a transfer syntax we
store), and its dataset bytes go to `IngestPipeline.begin()` / `feed()` as they
arrive, exactly like P-DATA fragments; `complete()` makes the instance durable
and indexed (same durability, duplicate policy and routing as C-STORE) before
the next part is read.  Nothing is held in memory beyond a parser window and
one file meta.  The body is capped (`max_upload_bytes`): a declared length
over it is refused before reading, a longer stream is cut off with 413.

Each part ends in the response: ReferencedSOPSequence (stored, with a
WarningReason for a duplicate kept as a conflict) or FailedSOPSequence with a
FailureReason; 200 all stored, 202 some failed or warned, 409 none stored.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import AsyncIterator

from engine.dicom.uids import ACCEPTED_TRANSFER_SYNTAXES, is_valid_uid
from engine.errors import (
    DatasetMismatch, DuplicateRejected, EngineError, InvalidUID, OutOfResources,
    TagScanError)
from engine.index.entry import IndexOutcome
from engine.ingest.pipeline import IngestPipeline, InstanceReceiver, Origin
from engine.web.errors import WebError, bad_request
from engine.web.multipart import (
    PART_DATA, PART_END, PART_HEADERS, MalformedMultipart, MultipartParser, parse_media_type)

log = logging.getLogger(__name__)

#: The calling AE title STOW-RS instances are recorded with (file meta, routing rules).
WEB_AE_TITLE = "DICOMWEB"
_MAX_META = 64 * 1024

# FailureReason / WarningReason values (PS3.18 I.2, PS3.4 B.2.3; the same codes the
# C-STORE SCP answers with, engine/net/status.py).
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
CANNOT_PARSE = 0xC210
INVALID_UID = 0xC211
#: The instance belongs to another study than the one the URL names.
STUDY_MISMATCH = 0xC409
COERCED_DUPLICATE = 0xB000

_ERROR_REASONS = (
    (OutOfResources, OUT_OF_RESOURCES), (DuplicateRejected, DUPLICATE_SOP_INSTANCE),
    (DatasetMismatch, DATASET_MISMATCH), (InvalidUID, INVALID_UID),
    (TagScanError, CANNOT_PARSE))


@dataclass
class PartResult:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str = ""
    failure: int | None = None
    warning: int | None = None
    reason: str = ""
    #: For the audit trail and metrics (not in the response).
    patient_id: str = ""
    size: int = 0


class RejectedPart(Exception):
    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_file_meta(data: bytes) -> tuple[str, str, str, int] | None:
    """(SOP Class UID, SOP Instance UID, Transfer Syntax UID, dataset offset) of a Part 10
    file's start, None when more bytes are needed; RejectedPart when it is not one."""
    if data[:2] == b"\x02\x00" and data[4:6].isalpha():
        pos = 0  # file meta without preamble and prefix (pydicom's dcmwrite by default)
    elif len(data) < 132:
        return None
    elif data[128:132] == b"DICM":
        pos = 132
    else:
        raise RejectedPart(CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no DICM prefix)")
    values: dict[int, bytes] = {}
    while True:
        if len(data) < pos + 8:
            return None
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            if len(data) < pos + 12:
                return None
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        else:
            raise RejectedPart(CANNOT_UNDERSTAND, "file meta is not explicit VR little endian")
        if length == 0xFFFFFFFF or length > _MAX_META:
            raise RejectedPart(CANNOT_UNDERSTAND, "file meta element with a bad length")
        if len(data) < start + length:
            return None
        values[(group << 16) | element] = data[start:start + length]
        pos = start + length

    def text(tag: int) -> str:
        return values.get(tag, b"").decode("ascii", "replace").strip("\x00 ")

    return text(0x00020002), text(0x00020003), text(0x00020010), pos


class PartReceiver:
    """One part: its file meta gathered, then its dataset bytes fed to ingest."""

    def __init__(self, pipeline: IngestPipeline, origin: Origin) -> None:
        self.pipeline = pipeline
        self.origin = origin
        self._head = bytearray()
        self.receiver: InstanceReceiver | None = None
        self.sop_class_uid = ""
        self.sop_instance_uid = ""
        self.rejected: RejectedPart | None = None

    def feed(self, data: bytes) -> None:
        if self.rejected is not None:
            return
        if self.receiver is not None:
            self.receiver.feed(memoryview(data))
            return
        self._head += data
        try:
            meta = parse_file_meta(bytes(self._head))
            if meta is None:
                if len(self._head) > _MAX_META:
                    raise RejectedPart(CANNOT_UNDERSTAND, "file meta longer than 64 KiB")
                return
            sop_class, sop_instance, ts, offset = meta
            self.sop_class_uid, self.sop_instance_uid = sop_class, sop_instance
            if not is_valid_uid(sop_class) or not is_valid_uid(sop_instance):
                raise RejectedPart(INVALID_UID, "Media Storage SOP Class/Instance UID "
                                                "missing or not a valid UID")
            if ts not in ACCEPTED_TRANSFER_SYNTAXES:
                raise RejectedPart(TRANSFER_SYNTAX_NOT_SUPPORTED,
                                   f"transfer syntax {ts[:64]!r} is not supported")
            try:
                self.receiver = self.pipeline.begin(sop_class, sop_instance, ts, WEB_AE_TITLE,
                                                    self.origin)
            except EngineError as exc:
                raise RejectedPart(_reason(exc), str(exc)) from exc
        except RejectedPart as exc:
            self.rejected = exc
            self._head = bytearray()
            return
        rest = bytes(self._head[offset:])
        self._head = bytearray()
        if rest:
            self.receiver.feed(memoryview(rest))

    def abort(self) -> None:
        if self.receiver is not None:
            self.receiver.abort()
            self.receiver = None

    async def complete(self, study_uid: str | None) -> PartResult:
        result = PartResult(self.sop_class_uid, self.sop_instance_uid)
        if self.rejected is None and self.receiver is None:
            self.rejected = RejectedPart(CANNOT_UNDERSTAND, "not a DICOM Part 10 file "
                                                            "(too short)")
        if self.rejected is not None:
            result.failure, result.reason = self.rejected.reason, self.rejected.message
            return result
        receiver = self.receiver
        try:
            attributes = receiver.attributes()
            result.study_instance_uid = attributes.get("StudyInstanceUID", "")
            result.patient_id = attributes.get("PatientID", "")
            if study_uid is not None and result.study_instance_uid != study_uid:
                receiver.abort()
                result.failure = STUDY_MISMATCH
                result.reason = "Study Instance UID differs from the one in the URL"
                return result
            stored = await receiver.complete()
            result.size = stored.size
        except EngineError as exc:
            receiver.abort()
            result.failure, result.reason = _reason(exc), str(exc)
            return result
        except Exception:  # noqa: BLE001 - a bug fails this instance, not the request
            receiver.abort()
            log.exception("STOW-RS: storing %s failed", self.sop_instance_uid)
            result.failure, result.reason = PROCESSING_FAILURE, "internal error while storing"
            return result
        if stored.outcome in (IndexOutcome.CONFLICT_KEPT_FIRST, IndexOutcome.CONFLICT_REPLACED):
            result.warning = COERCED_DUPLICATE
            result.reason = stored.outcome.value
        return result


def _reason(exc: BaseException) -> int:
    for cls, reason in _ERROR_REASONS:
        if isinstance(exc, cls):
            return reason
    return PROCESSING_FAILURE


class Stow:
    """STOW-RS requests into the ingest pipeline."""

    def __init__(self, pipeline: IngestPipeline, max_upload_bytes: int) -> None:
        self.pipeline = pipeline
        self.max_upload_bytes = max_upload_bytes

    def check_request(self, content_type: str | None, content_length: str | None) -> str:
        """The multipart boundary; WebError for a request refused before its body is read."""
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                raise bad_request("Content-Length is not a number") from None
            if declared > self.max_upload_bytes:
                raise WebError(413, f"request body of {declared} bytes is over the limit of "
                                    f"{self.max_upload_bytes} bytes")
        media = parse_media_type(content_type or "")
        if media.type != "multipart/related":
            raise WebError(415, 'STOW-RS takes multipart/related; type="application/dicom"')
        part_type = media.params.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise WebError(415, f"parts of type {part_type!r} are not accepted: only "
                                "application/dicom (DICOM Part 10 files)")
        boundary = media.params.get("boundary", "")
        if not boundary or len(boundary) > 70:
            raise bad_request("multipart/related without a valid boundary parameter")
        return boundary

    async def store(self, boundary: str, body: AsyncIterator[bytes], study_uid: str | None,
                    origin: Origin) -> list[PartResult]:
        """Store every part; WebError when the body is cut off or malformed."""
        parser = MultipartParser(boundary)
        results: list[PartResult] = []
        part: PartReceiver | None = None
        received = 0
        try:
            async for chunk in body:
                received += len(chunk)
                if received > self.max_upload_bytes:
                    raise WebError(413, f"request body over the limit of "
                                        f"{self.max_upload_bytes} bytes"
                                   + _stored_note(results))
                for kind, value in parser.feed(chunk):
                    if kind == PART_HEADERS:
                        part = PartReceiver(self.pipeline, origin)
                        part_type = parse_media_type(value.get("content-type",
                                                               "application/dicom")).type
                        if part_type != "application/dicom":
                            part.rejected = RejectedPart(
                                CANNOT_UNDERSTAND, f"part of type {part_type!r} is not a "
                                                   "DICOM Part 10 file (application/dicom)")
                    elif kind == PART_DATA:
                        part.feed(value)
                    elif kind == PART_END:
                        finished, part = part, None
                        results.append(await finished.complete(study_uid))
            parser.finish()
        except MalformedMultipart as exc:
            raise bad_request(f"malformed multipart body: {exc}" + _stored_note(results)) \
                from exc
        finally:
            if part is not None:
                part.abort()
        if not results:
            raise bad_request("the request holds no part")
        return results


def _stored_note(results: list[PartResult]) -> str:
    stored = sum(1 for r in results if r.failure is None)
    return f" ({stored} instance(s) before it were stored)" if stored else ""


def response_status(results: list[PartResult]) -> int:
    failed = sum(1 for r in results if r.failure is not None)
    if failed == len(results):
        return 409
    if failed or any(r.warning is not None for r in results):
        return 202
    return 200


def response_json(results: list[PartResult], base_url: str, study_uid: str | None) -> dict:
    """The Store Instances Response Module (PS3.18 10.5.3.3) as DICOM JSON."""
    def ui(value: str) -> dict:
        return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}

    referenced, failed = [], []
    for r in results:
        if r.failure is None:
            item = {"00081150": ui(r.sop_class_uid), "00081155": ui(r.sop_instance_uid),
                    "00081190": {"vr": "UR", "Value": [
                        f"{base_url}/studies/{r.study_instance_uid}/instances/"
                        f"{r.sop_instance_uid}"]}}
            if r.warning is not None:
                item["00081196"] = {"vr": "US", "Value": [r.warning]}
            referenced.append(dict(sorted(item.items())))
        else:
            failed.append({"00081150": ui(r.sop_class_uid), "00081155": ui(r.sop_instance_uid),
                           "00081197": {"vr": "US", "Value": [r.failure]}})
    out: dict = {}
    studies = {r.study_instance_uid for r in results if r.failure is None}
    if study_uid or len(studies) == 1:
        out["00081190"] = {"vr": "UR", "Value": [
            f"{base_url}/studies/{study_uid or studies.pop()}"]}
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        out["00081199"] = {"vr": "SQ", "Value": referenced}
    return out
