"""Stage-level measurements of the compression benchmark.

* `fill_archive`: a pacs-engine archive holding the generated instances, stored by DCMTK
  storescu into `python -m engine serve` (what `run_stage` and the ingest runs copy);
* `run_stage`: CompressionStage.run_now() over a fresh copy of that archive with W codec
  worker processes (one thread each), as `pacs compress --now` runs it: encode, verify,
  write + fsync, re-hash from disk, rename, index swap, old file removed;
* `ingest_run`: storescu of a CT set into a running `pacs serve` whose archive already
  holds an uncompressed backlog, with `[compression] enabled` true or false, or with
  CPU-only busy loops at the lowest priority beside it (`IdleLoops`: what background
  CPU work costs ingest on this machine whatever the engine does);
* `fsync_latency_ms`: the same question asked of the disk alone.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.codec.transcode import can_transcode
from engine.compression.policy import JPEG_2000_LOSSLESS
from engine.bench.environment import pacs_base_config
from engine.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from tools.bench_store import (
    REPO, BenchError, DataSet, PacsPeer, _tail, run_senders, tree_cpu_seconds)
from tools.compress_frames import parse_stats



def warm_worker(pause: float) -> int:
    """Run in a codec worker before timing: imports and plugin look-ups done, pid back."""
    if not can_transcode(EXPLICIT_VR_LITTLE_ENDIAN, JPEG_2000_LOSSLESS):
        raise RuntimeError("no JPEG 2000 encoder/decoder in the worker")
    time.sleep(pause)  # keeps this worker busy so the next call starts another
    return os.getpid()


# --- filling an archive ------------------------------------------------------------------
def fill_archive(datasets: list[DataSet], run_dir: Path, timeout: float,
                 log=lambda msg: None) -> tuple[Path, int]:
    """Store every dataset into a fresh `pacs serve`; returns (data_dir, instances)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    peer = PacsPeer()
    expected = sum(d.files for d in datasets)
    try:
        peer.start(run_dir, "fill")
        elapsed, senders = run_senders([d.root for d in datasets], peer.port, run_dir, timeout)
        bad = [i for i, s in enumerate(senders) if s["returncode"] != 0]
        if bad:
            raise BenchError("storescu failed while filling the archive: "
                             + " | ".join(_tail(run_dir / f"storescu-{i}.log") for i in bad))
        counted = peer.count()
        if counted != expected:
            raise BenchError(f"archive holds {counted} instances, {expected} sent")
        log(f"archive: {counted} instances stored in {elapsed:.1f} s")
    finally:
        peer.stop()
    return peer.data_dir, expected


# --- run_now -----------------------------------------------------------------------------
@dataclass
class StageRun:
    workers: int
    instances: int
    compressed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    bytes_before: int = 0
    bytes_after: int = 0
    by_modality: dict | None = None
    failures: list | None = None
    verified: bool = False


