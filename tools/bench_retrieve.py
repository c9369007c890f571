"""C-MOVE throughput against DCMTK storescu, in one run on one machine.

The same N-instance CT study (one series) is sent to one DCMTK storescp two
ways, in alternating rounds:

* `storescu` reads the files and sends them (the reference rate);
* pacs-engine, holding the study, is asked by `movescu` to C-MOVE it there.

Each round waits until storescp has written every file, then empties its
directory.  Medians of the wall times are reported with their ratio
(pacs rate / storescu rate; the issue's target is >= 0.8).  Loopback only,
every wait bounded.

    python -m tools.bench_retrieve --instances 500 --rounds 5 --out bench-out/retrieve

`pacs bench --scenarios move` is the same comparison with Orthanc added and every
received instance checked (engine/bench/scenarios/move.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from engine.bench.data import DataSpec, prepare_data
from engine.bench.scenarios.move import wait_files
from engine.bench.environment import (
    DCMTK_ENV, LOOPBACK, BenchError, find_dcmtk, free_port, machine_info, pacs_base_config,
    pacs_env)

AE_TITLE, DEST_AE = "PACS", "STORESCP"


def _tool(name: str) -> str:
    path = find_dcmtk(name)
    if path is None:
        raise BenchError(f"DCMTK {name} not found (apt install dcmtk)")
    return path


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listening on {port} after {timeout:g} s")


def _run(command: list[str], timeout: float) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, env=DCMTK_ENV, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise BenchError(f"{Path(command[0]).name} exited {proc.returncode}: "
                         f"{proc.stderr[-800:]}")
    return time.perf_counter() - started


def _empty(directory: Path) -> None:
    shutil.rmtree(directory)
    directory.mkdir()


def run(instances: int, rounds: int, out: Path, cache: Path, timeout: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(DataSpec(f"retrieve-ct{instances}", "ct", instances, 1, instances, 7),
                        cache, print)
    first = next(p for p in data.root.rglob("*.dcm"))
    study_uid = pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID
    work = Path(tempfile.mkdtemp(prefix="bench-retrieve-", dir=out))
    received = work / "received"
    received.mkdir()
    scp_port, pacs_port = free_port(), free_port()
    config = work / "pacs.toml"
    config.write_text(pacs_base_config()
                      + f'[network]\nae_title = "{AE_TITLE}"\nhost = "{LOOPBACK}"\n'
                      f'port = {pacs_port}\n[storage]\ndata_dir = "{work / "data"}"\n'
                      f'[retrieve]\ndestinations = {{ {DEST_AE} = "{LOOPBACK}:{scp_port}" }}\n')
    storescp = subprocess.Popen([_tool("storescp"), "--aetitle", DEST_AE, "-od", str(received),
                                 str(scp_port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    pacs_log = open(work / "pacs.log", "wb")
    pacs = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--config", str(config)],
                            stdout=pacs_log, stderr=subprocess.STDOUT, env=pacs_env())
    try:
        _wait_port(scp_port, storescp)
        _wait_port(pacs_port, pacs)
        _run([_tool("storescu"), "+sd", "+r", "-aec", AE_TITLE, LOOPBACK, str(pacs_port),
              str(data.root)], timeout)
        send = [_tool("storescu"), "+sd", "+r", "-aec", DEST_AE, LOOPBACK, str(scp_port),
                str(data.root)]
        move = [_tool("movescu"), "-S", "-aet", "MOVESCU", "-aec", AE_TITLE, "-aem", DEST_AE,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                LOOPBACK, str(pacs_port)]
        times: dict[str, list[float]] = {"storescu": [], "pacs-move": []}
        for round_ in range(rounds):
            for name, command in (("storescu", send), ("pacs-move", move)):
                started = time.perf_counter()
                _run(command, timeout)
                wait_files(received, instances, timeout)
                times[name].append(time.perf_counter() - started)
                _empty(received)
            print(f"round {round_ + 1}/{rounds}: storescu {times['storescu'][-1]:.2f} s, "
                  f"pacs C-MOVE {times['pacs-move'][-1]:.2f} s")
    finally:
        for proc in (pacs, storescp):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        pacs_log.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    doc = {
        "instances": instances, "bytes": data.bytes, "rounds": rounds, "times": times,
        "median_seconds": medians,
        "instances_per_second": {k: instances / v for k, v in medians.items()},
        "ratio_pacs_to_storescu": medians["storescu"] / medians["pacs-move"],
        "machine": machine_info(out),
    }
    (out / "retrieve.json").write_text(json.dumps(doc, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_retrieve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-out/retrieve"))
    parser.add_argument("--cache", type=Path, default=Path("bench-out/cache"))
    parser.add_argument("--timeout", type=float, default=600.0, help="per step, seconds")
    args = parser.parse_args(argv)
    try:
        doc = run(args.instances, args.rounds, args.out, args.cache, args.timeout)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rate = doc["instances_per_second"]
    print(f"median: storescu {doc['median_seconds']['storescu']:.2f} s "
          f"({rate['storescu']:.0f} inst/s), pacs C-MOVE {doc['median_seconds']['pacs-move']:.2f} s "
          f"({rate['pacs-move']:.0f} inst/s); ratio {doc['ratio_pacs_to_storescu']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
