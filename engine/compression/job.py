"""One instance compressed, in a codec worker process: encode, verify, write, fsync.

`transcode_file` encodes the pixel data and decodes every encoded frame again,
comparing it bit-exact with the original samples before it returns the bytes.
Those exact bytes are written here behind our file meta, fsync'd, and hashed;
the stage re-hashes the file from disk before it swaps the index, so the file
it points at is the one whose pixels were verified.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from engine.codec.transcode import transcode_file
from engine.dicom.part10 import encode_file_header
from engine.ingest.pipeline import content_hasher


@dataclass(frozen=True)
class CompressedFile:
    temp_path: str
    content_hash: str
    size: int
    dataset_offset: int


def compress_stored_file(source_path: str, dataset_offset: int, source_ts: str,
                         target_ts: str, sop_class_uid: str, sop_instance_uid: str,
                         source_ae_title: str, temp_dir: str) -> CompressedFile:
    """Write the instance re-encoded in `target_ts` to a new durable file in `temp_dir`."""
    dataset = transcode_file(source_path, dataset_offset, source_ts, target_ts)
    header = encode_file_header(sop_class_uid, sop_instance_uid, target_ts, source_ae_title)
    hasher = content_hasher(target_ts)
    hasher.update(dataset)
    path = os.path.join(temp_dir, f"compress-{secrets.token_hex(8)}.partial")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        for part in (header, dataset):
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return CompressedFile(path, hasher.hexdigest(), len(header) + len(dataset), len(header))


__all__ = ["CompressedFile", "compress_stored_file"]
