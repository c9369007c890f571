"""The storage SCPs compared: ours (`pacs serve`), DCMTK storescp (plain and +B),
Orthanc with its default index, and a minimal pynetdicom SCP.

Each run starts its peer fresh on an empty directory and stops it afterwards,
so no peer profits from an earlier run's cache or suffers from its leftovers.
Every peer can list what it holds (`received_paths`), which is how the runner
checks that all instances arrived intact.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from engine.bench.environment import (
    AE_TITLE, CALLING_AE, DCMTK_ENV, LOOPBACK, BenchError, find_dcmtk, find_orthanc, free_port,
    pacs_base_config, pacs_command, pacs_env)
from engine.bench.senders import tail
from engine.bench.verify import digest_files, part10_files

#: --peers names → the peers they start.  `pacs` (ours) always runs.
PEER_GROUPS = {"pacs": ("pacs",), "dcmtk": ("storescp", "storescp-B"),
               "orthanc": ("orthanc",), "pynetdicom": ("pynetdicom",)}


class Peer:
    """A storage SCP started fresh for one run and stopped after it."""

    name = ""
    start_timeout = 30.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.data_dir = Path()
        self.associations = 1
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

    def start(self, run_dir: Path, scenario: str = "", associations: int = 1) -> None:
        self.port = free_port()
        self.associations = associations
        self.data_dir = run_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare(run_dir)
        cmd = self.command(run_dir, scenario)
        self._log = open(run_dir / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env(), cwd=run_dir,
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        echoscu = find_dcmtk("echoscu")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} at start: "
                                 f"{tail(run_dir / 'server.log')}")
            if self._ready(echoscu):
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not answer C-ECHO within {self.start_timeout:.0f} s")

    def _ready(self, echoscu: str | None) -> bool:
        try:  # cheap first: a C-ECHO only once something listens
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        if echoscu is None:
            return True
        try:
            probe = subprocess.run(
                [echoscu, "-to", "2", "-ta", "5", "-aet", CALLING_AE, "-aec", AE_TITLE,
                 LOOPBACK, str(self.port)],
                capture_output=True, env=DCMTK_ENV, timeout=15)
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0

    def received_paths(self) -> list[Path]:
        """The files holding every instance this peer stored."""
        return part10_files(self.data_dir)

    def received(self) -> tuple[dict[str, str], list[str]]:
        """Digests by SOP Instance UID of what the peer holds, and problems met."""
        return digest_files(self.received_paths())

    def count(self) -> int:
        return len(self.received_paths())

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then kill the process group; always safe to call."""
        proc = self.proc
        if proc is not None:
            try:
                if proc.poll() is None:
                    signal_group(proc, signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        pass
                signal_group(proc, signal.SIGKILL)  # leftovers: forked storescp children
                proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the session/process group we created for `proc` (its own id)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class PacsPeer(Peer):
    """`pacs serve` with its defaults: fsync of file and directory, LMDB commit per store."""

    name = "pacs"

    def config_text(self) -> str:
        """The run's pacs.toml (subclasses add their sections)."""
        return pacs_base_config()

    def prepare(self, run_dir: Path) -> None:
        (run_dir / "pacs.toml").write_text(self.config_text())

    def command(self, run_dir: Path, scenario: str) -> list[str]:
        return pacs_command("serve", "--config", str(run_dir / "pacs.toml"),
                            "--data-dir", str(self.data_dir), "--host", LOOPBACK,
                            "--port", str(self.port), "--ae-title", AE_TITLE)

    def env(self) -> dict:
        return pacs_env()

    def received_paths(self) -> list[Path]:
        """Every instance of the index, at its stored (or imported-in-place) file."""
        from engine.config import StorageConfig
        from engine.index.database import IndexDatabase
        from engine.index.reader import IndexReader
        from engine.store.blob_store import FilesystemBlobStore

        if not (self.data_dir / "index" / "data.mdb").exists():
            return []
        store = FilesystemBlobStore(self.data_dir)
        db = IndexDatabase(self.data_dir / "index", StorageConfig().index_map_size,
                           readonly=True)
        try:
            reader = IndexReader(db)
            return [reader.external_path(r.content_hash) or store.path_of(r.content_hash)
                    for _, r in reader.iter_instances()]
        finally:
            db.close()

    def count(self) -> int:
        out = subprocess.run(pacs_command("stats", "--data-dir", str(self.data_dir)),
                             capture_output=True, text=True, timeout=120, env=self.env())
        for line in out.stdout.splitlines():
            if line.startswith("instances"):
                return int(line.split()[1])
        raise BenchError(f"pacs stats failed ({out.returncode}): {out.stderr[-400:]}")


class StorescpPeer(Peer):
    """DCMTK storescp -od D; `--fork` (a child per association) when senders run in
    parallel; `+B` writes the bytes as received, without parsing the dataset."""

    def __init__(self, bit_preserving: bool) -> None:
        super().__init__()
        self.bit_preserving = bit_preserving
        self.name = "storescp-B" if bit_preserving else "storescp"

    def unavailable(self) -> str | None:
        return None if find_dcmtk("storescp") else "DCMTK storescp not found (apt install dcmtk)"

    def forks(self, scenario: str) -> bool:
        return self.associations > 1 or scenario == "ct4"

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
    """Orthanc with its default SQLite index and storage area (fsync'd, uncompressed)."""

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

    def received_paths(self) -> list[Path]:
        return part10_files(self.data_dir / "storage")

    def count(self) -> int:
        stats = self._http("/statistics")
        if stats is None:
            raise BenchError("Orthanc REST /statistics did not answer")
        return int(stats["CountInstances"])


class PynetdicomPeer(Peer):
    """engine.bench.pynetdicom_scp: pynetdicom writing each encoded dataset as received."""

    name = "pynetdicom"

    def command(self, run_dir: Path, scenario: str) -> list[str]:
        return [sys.executable, "-m", "engine.bench.pynetdicom_scp", str(self.port),
                str(self.data_dir), "--ae-title", AE_TITLE]

    def env(self) -> dict:
        return {**pacs_env(), "TCP_NODELAY": "1"}


def make_peer(name: str) -> Peer:
    return {"pacs": PacsPeer, "storescp": lambda: StorescpPeer(False),
            "storescp-B": lambda: StorescpPeer(True), "orthanc": OrthancPeer,
            "pynetdicom": PynetdicomPeer}[name]()
