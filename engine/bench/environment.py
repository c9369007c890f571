"""The outside world the benchmarks depend on: tools on PATH, ports, the machine.

Found once and named in every report, because a figure means nothing without
the DCMTK version, the core count and the disk it was measured with.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import engine

LOOPBACK = "127.0.0.1"
AE_TITLE = "PACS"
CALLING_AE = "BENCH"
#: DCMTK's tools (and Orthanc, built on DCMTK) leave Nagle on unless told: every
#: response would then wait ~40 ms for a delayed ACK, which measures the kernel.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
#: The directory holding the `engine` package: put on PYTHONPATH of the servers we
#: start, so a source checkout benchmarks itself even beside another installation.
ENGINE_ROOT = Path(engine.__file__).resolve().parents[1]
DEBIAN_PEERS = {"dcmtk": "dcmtk", "orthanc": "orthanc"}


class BenchError(RuntimeError):
    """A run could not be completed (start failure, sender error, timeout)."""


_tool_cache: dict[str, str | None] = {}


def find_dcmtk(name: str) -> str | None:
    """First `name` on PATH that really is DCMTK (pynetdicom installs same-named apps)."""
    if name in _tool_cache:
        return _tool_cache[name]
    found = None
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        path = shutil.which(name, path=directory)
        if path is None:
            continue
        try:
            probe = subprocess.run([path, "--version"], capture_output=True, text=True,
                                   timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (probe.stdout + probe.stderr).lower():
            found = path
            break
    _tool_cache[name] = found
    return found


def find_orthanc() -> str | None:
    return shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def pacs_env() -> dict:
    """Environment for `python -m engine ...` children: this engine first on the path."""
    path = os.environ.get("PYTHONPATH")
    root = str(ENGINE_ROOT)
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def pacs_base_config() -> str:
    """TOML every benchmarked `pacs serve` starts with: what is not measured stays off
    (DICOMweb would hold its fixed port 8042, which two servers cannot share)."""
    from engine.config import Config

    return "[web]\nenabled = false\n" if hasattr(Config(), "web") else ""


def pacs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def install_peers(names: list[str], log) -> list[str]:
    """`apt-get install -y` the Debian packages of the peers asked for; notes on failure."""
    packages = [DEBIAN_PEERS[n] for n in names if n in DEBIAN_PEERS]
    missing = [p for p in packages if not (find_orthanc() if p == "orthanc"
                                          else find_dcmtk("storescp"))]
    if not missing:
        return []
    log(f"installing {' '.join(missing)} (apt-get install -y)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(["apt-get", "install", "-y", *missing], env=env, timeout=900,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:  # a machine that never ran apt-get update knows no package
            subprocess.run(["apt-get", "update"], env=env, timeout=600,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            done = subprocess.run(["apt-get", "install", "-y", *missing], env=env, timeout=900,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"apt-get install {' '.join(missing)} failed: {exc}"]
    _tool_cache.clear()
    if done.returncode != 0:
        return [f"apt-get install {' '.join(missing)} exited {done.returncode}: "
                f"{done.stderr.strip()[-300:]}"]
    return []


def _version(command: list[str], pattern: str) -> str:
    try:
        probe = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(pattern, probe.stdout + probe.stderr)
    return m.group(1) if m else ""


def machine_info(out: Path) -> dict:
    """What the figures were measured on: cores, memory, disk, versions, commit."""
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        df = subprocess.run(["df", "-hT", str(out)], capture_output=True, text=True,
                            timeout=10).stdout.splitlines()[-1].split()
        disk = f"{df[0]} {df[1]}, {df[2]} total, {df[4]} free, mounted on {df[6]}"
    except (OSError, subprocess.SubprocessError, IndexError):
        disk = "unknown"
    commit = ""
    if (ENGINE_ROOT / ".git").exists():
        commit = _version(["git", "-C", str(ENGINE_ROOT), "describe", "--always", "--dirty"],
                          r"(\S+)")
    storescu, orthanc = find_dcmtk("storescu"), find_orthanc()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "disk": disk, "python": platform.python_version(),
            "engine": engine.__version__, "git": commit,
            "dcmtk": _version([storescu, "--version"], r"v(\d+\.\d+\.\d+)") if storescu else "",
            "orthanc": _version([orthanc, "--version"], r"Orthanc (\d+\.\d+\.\d+)")
            if orthanc else "",
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_1min_at_start": load}
