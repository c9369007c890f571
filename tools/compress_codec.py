"""Codec-level measurements of the compression benchmark, all on one core of this process.

* `time_transcode`: engine.codec.transcode.transcode_file, file by file, exactly as a
  codec worker runs it for the stage (read, encode JPEG 2000 Lossless, decode every
  frame again and compare, re-encode the dataset);
* `time_phases`: the same frames through pylibjpeg-openjpeg directly (what pydicom
  calls), encode and decode+compare timed apart, to show what verification costs;
* `time_opj`: OpenJPEG's own `opj_compress` on the same frames (one process per
  frame, file in and file out), single-threaded, with `-threads N`, and N processes
  at once;
* `profile_transcode`: cProfile of transcode_file on one file.
"""
from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from engine.codec.transcode import transcode_file
from engine.compression.policy import JPEG_2000_LOSSLESS
from engine.dicom.part10 import dataset_offset
from engine.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from tools.compress_frames import (
    FrameLayout, encoded_pixel_bytes, layout_of, opj_raw_format, opj_raw_frame)



class CodecBenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class SourceFile:
    """One generated instance: where its dataset starts and how its pixels are laid out."""

    path: Path
    modality: str
    transfer_syntax: str
    dataset_offset: int
    file_bytes: int
    layout: FrameLayout


def load_sources(root: Path, modality: str) -> list[SourceFile]:
    """Every .dcm under root (sorted), in the layout the stage would see it."""
    sources = []
    for path in sorted(root.rglob("*.dcm")):
        with open(path, "rb") as fh:
            offset = dataset_offset(fh.read(144))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
        if ts != EXPLICIT_VR_LITTLE_ENDIAN:
            raise CodecBenchError(f"{path}: generated in {ts}, expected Explicit VR LE")
        sources.append(SourceFile(path, modality, ts, offset, path.stat().st_size,
                                  layout_of(ds)))
    return sources


def read_pixel_data(source: SourceFile) -> bytes:
    """The native Pixel Data of a source (read outside any timing)."""
    return pydicom.dcmread(source.path).PixelData


# --- engine path ---------------------------------------------------------------------
def time_transcode(source: SourceFile) -> dict:
    """One transcode_file call to JPEG 2000 Lossless (verification included)."""
    started = time.perf_counter()
    out = transcode_file(source.path, source.dataset_offset, source.transfer_syntax,
                         JPEG_2000_LOSSLESS)
    seconds = time.perf_counter() - started
    fragments, encoded = encoded_pixel_bytes(out)
    if fragments != source.layout.frames:
        raise CodecBenchError(f"{source.path}: {fragments} fragments for "
                              f"{source.layout.frames} frames")
    return {"modality": source.modality, "file": source.path.name,
            "frames": source.layout.frames, "pixel_bytes": source.layout.pixel_bytes,
            "encoded_bytes": encoded, "dataset_bytes_in": source.file_bytes
            - source.dataset_offset, "dataset_bytes_out": len(out), "seconds": seconds}


# --- pylibjpeg-openjpeg directly ----------------------------------------------------------
def time_phases(source: SourceFile) -> dict:
    """Encode and decode+compare of each frame, timed apart, with pydicom's parameters.

    pydicom (3.0) calls encode_buffer with photometric_interpretation 0 for every
    native image (so no MCT, even for RGB) and decodes through openjpeg.decode.
    """
    from openjpeg import decode
    from openjpeg.utils import encode_buffer

    layout = source.layout
    pixels = memoryview(read_pixel_data(source))
    if layout.planar:
        raise CodecBenchError("colour-by-plane sources are not timed by phase")
    encode_s = decode_s = 0.0
    for index in range(layout.frames):
        frame = bytes(pixels[index * layout.frame_bytes:(index + 1) * layout.frame_bytes])
        started = time.perf_counter()
        stream = encode_buffer(frame, layout.columns, layout.rows, layout.samples,
                               layout.bits_stored, layout.signed,
                               photometric_interpretation=0, codec_format=0)
        encoded = time.perf_counter()
        decoded = decode(io.BytesIO(stream), j2k_format=0, reshape=False)
        same = np.array_equal(decoded, np.frombuffer(frame, dtype=np.uint8))
        done = time.perf_counter()
        if not same:
            raise CodecBenchError(f"{source.path} frame {index}: openjpeg did not round-trip")
        encode_s += encoded - started
        decode_s += done - encoded
    return {"modality": source.modality, "pixel_bytes": layout.pixel_bytes,
            "encode_s": encode_s, "verify_s": decode_s}


# --- opj_compress ---------------------------------------------------------------------
@dataclass(frozen=True)
class OpjFrame:
    modality: str
    raw: Path
    format: str  # -F argument
    pixel_bytes: int


def write_opj_frames(sources: list[SourceFile], directory: Path) -> list[OpjFrame]:
    """Each frame of each source as a .rawl file that opj_compress reads."""
    directory.mkdir(parents=True, exist_ok=True)
    frames = []
    for n, source in enumerate(sources):
        pixels = read_pixel_data(source)
        for index in range(source.layout.frames):
            path = directory / f"{source.modality}-{n:04d}-{index:03d}.rawl"
            path.write_bytes(opj_raw_frame(pixels, source.layout, index))
            frames.append(OpjFrame(source.modality, path, opj_raw_format(source.layout),
                                   source.layout.frame_bytes))
    return frames


