"""Compression: `pacs compress --now` turning an archive of CT into JPEG 2000 Lossless,
against OpenJPEG's opj_compress on the same frames (one process per frame).

pacs's figure includes everything the stage does (encode, decode again and
compare, write, fsync, re-hash, index swap); opj_compress only encodes.  Every
run is checked: each stored instance is JPEG 2000 Lossless and decodes to the
source's pixels; each opj_compress output decodes to its frame.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom

from engine.bench.data import DataSpec, prepare_data
from engine.bench.environment import BenchError, pacs_command, pacs_env
from engine.bench.frames import layout_of, opj_raw_format, opj_raw_frame
from engine.bench.measure import children_cpu_seconds, timed_command
from engine.bench.peers import PacsPeer
from engine.bench.senders import run_senders

JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def find_opj() -> str | None:
    return shutil.which("opj_compress")


def run(ctx) -> None:
    n = ctx.sizes["compress"]
    data = prepare_data(DataSpec(f"compress-ct{n}", "ct", n, 1, 100, 8000), ctx.cache, ctx.log)
    sources = {}
    for path in sorted(data.root.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        sources[str(ds.SOPInstanceUID)] = (path, ds)
    pixel_bytes = sum(layout_of(ds).pixel_bytes for _, ds in sources.values())
    ctx.case("compress", "ct-j2k", text=f"{n} CT instances ({pixel_bytes / 1e6:.0f} MB of "
             "pixel data) to JPEG 2000 Lossless; MB/s of pixel data; reference: opj_compress "
             "(encode only, one process per frame)", instances=n, bytes=pixel_bytes,
             primary="instances_per_s")
    work = ctx.work("compress")
    template = _fill(ctx, data, work / "template")
    opj = find_opj()
    frames = _write_frames(sources, work / "frames") if opj else []
    if not opj:
        ctx.notes.append("compress: opj_compress not found (Debian package "
                         "libopenjp2-tools): pacs alone.")
    try:
        for round_ in range(1, ctx.rounds + 1):
            _pacs(ctx, round_, template, work / "run", sources, pixel_bytes)
            if opj:
                _opj(ctx, round_, opj, frames, work / "opj", pixel_bytes, len(sources))
    finally:
        if not ctx.keep:
            shutil.rmtree(work, ignore_errors=True)


def _fill(ctx, data, run_dir: Path) -> Path:
    """An archive holding every source instance, uncompressed (copied for each run)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    peer = PacsPeer()
    try:
        peer.start(run_dir)
        _, senders = run_senders([data.root], peer.port, run_dir, ctx.timeout)
    finally:
        peer.stop()
    if senders[0]["returncode"] != 0 or len(peer.received_paths()) != data.files:
        raise BenchError("could not fill the archive to compress")
    return peer.data_dir


