"""One measured C-STORE run against one peer, shared by the store and pynetdicom
scenarios: fresh peer, untimed warm-up store, sync, timed send with the server's
CPU and RSS metered, then every instance checked at the receiver."""
from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Callable

from engine.bench.data import DataSet, DataSpec, prepare_data
from engine.bench.environment import BenchError
from engine.bench.measure import ServerMeter
from engine.bench.peers import make_peer
from engine.bench.senders import run_senders, tail
from engine.bench.verify import compare

#: send(port, run_dir) → (seconds, sender results)
Send = Callable[[int, Path], tuple[float, list[dict]]]


def warmup_data(ctx) -> DataSet:
    """The one tiny instance stored untimed before each run (prepared once per run)."""
    if "warmup" not in ctx.shared:
        ctx.shared["warmup"] = prepare_data(DataSpec("warmup", "tiny", 1, 1, 1, 9000),
                                            ctx.cache, ctx.log)
    return ctx.shared["warmup"]


def store_run(ctx, scenario: str, case: str, peer_name: str, round_: int, dataset: DataSet,
              send: Send, associations: int, instances: int | None = None,
              nbytes: int | None = None, expected: dict[str, str] | None = None) -> dict:
    """Run, check and record one timed send of `dataset` (or part of it) to a fresh peer."""
    warmup = warmup_data(ctx)
    instances = dataset.files if instances is None else instances
    nbytes = dataset.bytes if nbytes is None else nbytes
    expected = {**(expected if expected is not None else dataset.digests()),
                **warmup.digests()}
    run = {"scenario": scenario, "case": case, "peer": peer_name, "round": round_,
           "status": "FAILED", "reason": "",
           "started_at": dt.datetime.now().isoformat(timespec="seconds"),
           "metrics": {}, "checks": {"expected": len(expected)}}
    run_dir = ctx.work(scenario, f"{case}-{peer_name}-r{round_}")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    peer = make_peer(peer_name)
    try:
        peer.start(run_dir, case, associations)
        run["server_command"] = " ".join(peer.proc.args)
        warm_dir = run_dir / "warmup"
        warm_dir.mkdir()
        _, warm = run_senders([warmup.root], peer.port, warm_dir, 60)
        if warm[0]["returncode"] != 0:
            raise BenchError(f"warm-up store failed: {tail(warm_dir / 'storescu-0.log')}")
        os.sync()  # earlier runs' dirty pages must not be flushed on this run's clock
        with ServerMeter(peer.proc.pid) as meter:
            seconds, senders = send(peer.port, run_dir)
        run["senders"] = senders
        peer.stop()  # what is checked is what the peer kept once stopped
        if ctx.faulty(peer_name):
            paths = peer.received_paths()
            if paths:
                paths[0].unlink()
        received, problems = peer.received()
        verdict = compare(expected, received, problems)
        run["checks"].update(verdict.as_checks(len(expected)))
        bad = [s for s in senders if s["returncode"] != 0]
        if bad:
            run["reason"] = (f"{len(bad)} storescu exited non-zero: "
                             + " | ".join(tail(p, 300) for p in run_dir.glob("storescu-*.log")))
        elif not verdict.ok:
            run["reason"] = verdict.reason
        else:
            run["status"] = "ok"
            run["metrics"] = {
                "seconds": round(seconds, 4),
                "instances_per_s": instances / seconds,
                "mb_per_s": nbytes / 1e6 / seconds,
                "cpu_ms_per_instance": meter.cpu_seconds * 1000 / instances,
                "peak_rss_mb": round(meter.peak_rss / 1e6, 1),
            }
    except (BenchError, OSError) as exc:
        run["reason"] = f"{type(exc).__name__}: {exc}"
    finally:
        peer.stop()
        if not ctx.keep:
            shutil.rmtree(run_dir / "data", ignore_errors=True)
    return ctx.record(run)
