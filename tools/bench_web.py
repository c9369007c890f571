"""DICOMweb benchmark: QIDO-RS study search at 20,000 studies and WADO-RS throughput
of a 100-slice CT series, pacs-engine against Orthanc's DICOMweb plugin, same data.

    python -m tools.bench_web --out bench-web              # 20,000 studies, 100 slices
    python -m tools.bench_web --smoke --out /tmp/bw        # a few seconds, no Orthanc

1. One seeded catalogue (tools.find_archive, the C-FIND benchmark's): pacs gets
   its index filled through the index writer's transaction code (no files,
   fake hashes: study searches read only the index), Orthanc one small instance
   per study over its REST API (what its study-level search reads).
2. The CT series (tools.generate_data, 512x512x16 bit) is stored in both: in
   pacs with STOW-RS (timed too), in Orthanc with POST /instances.
3. Every query of tools.find_clients.queries at study level, as QIDO-RS with the
   same keys, on one kept-alive HTTP connection; the series retrieved as
   multipart/related; type="application/dicom"; transfer-syntax=* (as stored, so
   neither server transcodes), body read whole; MB/s = body bytes / seconds.
4. Medians; both servers must return the same number of matches and parts.

Runs are bounded by --runs and --budget (seconds per query / per server).
Servers listen on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
LARGE_RESULTS = ("all-studies",)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# --- timing --------------------------------------------------------------------------------
@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    matches: int = 0
    bytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.median / 1e6 if self.seconds else float("nan")


class Http:
    """One kept-alive HTTP/1.1 connection, reading whole bodies."""

    def __init__(self, port: int, timeout: float = 600.0) -> None:
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)

    def get(self, path: str, accept: str = "application/dicom+json") -> tuple[int, dict, bytes]:
        self.conn.request("GET", path, headers={"Accept": accept})
        response = self.conn.getresponse()
        body = response.read()
        return response.status, dict(response.getheaders()), body

    def post(self, path: str, body, content_type: str) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def _repeat(run, runs: int, budget: float) -> Timing:
    timing = Timing()
    deadline = time.monotonic() + budget
    for _ in range(runs):
        started = time.perf_counter()
        timing.matches, timing.bytes = run()
        timing.seconds.append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    return timing


def qido_path(root: str, keys: dict[str, str]) -> str:
    params = {k: v for k, v in keys.items() if v}
    # "*", "^" and "," as they are: Orthanc does not percent-decode them in values.
    return f"{root}/studies" + ("?" + urllib.parse.urlencode(params, safe="*^,")
                                if params else "")


def time_qido(port: int, root: str, query_list: list, runs: int, runs_large: int,
              budget: float) -> dict[str, Timing]:
    client = Http(port)
    out = {}
    try:
        for query in query_list:
            path = qido_path(root, query.keys)

            def run() -> tuple[int, int]:
                status, _, body = client.get(path)
                if status not in (200, 204):
                    raise BenchError(f"QIDO {path} answered {status}: {body[:200]!r}")
                # Counted, not parsed: the time is the server's answer, not JSON decoding.
                return body.count(b'"0020000D"'), len(body)

            run()  # warm-up: page cache, first-use costs
            out[query.name] = _repeat(run, runs_large if query.name in LARGE_RESULTS else runs,
                                      budget)
            log(f"  {query.name:<14} {out[query.name].matches:>7,} matches  "
                f"{out[query.name].median * 1e3:9.2f} ms")
    finally:
        client.close()
    return out


def count_parts(body: bytes, content_type: str) -> int:
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
    return body.count(b"--" + boundary) - 1


def time_wado(port: int, path: str, runs: int, budget: float) -> Timing:
    client = Http(port)
    try:
        def run() -> tuple[int, int]:
            status, headers, body = client.get(path, AS_STORED)
            if status != 200:
                raise BenchError(f"WADO {path} answered {status}: {body[:200]!r}")
            content_type = next(v for k, v in headers.items() if k.lower() == "content-type")
            return count_parts(body, content_type), len(body)

        run()
        return _repeat(run, runs, budget)
    finally:
        client.close()


def multipart_body(files: list[bytes], boundary: str) -> bytes:
    parts = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
             for f in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


# --- servers -------------------------------------------------------------------------------
class Process:
    def __init__(self, command: list[str], log_path: Path, ready, timeout: float,
                 env: dict | None = None) -> None:
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{command[0]} exited with {self.proc.returncode}: "
                                 f"{log_path.read_text(errors='replace')[-2000:]}")
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"{command[0]} did not become ready in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def _answers(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status < 500
        conn.close()
        return ok
    except OSError:
        return False


def start_pacs(run_dir: Path, archive: Path) -> tuple[Process, int]:
    web_port = free_port()
    (run_dir / "pacs.toml").write_text(
        "[query]\nmax_results = 100000000\n[storage]\nmin_free_bytes = 0\n"
        f"[web]\nport = {web_port}\n[logging]\nlevel = \"WARNING\"\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "engine", "serve", "--config", str(run_dir / "pacs.toml"),
               "--data-dir", str(archive), "--host", LOOPBACK, "--port", str(free_port())]
    process = Process(command, run_dir / "pacs.log",
                      lambda: _answers(web_port, "/dicomweb/studies?limit=1"), 60, env)
    return process, web_port


def start_orthanc(run_dir: Path) -> tuple[Process, int]:
    orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    http_port = free_port()
    data = run_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "pacs-engine-bench", "DicomAet": "ORTHANC", "DicomPort": free_port(),
        "HttpPort": http_port, "HttpServerEnabled": True, "DicomServerEnabled": False,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StorageDirectory": str(data / "storage"), "IndexDirectory": str(data / "index"),
        "StorageCompression": False, "SyncStorageArea": False, "LimitFindResults": 0,
        "LimitFindInstances": 0, "Plugins": [ORTHANC_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "HttpThreadsCount": 4, "KeepAlive": True,
    }
    (run_dir / "orthanc.json").write_text(json.dumps(config, indent=2))
    process = Process([orthanc, str(run_dir / "orthanc.json")], run_dir / "orthanc.log",
                      lambda: _answers(http_port, "/system"), 90)
    return process, http_port


def orthanc_load(port: int, files, total: int, threads: int = 2, budget: float = 3600.0
                 ) -> int:
    """POST every Part 10 file of the iterator `files` to Orthanc's /instances."""
    lock = threading.Lock()
    source = iter(files)
    done, errors = [0], []
    deadline = time.monotonic() + budget

    def worker() -> None:
        client = Http(port, 120)
        try:
            while not errors and time.monotonic() < deadline:
                with lock:
                    data = next(source, None)
                if data is None:
                    return
                status, body = client.post("/instances", data, "application/dicom")
                if status != 200:
                    errors.append(f"HTTP {status}: {body[:200]!r}")
                    return
                with lock:
                    done[0] += 1
                    if done[0] % 5000 == 0:
                        log(f"  Orthanc: {done[0]:,} of {total:,} instances")
        finally:
            client.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors or done[0] != total:
        raise BenchError(f"Orthanc load stopped at {done[0]} of {total}: {errors[:3]}")
    return done[0]


