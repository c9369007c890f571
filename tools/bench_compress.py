"""Compression stage benchmark: verified JPEG 2000 Lossless against opj_compress, one run.

On the same generated studies (tools/generate_data.py profiles), in one invocation:

* MB/s of pixel data through the engine's codec path (`transcode_file`: encode, decode
  every frame again, compare), on one core in this process, and split into encode and
  verification (pylibjpeg-openjpeg called directly);
* MB/s of `CompressionStage.run_now()` over an archive holding every instance, with 1
  worker process and with one per core (write, fsync, re-hash, index swap included);
* OpenJPEG's `opj_compress` on the same frames (.rawl files, one process per frame,
  process start and file I/O included): single-threaded, `-threads N`, N processes;
* compression ratio by modality (pixel data, and whole files after the stage), with
  opj_compress's ratio on the same frames;
* C-STORE ingest (DCMTK storescu into `pacs serve`) with the stage compressing a
  backlog at the same time, against ingest with the stage off, and (reference) beside
  CPU-only busy loops at the lowest priority, with an fsync latency probe;
* a cProfile of transcode_file on one CT instance.

Runs are interleaved (run 1: every path, run 2: every path, ...); every wait is
bounded; everything is on 127.0.0.1.  Targets reported against: >= 55 MB/s on all
cores with verification, ingest while compressing >= 0.8x ingest alone.

    python -m tools.bench_compress --out bench-out/compress            # ~8 min on 2 cores
    python -m tools.bench_compress --scale 0.5 --runs 2 --out /tmp/bc  # quicker
    python -m tools.bench_compress --smoke --out /tmp/bc-smoke         # CI: correctness

Writes OUT/results.json (every raw measurement), OUT/report.md (also printed) and
OUT/profile-transcode.txt.  Re-render a report: python -m tools.compress_report FILE.
Exit status 1 when a run failed (an instance not compressed or not verified, a wrong
count, an error), never for a missed target: targets are figures in the report.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from tools.bench_store import (
    DataSet, DataSpec, find_dcmtk, machine_info, prepare_data)
from tools.compress_codec import (
    CodecBenchError, check_opj_lossless, load_sources, profile_transcode, time_opj,
    time_phases, time_transcode, write_opj_frames)
from tools.compress_report import render_report
from tools.compress_stage import (
    BackloggedPacs, IdleLoops, fill_archive, fsync_latency_ms, ingest_run, run_stage)
from tools.compress_variants import bypass_effect, jpeg_ls_effect, mct_effect

MODALITIES = ("ct", "mr", "cr", "dx", "mg", "us")
SECTIONS = ("codec", "phases", "opj", "stage", "ingest", "profile", "variants")
#: instances per modality: ~136 MB of pixel data in all (CT/MR 0.5/0.13 MB, CR 10,
#: DX 13, MG 25, US 10 frames of 0.9 MB).
DEFAULT_COUNTS = {"ct": 40, "mr": 40, "cr": 3, "dx": 2, "mg": 1, "us": 3}
DEFAULTS = {"runs": 3, "ingest_count": 1000, "backlog_count": 200, "ingest_runs": 3}
SMOKE = {"runs": 1, "ingest_count": 20, "backlog_count": 10, "ingest_runs": 1}
SMOKE_COUNTS = {"ct": 3, "mr": 3, "cr": 1, "us": 1}
SEEDS = {m: 7000 + 100 * i for i, m in enumerate(MODALITIES)}


def parse_counts(text: str) -> dict[str, int]:
    """'ct=40,cr=3' -> {'ct': 40, 'cr': 3}; modalities must be known, counts >= 1."""
    counts = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        if name not in MODALITIES or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(
                f"bad count {item!r}: use MODALITY=N with N >= 1, MODALITY one of "
                f"{', '.join(MODALITIES)}")
        counts[name] = int(value)
    if not counts:
        raise argparse.ArgumentTypeError("no counts given")
    return counts


def scaled_counts(counts: dict[str, int], scale: float) -> dict[str, int]:
    """Each count times `scale`, rounded, at least 1."""
    return {m: max(1, round(n * scale)) for m, n in counts.items()}


def _csv(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        unknown = [t for t in items if t not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench_compress",
                                description="Compression stage benchmark (JPEG 2000 Lossless).")
    p.add_argument("--counts", type=parse_counts,
                   help="instances per modality, e.g. ct=40,mr=40,cr=3 (default: "
                        + ",".join(f"{k}={v}" for k, v in DEFAULT_COUNTS.items()) + ")")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every count (min 1)")
    p.add_argument("--runs", type=int, help="interleaved runs of the codec/stage paths (3)")
    p.add_argument("--sections", type=_csv(SECTIONS), default=list(SECTIONS))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes / opj threads for 'all cores' (default: cores)")
    p.add_argument("--ingest-count", type=int, help="CT instances stored while compressing")
    p.add_argument("--backlog-count", type=int,
                   help="uncompressed CT instances already in the archive at start")
    p.add_argument("--ingest-runs", type=int, help="runs per mode (stage off / on)")
    p.add_argument("--no-idle-loops", dest="idle_loops", action="store_false",
                   help="skip the reference ingest runs beside lowest-priority busy loops")
    p.add_argument("--sweep-interval", type=float, default=0.5,
                   help="[compression] sweep_interval of the ingest runs (s)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="bound of each opj pass, archive fill and storescu run (s)")
    p.add_argument("--out", type=Path, default=Path("bench-out/compress"))
    p.add_argument("--cache", type=Path, help="data cache directory (default OUT/cache)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for CI, 1 run")
    p.add_argument("--install-opj", action="store_true",
                   help="apt-get install -y libopenjp2-tools when opj_compress is missing")
    return p


def find_opj(install: bool, log: Callable[[str], None]) -> str | None:
    found = shutil.which("opj_compress") or ("/usr/bin/opj_compress"
                                             if os.access("/usr/bin/opj_compress", os.X_OK)
                                             else None)
    if found or not install:
        return found
    log("installing libopenjp2-tools (apt-get install -y)")
    subprocess.run(["apt-get", "install", "-y", "libopenjp2-tools"], timeout=600,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("opj_compress")


def versions(opj: str | None) -> dict:
    from importlib.metadata import version

    from openjpeg.utils import get_openjpeg_version
    out = {"pylibjpeg-openjpeg": version("pylibjpeg-openjpeg"), "pydicom": version("pydicom"),
           "openjpeg": ".".join(map(str, get_openjpeg_version()))}
    if opj:
        probe = subprocess.run([opj, "-h"], capture_output=True, text=True, timeout=30)
        m = re.search(r"openjp2 library v(\d+\.\d+\.\d+)", probe.stdout + probe.stderr)
        out["opj_compress"] = m.group(1) if m else "?"
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, default in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    counts = args.counts or scaled_counts(SMOKE_COUNTS if args.smoke else DEFAULT_COUNTS,
                                          args.scale)
    if min(args.runs, args.ingest_count, args.backlog_count, args.ingest_runs,
           args.workers) < 1:
        print("bench_compress: counts, runs and workers must be >= 1", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or out / "cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    work = out / "work"

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    sections = set(args.sections)
    notes: list[str] = []
    opj = find_opj(args.install_opj, log) if sections & {"opj", "variants"} else None
    if sections & {"opj", "variants"} and opj is None:
        notes.append("opj_compress not found (Debian package libopenjp2-tools; "
                     "--install-opj installs it): opj_compress figures are skipped.")
        sections.discard("opj")
    if sections & {"stage", "ingest"} and find_dcmtk("storescu") is None:
        print("bench_compress: DCMTK storescu not found (apt install dcmtk)", file=sys.stderr)
        return 2

    datasets: dict[str, DataSet] = {
        m: prepare_data(DataSpec(f"compress-{m}-{n}", m, n, 1, min(n, 50), SEEDS[m]), cache, log)
        for m, n in counts.items()}
    sources = {m: load_sources(d.root, m) for m, d in datasets.items()}
    every = [s for m in counts for s in sources[m]]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(counts=counts, sections=sorted(sections))
    notes.append("load average (1, 5, 15 min) at start: "
                 + ", ".join(f"{x:.2f}" for x in os.getloadavg())
                 + " — other work on the machine shows up in every figure.")
    doc = {"started_at": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": machine_info(out), "versions": versions(opj), "config": config,
           "notes": notes, "errors": [], "runs": [],
           "data": {m: {"files": d.files, "bytes": d.bytes, "directory": str(d.root),
                        "pixel_bytes": sum(s.layout.pixel_bytes for s in sources[m]),
                        "frames": sum(s.layout.frames for s in sources[m])}
                    for m, d in datasets.items()}}
    results = out / "results.json"

    def save() -> None:
        results.write_text(json.dumps(doc, indent=2, default=str))

    frames = []
    if opj is not None:
        frames = write_opj_frames(every, work / "opj-frames")
        log(f"opj: {len(frames)} frames written as .rawl")
    template, stored = None, 0
    if "stage" in sections:
        template, stored = fill_archive(list(datasets.values()), work / "archive", args.timeout,
                                        log)
    n = args.workers
    try:
        for run in range(1, args.runs + 1):
            entry: dict = {"run": run}
            doc["runs"].append(entry)
            if "codec" in sections:
                log(f"run {run}: transcode_file on {len(every)} instances (1 core)")
                entry["codec"] = [time_transcode(s) for s in every]
            if "phases" in sections:
                log(f"run {run}: openjpeg encode / decode+compare apart")
                entry["phases"] = [time_phases(s) for s in every]
            if "opj" in sections:
                entry["opj"] = []
                for threads, processes in ((1, 1), (n, 1), (1, n)):
                    log(f"run {run}: opj_compress threads={threads} processes={processes}")
                    entry["opj"].append(time_opj(opj, frames, work / "opj-out", threads,
                                                 processes, args.timeout))
                    if run == 1 and (threads, processes) == (1, 1):
                        _check_opj(frames, every, work / "opj-out")
            if "stage" in sections:
                entry["stage"] = []
                for workers in dict.fromkeys((1, n)):
                    log(f"run {run}: stage run_now with {workers} worker(s)")
                    r = run_stage(template, work / "stage", workers, stored)
                    entry["stage"].append(vars(r))
                    log(f"  {r.compressed}/{r.instances} in {r.seconds:.2f} s, "
                        f"cpu {r.cpu_s:.1f} s, failed {r.failed}, verified {r.verified}")
            save()
        if "ingest" in sections:
            _ingest(args, doc, cache, work, log, save)
        if "profile" in sections and sources.get("ct"):
            doc["profile"] = profile_transcode(sources["ct"][0], 10,
                                               out / "profile-transcode.txt")
        if "variants" in sections:
            log("variants: BYPASS, MCT, JPEG-LS")
            doc["variants"] = {
                "bypass": (bypass_effect(opj, frames, work, args.timeout, args.runs)
                           if frames else None),
                "mct": mct_effect(every, args.runs),
                "jpeg_ls": jpeg_ls_effect(every, args.runs)}
    except (CodecBenchError, OSError, subprocess.SubprocessError, RuntimeError) as exc:
        doc["errors"].append(f"{type(exc).__name__}: {exc}")
        log(f"ERROR {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
    notes.append("load average at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    save()
    report = render_report(doc)
    (out / "report.md").write_text(report)
    print(report)
    failed_stage = any(r["failed"] or r["compressed"] != r["instances"] or not r["verified"]
                       for run in doc["runs"] for r in run.get("stage") or [])
    failed_ingest = any(r["status"] != "ok" for r in doc.get("ingest") or [])
    return 1 if doc["errors"] or failed_stage or failed_ingest else 0


def _check_opj(frames, sources, out_dir: Path) -> None:
    """The first frame of each modality: opj_compress's output is lossless (right -F)."""
    layouts = {s.modality: s.layout for s in sources}
    seen = set()
    for frame in frames:
        if frame.modality not in seen:
            seen.add(frame.modality)
            check_opj_lossless(frame, out_dir / (frame.raw.stem + ".j2k"),
                               layouts[frame.modality])


