"""End-to-end C-STORE benchmark: pacs-engine against other storage SCPs, same data, same sender.

Every peer receives the same synthetic instances from the same sender (DCMTK
``storescu``) over loopback, in one invocation, with the runs interleaved
(run 1: A B C, run 2: A B C, ...) so that drift on a noisy machine hits every
peer alike.  A run counts only if the peer really holds every instance
afterwards; otherwise it is reported as FAILED, never as a speed.

Scenarios::

    ct1    N CT instances (~525 KB) over one association
    ct4    the same N CT instances over 4 concurrent storescu processes
    large  50 large CR instances (~15 MB) over one association
    tiny   2,000 tiny CT instances (~10 KB) over one association

Peers::

    pacs        python -m engine serve (full durability: fsync file, dir, LMDB commit)
    storescp    DCMTK storescp -od D (single process; --fork for ct4)
    storescp-B  the same with +B (bit-preserving: bytes written as received)
    orthanc     Orthanc, when installed (or with --install-peers)

Command line::

    python -m tools.bench_store --scenarios ct1,ct4 --ct-count 500 --runs 3 \\
        --peers pacs,storescp,storescp-B --out /tmp/bench-out
    python -m tools.bench_store --smoke --out /tmp/bench-smoke

Writes OUT/report.md (also printed) and OUT/results.json (every raw run).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
AE_TITLE = "PACS"
CALLING_AE = "BENCH"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CACHE_VERSION = 1
SCENARIOS = ("ct1", "ct4", "large", "tiny")
PEERS = ("pacs", "storescp", "storescp-B", "orthanc")
DEFAULTS = {"ct_count": 2000, "large_count": 50, "tiny_count": 2000, "runs": 3}
SMOKE = {"ct_count": 40, "large_count": 4, "tiny_count": 40, "runs": 1}
SAMPLE_INTERVAL = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A run could not be completed (start failure, sender error, timeout)."""


# --- tools ---------------------------------------------------------------------
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


# --- data ------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    name: str
    profile: str
    count: int
    parts: int
    per_series: int
    seed: int


@dataclass
class DataSet:
    spec: DataSpec
    root: Path
    part_dirs: list[Path]
    files: int
    bytes: int


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts)]


def _scan(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".dcm"):
                files += 1
                size += os.stat(os.path.join(dirpath, name)).st_size
    return files, size


def prepare_data(spec: DataSpec, cache: Path, log: Callable[[str], None]) -> DataSet:
    """Generate `spec` under cache/<name> once; reuse it while its manifest matches."""
    from tools.generate_data import generate_tree

    top = cache / spec.name
    manifest_path = top / "manifest.json"
    root = top / "files"  # the manifest stays outside what storescu scans
    wanted = {"version": CACHE_VERSION, **asdict(spec)}
    part_dirs = [root / f"part{i}" for i in range(spec.parts)]
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        if {k: manifest.get(k) for k in wanted} == wanted:
            files, size = _scan(root)
            if files == manifest.get("files") == spec.count and size == manifest.get("bytes"):
                log(f"data: reusing {root} ({files} files, {size / 1e6:.1f} MB)")
                return DataSet(spec, root, part_dirs, files, size)
        log(f"data: cache {top} does not match, regenerating")
    shutil.rmtree(top, ignore_errors=True)
    building = cache / f"{spec.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    started = time.perf_counter()
    for i, n in enumerate(_split(spec.count, spec.parts)):
        # Studies of one series of `per_series` instances, and one shorter study for the rest.
        full, rest = divmod(n, spec.per_series)
        part, seed = building / "files" / f"part{i}", spec.seed + 10 * i
        if full:
            generate_tree(part / "a", full, spec.profile, 1, spec.per_series, seed=seed)
        if rest:
            generate_tree(part / "b", 1, spec.profile, 1, rest, seed=seed + 1)
    files, size = _scan(building)
    if files != spec.count:
        raise BenchError(f"generated {files} files for {spec.name}, wanted {spec.count}")
    (building / "manifest.json").write_text(
        json.dumps({**wanted, "files": files, "bytes": size}, indent=2))
    building.rename(top)
    log(f"data: generated {root} ({files} files, {size / 1e6:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s")
    return DataSet(spec, root, part_dirs, files, size)


