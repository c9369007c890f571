"""Frames of a stored instance (WADO-RS /frames and Pixel Data bulk data).

Module-level functions with plain arguments, so compressed data can be decoded
in a codec worker process (engine/codec/workers.py: a corrupt codestream costs
one task, not the server); native data is only sliced and may run on a thread.

A frame is sent either as stored (native bytes, or one encapsulated frame of a
compressed syntax) or uncompressed little endian (decoded; YBR JPEG data
becomes RGB as pydicom decodes it, as engine/codec/transcode.py does).
"""
from __future__ import annotations

import io
import os
import zlib

import numpy as np
from pydicom import uid as pdu
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.filereader import read_dataset

from engine.dicom.uids import EXPLICIT_VR_BIG_ENDIAN, transfer_syntax_encoding
from engine.errors import TranscodeError

PIXEL_DATA = 0x7FE00010

#: Media type of one frame of each compressed syntax, as stored (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPES = {
    pdu.JPEGBaseline8Bit: "image/jpeg", pdu.JPEGExtended12Bit: "image/jpeg",
    pdu.JPEGLossless: "image/jpeg", pdu.JPEGLosslessSV1: "image/jpeg",
    pdu.JPEGLSLossless: "image/jls", pdu.JPEGLSNearLossless: "image/jls",
    pdu.JPEG2000Lossless: "image/jp2", pdu.JPEG2000: "image/jp2",
    pdu.HTJ2KLossless: "image/jphc", pdu.HTJ2KLosslessRPCL: "image/jphc",
    pdu.HTJ2K: "image/jphc", pdu.RLELossless: "image/dicom-rle",
}


class FrameError(TranscodeError):
    """The frames cannot be produced (no pixel data, a frame out of range, a codec)."""


def read_stored_dataset(path: str | os.PathLike, offset: int, ts: str, **options) -> Dataset:
    """The dataset of a stored Part 10 file (inflated when deflated); `options` go to
    pydicom's read_dataset (stop_when, defer_size, specific_tags)."""
    encoding = transfer_syntax_encoding(ts)
    with open(path, "rb") as fp:
        fp.seek(offset)
        stream: io.BufferedIOBase = fp
        if encoding.deflated:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            stream = io.BytesIO(inflater.decompress(fp.read()) + inflater.flush())
        ds = read_dataset(stream, not encoding.explicit_vr, encoding.little_endian, **options)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _native_frame_length(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    if bits % 8:
        raise FrameError(f"frames of {bits}-bit packed pixel data are not served")
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8


def _check(numbers: list[int], count: int) -> None:
    for n in numbers:
        if not 1 <= n <= count:
            raise FrameError(f"frame {n} does not exist (the instance has {count})")


def read_frames(path: str, offset: int, ts: str, numbers: list[int], as_stored: bool
                ) -> list[bytes]:
    """Frames `numbers` (1-based) of the instance: as stored, or uncompressed little endian."""
    try:
        ds = read_stored_dataset(path, offset, ts)
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise FrameError(f"stored dataset cannot be parsed: {exc}") from exc
    if PIXEL_DATA not in ds:
        raise FrameError("the instance has no Pixel Data")
    count = frame_count(ds)
    _check(numbers, count)
    encapsulated = pdu.UID(ts).is_encapsulated
    if encapsulated and as_stored:
        wanted = set(numbers)
        found: dict[int, bytes] = {}
        for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=count), 1):
            if i in wanted:
                found[i] = frame
            if len(found) == len(wanted):
                break
        return [found[n] for n in numbers]
    if not encapsulated:
        size = _native_frame_length(ds)
        data = ds.PixelData
        out = []
        for n in numbers:
            frame = data[(n - 1) * size:n * size]
            if len(frame) != size:
                raise FrameError(f"Pixel Data too short for frame {n}")
            if ts == EXPLICIT_VR_BIG_ENDIAN and int(ds.BitsAllocated) > 8:
                width = int(ds.BitsAllocated) // 8
                frame = np.frombuffer(frame, dtype=f">u{width}").astype(f"<u{width}").tobytes()
            out.append(bytes(frame))
        return out
    from pydicom.pixels import pixel_array  # decoders: in a worker process
    out = []
    for n in numbers:
        try:
            array = pixel_array(ds, index=n - 1)
        except Exception as exc:  # noqa: BLE001 - any codec failure is this frame's
            raise FrameError(f"cannot decode frame {n}: {exc}") from exc
        out.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return out
