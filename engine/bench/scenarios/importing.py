"""Bulk import: `pacs import` of a legacy tree, copying and in place, against `cp -r`.

`cp -r` is the ceiling for copying the same files (no hashing, no indexing, no
fsync).  The import is timed as the whole command, interpreter and worker
start-up included; every imported instance is then read back through the index
and compared with its source.
"""
from __future__ import annotations

import shutil
import subprocess

from engine.bench.data import DataSpec, prepare_data
from engine.bench.environment import BenchError, pacs_command, pacs_env
from engine.bench.measure import timed_command
from engine.bench.peers import PacsPeer
from engine.bench.verify import compare, digest_files, part10_files

PROFILES = {"ct": (100, 5000, "CT (~525 KB)"), "tiny": (100, 6000, "tiny CT (~10 KB)")}


def available() -> str | None:
    """Why `pacs import` cannot be benchmarked here, or None."""
    try:
        from engine.cli import build_parser
        from engine.migration.importer import Importer  # noqa: F401
        build_parser().parse_args(["import", "x"])
    except (ImportError, SystemExit) as exc:
        return f"`pacs import` is not available in this build ({type(exc).__name__})"
    return None


def run(ctx) -> str | None:
    why = available()
    if why:
        return why
    cases = []
    for profile, (per_series, seed, text) in PROFILES.items():
        n = ctx.sizes["import"][profile]
        data = prepare_data(DataSpec(f"import-{profile}{n}", profile, n, 1, per_series, seed),
                            ctx.cache, ctx.log)
        data.digests()
        for mode in ("copy", "in-place"):
            name = f"{mode}-{profile}"
            ctx.case("import", name, text=f"{n} {text} files, `pacs import"
                     + (" --in-place`" if mode == "in-place" else "` (copied into the store)")
                     + "; reference: `cp -r` of the same tree", instances=n, bytes=data.bytes,
                     primary="instances_per_s")
            cases.append((name, mode, data))
    for round_ in range(1, ctx.rounds + 1):
        for name, mode, data in cases:
            for peer in ("pacs", "cp -r"):
                _one(ctx, name, mode, peer, round_, data)


def _one(ctx, name, mode, peer, round_, data) -> dict:
    run = {"scenario": "import", "case": name, "peer": peer, "round": round_,
           "status": "FAILED"}
    work = ctx.work("import", f"{name}-{peer.replace(' ', '')}-r{round_}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if peer == "cp -r":
            target = work / "copy"
            seconds, cpu, rss = timed_command(["cp", "-r", str(data.root), str(target)], None,
                                       ctx.timeout)
            paths = part10_files(target)
        else:
            from engine.store.blob_store import FilesystemBlobStore

            pacs = PacsPeer()
            pacs.data_dir = work / "data"
            FilesystemBlobStore(pacs.data_dir).open()
            command = pacs_command("import", "--data-dir", str(pacs.data_dir), "--settle", "0",
                                   str(data.root))
            if mode == "in-place":
                command.append("--in-place")
            seconds, cpu, rss = timed_command(command, pacs_env(), ctx.timeout)
            paths = pacs.received_paths()
        if ctx.faulty(peer) and paths:
            paths = paths[1:]
        verdict = compare(data.digests(), *digest_files(paths))
        run["checks"] = verdict.as_checks(data.files)
        if not verdict.ok:
            run["reason"] = verdict.reason
        else:
            run["status"] = "ok"
            run["metrics"] = {"seconds": round(seconds, 4),
                              "instances_per_s": data.files / seconds,
                              "mb_per_s": data.bytes / 1e6 / seconds,
                              "cpu_ms_per_instance": cpu * 1000 / data.files,
                              "peak_rss_mb": round(rss / 1e6, 1)}
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        run["reason"] = f"{type(exc).__name__}: {exc}"
    finally:
        if not ctx.keep:
            shutil.rmtree(work, ignore_errors=True)
    return ctx.record(run)
