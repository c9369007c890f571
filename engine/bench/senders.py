"""The one sender every peer gets: DCMTK storescu, with TCP_NODELAY=1.

A benchmark that let each peer use its own client would compare clients, so
every storage run goes through these functions whatever the receiver.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from engine.bench.environment import AE_TITLE, CALLING_AE, DCMTK_ENV, LOOPBACK, BenchError, \
    find_dcmtk


def storescu_command(port: int, paths: list[Path] | Path, called_ae: str = AE_TITLE
                     ) -> list[str]:
    storescu = find_dcmtk("storescu")
    if storescu is None:
        raise BenchError("DCMTK storescu not found (apt install dcmtk)")
    paths = [paths] if isinstance(paths, Path) else paths
    return [storescu, "+sd", "+r", "+sp", "*.dcm", "-aet", CALLING_AE, "-aec", called_ae,
            LOOPBACK, str(port), *map(str, paths)]


def run_senders(groups: list, port: int, run_dir: Path, timeout: float,
                called_ae: str = AE_TITLE) -> tuple[float, list[dict]]:
    """One storescu (one association) per group of paths, started together; wall time
    until all have exited.  A group is a path or a list of paths."""
    procs: list[tuple[subprocess.Popen, object]] = []
    results = []
    try:
        started = time.perf_counter()
        for i, group in enumerate(groups):
            log = open(run_dir / f"storescu-{i}.log", "wb")
            procs.append((subprocess.Popen(storescu_command(port, group, called_ae), stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=DCMTK_ENV), log))
        deadline = started + timeout
        for proc, _ in procs:
            try:
                proc.wait(max(0.1, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"storescu did not finish within {timeout:g} s") from None
        elapsed = time.perf_counter() - started
        for i, (proc, _) in enumerate(procs):
            results.append({"returncode": proc.returncode, "directory": str(groups[i])})
        return elapsed, results
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()


def send_each_alone(files: list[Path], port: int, run_dir: Path, timeout: float
                    ) -> tuple[float, list[dict]]:
    """One storescu process, hence one association, per file, one after the other."""
    started = time.perf_counter()
    deadline = started + timeout
    failed = []
    with open(run_dir / "storescu-each.log", "wb") as log:
        for path in files:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise BenchError(f"{len(files)} single-file associations did not finish "
                                 f"within {timeout:g} s")
            done = subprocess.run(storescu_command(port, [path]), stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=DCMTK_ENV, timeout=left)
            if done.returncode != 0:
                failed.append(str(path))
    elapsed = time.perf_counter() - started
    return elapsed, [{"returncode": 1 if failed else 0, "associations": len(files),
                      "failed": failed[:5]}]


def tail(path: Path, n: int = 600) -> str:
    """The end of a log file, on one line."""
    try:
        return " / ".join(path.read_text(errors="replace")[-n:].strip().splitlines())
    except OSError:
        return ""