def run_stage(template: Path, work: Path, workers: int, expected: int) -> StageRun:
    """run_now() on a copy of `template` with `workers` warm worker processes, timed."""
    from engine.codec.workers import CodecWorkers
    from engine.compression.policy import CompressionPolicy
    from engine.compression.stage import CompressionStage
    from engine.config import CodecConfig, CompressionConfig, StorageConfig
    from engine.index.database import IndexDatabase
    from engine.index.reader import IndexReader
    from engine.index.writer import GroupCommitWriter
    from engine.ingest.integrity import verify_archive
    from engine.store.blob_store import FilesystemBlobStore

    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(template, data)
    os.sync()  # the copy's dirty pages must not be flushed on the stage's clock
    storage, codec = StorageConfig(), CodecConfig()
    store = FilesystemBlobStore(data, 0)
    db = IndexDatabase(data / "index", storage.index_map_size)
    writer = GroupCommitWriter(db, storage.duplicate_policy, storage.group_commit_max)
    writer.start()
    reader = IndexReader(db)
    pool = CodecWorkers(workers, codec.task_timeout, codec.memory_limit)
    result = StageRun(workers, expected)
    try:
        pids: set[int] = set()
        threads = [threading.Thread(target=lambda: pids.add(pool.run(warm_worker, 0.3)))
                   for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if len(pids) != workers:
            raise BenchError(f"{len(pids)} of {workers} codec workers started")
        stage = CompressionStage(store, reader, writer,
                                 CompressionPolicy(CompressionConfig(min_size=0)), pool)
        cpu_before = tree_cpu_seconds(os.getpid())
        started = time.perf_counter()
        report = stage.run_now()
        result.seconds = time.perf_counter() - started
        result.cpu_s = tree_cpu_seconds(os.getpid()) - cpu_before
        result.compressed, result.failed = report.compressed, report.failed
        result.skipped = report.skipped
        result.bytes_before, result.bytes_after = report.bytes_before, report.bytes_after
        result.failures = report.failures[:10]
        result.by_modality = {m: asdict(t) for m, t in reader.compression_totals().items()}
        check = verify_archive(store, reader)
        result.verified = not check.missing and not check.mismatched
    finally:
        pool.close()
        writer.stop()
        db.close()
        shutil.rmtree(data, ignore_errors=True)
    return result


# --- background CPU load and what it does to I/O -------------------------------------------
class IdleLoops:
    """`count` CPU-only busy loops at the lowest priority (SCHED_IDLE, else nice 19)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen] = []
        chrt = shutil.which("chrt")
        self.prefix = [chrt, "-i", "0"] if chrt else ["nice", "-n", "19"]
        self.policy = "SCHED_IDLE" if chrt else "nice 19"

    def __enter__(self) -> "IdleLoops":
        for _ in range(self.count):
            self.procs.append(subprocess.Popen(
                [*self.prefix, sys.executable, "-c", "while True: pass"],
                stdin=subprocess.DEVNULL, start_new_session=True))
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the session we created for it
            except ProcessLookupError:
                pass
            proc.wait(10)
        self.procs.clear()


def fsync_latency_ms(directory: Path, count: int = 200) -> float:
    """Mean time to write 4 KiB to a new file and fsync it, in milliseconds."""
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i in range(count):
        fd = os.open(directory / f"probe-{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - started
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed * 1000 / count


# --- ingest while the stage runs ---------------------------------------------------------
class BackloggedPacs(PacsPeer):
    """`pacs serve` on a copy of an archive with an uncompressed backlog, stage on or off."""

    def __init__(self, template: Path, compression: bool, sweep_interval: float) -> None:
        super().__init__()
        self.template = template
        self.compression = compression
        self.sweep_interval = sweep_interval
        self.name = "pacs+compression" if compression else "pacs"

    def prepare(self, run_dir: Path) -> None:
        shutil.copytree(self.template, self.data_dir, dirs_exist_ok=True)
        (run_dir / "pacs.toml").write_text(
            pacs_base_config() + "[compression]\n"
            f"enabled = {'true' if self.compression else 'false'}\n"
            "min_size = 0\n"
            f"sweep_interval = {self.sweep_interval}\n"
            "\n[logging]\nlevel = \"WARNING\"\n")

    def command(self, run_dir: Path, scenario: str) -> list[str]:
        return super().command(run_dir, scenario) + ["--config", str(run_dir / "pacs.toml")]

    def stats(self) -> tuple[int, dict[str, tuple[int, float, float]]]:
        out = subprocess.run(
            [sys.executable, "-m", "engine", "stats", "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=120, cwd=REPO, env=self.env())
        if out.returncode != 0:
            raise BenchError(f"pacs stats failed ({out.returncode}): {out.stderr[-400:]}")
        return parse_stats(out.stdout)


def _compressed(totals: dict[str, tuple[int, float, float]]) -> int:
    return sum(count for count, _, _ in totals.values())


def ingest_run(peer: BackloggedPacs, run: int, dataset: DataSet, warmup: DataSet,
               backlog: int, run_dir: Path, timeout: float, start_wait: float = 60.0,
               idle_loops: int = 0) -> dict:
    """Warm-up store, (stage busy), sync, timed storescu of `dataset`, counts; peer stopped.

    With `idle_loops`, that many IdleLoops run during the timed store.
    """
    mode = f"{peer.name}+idle loops" if idle_loops else peer.name
    result = {"mode": mode, "run": run, "status": "FAILED", "reason": "",
              "instances": dataset.files, "bytes": dataset.bytes}
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    try:
        peer.start(run_dir, "ingest")
        warm_dir = run_dir / "warmup"
        warm_dir.mkdir()
        _, warm = run_senders([warmup.root], peer.port, warm_dir, 60)
        if warm[0]["returncode"] != 0:
            raise BenchError(f"warm-up store failed: {_tail(warm_dir / 'storescu-0.log')}")
        if peer.compression:  # time only while the stage is really compressing
            deadline = time.monotonic() + start_wait
            while _compressed(peer.stats()[1]) == 0:
                if time.monotonic() > deadline:
                    raise BenchError(f"the stage compressed nothing within {start_wait:g} s")
                time.sleep(0.2)
        os.sync()
        before = _compressed(peer.stats()[1])
        cpu_before = tree_cpu_seconds(peer.proc.pid)
        with IdleLoops(idle_loops):
            elapsed, senders = run_senders([dataset.root], peer.port, run_dir, timeout)
        result["server_cpu_s"] = round(tree_cpu_seconds(peer.proc.pid) - cpu_before, 3)
        instances, totals = peer.stats()
        result["compressed_during"] = _compressed(totals) - before
        result["compressed_before"] = before
        result["seconds"] = elapsed
        expected = backlog + warmup.files + dataset.files
        if senders[0]["returncode"] != 0:
            result["reason"] = f"storescu exited non-zero: {_tail(run_dir / 'storescu-0.log')}"
        elif instances != expected:
            result["reason"] = f"count {instances} != expected {expected}"
        else:
            result["status"] = "ok"
            result["instances_per_s"] = dataset.files / elapsed
            result["mb_per_s"] = dataset.bytes / 1e6 / elapsed
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        result["reason"] = f"{type(exc).__name__}: {exc}"
    finally:
        peer.stop()
        shutil.rmtree(run_dir / "data", ignore_errors=True)
    return result


__all__ = ["BackloggedPacs", "IdleLoops", "StageRun", "fill_archive", "fsync_latency_ms",
           "ingest_run", "run_stage", "warm_worker"]