def _ingest(args, doc: dict, cache: Path, work: Path, log, save) -> None:
    ingest = prepare_data(DataSpec(f"compress-ingest-{args.ingest_count}", "ct",
                                   args.ingest_count, 1, 100, 8100), cache, log)
    backlog = prepare_data(DataSpec(f"compress-backlog-{args.backlog_count}", "ct",
                                    args.backlog_count, 1, 100, 8200), cache, log)
    warmup = prepare_data(DataSpec("warmup", "tiny", 1, 1, 1, 9000), cache, log)
    template, stored = fill_archive([backlog], work / "backlog", args.timeout, log)
    doc["ingest_data"] = {"files": ingest.files, "bytes": ingest.bytes, "backlog": stored}
    doc["ingest"] = []
    alone = BackloggedPacs(template, False, args.sweep_interval)
    modes = [(alone, 0), (BackloggedPacs(template, True, args.sweep_interval), 0)]
    if args.idle_loops:
        modes.append((alone, args.workers))
        with IdleLoops(args.workers) as loops:
            busy = fsync_latency_ms(work / "fsync-probe")
        doc["fsync_ms"] = {"idle": fsync_latency_ms(work / "fsync-probe"), "busy": busy,
                           "loops": args.workers, "policy": loops.policy}
        log(f"fsync 4 KiB: {doc['fsync_ms']['idle']:.2f} ms, {busy:.2f} ms beside "
            f"{args.workers} {loops.policy} busy loops")
    for run in range(1, args.ingest_runs + 1):
        for peer, idle_loops in modes:
            log(f"ingest run {run}: {peer.name}{' + idle loops' if idle_loops else ''}")
            r = ingest_run(peer, run, ingest, warmup, stored, work / "ingest-run",
                           args.timeout, idle_loops=idle_loops)
            doc["ingest"].append(r)
            if r["status"] == "ok":
                log(f"  {r['mb_per_s']:.1f} MB/s, {r['instances_per_s']:.0f} inst/s, "
                    f"compressed during: {r['compressed_during']}")
            else:
                log(f"  {r['status']}: {r['reason']}")
            save()


if __name__ == "__main__":
    sys.exit(main())
