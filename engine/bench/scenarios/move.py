"""C-MOVE throughput: one CT study moved to a DCMTK storescp by pacs and by Orthanc,
against storescu sending the same files there (the reference rate).

All servers hold the study before the first round and stay up; each round moves
it once per peer, in turn, into an emptied directory, and checks that every
instance arrived with its content.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pydicom

from engine.bench.data import DataSpec, prepare_data
from engine.bench.environment import DCMTK_ENV, LOOPBACK, AE_TITLE, BenchError, find_dcmtk, \
    free_port
from engine.bench.measure import ServerMeter
from engine.bench.peers import OrthancPeer, PacsPeer, signal_group
from engine.bench.senders import run_senders, storescu_command, tail
from engine.bench.verify import compare, digest_files, part10_files

DEST_AE, MOVE_AE = "STORESCP", "MOVESCU"


class PacsMovePeer(PacsPeer):
    def __init__(self, dest_port: int) -> None:
        super().__init__()
        self.dest_port = dest_port

    def config_text(self) -> str:
        return super().config_text() + (
            f'[retrieve]\ndestinations = {{ {DEST_AE} = "{LOOPBACK}:{self.dest_port}" }}\n')


class OrthancMovePeer(OrthancPeer):
    def __init__(self, dest_port: int) -> None:
        super().__init__()
        self.dest_port = dest_port

    def prepare(self, run_dir: Path) -> None:
        super().prepare(run_dir)
        path = run_dir / "orthanc.json"
        config = json.loads(path.read_text())
        config.update({"DicomModalities": {"dest": [DEST_AE, LOOPBACK, self.dest_port],
                                           "mover": [MOVE_AE, LOOPBACK, 104]},
                       "DicomAlwaysAllowMove": True})
        path.write_text(json.dumps(config, indent=2))


def wait_files(directory: Path, count: int, timeout: float) -> None:
    """Until `directory` holds `count` files (storescp's output), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for p in directory.iterdir() if p.is_file()) >= count:
            return
        time.sleep(0.01)
    raise BenchError(f"storescp wrote fewer than {count} files within {timeout:g} s")


def run(ctx) -> None:
    n = ctx.sizes["move"]
    for tool in ("storescp", "movescu"):
        if find_dcmtk(tool) is None:
            raise BenchError(f"DCMTK {tool} not found (apt install dcmtk)")
    data = prepare_data(DataSpec(f"move-ct{n}", "ct", n, 1, n, 7), ctx.cache, ctx.log)
    expected = data.digests()
    study = pydicom.dcmread(next(data.root.rglob("*.dcm")), stop_before_pixels=True)
    ctx.case("move", "ct-study", text=f"one CT study of {n} instances "
             f"({data.bytes / 1e6:.0f} MB) moved to DCMTK storescp; reference: storescu "
             "sending the same files", instances=n, bytes=data.bytes,
             primary="instances_per_s")
    work = ctx.work("move")
    received = work / "received"
    shutil.rmtree(received, ignore_errors=True)
    received.mkdir()
    scp_port = free_port()
    with open(work / "storescp.log", "wb") as scp_log:
        storescp = subprocess.Popen(
            [find_dcmtk("storescp"), "--aetitle", DEST_AE, "-od", str(received),
             str(scp_port)], env=DCMTK_ENV, stdout=scp_log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    servers = {"pacs": PacsMovePeer(scp_port)}
    if "orthanc" in ctx.peers:
        servers["orthanc"] = OrthancMovePeer(scp_port)
    try:
        for name, server in servers.items():
            run_dir = work / name
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir()
            server.start(run_dir)
            _, senders = run_senders([data.root], server.port, run_dir, ctx.timeout)
            if senders[0]["returncode"] != 0 or server.count() != n:
                raise BenchError(f"{name} could not be loaded with the study: "
                                 f"{tail(run_dir / 'storescu-0.log')}")
        for round_ in range(1, ctx.rounds + 1):
            for peer in ["storescu", *servers]:
                server = servers.get(peer)
                if server is None:
                    command = storescu_command(scp_port, [data.root], DEST_AE)
                else:
                    command = [find_dcmtk("movescu"), "-S", "-aet", MOVE_AE, "-aec", AE_TITLE,
                               "-aem", DEST_AE, "-k", "QueryRetrieveLevel=STUDY",
                               "-k", f"StudyInstanceUID={study.StudyInstanceUID}",
                               LOOPBACK, str(server.port)]
                _one(ctx, peer, round_, command, server, received, data, expected)
    finally:
        for server in servers.values():
            server.stop()
        signal_group(storescp, 15)
        try:
            storescp.wait(30)
        except subprocess.TimeoutExpired:
            signal_group(storescp, 9)
            storescp.wait(10)
        if not ctx.keep:
            shutil.rmtree(work, ignore_errors=True)


def _one(ctx, peer, round_, command, server, received, data, expected) -> dict:
    run = {"scenario": "move", "case": "ct-study", "peer": peer, "round": round_,
           "status": "FAILED", "command": " ".join(command)}
    shutil.rmtree(received)
    received.mkdir()
    try:
        os.sync()
        with ServerMeter(server.proc.pid if server else None) as meter:
            started = time.perf_counter()
            done = subprocess.run(command, env=DCMTK_ENV, capture_output=True, text=True,
                                  timeout=ctx.timeout)
            if done.returncode != 0:
                raise BenchError(f"{Path(command[0]).name} exited {done.returncode}: "
                                 f"{done.stderr[-500:]}")
            wait_files(received, data.files, ctx.timeout)
            seconds = time.perf_counter() - started
        if ctx.faulty(peer):
            next(p for p in received.iterdir() if p.is_file()).unlink()
        verdict = compare(expected, *digest_files(part10_files(received)))
        run["checks"] = verdict.as_checks(len(expected))
        if not verdict.ok:
            run["reason"] = verdict.reason
        else:
            run["status"] = "ok"
            run["metrics"] = {"seconds": round(seconds, 4),
                              "instances_per_s": data.files / seconds,
                              "mb_per_s": data.bytes / 1e6 / seconds}
            if server is not None:
                run["metrics"].update(
                    cpu_ms_per_instance=meter.cpu_seconds * 1000 / data.files,
                    peak_rss_mb=round(meter.peak_rss / 1e6, 1))
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        run["reason"] = f"{type(exc).__name__}: {exc}"
    return ctx.record(run)
