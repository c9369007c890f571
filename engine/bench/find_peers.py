"""The servers of the C-FIND benchmark: `pacs serve` on an archive filled
beforehand, and Orthanc loaded over its REST API (engine.bench.peers)."""
from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from pathlib import Path

from engine.bench.catalogue import StudySpec, part10_instance
from engine.bench.environment import AE_TITLE, CALLING_AE, LOOPBACK, BenchError
from engine.bench.peers import OrthancPeer, PacsPeer

class PacsFindPeer(PacsPeer):
    """`pacs serve` on an archive filled beforehand, result cap raised for the bench."""

    def __init__(self, archive: Path) -> None:
        super().__init__()
        self.archive = archive

    def config_text(self) -> str:
        return super().config_text() + (
            "[query]\nmax_results = 100000000\n[storage]\nmin_free_bytes = 0\n"
            "[network]\nidle_timeout = 3600.0\n"
            "[logging]\nlevel = \"WARNING\"\n")

    def command(self, run_dir: Path, scenario: str) -> list[str]:
        return [sys.executable, "-m", "engine", "serve", "--config", str(run_dir / "pacs.toml"),
                "--data-dir", str(self.archive), "--host", LOOPBACK, "--port", str(self.port),
                "--ae-title", AE_TITLE]


class OrthancFindPeer(OrthancPeer):
    """Orthanc with no result limits and no fsync per stored file (loading speed only)."""

    def prepare(self, run_dir: Path) -> None:
        super().prepare(run_dir)
        path = run_dir / "orthanc.json"
        config = json.loads(path.read_text())
        config.update({"SyncStorageArea": False, "LimitFindResults": 0,
                       "LimitFindInstances": 0, "CaseSensitivePN": False,
                       "DicomScpTimeout": 3600,  # associations wait idle between queries
                       "DicomAlwaysAllowFind": True,  # else only listed modalities may query
                       "DicomModalities": {"bench": [CALLING_AE, LOOPBACK, 104]}})
        path.write_text(json.dumps(config, indent=2))

    def load(self, studies: list[StudySpec], whole: set[str], log, threads: int = 2,
             budget: float = 1800.0) -> int:
        """POST one instance of every study, and every instance of the `whole` studies."""
        jobs = [(s, series, n) for s in studies
                for series in (s.series if s.uid in whole else s.series[:1])
                for n in (range(1, series.instances + 1) if s.uid in whole else (1,))]
        deadline = time.monotonic() + budget
        errors: list[str] = []
        done = [0]
        lock = threading.Lock()

        def worker(part: list) -> None:
            conn = http.client.HTTPConnection(LOOPBACK, self.http_port, timeout=60)
            try:
                for study, series, n in part:
                    if errors or time.monotonic() > deadline:
                        return
                    conn.request("POST", "/instances", body=part10_instance(study, series, n),
                                 headers={"Content-Type": "application/dicom"})
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        errors.append(f"HTTP {response.status}")
                        return
                    with lock:
                        done[0] += 1
                        if done[0] % 5000 == 0:
                            log(f"  Orthanc: {done[0]:,} of {len(jobs):,} instances")
            finally:
                conn.close()

        pool = [threading.Thread(target=worker, args=(jobs[i::threads],), daemon=True)
                for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(max(1.0, deadline - time.monotonic() + 60))
        if errors or done[0] != len(jobs):
            raise BenchError(f"Orthanc load stopped at {done[0]} of {len(jobs)}: {errors[:3]}")
        return done[0]
