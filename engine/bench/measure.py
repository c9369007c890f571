"""What a server costs while it works: CPU of its process tree, peak RSS, and the
summary statistics every figure of the report is made of.

CPU is read from /proc (children included, dead ones too) because a forking
storescp or a pool of codec workers would otherwise hide most of the cost.
"""
from __future__ import annotations

import math
import os
import resource
import statistics
import subprocess
import threading
import time

import psutil

from engine.bench.environment import BenchError

SAMPLE_INTERVAL = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ticks(pid: int) -> int:
    """utime+stime+cutime+cstime of one process (zombies included), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    # fields[0] is state (field 3); utime..cstime are fields 14..17.
    return sum(int(x) for x in fields[11:15])


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants, dead ones included.

    Each living process counts its own time plus that of the children it has
    reaped (cutime/cstime); a child not yet reaped counts on its own, so every
    process is counted exactly once.
    """
    try:
        pids = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        pids = []
    total = sum(_ticks(p) for p in pids) + _ticks(pid)
    return total / CLK_TCK


def tree_rss(pid: int) -> int:
    total = 0
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


class RssSampler:
    """Samples the RSS of a process tree every 50 ms on a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, tree_rss(self.pid))


class ServerMeter:
    """CPU seconds and peak RSS of one server's process tree over a `with` block."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu_seconds: float | None = None
        self.peak_rss: int | None = None
        self._sampler = RssSampler(pid) if pid else None
        self._cpu = 0.0

    def __enter__(self) -> "ServerMeter":
        if self.pid:
            self._cpu = tree_cpu_seconds(self.pid)
            self._sampler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.pid:
            self.cpu_seconds = tree_cpu_seconds(self.pid) - self._cpu
            self._sampler.__exit__(*exc)
            self.peak_rss = self._sampler.peak


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_command(command: list[str], env: dict | None, timeout: float) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS bytes) of one command and its children,
    after a `sync` so that earlier writes are not flushed on its clock."""
    os.sync()
    cpu = children_cpu_seconds()
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    with RssSampler(proc.pid) as sampler:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(f"{command[0]} did not finish within {timeout:g} s") from None
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(command[:4])} exited {proc.returncode}: "
                         f"{output.decode(errors='replace')[-600:]}")
    return seconds, children_cpu_seconds() - cpu, sampler.peak


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank: a latency that really occurred."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(values: list[float | None]) -> dict | None:
    """Median, min and max of the values that exist; None when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present),
            "n": len(present)}