def _pacs(ctx, round_, template: Path, work: Path, sources, pixel_bytes) -> dict:
    run = {"scenario": "compress", "case": "ct-j2k", "peer": "pacs", "round": round_,
           "status": "FAILED"}
    shutil.rmtree(work, ignore_errors=True)
    try:
        shutil.copytree(template, work / "data")
        peer = PacsPeer()
        peer.data_dir = work / "data"
        before = sum(p.stat().st_size for p in peer.received_paths())
        seconds, cpu, rss = timed_command(pacs_command("compress", "--now", "--data-dir",
                                                str(peer.data_dir)), pacs_env(), ctx.timeout)
        paths = peer.received_paths()
        if ctx.faulty("pacs") and paths:
            paths = paths[1:]
        problems = _check_stored(paths, sources)
        run["checks"] = {"expected": len(sources), "counted": len(paths),
                         "lossless_ok": not problems}
        if problems:
            run["reason"] = "; ".join(problems[:3])
        else:
            after = sum(p.stat().st_size for p in paths)
            run["status"] = "ok"
            run["metrics"] = {"seconds": round(seconds, 4),
                              "instances_per_s": len(sources) / seconds,
                              "mb_per_s": pixel_bytes / 1e6 / seconds,
                              "cpu_ms_per_instance": cpu * 1000 / len(sources),
                              "peak_rss_mb": round(rss / 1e6, 1),
                              "compression_ratio": before / after}
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        run["reason"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ctx.record(run)


def _check_stored(paths: list[Path], sources) -> list[str]:
    problems, seen = [], set()
    for path in paths:
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        seen.add(uid)
        if uid not in sources:
            problems.append(f"unexpected instance {uid}")
        elif ds.file_meta.TransferSyntaxUID != JPEG_2000_LOSSLESS:
            problems.append(f"{uid} not compressed ({ds.file_meta.TransferSyntaxUID})")
        elif not np.array_equal(ds.pixel_array, sources[uid][1].pixel_array):
            problems.append(f"{uid} decodes to other pixels than its source")
    missing = set(sources) - seen
    if missing:
        problems.insert(0, f"{len(missing)} of {len(sources)} instances missing")
    return problems


def _write_frames(sources, directory: Path) -> list[tuple[Path, str, object]]:
    directory.mkdir(parents=True, exist_ok=True)
    frames = []
    for n, (_, ds) in enumerate(sources.values()):
        layout = layout_of(ds)
        for index in range(layout.frames):
            path = directory / f"{n:05d}-{index:03d}.rawl"
            path.write_bytes(opj_raw_frame(ds.PixelData, layout, index))
            frames.append((path, opj_raw_format(layout), layout))
    return frames


def _lossless(j2k: Path, raw: Path, layout) -> bool:
    from openjpeg import decode

    decoded = decode(j2k.read_bytes(), j2k_format=0)
    expected = np.frombuffer(raw.read_bytes(), dtype=f"<u{layout.itemsize}")
    got = decoded.view(f"<u{layout.itemsize}") if decoded.dtype.itemsize == layout.itemsize \
        else decoded.astype(f"<u{layout.itemsize}")
    return got.size == expected.size and np.array_equal(got.reshape(-1), expected)


def _opj(ctx, round_, opj, frames, out: Path, pixel_bytes, instances) -> dict:
    run = {"scenario": "compress", "case": "ct-j2k", "peer": "opj_compress", "round": round_,
           "status": "FAILED"}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        cpu = children_cpu_seconds()
        deadline = time.monotonic() + ctx.timeout
        started = time.perf_counter()
        for raw, fmt, _ in frames:
            done = subprocess.run([opj, "-i", str(raw), "-o", str(out / (raw.stem + ".j2k")),
                                   "-F", fmt], capture_output=True,
                                  timeout=max(1.0, deadline - time.monotonic()))
            if done.returncode != 0:
                raise BenchError(f"opj_compress failed on {raw.name}: "
                                 f"{done.stderr.decode(errors='replace')[-300:]}")
        seconds = time.perf_counter() - started
        cpu = children_cpu_seconds() - cpu
        outputs = [out / (raw.stem + ".j2k") for raw, _, _ in frames]
        if ctx.faulty("opj_compress"):
            outputs[0].unlink()
        bad = [p.name for p, (raw, _, layout) in zip(outputs, frames)
               if not p.exists() or not _lossless(p, raw, layout)]
        run["checks"] = {"expected": len(frames), "counted": len(frames) - len(bad),
                         "lossless_ok": not bad}
        if bad:
            run["reason"] = f"{len(bad)} frames missing or not lossless (e.g. {bad[0]})"
        else:
            run["status"] = "ok"
            run["metrics"] = {"seconds": round(seconds, 4),
                              "instances_per_s": instances / seconds,
                              "mb_per_s": pixel_bytes / 1e6 / seconds,
                              "cpu_ms_per_instance": cpu * 1000 / instances,
                              "compression_ratio": pixel_bytes / sum(
                                  p.stat().st_size for p in outputs)}
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        run["reason"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return ctx.record(run)
