"""Shared helpers for tests: a real server on loopback, DCMTK tools, free ports."""
from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.config import (
    AuditConfig, CodecConfig, Config, MetricsConfig, NetworkConfig, QueryConfig, RetrieveConfig,
    StorageConfig, WebConfig)
from engine.server import Server, event_loop_factory

LOOPBACK = "127.0.0.1"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


DCMTK_TOOLS = {"storescu", "storescp", "echoscu", "findscu", "movescu", "getscu", "dcmdump"}


@functools.lru_cache(maxsize=None)
def find_tool(name: str) -> str | None:
    """First `name` on PATH; for DCMTK names, the first that really is DCMTK.

    pynetdicom installs Python apps with the same names (storescu, echoscu...),
    which may shadow DCMTK's on PATH.
    """
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(name, path=directory)
        if path is None:
            continue
        if name not in DCMTK_TOOLS:
            return path
        probe = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        if "dcmtk" in (probe.stdout + probe.stderr).lower():
            return path
    return None


def require_tool(name: str) -> str:
    """Path of a DCMTK (or other) tool: fail under CI=true when missing, skip elsewhere."""
    path = find_tool(name)
    if path is None:
        message = f"{name} not found: install the Debian package 'dcmtk'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_tool(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command-line tool (DCMTK sees TCP_NODELAY=1) and return its result."""
    tool = require_tool(args[0])
    proc = subprocess.run([tool, *args[1:]], capture_output=True, text=True, errors="replace",
                          env=DCMTK_ENV,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}")
    return proc


def make_config(data_dir: Path, **network) -> Config:
    storage = {"index_map_size": 1 << 30, "min_free_bytes": 0, **network.pop("storage", {})}
    query = network.pop("query", {})
    retrieve = network.pop("retrieve", {})
    codec = network.pop("codec", {})
    # DICOMweb only when a test asks for it (web={...}), then on a free port.
    web = network.pop("web", None)
    web = WebConfig(**{"port": 0, **web}) if web is not None else WebConfig(enabled=False)
    audit = AuditConfig(**network.pop("audit", {}))  # on: in data_dir/audit
    metrics = MetricsConfig(**network.pop("metrics", {}))
    return Config(network=NetworkConfig(host=LOOPBACK, port=0, **network),
                  storage=StorageConfig(data_dir=data_dir, **storage),
                  query=QueryConfig(**query), retrieve=RetrieveConfig(**retrieve),
                  codec=CodecConfig(**codec), web=web, audit=audit, metrics=metrics)


class ServerThread:
    """A real Server on its own event loop in a background thread (in-process)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server = Server(config)
        self.loop = event_loop_factory(config.network.loop)()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve_ready(self._ready))
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def web_port(self) -> int:
        assert self.server.web_port is not None
        return self.server.web_port

    @property
    def archive(self):
        return self.server.archive

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.request_stop)
            self._thread.join(60)


class ServerProcess:
    """`pacs serve` as a separate process, for crash and signal tests."""

    def __init__(self, data_dir: Path, port: int, *extra: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--data-dir", str(data_dir),
             "--host", LOOPBACK, "--port", str(port), "--web-port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start listening")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout)


def run_python(code: str, no_extensions: bool | None = None) -> str:
    """Run `code` in a fresh interpreter from the repo root and return its stdout.

    `no_extensions` sets ENGINE_NO_EXTENSIONS=1 (True) or removes it (None/False),
    so selector tests see the environment they ask for, not the caller's.
    """
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_NO_EXTENSIONS"}
    if no_extensions:
        env["ENGINE_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()
