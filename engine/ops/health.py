"""The health check behind /health: liveness (the event loop answers) and readiness.

Ready means: the event loop is responsive (a timer task notes how late it wakes;
the largest lateness over the last few seconds stays under `MAX_LOOP_LAG`), the
index is readable (a read transaction on a thread answers within `PROBE_TIMEOUT`),
the index writer thread is alive, the data directory's volume has more free space
than `storage.min_free_bytes` (below it stores fail with 0xA700), and the DICOM
listener accepts connections.  /health answers 200 when ready, 503 otherwise, with
a small JSON body naming each check; being answered at all is liveness.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: Seconds between two wake-ups of the loop monitor.
LOOP_INTERVAL = 0.25
#: The lag kept: the largest over this many seconds.
LOOP_WINDOW = 10.0
#: Readiness fails when the event loop was late by more than this (seconds).
MAX_LOOP_LAG = 5.0
#: Seconds the index probe may take.
PROBE_TIMEOUT = 5.0


class LoopMonitor:
    """How late the event loop runs a timer: its responsiveness, kept over a window."""

    def __init__(self, gauge=None, interval: float = LOOP_INTERVAL,
                 window: float = LOOP_WINDOW) -> None:
        self.gauge = gauge
        self.interval = interval
        self._samples: deque[tuple[float, float]] = deque()
        self._window = window
        self._task: asyncio.Task | None = None
        self.last_tick = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self._note(now, max(0.0, now - before - self.interval))

    def _note(self, now: float, lag: float) -> None:
        self.last_tick = now
        samples = self._samples
        samples.append((now, lag))
        while samples and samples[0][0] < now - self._window:
            samples.popleft()
        if self.gauge is not None:
            self.gauge.set(self.lag)

    @property
    def lag(self) -> float:
        """The largest lateness over the window, including a wake-up overdue now."""
        overdue = max(0.0, time.monotonic() - self.last_tick - self.interval)
        return max([overdue, *(lag for _, lag in self._samples)])


@dataclass
class HealthSources:
    """What the checks look at; None skips a check."""

    data_dir: Path
    min_free_bytes: int = 0
    loop: LoopMonitor | None = None
    #: A blocking index read (e.g. IndexReader.stats); run on a thread.
    index_probe: Callable[[], object] | None = None
    writer_alive: Callable[[], bool] | None = None
    listener_accepting: Callable[[], bool] | None = None


class HealthChecker:
    def __init__(self, sources: HealthSources) -> None:
        self.s = sources

    async def check(self) -> tuple[bool, dict]:
        """(ready, body)."""
        s = self.s
        checks: dict[str, dict] = {}
        if s.loop is not None:
            lag = s.loop.lag
            checks["event_loop"] = {"ok": lag <= MAX_LOOP_LAG, "lag_seconds": round(lag, 3)}
        if s.index_probe is not None:
            try:
                stats = await asyncio.wait_for(asyncio.to_thread(s.index_probe), PROBE_TIMEOUT)
                checks["index"] = {"ok": True}
                instances = getattr(stats, "instances", None)
                if instances is not None:
                    checks["index"]["instances"] = instances
            except asyncio.TimeoutError:
                checks["index"] = {"ok": False, "error": f"no answer in {PROBE_TIMEOUT:.0f} s"}
            except Exception as exc:  # noqa: BLE001 - any failure is "not readable"
                checks["index"] = {"ok": False, "error": type(exc).__name__}
        if s.writer_alive is not None:
            checks["index_writer"] = {"ok": bool(s.writer_alive())}
        try:
            st = os.statvfs(s.data_dir)
            free = st.f_bavail * st.f_frsize
            checks["disk"] = {"ok": free > s.min_free_bytes or s.min_free_bytes == 0,
                              "free_bytes": free, "min_free_bytes": s.min_free_bytes}
        except OSError as exc:
            checks["disk"] = {"ok": False, "error": exc.strerror or str(exc)}
        if s.listener_accepting is not None:
            checks["dicom_listener"] = {"ok": bool(s.listener_accepting())}
        ready = all(c["ok"] for c in checks.values())
        return ready, {"status": "ok" if ready else "unavailable", "live": True,
                       "ready": ready, "checks": checks}


__all__ = ["HealthChecker", "HealthSources", "LoopMonitor", "MAX_LOOP_LAG"]
