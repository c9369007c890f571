"""Codec work in worker processes, with a time and a memory limit per task.

Decoders are C libraries: a corrupt JPEG 2000 codestream can keep openjpeg
busy for minutes, GDCM can abort the process, a bomb of a frame can ask for
gigabytes.  Each task therefore runs in a worker process of our own; when it
overruns its time the worker is killed and replaced, and the caller gets a
TranscodeError for that task only.  The server and the other tasks go on.

Workers are started on first use with the "spawn" method (the server has
threads; forking it would copy their locks) and live until `close()`.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable

from engine.errors import TranscodeError

_STARTUP_TIMEOUT = 60.0


def _serve(conn: Connection, memory_limit: int, nice: int) -> None:
    """Worker loop: (function, args) in, ("ok", result) or ("error", message) out."""
    if nice:
        os.nice(nice)
    if memory_limit:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    conn.send(("ready", None))  # start-up (interpreter, imports) is not a task's time
    while True:
        try:
            function, args = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", function(*args))
        except MemoryError:
            reply = ("error", "out of memory (worker memory limit)")
        except Exception as exc:  # reported to the caller, the worker lives on
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, context, memory_limit: int, nice: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, memory_limit, nice),
                                       name="pacs-codec", daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(_STARTUP_TIMEOUT):
            self.kill()
            raise TranscodeError("codec worker did not start")
        self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class CodecWorkers:
    """A fixed number of worker processes; `run()` is thread-safe and blocking."""

    def __init__(self, processes: int = 0, timeout: float = 120.0,
                 memory_limit: int = 0, nice: int = 0) -> None:
        self.processes = processes or os.cpu_count() or 1
        self.timeout = timeout
        self.memory_limit = memory_limit
        #: Added to the workers' niceness: background work yields the CPU to ingest.
        self.nice = nice
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._started = 0
        self._lock = threading.Lock()
        self._closed = False

    def _acquire(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise TranscodeError("codec workers are shut down")
            start = self._idle.empty() and self._started < self.processes
            if start:
                self._started += 1  # reserve the slot; start the process outside the lock
        if not start:
            return self._idle.get()
        try:
            worker = _Worker(self._context, self.memory_limit, self.nice)
        except BaseException:
            with self._lock:
                self._started -= 1
            raise
        with self._lock:
            self._all.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._started -= 1
            self._all.discard(worker)

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in a worker; TranscodeError on its error, timeout or death.

        `function` must be importable by name (a module-level function).
        """
        worker = self._acquire()
        try:
            worker.conn.send((function, args))
            if not worker.conn.poll(self.timeout):
                self._replace(worker)
                raise TranscodeError(f"codec task exceeded {self.timeout:g} s; worker killed")
            status, value = worker.conn.recv()
        except (EOFError, OSError) as exc:
            self._replace(worker)
            raise TranscodeError(f"codec worker died ({type(exc).__name__})") from None
        except TranscodeError:
            raise
        except BaseException:
            self._replace(worker)  # interrupted mid-task: the worker's state is unknown
            raise
        self._idle.put(worker)
        if status != "ok":
            raise TranscodeError(value)
        return value

    def close(self) -> None:
        """Stop every worker; a task still running fails with TranscodeError."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()


__all__ = ["CodecWorkers"]
