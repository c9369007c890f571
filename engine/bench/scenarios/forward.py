"""Router forwarding: instances stored into pacs reach a DCMTK storescp through a
forwarding rule, against storescu sending the same files to that storescp.

live   storescu → pacs (one rule forwards everything) → storescp: end-to-end time
       from the first byte sent to the last file written at the destination.
drain  the same ingest while storescp is down; then pacs restarts with every job
       due and storescp up: forwarding alone, first to last file written.
direct storescu → storescp: the reference for both (end-to-end, and first to last
       file).

storescp writes to a tmpfs (/dev/shm) when there is one: a destination is
another machine, and its writeback on pacs's disk would stall pacs's fsyncs.
Arrival times are storescp's file modification times.  Every run checks that
each instance arrived at the destination with its content.
(tools/bench_forward.py uses the same machinery with its own modes and report.)
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from engine.bench.data import DataSpec, prepare_data
from engine.bench.environment import (
    DCMTK_ENV, LOOPBACK, BenchError, find_dcmtk, free_port, pacs_base_config,
    pacs_command, pacs_env)
from engine.bench.measure import tree_cpu_seconds
from engine.bench.senders import storescu_command
from engine.bench.verify import compare, digest_files, part10_files

AE_TITLE, DEST_AE = "PACS", "STORESCP"
MODES = ("direct", "live", "ingest", "drain", "recover")
BACKOFF_MAX = 0.5
POLL = 0.05
#: `python -m engine`, or `python SCRIPT` (tools.bench_forward --pacs-launcher: a script
#: that profiles or monkeypatches the server, then runs engine.cli.main on its arguments).
PACS_COMMAND = pacs_command()


def _tool(name: str) -> str:
    path = find_dcmtk(name)
    if path is None:
        raise BenchError(f"DCMTK {name} not found (apt install dcmtk)")
    return path


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
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


def stop(proc: subprocess.Popen | None) -> None:
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
    text = pacs_base_config() + (
        f'[network]\nae_title = "{AE_TITLE}"\nhost = "{LOOPBACK}"\nport = {port}\n'
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


def start_pacs(work: Path, scp_port: int | None, associations: int
               ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = work / "pacs.toml"
    config.write_text(pacs_config(work / "data", port, scp_port, associations))
    with open(work / "pacs.log", "ab") as out:
        proc = subprocess.Popen([*PACS_COMMAND, "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=pacs_env(), cwd=work, start_new_session=True)
    try:
        wait_port(port, proc)
    except BenchError:
        stop(proc)
        raise
    return proc, port


def send(dirs: list[Path], port: int, called_ae: str, work: Path, timeout: float) -> float:
    """P storescu processes, one per directory, started together; wall time they all ended."""
    procs = []
    try:
        for i, directory in enumerate(dirs):
            with open(work / f"storescu-{i}.log", "ab") as out:
                procs.append(subprocess.Popen(
                    storescu_command(port, [directory], called_ae), env=DCMTK_ENV, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
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


def pacs_count(data_dir: Path) -> int:
    out = subprocess.run([*pacs_command(), "stats", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=120, env=pacs_env())
    for line in out.stdout.splitlines():
        if line.startswith("instances"):
            return int(line.split()[1])
    raise BenchError(f"pacs stats failed ({out.returncode}): {out.stderr[-400:]}")


def run_mode(mode: str, parallel: int, dirs: list[Path], count: int, work: Path,
             timeout: float, scp_dir: Path | None = None,
             check: Callable[[Path], None] | None = None) -> dict:
    """Fresh peers, one timed transfer, everything stopped; seconds by measure.

    storescp writes into a fresh directory under `scp_dir` (default: `work`);
    `check(directory)` sees what it received before that directory is removed.
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
            wait_port(scp_port, storescp)
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
            stop(pacs)
            pacs = None
            time.sleep(BACKOFF_MAX + 0.1)
            os.sync()
            storescp = start_storescp(received, scp_port, fork, work / "storescp.log")
            wait_port(scp_port, storescp)
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
        if check is not None and mode != "ingest":
            stop(storescp)
            storescp = None
            check(received)
    finally:
        stop(pacs)
        stop(storescp)
        shutil.rmtree(received, ignore_errors=True)
    if mode == "ingest" and pacs_count(work / "data") != count:
        raise BenchError("pacs does not hold every instance after the ingest run")
    shutil.rmtree(work, ignore_errors=True)
    return result


