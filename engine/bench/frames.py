"""Pure helpers of the compression benchmark: frame layouts, opj_compress input, figures.

Nothing here does I/O or timing, so each piece is unit-tested on its own
(tests/unit/tools/test_compress_frames.py).  The compress scenario of `pacs bench`
and `tools/bench_compress.py` use them.
"""
from __future__ import annotations

import re
import statistics
import struct
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filereader import read_dataset

PIXEL_DATA_TAG = 0x7FE00010


@dataclass(frozen=True)
class FrameLayout:
    """The pixel layout of one native (uncompressed) image, as its Image Pixel module says."""

    rows: int
    columns: int
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    planar: bool = False  # Planar Configuration 1 (colour-by-plane)

    @property
    def itemsize(self) -> int:
        return self.bits_allocated // 8

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples * self.itemsize

    @property
    def pixel_bytes(self) -> int:
        return self.frame_bytes * self.frames


def layout_of(ds: Dataset) -> FrameLayout:
    """FrameLayout of a dataset with native Pixel Data (8- or 16-bit samples)."""
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated not in (8, 16):
        raise ValueError(f"{bits_allocated} bits allocated: only 8 and 16 are benchmarked")
    samples = int(ds.get("SamplesPerPixel", 1))
    return FrameLayout(int(ds.Rows), int(ds.Columns), samples,
                       int(ds.get("NumberOfFrames") or 1), bits_allocated, int(ds.BitsStored),
                       int(ds.get("PixelRepresentation", 0)) == 1,
                       samples > 1 and int(ds.get("PlanarConfiguration", 0)) == 1)


def opj_raw_frame(pixels: bytes | memoryview, layout: FrameLayout, index: int) -> bytes:
    """Frame `index` of little-endian native pixels as opj_compress reads a .rawl file.

    opj_compress's raw reader takes each component whole, one after the other
    (component 0 for every pixel, then component 1...), little endian, one
    byte per sample up to 8 bits and two bytes up to 16.  DICOM colour-by-pixel
    frames are reordered; monochrome and colour-by-plane frames are already so.
    """
    if not 0 <= index < layout.frames:
        raise IndexError(f"frame {index} of {layout.frames}")
    start = index * layout.frame_bytes
    frame = memoryview(pixels)[start:start + layout.frame_bytes]
    if len(frame) != layout.frame_bytes:
        raise ValueError(f"pixel data too short for frame {index}")
    if layout.samples == 1 or layout.planar:
        return bytes(frame)
    samples = np.frombuffer(frame, dtype=f"<u{layout.itemsize}")
    return samples.reshape(layout.rows * layout.columns, layout.samples).T.tobytes()


def opj_raw_format(layout: FrameLayout) -> str:
    """opj_compress's -F argument for a frame written by opj_raw_frame."""
    sign = "s" if layout.signed else "u"
    return f"{layout.columns},{layout.rows},{layout.samples},{layout.bits_stored},{sign}"


def encoded_pixel_bytes(dataset: bytes) -> tuple[int, int]:
    """(fragments, bytes of all fragments) of the encapsulated Pixel Data of a dataset.

    `dataset` is an Explicit VR Little Endian dataset without file meta, as
    transcode_file returns it; the Basic Offset Table item is not counted.
    """
    ds = read_dataset(BytesIO(dataset), is_implicit_VR=False, is_little_endian=True)
    value = ds.get_item(PIXEL_DATA_TAG)
    if value is None or value.value is None:
        raise ValueError("no Pixel Data")
    buffer = value.value
    if buffer[:4] != b"\xfe\xff\x00\xe0":
        raise ValueError("Pixel Data is not encapsulated")
    (bot_length,) = struct.unpack_from("<I", buffer, 4)
    fragments = list(generate_fragments(buffer[8 + bot_length:]))
    return len(fragments), sum(len(f) for f in fragments)


_STATS_INSTANCES = re.compile(r"^instances\s+(\d+)\s*$", re.M)
_STATS_ROW = re.compile(r"^(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", re.M)


def parse_stats(text: str) -> tuple[int, dict[str, tuple[int, float, float]]]:
    """(instances, {modality: (compressed, MB before, MB after)}) from `pacs stats` output."""
    found = _STATS_INSTANCES.search(text)
    if found is None:
        raise ValueError("no instance count in pacs stats output")
    totals = {}
    if "\ncompression:" in text:
        table = text.split("\ncompression:", 1)[1]
        for m in _STATS_ROW.finditer(table):
            totals[m.group(1)] = (int(m.group(2)), float(m.group(3)), float(m.group(4)))
    return int(found.group(1)), totals


def mb_per_s(nbytes: float, seconds: float) -> float | None:
    """Megabytes (10^6) per second, or None for an empty or unmeasured interval."""
    return nbytes / 1e6 / seconds if seconds and seconds > 0 else None


def spread(values: list[float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of the values that are not None, or None if there are none."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    return statistics.median(kept), min(kept), max(kept)


def fmt_spread(s: tuple[float, float, float] | None, digits: int = 1) -> str:
    if s is None:
        return "—"
    med, lo, hi = s
    if lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    """a ÷ b as text ("1.23×"), or a dash when either is missing."""
    return f"{a / b:.{digits}f}×" if a and b else "—"


__all__ = ["FrameLayout", "encoded_pixel_bytes", "fmt_spread", "layout_of", "mb_per_s",
           "opj_raw_format", "opj_raw_frame", "parse_stats", "ratio", "spread"]
