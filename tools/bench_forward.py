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
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench_store import (
    DCMTK_ENV, LOOPBACK, REPO, BenchError, DataSpec, find_dcmtk, free_port, machine_info,
    prepare_data, tree_cpu_seconds)

AE_TITLE, DEST_AE, CALLING_AE = "PACS", "STORESCP", "BENCH"
MODES = ("direct", "live", "ingest", "drain", "recover")
BACKOFF_MAX = 0.5
POLL = 0.05


def _tool(name: str) -> str:
    path = find_dcmtk(name)
    if path is None:
        raise BenchError(f"DCMTK {name} not found (apt install dcmtk)")
    return path


# --- processes -----------------------------------------------------------------------
def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until something accepts on `port` (`proc` must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{Path(proc.args[0]).name} exited with {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"nothing listening on {port} after {timeout:g} s")


def _stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM to the process group we created, then SIGKILL (forked storescp children)."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass


def start_storescp(directory: Path, port: int, fork: bool, log: Path) -> subprocess.Popen:
    command = [_tool("storescp"), *(["--fork"] if fork else []), "--aetitle", DEST_AE,
               "-od", str(directory), str(port)]
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=DCMTK_ENV, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def pacs_config(data_dir: Path, port: int, scp_port: int | None, associations: int) -> str:
    """A pacs config; with `scp_port`, one rule forwards everything to storescp there."""
    text = (f'[network]\nae_title = "{AE_TITLE}"\nhost = "{LOOPBACK}"\nport = {port}\n'
            f'[storage]\ndata_dir = "{data_dir}"\n'
            f'[retrieve]\nconnect_timeout = 2.0\n')
    if scp_port is not None:
        # Small backoff and no dead jobs while storescp is down (drain, recover).
        text += (f'[routing]\nbackoff_base = {BACKOFF_MAX / 2}\nbackoff_max = {BACKOFF_MAX}\n'
                 'max_attempts = 1000000\n'
                 '[[routing.rules]]\nname = "all"\nforward = ["PEER"]\n'
                 f'[routing.destinations.PEER]\ntype = "dicom"\nae_title = "{DEST_AE}"\n'
                 f'host = "{LOOPBACK}"\nport = {scp_port}\nmax_associations = {associations}\n')
    return text


#: `python -m engine`, or `python SCRIPT` (--pacs-launcher: a script that profiles or
#: monkeypatches the server, then runs engine.cli.main on its arguments).
PACS_COMMAND = [sys.executable, "-m", "engine"]


def start_pacs(work: Path, scp_port: int | None, associations: int
               ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = work / "pacs.toml"
    config.write_text(pacs_config(work / "data", port, scp_port, associations))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    with open(work / "pacs.log", "ab") as out:
        proc = subprocess.Popen([*PACS_COMMAND, "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=REPO, start_new_session=True)
    try:
        _wait_port(port, proc)
    except BenchError:
        _stop(proc)
        raise
    return proc, port


def send(dirs: list[Path], port: int, called_ae: str, work: Path, timeout: float) -> float:
    """P storescu processes, one per directory, started together; wall time they all ended."""
    procs = []
    try:
        for i, directory in enumerate(dirs):
            with open(work / f"storescu-{i}.log", "ab") as out:
                procs.append(subprocess.Popen(
                    [_tool("storescu"), "+sd", "+r", "+sp", "*.dcm", "-aet", CALLING_AE,
                     "-aec", called_ae, LOOPBACK, str(port), str(directory)],
                    env=DCMTK_ENV, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"storescu did not finish within {timeout:g} s") from None
        ended = time.time()
        if any(p.returncode != 0 for p in procs):
            raise BenchError(f"storescu exited {[p.returncode for p in procs]} "
                             f"(see {work}/storescu-*.log)")
        return ended
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def arrivals(directory: Path, count: int, timeout: float) -> tuple[float, float]:
    """Wait until storescp wrote `count` files and the last one is finished; the first and
    last modification times (wall clock)."""
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        with os.scandir(directory) as entries:
            times = [e.stat().st_mtime for e in entries if e.is_file()]
        if len(times) >= count:
            span = (min(times), max(times))
            if span == previous:  # nothing written for one poll: the last file is complete
                return span
            previous = span
        time.sleep(POLL)
    raise BenchError(f"storescp wrote fewer than {count} files within {timeout:g} s")


def _pacs_count(data_dir: Path) -> int:
    out = subprocess.run([sys.executable, "-m", "engine", "stats", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    for line in out.stdout.splitlines():
        if line.startswith("instances"):
            return int(line.split()[1])
    raise BenchError(f"pacs stats failed ({out.returncode}): {out.stderr[-400:]}")


# --- one run of one mode --------------------------------------------------------------
def run_mode(mode: str, parallel: int, dirs: list[Path], count: int, work: Path,
             timeout: float, scp_dir: Path | None = None) -> dict:
    """Fresh peers, one timed transfer, everything stopped; seconds by measure.

    storescp writes into a fresh directory under `scp_dir` (default: `work`).
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    received = Path(tempfile.mkdtemp(prefix="received-", dir=scp_dir or work))
    fork = parallel > 1
    scp_port = free_port()
    storescp = pacs = None
    result: dict[str, float] = {}
    try:
        if mode in ("direct", "live"):
            storescp = start_storescp(received, scp_port, fork, work / "storescp.log")
            _wait_port(scp_port, storescp)
        if mode != "direct":
            pacs, pacs_port = start_pacs(work, None if mode == "ingest" else scp_port, parallel)
        os.sync()  # earlier runs' dirty pages must not be flushed on this run's clock
        cpu = tree_cpu_seconds(pacs.pid) if pacs else 0.0
        started = time.time()
        if mode == "direct":
            send(dirs, scp_port, DEST_AE, work, timeout)
        else:  # drain, recover: ingest while every forward attempt fails
            result["ingest"] = send(dirs, pacs_port, AE_TITLE, work, timeout) - started
        if mode == "drain":  # restart with every job due: no backoff or poll wait left
            _stop(pacs)
            pacs = None
            time.sleep(BACKOFF_MAX + 0.1)
            os.sync()
            storescp = start_storescp(received, scp_port, fork, work / "storescp.log")
            _wait_port(scp_port, storescp)
            started = time.time()
            pacs, pacs_port = start_pacs(work, scp_port, parallel)
            cpu = None  # start-up CPU would count; recover measures forwarding CPU
        elif mode == "recover":  # storescp comes up under a running pacs
            os.sync()
            cpu = tree_cpu_seconds(pacs.pid)
            started = time.time()  # storescp is up a few ms later (pacs may connect first)
            storescp = start_storescp(received, scp_port, fork, work / "storescp.log")
        if mode != "ingest":
            first, last = arrivals(received, count, timeout)
            result["first_to_last"] = last - first
            result["end_to_end"] = last - started
            result["first_file"] = first - started
        if pacs is not None and cpu is not None:
            result["pacs_cpu"] = tree_cpu_seconds(pacs.pid) - cpu
    finally:
        _stop(pacs)
        _stop(storescp)
        shutil.rmtree(received, ignore_errors=True)
    if mode == "ingest" and _pacs_count(work / "data") != count:
        raise BenchError("pacs does not hold every instance after the ingest run")
    shutil.rmtree(work, ignore_errors=True)
    return result


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


def _default_scp_dir() -> str:
    """/dev/shm when it is a tmpfs (a remote destination's disk is not ours), else ''."""
    try:
        with open("/proc/mounts") as mounts:
            if any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts):
                return "/dev/shm"
    except OSError:
        pass
    return ""


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
    parser.add_argument("--scp-dir", default=_default_scp_dir(),
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
