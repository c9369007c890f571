"""Did every instance arrive intact?  Canonical digests, compared per SOP Instance UID.

Peers keep what they receive differently: pacs and `storescp +B` keep the bytes
sent, plain storescp and Orthanc re-encode the dataset (sequence and group
lengths may change) behind their own file meta.  So a received instance is
compared by a digest of its content, not of its file: every element's tag and
value bytes, sequences walked item by item, file meta and group lengths left
out.  A different pixel, a lost instance or a stray one fails the run.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.errors import InvalidDicomError

from engine.store.content_hash import new_hasher

_HEAD = struct.Struct("<IQ")


def _vr(raw) -> str | None:
    if raw.VR:
        return raw.VR
    try:
        return dictionary_VR(raw.tag)
    except KeyError:
        return None


def _feed(hasher, ds) -> None:
    for tag in sorted(ds.keys()):
        if tag.group == 0x0002 or tag.element == 0x0000:
            continue  # file meta and group lengths: rewritten by some receivers
        raw = ds.get_item(tag)
        if _vr(raw) == "SQ":
            items = ds[tag].value or []
            hasher.update(_HEAD.pack(int(tag), len(items)) + b"SQ")
            for item in items:
                hasher.update(b"ITEM")
                _feed(hasher, item)
            continue
        value = raw.value
        if value is None:
            value = b""
        elif not isinstance(value, (bytes, bytearray, memoryview)):
            value = str(value).encode("utf-8", "replace")
        hasher.update(_HEAD.pack(int(tag), len(value)))
        hasher.update(value)


def digest_file(path: Path | str) -> tuple[str, str]:
    """(SOP Instance UID, canonical digest) of one Part 10 file."""
    ds = pydicom.dcmread(path)
    hasher = new_hasher()
    _feed(hasher, ds)
    uid = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID")
    return str(uid), hasher.hexdigest()


def is_part10(path: Path | str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def digest_files(paths: Iterable[Path | str]) -> tuple[dict[str, str], list[str]]:
    """Digests by UID, and the problems met (unreadable files, the same UID twice)."""
    digests: dict[str, str] = {}
    problems: list[str] = []
    for path in paths:
        try:
            uid, digest = digest_file(path)
        except (OSError, InvalidDicomError, ValueError, KeyError) as exc:
            problems.append(f"unreadable {Path(path).name}: {exc}")
            continue
        if uid in digests and digests[uid] != digest:
            problems.append(f"{uid} received twice with different content")
        digests[uid] = digest
    return digests, problems


def part10_files(root: Path) -> list[Path]:
    """Every Part 10 file under root, whatever its name (storescp, Orthanc's storage)."""
    return [Path(d) / n for d, _, names in os.walk(root) for n in names
            if is_part10(Path(d) / n)]


@dataclass
class Verdict:
    ok: bool
    counted: int
    reason: str = ""

    def as_checks(self, expected: int) -> dict:
        return {"expected": expected, "counted": self.counted, "content_ok": self.ok}


def compare(expected: dict[str, str], received: dict[str, str],
            problems: list[str] | None = None) -> Verdict:
    """Every expected instance received with its digest, nothing else."""
    missing = [u for u in expected if u not in received]
    altered = [u for u in expected if u in received and received[u] != expected[u]]
    extra = [u for u in received if u not in expected]
    reasons = []
    if missing:
        reasons.append(f"{len(missing)} of {len(expected)} instances missing "
                       f"(e.g. {missing[0]})")
    if altered:
        reasons.append(f"{len(altered)} instances altered (e.g. {altered[0]})")
    if extra:
        reasons.append(f"{len(extra)} unexpected instances (e.g. {extra[0]})")
    reasons += (problems or [])[:3]
    return Verdict(not reasons, len(received), "; ".join(reasons))
