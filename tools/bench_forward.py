"""Router forwarding throughput against DCMTK storescu, in one run on one machine.

The same N CT instances (four studies of one series, one per directory) reach
one DCMTK storescp on loopback in five modes, at each parallelism P (1 and 4):

direct   P `storescu` processes (split directories when P > 1) send the files to
         storescp: the reference.
live     the same senders into a fresh `pacs serve` whose only rule forwards
         everything to storescp (`max_associations = P`): ingest time (until the
         senders exit) and end-to-end time (until storescp wrote the last file).
ingest   the same senders into a fresh `pacs serve` with routing off.
drain    the same ingest while storescp is down (backoff <= 0.5 s, no dead jobs),
         then pacs is stopped, storescp started, and pacs started again: every
         job is due at once, so no worker waits on its ~1 s poll or a backoff.
recover  the same ingest, then storescp starts under the running pacs: the time
         to deliver includes what `drain` leaves out (jittered backoffs, polls).

storescp runs with `--fork` when P > 1, so it takes parallel associations on
both sides, and writes to a tmpfs (/dev/shm) by default: a destination is
another machine, and its writeback on pacs's disk would stall pacs's fsyncs
(ext4 ordered mode), which measures the disk, not pacs.  Arrival times are
storescp's file modification times, so the polling that waits for "all N
written" (every wait is bounded) adds nothing.  Forwarding throughput is timed
from the first file written to the last (N - 1 instances), for direct and drain
alike; the wake-up before the first file is reported apart (`first_file`).

Ratios (targets from the issue): drain rate / direct rate (>= 0.9), live
end-to-end rate / direct end-to-end rate, ingest rate while forwarding /
ingest rate alone (>= 0.8).  Modes run in alternating order, round after
round; medians are reported.  Every pacs run starts on an empty data directory.

    python -m tools.bench_forward --instances 500 --rounds 5 --out bench-out/forward

The processes and timed modes are engine.bench.scenarios.forward's, which
`pacs bench --scenarios forward` runs (live and drain, every arrival checked).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from engine.bench.data import DataSpec, prepare_data
from engine.bench.environment import BenchError, machine_info
from engine.bench.scenarios.forward import (  # noqa: F401  (names this tool always had)
    BACKOFF_MAX, MODES, PACS_COMMAND, _tool, arrivals, default_scp_dir, pacs_config, run_mode,
    send, start_pacs, start_storescp)


# --- summary ---------------------------------------------------------------------------
def summarize(runs: list[dict], count: int, parallels: list[int]) -> dict:
    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    out = {}
    for p in parallels:
        med: dict[str, float] = {}
        for mode in MODES:
            mine = [r["seconds"] for r in runs if r["mode"] == mode and r["parallel"] == p]
            for key in sorted({k for r in mine for k in r}):
                med[f"{mode}.{key}"] = statistics.median(r[key] for r in mine if key in r)
        rates = {"direct": ratio(count - 1, med.get("direct.first_to_last")),
                 "drain": ratio(count - 1, med.get("drain.first_to_last")),
                 "direct_end_to_end": ratio(count, med.get("direct.end_to_end")),
                 "live_end_to_end": ratio(count, med.get("live.end_to_end")),
                 "ingest_alone": ratio(count, med.get("ingest.ingest")),
                 "ingest_while_forwarding": ratio(count, med.get("live.ingest")),
                 "ingest_while_destination_down": ratio(count, med.get("drain.ingest"))}
        live_cpu = ratio(med.get("live.pacs_cpu", 0) - med.get("ingest.pacs_cpu", 0), count)
        out[str(p)] = {
            "median_seconds": med,
            "instances_per_second": {k: v for k, v in rates.items() if v is not None},
            "ratios": {
                "drain_vs_direct": ratio(rates["drain"], rates["direct"]),
                "live_vs_direct_end_to_end": ratio(rates["live_end_to_end"],
                                                   rates["direct_end_to_end"]),
                "ingest_while_forwarding_vs_alone": ratio(rates["ingest_while_forwarding"],
                                                          rates["ingest_alone"]),
                "ingest_while_destination_down_vs_alone": ratio(
                    rates["ingest_while_destination_down"], rates["ingest_alone"]),
            },
            "pacs_cpu_ms_per_instance": {
                "forwarding (recover)": ratio(med.get("recover.pacs_cpu", 0) * 1000, count),
                "live minus ingest": live_cpu * 1000 if live_cpu else None,
                "ingest": ratio(med.get("ingest.pacs_cpu", 0) * 1000, count)},
        }
    return out


def render(doc: dict) -> str:
    m = doc["machine"]

    def f(x, d=0):
        return "—" if x is None else f"{x:.{d}f}"

    lines = [f"# Router forwarding benchmark: {doc['instances']} CT instances "
             f"({doc['bytes'] / 1e6:.0f} MB), {doc['rounds']} rounds", "",
             f"{m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, DCMTK {m['dcmtk']}, "
             f"git {m['git']}; storescp writes to {doc['storescp_dir']}. "
             "Medians; rates in instances/s.", "",
             "| P | direct | drain | drain ÷ direct (≥ 0.9) | live e2e ÷ direct e2e "
             "| recover s (first file s) | ingest alone | while forwarding (÷, ≥ 0.8) "
             "| while dest. down (÷) | pacs CPU ms/inst: fwd, live − ingest |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p, s in doc["summary"].items():
        r, q, med = s["instances_per_second"], s["ratios"], s["median_seconds"]
        cpu = s["pacs_cpu_ms_per_instance"]
        lines.append(
            f"| {p} | {f(r.get('direct'))} | {f(r.get('drain'))} "
            f"| {f(q['drain_vs_direct'], 2)} | {f(q['live_vs_direct_end_to_end'], 2)} "
            f"| {f(med.get('recover.end_to_end'), 2)} ({f(med.get('recover.first_file'), 2)}) "
            f"| {f(r.get('ingest_alone'))} | {f(r.get('ingest_while_forwarding'))} "
            f"({f(q['ingest_while_forwarding_vs_alone'], 2)}) "
            f"| {f(r.get('ingest_while_destination_down'))} "
            f"({f(q['ingest_while_destination_down_vs_alone'], 2)}) "
            f"| {f(cpu['forwarding (recover)'], 2)}, {f(cpu['live minus ingest'], 2)} |")
    lines += ["", "direct, drain: (N − 1) ÷ (last − first file written by storescp); drain = "
              "backlog sent by a restarted pacs with every job due. e2e: storescu start → last "
              "file. recover: storescp started under a running pacs → last file (backoff ≤ "
              f"{BACKOFF_MAX} s and the workers' ~1 s poll included)."]
    return "\n".join(lines) + "\n"


def run(instances: int, rounds: int, parallels: list[int], modes: list[str], out: Path,
        cache: Path, timeout: float, scp_dir: Path | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("storescu", "storescp"):  # found (probed) before any clock runs
        _tool(name)
    data = prepare_data(DataSpec(f"forward-ct{instances}", "ct", instances, 4,
                                 -(-instances // 4), 11), cache, print)
    scratch = Path(tempfile.mkdtemp(prefix="bench-forward-", dir=out))
    plan = [(mode, p) for p in parallels for mode in modes]
    runs: list[dict] = []
    doc = {"instances": instances, "bytes": data.bytes, "rounds": rounds, "modes": modes,
           "parallel": parallels, "storescp_dir": str(scp_dir or out),
           "machine": machine_info(out), "runs": runs}
    try:
        for round_ in range(rounds):
            order = plan if round_ % 2 == 0 else plan[::-1]
            for mode, p in order:
                dirs = [data.root] if p == 1 else data.part_dirs[:p]
                seconds = run_mode(mode, p, dirs, instances, scratch / f"{mode}-{p}", timeout,
                                   scp_dir)
                runs.append({"round": round_ + 1, "mode": mode, "parallel": p,
                             "seconds": seconds})
                print(f"round {round_ + 1}/{rounds} {mode:6} P={p}: "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()), flush=True)
                (out / "forward.json").write_text(json.dumps(doc, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    doc["summary"] = summarize(runs, instances, parallels)
    (out / "forward.json").write_text(json.dumps(doc, indent=2))
    (out / "forward.md").write_text(render(doc))
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_forward", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parallel", default="1,4", help="comma-separated P values (1..4)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=Path("bench-out/forward"))
    parser.add_argument("--cache", type=Path, default=Path("bench-out/cache"))
    parser.add_argument("--timeout", type=float, default=600.0, help="per step, seconds")
    parser.add_argument("--scp-dir", default=default_scp_dir(),
                        help="where storescp writes (default /dev/shm when it is a tmpfs: "
                             "a destination on pacs's disk makes pacs's fsyncs wait for its "
                             "writeback); --scp-dir '' writes under --out")
    parser.add_argument("--pacs-launcher", type=Path,
                        help="run `python SCRIPT serve ...` instead of `python -m engine`")
    args = parser.parse_args(argv)
    if args.pacs_launcher:
        PACS_COMMAND[1:] = [str(args.pacs_launcher.resolve())]
    parallels = [int(p) for p in args.parallel.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if not all(1 <= p <= 4 for p in parallels) or set(modes) - set(MODES) \
            or args.instances < 8 or args.rounds < 1:
        parser.error("P in 1..4, modes from " + ",".join(MODES) + ", instances >= 8")
    try:
        doc = run(args.instances, args.rounds, parallels, modes, args.out.resolve(),
                  args.cache.resolve(), args.timeout,
                  Path(args.scp_dir).resolve() if args.scp_dir else None)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
