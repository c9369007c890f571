"""Speed-up candidates for engine/codec, measured outside the engine on the benchmark's frames.

* `bypass_effect`: JPEG 2000 code-block "BYPASS" (lazy arithmetic coding, Part 1
  mode switch, still lossless) against the default, encoded by opj_compress in one
  process (-ImgDir: no per-frame start), both decoded and compared here with
  pylibjpeg-openjpeg, as the engine's verification does;
* `mct_effect`: RGB frames with the reversible colour transform (what pydicom does
  when Photometric Interpretation is YBR_RCT) against without (what it does for RGB);
* `jpeg_ls_effect`: transcode_file to JPEG-LS Lossless instead of JPEG 2000 Lossless
  (same engine path, verification included), for reference.

Each comparison alternates its variants `repeats` times on the same frames and keeps
every time; the report shows medians.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from engine.codec.transcode import transcode_file
from tools.compress_codec import CodecBenchError, OpjFrame, SourceFile, read_pixel_data
from tools.compress_frames import encoded_pixel_bytes

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def _decode_and_compare(streams: list[bytes], raws: list[bytes]) -> float:
    from openjpeg import decode

    started = time.perf_counter()
    for stream, raw in zip(streams, raws):
        decoded = decode(io.BytesIO(stream), j2k_format=0, reshape=False)
        if not np.array_equal(decoded, np.frombuffer(raw, dtype=np.uint8)):
            raise CodecBenchError("a variant did not decode to its source frame")
    return time.perf_counter() - started


def bypass_effect(opj: str, frames: list[OpjFrame], work: Path, timeout: float,
                  repeats: int = 3) -> dict:
    """Default vs `-M 1` on the monochrome frames of one layout (the first modality's).

    The two alternate `repeats` times; every time is kept (the report takes medians).
    """
    mono = [f for f in frames if f.format.split(",")[2] == "1"]
    if not mono:
        raise CodecBenchError("no monochrome frames for the BYPASS comparison")
    chosen = [f for f in mono if f.format == mono[0].format]
    raws = [f.raw.read_bytes() for f in chosen]
    result: dict = {"modality": chosen[0].modality, "frames": len(chosen),
                    "pixel_bytes": sum(f.pixel_bytes for f in chosen)}
    for _ in range(repeats):
        for name, options in (("default", []), ("bypass", ["-M", "1"])):
            encode_s, verify_s, size = _opj_batch(opj, chosen, raws, options,
                                                  work / f"variant-{name}", timeout)
            entry = result.setdefault(name, {"encode_s": [], "verify_s": [],
                                             "encoded_bytes": size})
            entry["encode_s"].append(encode_s)
            entry["verify_s"].append(verify_s)
    return result


def _opj_batch(opj: str, frames: list[OpjFrame], raws: list[bytes], options: list[str],
               directory: Path, timeout: float) -> tuple[float, float, int]:
    """opj_compress -ImgDir over copies of the frames; (encode s, decode+compare s, bytes)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for f in frames:
        shutil.copyfile(f.raw, directory / f.raw.name)
    started = time.perf_counter()
    proc = subprocess.run([opj, "-ImgDir", str(directory), "-OutFor", "j2k",
                           "-F", frames[0].format, *options], capture_output=True,
                          timeout=timeout)
    encode_s = time.perf_counter() - started
    outputs = [directory / (f.raw.stem + ".j2k") for f in frames]
    if proc.returncode != 0 or not all(p.exists() for p in outputs):
        raise CodecBenchError(f"opj_compress -ImgDir {' '.join(options)} failed: "
                              f"{proc.stderr.decode(errors='replace')[-400:]}")
    streams = [p.read_bytes() for p in outputs]
    shutil.rmtree(directory, ignore_errors=True)
    return encode_s, _decode_and_compare(streams, raws), sum(len(s) for s in streams)


def mct_effect(sources: list[SourceFile], repeats: int = 3) -> dict | None:
    """encode_buffer + decode/compare of every RGB frame, without and with MCT (alternating)."""
    from openjpeg.utils import encode_buffer

    rgb = [s for s in sources if s.layout.samples == 3 and not s.layout.planar]
    if not rgb:
        return None
    frames = []
    for source in rgb:
        pixels = read_pixel_data(source)
        size = source.layout.frame_bytes
        frames += [(source.layout, pixels[i * size:(i + 1) * size])
                   for i in range(source.layout.frames)]
    result: dict = {"modality": rgb[0].modality, "frames": len(frames),
                    "pixel_bytes": sum(len(f) for _, f in frames)}
    for _ in range(repeats):
        for name, pi, mct in (("rgb", 0, False), ("ybr_rct", 1, True)):
            started = time.perf_counter()
            streams = [encode_buffer(frame, layout.columns, layout.rows, 3, layout.bits_stored,
                                     layout.signed, photometric_interpretation=pi, use_mct=mct)
                       for layout, frame in frames]
            encode_s = time.perf_counter() - started
            verify_s = _decode_and_compare(streams, [f for _, f in frames])
            entry = result.setdefault(name, {"encode_s": [], "verify_s": [],
                                             "encoded_bytes": sum(len(s) for s in streams)})
            entry["encode_s"].append(encode_s)
            entry["verify_s"].append(verify_s)
    return result


def jpeg_ls_effect(sources: list[SourceFile], repeats: int = 3) -> dict:
    """transcode_file to JPEG-LS Lossless, per modality: seconds of each pass, bytes."""
    by_modality: dict[str, dict] = {}
    for _ in range(repeats):
        seconds: dict[str, float] = {}
        for source in sources:
            started = time.perf_counter()
            out = transcode_file(source.path, source.dataset_offset, source.transfer_syntax,
                                 JPEG_LS_LOSSLESS)
            seconds[source.modality] = (seconds.get(source.modality, 0.0)
                                        + time.perf_counter() - started)
            entry = by_modality.setdefault(source.modality, {"seconds": [], "pixel_bytes": 0,
                                                             "encoded_bytes": 0})
            if len(entry["seconds"]) == 0:
                entry["pixel_bytes"] += source.layout.pixel_bytes
                entry["encoded_bytes"] += encoded_pixel_bytes(out)[1]
        for modality, total in seconds.items():
            by_modality[modality]["seconds"].append(total)
    return by_modality


__all__ = ["bypass_effect", "jpeg_ls_effect", "mct_effect"]