def opj_command(opj: str, frame: OpjFrame, out: Path, threads: int) -> list[str]:
    cmd = [opj, "-i", str(frame.raw), "-o", str(out), "-F", frame.format]
    return cmd + (["-threads", str(threads)] if threads > 1 else [])


def time_opj(opj: str, frames: list[OpjFrame], out_dir: Path, threads: int, processes: int,
             timeout: float) -> dict:
    """Wall time of opj_compress over every frame (one process per frame).

    `processes` run at once (a thread each waits for its process); each encodes
    with `threads` threads.  Returns seconds and the size of each output.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    deadline = time.monotonic() + timeout

    def one(frame: OpjFrame) -> int:
        out = out_dir / (frame.raw.stem + ".j2k")
        left = deadline - time.monotonic()
        if left <= 0:
            raise CodecBenchError(f"opj_compress runs exceeded {timeout:g} s")
        proc = subprocess.run(opj_command(opj, frame, out, threads), capture_output=True,
                              timeout=left)
        if proc.returncode != 0 or not out.exists():
            raise CodecBenchError(f"opj_compress failed on {frame.raw.name}: "
                                  f"{proc.stderr.decode(errors='replace')[-400:]}")
        return out.stat().st_size

    started = time.perf_counter()
    with ThreadPoolExecutor(processes) as pool:
        sizes = list(pool.map(one, frames))
    seconds = time.perf_counter() - started
    by_modality: dict[str, dict[str, int]] = {}
    for frame, size in zip(frames, sizes):
        entry = by_modality.setdefault(frame.modality, {"pixel_bytes": 0, "encoded_bytes": 0})
        entry["pixel_bytes"] += frame.pixel_bytes
        entry["encoded_bytes"] += size
    return {"threads": threads, "processes": processes, "frames": len(frames),
            "pixel_bytes": sum(f.pixel_bytes for f in frames), "seconds": seconds,
            "by_modality": by_modality}


def check_opj_lossless(frame: OpjFrame, j2k: Path, layout: FrameLayout) -> None:
    """The opj_compress output decodes (with openjpeg) to the frame it was given."""
    from openjpeg import decode

    decoded = decode(j2k.read_bytes(), j2k_format=0)  # rows x columns [x samples]
    raw = np.frombuffer(frame.raw.read_bytes(), dtype=f"<u{layout.itemsize}")
    planes = raw.reshape(layout.samples, layout.rows, layout.columns)
    expected = planes[0] if layout.samples == 1 else planes.transpose(1, 2, 0)
    got = decoded.view(f"<u{layout.itemsize}") if decoded.dtype.itemsize == layout.itemsize \
        else decoded.astype(f"<u{layout.itemsize}")
    if got.shape != expected.shape or not np.array_equal(got, expected):
        raise CodecBenchError(f"opj_compress output of {frame.raw.name} is not lossless "
                              f"(-F {frame.format})")


# --- profile ------------------------------------------------------------------------------
def profile_transcode(source: SourceFile, iterations: int, out: Path) -> dict:
    """cProfile of `iterations` transcode_file calls: the top of the profile and the split."""
    transcode_file(source.path, source.dataset_offset, source.transfer_syntax,
                   JPEG_2000_LOSSLESS)  # imports and plugin look-ups out of the profile
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        transcode_file(source.path, source.dataset_offset, source.transfer_syntax,
                       JPEG_2000_LOSSLESS)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.dump_stats(str(out.with_suffix(".prof")))
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    out.write_text(text.getvalue())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = stats.stats  # type: ignore[attr-defined]
    split: dict[str, float] = {}
    for (filename, _, function), row in rows.items():
        own = row[2]  # tottime
        if function == "encode_buffer" and "openjpeg" in filename:
            key = "openjpeg encode"
        elif function in ("decode", "decode_pixel_data") and "openjpeg" in filename:
            key = "openjpeg decode (verification)"
        elif function == "array_equal":
            key = "compare"
        else:
            key = "everything else (pydicom, parsing, copies, re-encoding)"
        split[key] = split.get(key, 0.0) + own
    top = []
    for (filename, line, function), row in sorted(rows.items(), key=lambda item: item[1][2],
                                                  reverse=True)[:10]:
        top.append({"function": f"{os.path.basename(filename)}:{line}({function})",
                    "calls": row[1], "tottime_ms": round(row[2] * 1000 / iterations, 3),
                    "cumtime_ms": round(row[3] * 1000 / iterations, 3)})
    return {"file": str(source.path), "modality": source.modality, "iterations": iterations,
            "pixel_bytes": source.layout.pixel_bytes,
            "ms_per_call": round(total * 1000 / iterations, 2),
            "split_ms": {k: round(v * 1000 / iterations, 2) for k, v in split.items()},
            "top": top}


__all__ = ["CodecBenchError", "OpjFrame", "SourceFile", "check_opj_lossless", "load_sources",
           "profile_transcode", "read_pixel_data", "time_opj", "time_phases", "time_transcode",
           "write_opj_frames"]