# --- the run -------------------------------------------------------------------------------
def ct_series(slices: int, rows: int) -> list[bytes]:
    from tools.generate_data import generate_study

    files = []
    for ds in generate_study(97, profile="ct", series=1, instances_per_series=slices,
                             rows=rows, columns=rows, PatientID="BENCHCT"):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def series_path(root: str, files: list[bytes]) -> str:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    return f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


def run_pacs(args, studies, queries, files) -> dict:
    from tools.find_archive import fill_index

    run_dir = args.out / "pacs"
    shutil.rmtree(run_dir, ignore_errors=True)
    archive = run_dir / "archive"
    archive.mkdir(parents=True)
    count, seconds = fill_index(archive, studies, log)
    log(f"pacs: indexed {len(studies):,} studies ({count:,} instances) in {seconds:.0f} s")
    process, port = start_pacs(run_dir, archive)
    try:
        client = Http(port)
        boundary = "benchboundary"
        started = time.perf_counter()
        status, body = client.post("/dicomweb/studies", multipart_body(files, boundary),
                                   f'multipart/related; type="application/dicom"; '
                                   f"boundary={boundary}")
        stow_seconds = time.perf_counter() - started
        client.close()
        if status != 200:
            raise BenchError(f"STOW-RS answered {status}: {body[:300]!r}")
        stow_mb = sum(len(f) for f in files) / stow_seconds / 1e6
        log(f"pacs: STOW-RS of {len(files)} slices: {stow_seconds:.2f} s ({stow_mb:.0f} MB/s)")
        qido = time_qido(port, "/dicomweb", queries, args.runs, args.runs_large, args.budget)
        wado = time_wado(port, series_path("/dicomweb", files), args.wado_runs, args.budget)
        log(f"pacs: WADO-RS series {wado.matches} parts, {wado.bytes / 1e6:.1f} MB, "
            f"median {wado.median * 1e3:.1f} ms = {wado.mb_per_s:,.0f} MB/s")
    finally:
        process.stop()
        if not args.keep:
            shutil.rmtree(archive, ignore_errors=True)
    return {"stow_seconds": stow_seconds, "stow_mb_per_s": stow_mb,
            "qido": {k: asdict(v) | {"median": v.median} for k, v in qido.items()},
            "wado": asdict(wado) | {"median": wado.median, "mb_per_s": wado.mb_per_s}}


