"""End-to-end C-STORE benchmark: pacs-engine against other storage SCPs, same data, same sender.

Every peer receives the same synthetic instances from the same sender (DCMTK
``storescu``) over loopback, in one invocation, with the runs interleaved
(run 1: A B C, run 2: A B C, ...) so that drift on a noisy machine hits every
peer alike.  A run counts only if the peer really holds every instance
afterwards; otherwise it is reported as FAILED, never as a speed.

Scenarios::

    ct1    N CT instances (~525 KB) over one association
    ct4    the same N CT instances over 4 concurrent storescu processes
    large  50 large CR instances (~15 MB) over one association
    tiny   2,000 tiny CT instances (~10 KB) over one association

Peers::

    pacs        python -m engine serve (full durability: fsync file, dir, LMDB commit)
    storescp    DCMTK storescp -od D (single process; --fork for ct4)
    storescp-B  the same with +B (bit-preserving: bytes written as received)
    orthanc     Orthanc, when installed (or with --install-peers)

Command line::

    python -m tools.bench_store --scenarios ct1,ct4 --ct-count 500 --runs 3 \\
        --peers pacs,storescp,storescp-B --out /tmp/bench-out
    python -m tools.bench_store --smoke --out /tmp/bench-smoke

Writes OUT/report.md (also printed) and OUT/results.json (every raw run).
The peers, data cache, sender and measurement are engine.bench's, shared with
`pacs bench` (the whole suite: more scenarios, more peers, plots, --compare).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil

# The machinery lives in engine.bench (`pacs bench` runs from the installed package);
# these names stay importable from here for the other tools and the tests.
from engine.bench.data import DataSet, DataSpec, prepare_data  # noqa: F401
from engine.bench.environment import (  # noqa: F401
    AE_TITLE, CALLING_AE, DCMTK_ENV, LOOPBACK, BenchError, find_dcmtk, find_orthanc, free_port,
    machine_info)
from engine.bench.measure import RssSampler, tree_cpu_seconds, tree_rss  # noqa: F401
from engine.bench.peers import (  # noqa: F401
    OrthancPeer, PacsPeer, Peer, StorescpPeer, make_peer)
from engine.bench.senders import run_senders, storescu_command  # noqa: F401
from engine.bench.senders import tail as _tail

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("ct1", "ct4", "large", "tiny")
PEERS = ("pacs", "storescp", "storescp-B", "orthanc")
DEFAULTS = {"ct_count": 2000, "large_count": 50, "tiny_count": 2000, "runs": 3}
SMOKE = {"ct_count": 40, "large_count": 4, "tiny_count": 40, "runs": 1}


# --- one run ------------------------------------------------------------------------
@dataclass
class RunResult:
    scenario: str
    peer: str
    run: int
    status: str = "FAILED"  # ok | FAILED | start-failed
    reason: str = ""
    instances: int = 0
    expected_count: int = 0
    counted: int | None = None
    bytes: int = 0
    seconds: float | None = None
    instances_per_s: float | None = None
    mb_per_s: float | None = None
    server_cpu_s: float | None = None
    cpu_ms_per_instance: float | None = None
    peak_rss_mb: float | None = None
    rss_samples: int = 0
    senders: list = field(default_factory=list)
    server_command: str = ""
    started_at: str = ""


def run_one(scenario: str, peer: Peer, run: int, dataset: DataSet, warmup: DataSet, out: Path,
            keep_data: bool, sender_timeout: float | None) -> RunResult:
    """Fresh peer, warm-up store, sync, timed send, count check, stop (always)."""
    result = RunResult(scenario, peer.name, run, instances=dataset.files,
                       expected_count=dataset.files + warmup.files, bytes=dataset.bytes,
                       started_at=dt.datetime.now().isoformat(timespec="seconds"))
    run_dir = out / "runs" / f"{scenario}-{peer.name}-run{run}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    dirs = dataset.part_dirs if scenario == "ct4" else [dataset.root]
    timeout = sender_timeout or 120 + dataset.bytes / 2e6  # >= 2 MB/s or it is broken
    try:
        try:
            peer.start(run_dir, scenario, 4 if scenario == "ct4" else 1)
        except (BenchError, OSError) as exc:
            result.status, result.reason = "start-failed", str(exc)
            return result
        result.server_command = " ".join(peer.proc.args)
        # Warm-up: one small untimed store (it stays in the archive: expected = N + 1).
        warm_dir = run_dir / "warmup"
        warm_dir.mkdir()
        _, warm = run_senders([warmup.root], peer.port, warm_dir, 60)
        if warm[0]["returncode"] != 0:
            raise BenchError(f"warm-up store failed: {_tail(warm_dir / 'storescu-0.log')}")
        os.sync()  # earlier runs' dirty pages must not be flushed on this run's clock
        cpu_before = tree_cpu_seconds(peer.proc.pid)
        with RssSampler(peer.proc.pid) as sampler:
            elapsed, senders = run_senders(dirs, peer.port, run_dir, timeout)
        cpu_after = tree_cpu_seconds(peer.proc.pid)
        result.senders = senders
        result.seconds = elapsed
        result.server_cpu_s = round(cpu_after - cpu_before, 3)
        result.peak_rss_mb = round(sampler.peak / 1e6, 1)
        result.rss_samples = sampler.samples
        bad = [s for s in senders if s["returncode"] != 0]
        result.counted = peer.count()
        if bad:
            logs = " | ".join(_tail(run_dir / f"storescu-{i}.log", 300)
                              for i, s in enumerate(senders) if s["returncode"] != 0)
            result.reason = f"{len(bad)} storescu exited non-zero: {logs}"
        elif result.counted != result.expected_count:
            result.reason = (f"count {result.counted} != expected {result.expected_count} "
                             f"({dataset.files} timed + {warmup.files} warm-up)")
        else:
            result.status = "ok"
            result.instances_per_s = dataset.files / elapsed
            result.mb_per_s = dataset.bytes / 1e6 / elapsed
            result.cpu_ms_per_instance = result.server_cpu_s * 1000 / dataset.files
    except (BenchError, OSError, subprocess.SubprocessError, psutil.Error) as exc:
        result.status, result.reason = "FAILED", f"{type(exc).__name__}: {exc}"
    finally:
        peer.stop()
        if not keep_data:
            shutil.rmtree(run_dir / "data", ignore_errors=True)
    return result


# --- report -------------------------------------------------------------------------------
def _stats(values: list[float]) -> tuple[float, float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _fmt(s: tuple[float, float, float] | None, digits: int = 1) -> str:
    if s is None:
        return "—"
    med, lo, hi = s
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


SCENARIO_TEXT = {
    "ct1": "CT instances over 1 association",
    "ct4": "CT instances over 4 concurrent associations (4 storescu processes)",
    "large": "large CR instances over 1 association",
    "tiny": "tiny CT instances over 1 association",
}


def render_report(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# C-STORE ingest benchmark",
        "",
        f"{doc['finished_at']} · pacs-engine {m['git']} · Python {m['python']} · "
        f"DCMTK {m['dcmtk']}",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gb']} GiB RAM, "
        f"kernel {m['kernel']}, disk {m['disk']}.",
        "",
        f"Sender: DCMTK `storescu +sd +r` (TCP_NODELAY=1) on 127.0.0.1, same files for every "
        f"peer. Time = wall clock from the start of the sender(s) until all exited; each run "
        f"starts the peer fresh on an empty directory, stores 1 untimed warm-up instance, "
        f"then `sync`. Runs interleaved (run 1: every peer, run 2: every peer, ...), "
        f"{doc['config']['runs']} per peer. A run counts only if the peer holds all N + 1 "
        f"instances afterwards. Figures: median (min–max); MB = 10^6 bytes of source files; "
        f"CPU = user+sys of the server and its children; RSS = peak sum over the server's "
        f"process tree, sampled every 50 ms. Ratio = pacs median instances/s ÷ peer median.",
        "",
        "Durability differs: pacs fsyncs file and directory and commits LMDB before each "
        "success; storescp never fsyncs (`+B` also skips parsing and re-encoding the "
        "dataset); Orthanc syncs its storage area by default. storescp runs single-process "
        "except in ct4, where both storescp variants run with `--fork` (one child per "
        "association).",
    ]
    for note in doc["notes"]:
        lines += ["", f"Note: {note}"]
    runs = doc["runs"]
    for scenario in doc["config"]["scenarios"]:
        data = doc["data"][scenario]
        lines += ["", f"## {scenario}: {data['files']} {SCENARIO_TEXT[scenario]} "
                      f"({data['bytes'] / 1e6:.0f} MB, {data['bytes'] / data['files'] / 1e3:.0f} "
                      f"KB each)", "",
                  "| peer | ok runs | instances/s | MB/s | server CPU ms/instance "
                  "| peak RSS MB | pacs ÷ peer |",
                  "|---|---|---|---|---|---|---|"]
        medians = {}
        for peer in doc["config"]["peers"]:
            mine = [r for r in runs if r["scenario"] == scenario and r["peer"] == peer]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == "ok"]
            ips = _stats([r["instances_per_s"] for r in ok])
            medians[peer] = ips[0] if ips else None
        for peer in doc["config"]["peers"]:
            mine = [r for r in runs if r["scenario"] == scenario and r["peer"] == peer]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == "ok"]
            pacs, theirs = medians.get("pacs"), medians.get(peer)
            ratio = f"{pacs / theirs:.2f}×" if pacs and theirs and peer != "pacs" else "—"
            lines.append(
                f"| {peer} | {len(ok)}/{len(mine)} "
                f"| {_fmt(_stats([r['instances_per_s'] for r in ok]))} "
                f"| {_fmt(_stats([r['mb_per_s'] for r in ok]))} "
                f"| {_fmt(_stats([r['cpu_ms_per_instance'] for r in ok]), 2)} "
                f"| {_fmt(_stats([r['peak_rss_mb'] for r in ok]), 0)} | {ratio} |")
        failed = [r for r in runs if r["scenario"] == scenario and r["status"] != "ok"]
        if failed:
            lines.append("")
            for r in failed:
                lines.append(f"- **{r['status']}** {r['peer']} run {r['run']}: "
                             f"{r['reason'].replace(chr(10), ' / ')}")
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------
def _csv(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
        return list(dict.fromkeys(items))
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench_store",
                                description="End-to-end C-STORE benchmark against other SCPs.")
    p.add_argument("--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--runs", type=int, help="timed runs per peer and scenario (default 3)")
    p.add_argument("--ct-count", type=int, help="CT instances for ct1/ct4 (default 2000)")
    p.add_argument("--large-count", type=int, help="large instances (default 50)")
    p.add_argument("--tiny-count", type=int, help="tiny instances (default 2000)")
    p.add_argument("--peers", type=_csv(PEERS), default=list(PEERS))
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--cache", type=Path, help="data cache directory (default OUT/cache)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for CI: 40 CT, 4 large, 40 tiny, 1 run")
    p.add_argument("--keep-data", action="store_true", help="keep each run's received data")
    p.add_argument("--sender-timeout", type=float,
                   help="seconds per timed send (default 120 s + 1 s per 2 MB)")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install -y orthanc when orthanc is asked for and missing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = SMOKE if args.smoke else DEFAULTS
    for key, default in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if min(args.runs, args.ct_count, args.large_count, args.tiny_count) < 1:
        print("bench_store: counts and runs must be >= 1", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or out / "cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    notes: list[str] = []
    if find_dcmtk("storescu") is None:
        print("bench_store: DCMTK storescu not found: install the Debian package 'dcmtk'",
              file=sys.stderr)
        return 2
    if "orthanc" in args.peers and find_orthanc() is None and args.install_peers:
        log("installing orthanc (apt-get install -y orthanc)")
        try:
            subprocess.run(["apt-get", "install", "-y", "orthanc"], timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.SubprocessError) as exc:
            notes.append(f"orthanc install failed: {exc}")
    peers: list[Peer] = []
    for name in args.peers:
        peer = make_peer(name)
        why = peer.unavailable()
        if why:
            notes.append(f"peer {name} skipped: {why}.")
            log(f"skipping {name}: {why}")
        else:
            peers.append(peer)

    specs = {
        "ct": DataSpec(f"ct-{args.ct_count}", "ct", args.ct_count, 4, 100, 1000),
        "large": DataSpec(f"large-{args.large_count}", "large", args.large_count, 1, 2, 2000),
        "tiny": DataSpec(f"tiny-{args.tiny_count}", "tiny", args.tiny_count, 1, 100, 3000),
    }
    warmup = prepare_data(DataSpec("warmup", "tiny", 1, 1, 1, 9000), cache, log)
    datasets = {}
    for scenario in args.scenarios:
        key = "ct" if scenario in ("ct1", "ct4") else scenario
        datasets[scenario] = prepare_data(specs[key], cache, log)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["peers"] = [p.name for p in peers]
    doc = {"started_at": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": machine_info(out), "config": config, "notes": notes,
           "data": {s: {"name": d.spec.name, "profile": d.spec.profile, "files": d.files,
                        "bytes": d.bytes, "directory": str(d.root)}
                    for s, d in datasets.items()},
           "server_commands": {}, "runs": []}
    results_path = out / "results.json"
    try:
        for run in range(1, args.runs + 1):
            for scenario in args.scenarios:
                for peer in peers:
                    log(f"run {run}/{args.runs} {scenario} → {peer.name}")
                    r = run_one(scenario, peer, run, datasets[scenario], warmup, out,
                                args.keep_data, args.sender_timeout)
                    doc["runs"].append(asdict(r))
                    doc["server_commands"][f"{scenario}/{peer.name}"] = r.server_command
                    if r.status == "ok":
                        log(f"  ok: {r.seconds:.2f} s, {r.instances_per_s:.1f} inst/s, "
                            f"{r.mb_per_s:.1f} MB/s, cpu {r.cpu_ms_per_instance:.2f} ms/inst, "
                            f"rss {r.peak_rss_mb:.0f} MB")
                    else:
                        log(f"  {r.status}: {r.reason}")
                    results_path.write_text(json.dumps(doc, indent=2))
    finally:
        for peer in peers:
            peer.stop()
    doc["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
    results_path.write_text(json.dumps(doc, indent=2))
    report = render_report(doc)
    (out / "report.md").write_text(report)
    print(report)
    return 0 if all(r["status"] == "ok" for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
