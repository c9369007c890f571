"""Faulty compression jobs, run in codec worker processes by test_compression.py.

Each wraps the real job and breaks one step, the way a codec bug, a dying
worker or a full disk would.  Module-level so worker processes can import them.
"""
from __future__ import annotations

import errno
import os

from engine.compression.job import CompressedFile, compress_stored_file
from engine.errors import TranscodeError


def encoder_raises(*args) -> CompressedFile:
    raise TranscodeError("cannot encode pixel data as JPEG 2000 Lossless: injected")


def encoder_corrupts_pixels(*args) -> CompressedFile:
    """The encoder returns a codestream of other pixels: verification must refuse it."""
    from pydicom.dataset import Dataset
    original = Dataset.compress

    def compress(self, *a, **kw):
        original(self, *a, **kw)
        from pydicom.encaps import encapsulate, generate_fragments
        frames = [bytearray(f) for f in generate_fragments(self.PixelData)]
        data = frames[0]
        data[len(data) // 2] ^= 0x55  # one byte in the middle of the codestream
        self.PixelData = encapsulate([bytes(f) for f in frames])

    Dataset.compress = compress
    try:
        return compress_stored_file(*args)
    finally:
        Dataset.compress = original


def file_differs_from_verified(*args) -> CompressedFile:
    """The file written is not the one verified (a bad disk, a bug between the two)."""
    result = compress_stored_file(*args)
    with open(result.temp_path, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0xFF]))
    return result


def worker_killed(*args) -> CompressedFile:
    """Dies half-way through writing, leaving a partial file behind."""
    temp_dir = args[-1]
    with open(os.path.join(temp_dir, "compress-killed.partial"), "wb") as fh:
        fh.write(b"\0" * 1000)
    os._exit(9)


def disk_full(*args) -> CompressedFile:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