def run_orthanc(args, studies, queries, files) -> dict:
    from tools.find_archive import part10_instance

    run_dir = args.out / "orthanc"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    process, port = start_orthanc(run_dir)
    try:
        started = time.monotonic()
        total = len(studies) + len(files)
        log(f"Orthanc: loading {len(studies):,} studies (1 instance each) + the CT series")
        generated = (part10_instance(s, s.series[0], 1) for s in studies)
        loaded = orthanc_load(port, generated, len(studies))
        loaded += orthanc_load(port, iter(files), len(files), threads=1)
        log(f"Orthanc: {loaded:,} of {total:,} instances in "
            f"{time.monotonic() - started:.0f} s")
        qido = time_qido(port, "/dicom-web", queries, args.runs, args.runs_large, args.budget)
        wado = time_wado(port, series_path("/dicom-web", files), args.wado_runs, args.budget)
        log(f"Orthanc: WADO-RS series {wado.matches} parts, {wado.bytes / 1e6:.1f} MB, "
            f"median {wado.median * 1e3:.1f} ms = {wado.mb_per_s:,.0f} MB/s")
    finally:
        process.stop()
        if not args.keep:
            shutil.rmtree(run_dir / "data", ignore_errors=True)
    return {"qido": {k: asdict(v) | {"median": v.median} for k, v in qido.items()},
            "wado": asdict(wado) | {"median": wado.median, "mb_per_s": wado.mb_per_s}}


def render(doc: dict) -> str:
    pacs, orthanc = doc["pacs"], doc.get("orthanc")
    lines = [f"# DICOMweb benchmark ({doc['studies']:,} studies, CT series of "
             f"{doc['slices']} slices)", "",
             "| QIDO-RS study search | matches | pacs median ms | Orthanc median ms | "
             "Orthanc ÷ pacs |", "|---|---:|---:|---:|---:|"]
    for name, ours in pacs["qido"].items():
        theirs = orthanc["qido"].get(name) if orthanc else None
        ratio = f"{theirs['median'] / ours['median']:.1f}×" if theirs else "—"
        lines.append(f"| {name} | {ours['matches']:,} | {ours['median'] * 1e3:,.2f} | "
                     f"{theirs['median'] * 1e3 if theirs else float('nan'):,.2f} | {ratio} |")
    wado = pacs["wado"]
    lines += ["", "| WADO-RS series (as stored) | parts | MB | median ms | MB/s |",
              "|---|---:|---:|---:|---:|",
              f"| pacs | {wado['matches']} | {wado['bytes'] / 1e6:.1f} | "
              f"{wado['median'] * 1e3:.1f} | {wado['mb_per_s']:,.0f} |"]
    if orthanc:
        w = orthanc["wado"]
        lines.append(f"| Orthanc | {w['matches']} | {w['bytes'] / 1e6:.1f} | "
                     f"{w['median'] * 1e3:.1f} | {w['mb_per_s']:,.0f} |")
    lines += ["", f"STOW-RS of the series into pacs: {pacs['stow_seconds']:.2f} s "
              f"({pacs['stow_mb_per_s']:.0f} MB/s, fsync per instance).", "",
              f"Machine: {doc['machine']}; client and servers on the same 2 cores, loopback."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-web"))
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--instances-per-study", type=int, default=5)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--runs-large", type=int, default=5)
    parser.add_argument("--wado-runs", type=int, default=15)
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds per query and server at most")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="400 studies, 10 slices of 256x256, few runs, no Orthanc")
    parser.add_argument("--keep", action="store_true", help="keep the archives")
    return parser


def main(argv: list[str] | None = None) -> int:
    import platform

    from tools.find_archive import catalogue
    from tools.find_clients import queries as find_queries

    args = build_parser().parse_args(argv)
    if args.smoke:
        args.studies, args.slices, args.rows = 400, 10, 256
        args.runs, args.runs_large, args.wado_runs, args.no_orthanc = 5, 2, 3, True
    args.out.mkdir(parents=True, exist_ok=True)
    studies = catalogue(args.studies, args.instances_per_study)
    queries = [q for q in find_queries(studies) if q.level == "STUDY"]
    log(f"generating the CT series ({args.slices} slices of {args.rows}x{args.rows})")
    files = ct_series(args.slices, args.rows)
    doc = {"studies": args.studies, "slices": args.slices,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                      f"{platform.python_version()}"}
    doc["pacs"] = run_pacs(args, studies, queries, files)
    if not args.no_orthanc and os.path.exists(ORTHANC_PLUGIN):
        doc["orthanc"] = run_orthanc(args, studies, queries, files)
        for name, ours in doc["pacs"]["qido"].items():
            theirs = doc["orthanc"]["qido"][name]
            if ours["matches"] != theirs["matches"]:
                log(f"warning: {name}: pacs {ours['matches']} matches, Orthanc "
                    f"{theirs['matches']}")
    elif not args.no_orthanc:
        log("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc "
            "orthanc-dicomweb): pacs only")
    (args.out / "bench-web.json").write_text(json.dumps(doc, indent=2))
    report = render(doc)
    (args.out / "bench-web.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