def default_scp_dir() -> str:
    """/dev/shm when it is a tmpfs (a remote destination's disk is not ours), else ''."""
    try:
        with open("/proc/mounts") as mounts:
            if any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts):
                return "/dev/shm"
    except OSError:
        pass
    return ""


# --- the `pacs bench` scenario -------------------------------------------------------------
#: case mode → (figure it compares, text)
CASES = {"live": ("end_to_end", "end to end through a forwarding rule, against storescu → "
                                "storescp end to end"),
         "drain": ("first_to_last", "a restarted pacs draining its backlog, first to last "
                                    "file written, against storescu → storescp")}


def run(ctx) -> None:
    cfg = ctx.sizes["forward"]
    n = cfg["count"]
    for tool in ("storescu", "storescp"):
        _tool(tool)
    parts = max(cfg["parallel"])
    data = prepare_data(DataSpec(f"forward-ct{n}-p{parts}", "ct", n, parts, -(-n // parts), 11),
                        ctx.cache, ctx.log)
    expected = data.digests()
    scp_dir = Path(default_scp_dir()) if default_scp_dir() else None
    cases = []
    for p in cfg["parallel"]:
        for mode, (figure, text) in CASES.items():
            name = f"{mode}-P{p}"
            ctx.case("forward", name, text=f"{n} CT instances over {p} association(s), {text}",
                     instances=n, bytes=data.bytes, primary="instances_per_s")
            cases.append((name, mode, p, figure))
    for round_ in range(1, ctx.rounds + 1):
        for name, mode, p, figure in cases:
            for peer in ("pacs", "direct"):
                _one(ctx, name, "direct" if peer == "direct" else mode, peer, p, figure,
                     round_, data, expected, scp_dir)


def _one(ctx, name, mode, peer, p, figure, round_, data, expected, scp_dir) -> dict:
    run = {"scenario": "forward", "case": name, "peer": peer, "round": round_,
           "status": "FAILED"}
    verdicts = []

    def check(received: Path) -> None:
        if ctx.faulty(peer):
            next(x for x in received.iterdir() if x.is_file()).unlink()
        verdicts.append(compare(expected, *digest_files(part10_files(received))))

    dirs = [data.root] if p == 1 else [data.root / f"part{i}" for i in range(p)]
    try:
        seconds = run_mode(mode, p, dirs, data.files, ctx.work("forward") / f"{name}-{peer}",
                           ctx.timeout, scp_dir, check)
        verdict = verdicts[0]
        run["checks"] = verdict.as_checks(len(expected))
        run["seconds"] = seconds
        if not verdict.ok:
            run["reason"] = verdict.reason
        else:
            n = data.files - 1 if figure == "first_to_last" else data.files
            run["status"] = "ok"
            run["metrics"] = {"seconds": round(seconds[figure], 4),
                              "instances_per_s": n / seconds[figure],
                              "mb_per_s": data.bytes * n / data.files / 1e6 / seconds[figure]}
            if "pacs_cpu" in seconds:
                run["metrics"]["cpu_ms_per_instance"] = seconds["pacs_cpu"] * 1000 / data.files
    except (BenchError, OSError, subprocess.SubprocessError, IndexError) as exc:
        run["reason"] = f"{type(exc).__name__}: {exc}"
    return ctx.record(run)


__all__ = ["MODES", "PACS_COMMAND", "arrivals", "default_scp_dir", "pacs_config", "run",
           "run_mode", "send", "start_pacs", "start_storescp", "stop", "wait_port"]