# --- process measurement ----------------------------------------------------------
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


# --- peers -----------------------------------------------------------------------------
class Peer:
    """A storage SCP started fresh for one run and stopped after it."""

    name = ""
    start_timeout = 30.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.data_dir = Path()
        self._log = None

    def unavailable(self) -> str | None:
        """Why this peer cannot run here, or None."""
        return None

    def prepare(self, run_dir: Path) -> None:
        """Hook: write configuration once port and data directory are known."""

    def command(self, run_dir: Path, scenario: str) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return DCMTK_ENV

    def start(self, run_dir: Path, scenario: str) -> None:
        self.port = free_port()
        self.data_dir = run_dir / "data"
        self.data_dir.mkdir(parents=True)
        self.prepare(run_dir)
        cmd = self.command(run_dir, scenario)
        self._log = open(run_dir / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env(), cwd=REPO,
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        echoscu = find_dcmtk("echoscu")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} at start: "
                                 f"{_tail(run_dir / 'server.log')}")
            if self._ready(echoscu):
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not answer C-ECHO within {self.start_timeout:.0f} s")

    def _ready(self, echoscu: str | None) -> bool:
        if echoscu is None:
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return True
            except OSError:
                return False
        try:
            probe = subprocess.run(
                [echoscu, "-to", "2", "-ta", "5", "-aet", CALLING_AE, "-aec", AE_TITLE,
                 LOOPBACK, str(self.port)],
                capture_output=True, env=DCMTK_ENV, timeout=15)
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0

    def count(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then kill the process group; always safe to call."""
        proc = self.proc
        if proc is not None:
            try:
                if proc.poll() is None:
                    _signal_group(proc, signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        pass
                _signal_group(proc, signal.SIGKILL)  # leftovers: forked storescp children
                proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the session/process group we created for `proc` (its own id)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, n: int = 600) -> str:
    """The end of a log file, on one line."""
    try:
        return " / ".join(path.read_text(errors="replace")[-n:].strip().splitlines())
    except OSError:
        return ""


class PacsPeer(Peer):
    name = "pacs"

    def command(self, run_dir: Path, scenario: str) -> list[str]:
        return [sys.executable, "-m", "engine", "serve", "--data-dir", str(self.data_dir),
                "--host", LOOPBACK, "--port", str(self.port), "--ae-title", AE_TITLE]

    def env(self) -> dict:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}

    def count(self) -> int:
        out = subprocess.run(
            [sys.executable, "-m", "engine", "stats", "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=120, cwd=REPO, env=self.env())
        match = re.search(r"^instances\s+(\d+)", out.stdout, re.M)
        if out.returncode != 0 or match is None:
            raise BenchError(f"pacs stats failed ({out.returncode}): {out.stderr[-400:]}")
        return int(match.group(1))


class StorescpPeer(Peer):
    def __init__(self, bit_preserving: bool) -> None:
        super().__init__()
        self.bit_preserving = bit_preserving
        self.name = "storescp-B" if bit_preserving else "storescp"

    def unavailable(self) -> str | None:
        return None if find_dcmtk("storescp") else "DCMTK storescp not found (apt install dcmtk)"

    @staticmethod
    def forks(scenario: str) -> bool:
        return scenario == "ct4"

    def command(self, run_dir: Path, scenario: str) -> list[str]:
        cmd = [find_dcmtk("storescp") or "storescp"]
        if self.forks(scenario):
            cmd.append("--fork")
        if self.bit_preserving:
            cmd.append("+B")
        return cmd + ["-od", str(self.data_dir), "-aet", AE_TITLE, str(self.port)]

    def count(self) -> int:
        return sum(len(names) for _, _, names in os.walk(self.data_dir))


class OrthancPeer(Peer):
    name = "orthanc"
    start_timeout = 90.0

    def __init__(self) -> None:
        super().__init__()
        self.http_port = 0

    def unavailable(self) -> str | None:
        return None if find_orthanc() else ("Orthanc not installed (Debian package 'orthanc'; "
                                             "--install-peers installs it)")

    def command(self, run_dir: Path, scenario: str) -> list[str]:
        return [find_orthanc() or "Orthanc", str(run_dir / "orthanc.json")]

    def env(self) -> dict:
        # Orthanc's DICOM layer is DCMTK's: without TCP_NODELAY=1 every response waits
        # ~40 ms for a delayed ACK, which would measure the kernel, not Orthanc.
        return DCMTK_ENV

    def prepare(self, run_dir: Path) -> None:
        self.http_port = free_port()
        config = {
            "Name": "pacs-engine-bench", "DicomAet": AE_TITLE, "DicomPort": self.port,
            "HttpPort": self.http_port, "HttpServerEnabled": True, "DicomServerEnabled": True,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "StorageDirectory": str(self.data_dir / "storage"),
            "IndexDirectory": str(self.data_dir / "index"),
            "StorageCompression": False, "SyncStorageArea": True, "Plugins": [],
        }
        (run_dir / "orthanc.json").write_text(json.dumps(config, indent=2))

    def _ready(self, echoscu: str | None) -> bool:
        return super()._ready(echoscu) and self._http("/system") is not None

    def _http(self, path: str):
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}",
                                        timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def count(self) -> int:
        stats = self._http("/statistics")
        if stats is None:
            raise BenchError("Orthanc REST /statistics did not answer")
        return int(stats["CountInstances"])


def make_peer(name: str) -> Peer:
    return {"pacs": PacsPeer, "storescp": lambda: StorescpPeer(False),
            "storescp-B": lambda: StorescpPeer(True), "orthanc": OrthancPeer}[name]()


# --- one run ------------------------------------------------------------------------
@dataclass
class RunResult:
    scenario: str
    peer: str
    run: int
    status: str = "FAILED"  # ok | FAILED | start-failed
    reason: str = ""
    instances: int = 0
    expected_count: int = 0
    counted: int | None = None
    bytes: int = 0
    seconds: float | None = None
    instances_per_s: float | None = None
    mb_per_s: float | None = None
    server_cpu_s: float | None = None
    cpu_ms_per_instance: float | None = None
    peak_rss_mb: float | None = None
    rss_samples: int = 0
    senders: list = field(default_factory=list)
    server_command: str = ""
    started_at: str = ""


def storescu_command(port: int, directory: Path) -> list[str]:
    storescu = find_dcmtk("storescu")
    if storescu is None:
        raise BenchError("DCMTK storescu not found (apt install dcmtk)")
    return [storescu, "+sd", "+r", "+sp", "*.dcm", "-aet", CALLING_AE, "-aec", AE_TITLE,
            LOOPBACK, str(port), str(directory)]


def run_senders(dirs: list[Path], port: int, run_dir: Path, timeout: float
                ) -> tuple[float, list[dict]]:
    """Start one storescu per directory together; wall time until all have exited."""
    procs: list[tuple[subprocess.Popen, object]] = []
    results = []
    try:
        started = time.perf_counter()
        for i, d in enumerate(dirs):
            log = open(run_dir / f"storescu-{i}.log", "wb")
            procs.append((subprocess.Popen(storescu_command(port, d), stdout=log,
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
            results.append({"returncode": proc.returncode, "directory": str(dirs[i])})
        return elapsed, results
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()


def run_one(scenario: str, peer: Peer, run: int, dataset: DataSet, warmup: DataSet, out: Path,
            keep_data: bool, sender_timeout: float | None) -> RunResult:
    """Fresh peer, warm-up store, sync, timed send, count check, stop (always)."""
    result = RunResult(scenario, peer.name, run, instances=dataset.files,
                       expected_count=dataset.files + warmup.files, bytes=dataset.bytes,
                       started_at=dt.datetime.now().isoformat(timespec="seconds"))
    run_dir = out / "runs" / f"{scenario}-{peer.name}-run{run}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    dirs = dataset.part_dirs if scenario == "ct4" else [dataset.root]
    timeout = sender_timeout or 120 + dataset.bytes / 2e6  # >= 2 MB/s or it is broken
    try:
        try:
            peer.start(run_dir, scenario)
        except (BenchError, OSError) as exc:
            result.status, result.reason = "start-failed", str(exc)
            return result
        result.server_command = " ".join(peer.proc.args)
        # Warm-up: one small untimed store (it stays in the archive: expected = N + 1).
        warm_dir = run_dir / "warmup"
        warm_dir.mkdir()
        _, warm = run_senders([warmup.root], peer.port, warm_dir, 60)
        if warm[0]["returncode"] != 0:
            raise BenchError(f"warm-up store failed: {_tail(warm_dir / 'storescu-0.log')}")
        os.sync()  # earlier runs' dirty pages must not be flushed on this run's clock
        cpu_before = tree_cpu_seconds(peer.proc.pid)
        with RssSampler(peer.proc.pid) as sampler:
            elapsed, senders = run_senders(dirs, peer.port, run_dir, timeout)
        cpu_after = tree_cpu_seconds(peer.proc.pid)
        result.senders = senders
        result.seconds = elapsed
        result.server_cpu_s = round(cpu_after - cpu_before, 3)
        result.peak_rss_mb = round(sampler.peak / 1e6, 1)
        result.rss_samples = sampler.samples
        bad = [s for s in senders if s["returncode"] != 0]
        result.counted = peer.count()
        if bad:
            logs = " | ".join(_tail(run_dir / f"storescu-{i}.log", 300)
                              for i, s in enumerate(senders) if s["returncode"] != 0)
            result.reason = f"{len(bad)} storescu exited non-zero: {logs}"
        elif result.counted != result.expected_count:
            result.reason = (f"count {result.counted} != expected {result.expected_count} "
                             f"({dataset.files} timed + {warmup.files} warm-up)")
        else:
            result.status = "ok"
            result.instances_per_s = dataset.files / elapsed
            result.mb_per_s = dataset.bytes / 1e6 / elapsed
            result.cpu_ms_per_instance = result.server_cpu_s * 1000 / dataset.files
    except (BenchError, OSError, subprocess.SubprocessError, psutil.Error) as exc:
        result.status, result.reason = "FAILED", f"{type(exc).__name__}: {exc}"
    finally:
        peer.stop()
        if not keep_data:
            shutil.rmtree(run_dir / "data", ignore_errors=True)
    return result


# --- report -------------------------------------------------------------------------------
def machine_info(out: Path) -> dict:
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
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    dcmtk = ""
    if find_dcmtk("storescu"):
        probe = subprocess.run([find_dcmtk("storescu"), "--version"], capture_output=True,
                               text=True, timeout=10)
        m = re.search(r"v(\d+\.\d+\.\d+)", probe.stdout)
        dcmtk = m.group(1) if m else ""
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "disk": disk, "python": platform.python_version(), "dcmtk": dcmtk,
            "git": commit, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def _stats(values: list[float]) -> tuple[float, float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _fmt(s: tuple[float, float, float] | None, digits: int = 1) -> str:
    if s is None:
        return "—"
    med, lo, hi = s
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


SCENARIO_TEXT = {
    "ct1": "CT instances over 1 association",
    "ct4": "CT instances over 4 concurrent associations (4 storescu processes)",
    "large": "large CR instances over 1 association",
    "tiny": "tiny CT instances over 1 association",
}


def render_report(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# C-STORE ingest benchmark",
        "",
        f"{doc['finished_at']} · pacs-engine {m['git']} · Python {m['python']} · "
        f"DCMTK {m['dcmtk']}",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gb']} GiB RAM, "
        f"kernel {m['kernel']}, disk {m['disk']}.",
        "",
        f"Sender: DCMTK `storescu +sd +r` (TCP_NODELAY=1) on 127.0.0.1, same files for every "
        f"peer. Time = wall clock from the start of the sender(s) until all exited; each run "
        f"starts the peer fresh on an empty directory, stores 1 untimed warm-up instance, "
        f"then `sync`. Runs interleaved (run 1: every peer, run 2: every peer, ...), "
        f"{doc['config']['runs']} per peer. A run counts only if the peer holds all N + 1 "
        f"instances afterwards. Figures: median (min–max); MB = 10^6 bytes of source files; "
        f"CPU = user+sys of the server and its children; RSS = peak sum over the server's "
        f"process tree, sampled every 50 ms. Ratio = pacs median instances/s ÷ peer median.",
        "",
        "Durability differs: pacs fsyncs file and directory and commits LMDB before each "
        "success; storescp never fsyncs (`+B` also skips parsing and re-encoding the "
        "dataset); Orthanc syncs its storage area by default. storescp runs single-process "
        "except in ct4, where both storescp variants run with `--fork` (one child per "
        "association).",
    ]
    for note in doc["notes"]:
        lines += ["", f"Note: {note}"]
    runs = doc["runs"]
    for scenario in doc["config"]["scenarios"]:
        data = doc["data"][scenario]
        lines += ["", f"## {scenario}: {data['files']} {SCENARIO_TEXT[scenario]} "
                      f"({data['bytes'] / 1e6:.0f} MB, {data['bytes'] / data['files'] / 1e3:.0f} "
                      f"KB each)", "",
                  "| peer | ok runs | instances/s | MB/s | server CPU ms/instance "
                  "| peak RSS MB | pacs ÷ peer |",
                  "|---|---|---|---|---|---|---|"]
        medians = {}
        for peer in doc["config"]["peers"]:
            mine = [r for r in runs if r["scenario"] == scenario and r["peer"] == peer]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == "ok"]
            ips = _stats([r["instances_per_s"] for r in ok])
            medians[peer] = ips[0] if ips else None
        for peer in doc["config"]["peers"]:
            mine = [r for r in runs if r["scenario"] == scenario and r["peer"] == peer]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == "ok"]
            pacs, theirs = medians.get("pacs"), medians.get(peer)
            ratio = f"{pacs / theirs:.2f}×" if pacs and theirs and peer != "pacs" else "—"
            lines.append(
                f"| {peer} | {len(ok)}/{len(mine)} "
                f"| {_fmt(_stats([r['instances_per_s'] for r in ok]))} "
                f"| {_fmt(_stats([r['mb_per_s'] for r in ok]))} "
                f"| {_fmt(_stats([r['cpu_ms_per_instance'] for r in ok]), 2)} "
                f"| {_fmt(_stats([r['peak_rss_mb'] for r in ok]), 0)} | {ratio} |")
        failed = [r for r in runs if r["scenario"] == scenario and r["status"] != "ok"]
        if failed:
            lines.append("")
            for r in failed:
                lines.append(f"- **{r['status']}** {r['peer']} run {r['run']}: "
                             f"{r['reason'].replace(chr(10), ' / ')}")
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------
def _csv(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
        return list(dict.fromkeys(items))
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench_store",
                                description="End-to-end C-STORE benchmark against other SCPs.")
    p.add_argument("--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--runs", type=int, help="timed runs per peer and scenario (default 3)")
    p.add_argument("--ct-count", type=int, help="CT instances for ct1/ct4 (default 2000)")
    p.add_argument("--large-count", type=int, help="large instances (default 50)")
    p.add_argument("--tiny-count", type=int, help="tiny instances (default 2000)")
    p.add_argument("--peers", type=_csv(PEERS), default=list(PEERS))
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--cache", type=Path, help="data cache directory (default OUT/cache)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for CI: 40 CT, 4 large, 40 tiny, 1 run")
    p.add_argument("--keep-data", action="store_true", help="keep each run's received data")
    p.add_argument("--sender-timeout", type=float,
                   help="seconds per timed send (default 120 s + 1 s per 2 MB)")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install -y orthanc when orthanc is asked for and missing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = SMOKE if args.smoke else DEFAULTS
    for key, default in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if min(args.runs, args.ct_count, args.large_count, args.tiny_count) < 1:
        print("bench_store: counts and runs must be >= 1", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or out / "cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    notes: list[str] = []
    if find_dcmtk("storescu") is None:
        print("bench_store: DCMTK storescu not found: install the Debian package 'dcmtk'",
              file=sys.stderr)
        return 2
    if "orthanc" in args.peers and find_orthanc() is None and args.install_peers:
        log("installing orthanc (apt-get install -y orthanc)")
        try:
            subprocess.run(["apt-get", "install", "-y", "orthanc"], timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.SubprocessError) as exc:
            notes.append(f"orthanc install failed: {exc}")
    peers: list[Peer] = []
    for name in args.peers:
        peer = make_peer(name)
        why = peer.unavailable()
        if why:
            notes.append(f"peer {name} skipped: {why}.")
            log(f"skipping {name}: {why}")
        else:
            peers.append(peer)

    specs = {
        "ct": DataSpec(f"ct-{args.ct_count}", "ct", args.ct_count, 4, 100, 1000),
        "large": DataSpec(f"large-{args.large_count}", "large", args.large_count, 1, 2, 2000),
        "tiny": DataSpec(f"tiny-{args.tiny_count}", "tiny", args.tiny_count, 1, 100, 3000),
    }
    warmup = prepare_data(DataSpec("warmup", "tiny", 1, 1, 1, 9000), cache, log)
    datasets = {}
    for scenario in args.scenarios:
        key = "ct" if scenario in ("ct1", "ct4") else scenario
        datasets[scenario] = prepare_data(specs[key], cache, log)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["peers"] = [p.name for p in peers]
    doc = {"started_at": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": machine_info(out), "config": config, "notes": notes,
           "data": {s: {"name": d.spec.name, "profile": d.spec.profile, "files": d.files,
                        "bytes": d.bytes, "directory": str(d.root)}
                    for s, d in datasets.items()},
           "server_commands": {}, "runs": []}
    results_path = out / "results.json"
    try:
        for run in range(1, args.runs + 1):
            for scenario in args.scenarios:
                for peer in peers:
                    log(f"run {run}/{args.runs} {scenario} → {peer.name}")
                    r = run_one(scenario, peer, run, datasets[scenario], warmup, out,
                                args.keep_data, args.sender_timeout)
                    doc["runs"].append(asdict(r))
                    doc["server_commands"][f"{scenario}/{peer.name}"] = r.server_command
                    if r.status == "ok":
                        log(f"  ok: {r.seconds:.2f} s, {r.instances_per_s:.1f} inst/s, "
                            f"{r.mb_per_s:.1f} MB/s, cpu {r.cpu_ms_per_instance:.2f} ms/inst, "
                            f"rss {r.peak_rss_mb:.0f} MB")
                    else:
                        log(f"  {r.status}: {r.reason}")
                    results_path.write_text(json.dumps(doc, indent=2))
    finally:
        for peer in peers:
            peer.stop()
    doc["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
    results_path.write_text(json.dumps(doc, indent=2))
    report = render_report(doc)
    (out / "report.md").write_text(report)
    print(report)
    return 0 if all(r["status"] == "ok" for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
