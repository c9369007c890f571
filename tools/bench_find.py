"""C-FIND at scale: pacs-engine at ~10k and ~1M instances against Orthanc, same queries.

    python -m tools.bench_find --out bench-find        # 20,000 studies x 50 instances = 1M
    python -m tools.bench_find --smoke --out /tmp/bf   # a few seconds: 400 x 5, no Orthanc

1. One seeded catalogue (engine.bench.catalogue) per scale: the large one (default
   20,000 studies x 50 instances) and a small one (200 x 50 = 10,000 instances).
2. pacs: the index is filled through the index writer's transaction code (no
   network, no files: fake content hashes, so only indexed keys are asked for),
   `pacs serve` starts on 127.0.0.1, and every query is timed with DCMTK findscu
   (one process per query, as a user runs it) and inside one open pynetdicom
   association.
3. Orthanc (when installed): the same studies of the large catalogue, loaded
   over its REST API with one instance per study, plus every instance of the
   study the series- and image-level queries look into; then the same queries.
4. The report gives medians, Orthanc ÷ pacs, and pacs 1M ÷ pacs 10k.

Loops are bounded by --runs and --budget (seconds per query and client).
Catalogue, clients and servers are engine.bench's; `pacs bench --scenarios find`
runs the same queries interleaved per round, with every match count checked.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from engine.bench.catalogue import StudySpec, catalogue, fill_index
from engine.bench.environment import BenchError, find_dcmtk, find_orthanc
from engine.bench.find_clients import (
    Association, Query, RawFind, Timing, probe_study, queries, time_findscu)
from engine.bench.find_peers import OrthancFindPeer, PacsFindPeer

LARGE_RESULTS = ("all-studies",)  # fewer runs: seconds each through pynetdicom


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


CLIENTS = ("findscu", "pynetdicom", "raw")
CLIENT_NOTES = {
    "findscu": "DCMTK findscu -q, one process per query (start-up and association included)",
    "pynetdicom": "one open pynetdicom association (its own ~0.3-0.5 ms per response included)",
    "raw": "one open association, lean SCU reading only each response's status",
}


def time_queries(port: int, query_list: list[Query], args, scratch: Path) -> dict:
    """{query: {client: Timing}} against the server on `port`."""
    findscu = find_dcmtk("findscu")
    if findscu is None:
        raise BenchError("DCMTK findscu not found (apt install dcmtk)")
    out: dict[str, dict[str, Timing]] = {}
    assoc, raw = Association(port), RawFind(port)
    try:
        for query in query_list:
            runs = args.runs_large if query.name in LARGE_RESULTS else args.runs
            raw.run(query)  # warm-up: page cache and first-use costs
            timings = {"findscu": time_findscu(findscu, port, query, runs, args.budget, scratch),
                       "pynetdicom": assoc.time(query, runs, args.budget),
                       "raw": raw.time(query, runs, args.budget)}
            # findscu and our raw client must agree; pynetdicom occasionally misses one
            # response of a fast stream under load (pydicom/pynetdicom#875), so its count
            # is only reported.
            if timings["findscu"].matches != timings["raw"].matches:
                raise BenchError(f"{query.name}: clients disagree on the matches: {timings}")
            if timings["pynetdicom"].matches != timings["raw"].matches:
                log(f"  warning: pynetdicom counted {timings['pynetdicom'].matches} matches "
                    f"for {query.name}, the others {timings['raw'].matches}")
            out[query.name] = timings
            log(f"  {query.name:<17} {timings['raw'].matches:>7,} matches  " + "  ".join(
                f"{c} {t.median * 1e3:8.2f} ms" for c, t in timings.items()))
    finally:
        assoc.close()
        raw.close()
    return out


def run_pacs(label: str, studies: list[StudySpec], args) -> dict:
    run_dir = args.out / f"pacs-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    archive = run_dir / "archive"
    archive.mkdir(parents=True)
    instances = sum(s.instances for s in studies)
    log(f"pacs {label}: indexing {len(studies):,} studies, {instances:,} instances")
    count, seconds = fill_index(archive, studies, log)
    log(f"pacs {label}: indexed {count:,} instances in {seconds:.0f} s "
        f"({count / seconds:,.0f}/s)")
    peer = PacsFindPeer(archive)
    try:
        peer.start(run_dir, "find")
        results = time_queries(peer.port, queries(studies), args, run_dir)
    finally:
        peer.stop()
        if not args.keep:
            shutil.rmtree(archive, ignore_errors=True)
    return {"studies": len(studies), "instances": count, "fill_seconds": seconds,
            "queries": results}


def run_orthanc(studies: list[StudySpec], args) -> dict:
    run_dir = args.out / "orthanc"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    peer = OrthancFindPeer()
    probe = probe_study(studies)
    try:
        peer.start(run_dir, "find")
        log(f"Orthanc: loading {len(studies):,} studies (1 instance each; the probe study "
            f"whole: {probe.instances} instances)")
        started = time.monotonic()
        loaded = peer.load(studies, {probe.uid}, log)
        seconds = time.monotonic() - started
        log(f"Orthanc: {loaded:,} instances in {seconds:.0f} s")
        results = time_queries(peer.port, queries(studies), args, run_dir)
    finally:
        peer.stop()
        if not args.keep:
            shutil.rmtree(run_dir / "data", ignore_errors=True)
    return {"studies": len(studies), "instances": loaded, "load_seconds": seconds,
            "queries": results}


# --- report --------------------------------------------------------------------------------
def _ms(timing: Timing | None) -> str:
    return "—" if timing is None else f"{timing.median * 1e3:,.2f}"


def _ratio(a: Timing | None, b: Timing | None) -> str:
    return "—" if a is None or b is None else f"{a.median / b.median:,.1f}×"


def render(doc: dict) -> str:
    small, large, orthanc = doc.get("pacs_small"), doc.get("pacs_large"), doc.get("orthanc")
    lines = [
        f"pacs small: {small['studies']:,} studies / {small['instances']:,} instances; "
        f"pacs large: {large['studies']:,} studies / {large['instances']:,} instances "
        f"(indexed in {large['fill_seconds']:.0f} s)" if large else "pacs: not run",
        f"Orthanc: {orthanc['studies']:,} studies / {orthanc['instances']:,} instances "
        f"(loaded in {orthanc['load_seconds']:.0f} s)" if orthanc else "Orthanc: not run",
        "Medians in ms. " + "; ".join(f"{c}: {n}" for c, n in CLIENT_NOTES.items()) + ".",
        ""]
    for client in CLIENTS:
        lines += [f"| {client} | matches small / large | pacs small | pacs large "
                  "| large ÷ small | Orthanc | Orthanc ÷ pacs large |",
                  "|---|---|---|---|---|---|---|"]
        names = (large or orthanc or {"queries": {}})["queries"]
        for name in names:
            s = small["queries"][name][client] if small else None
            big = large["queries"][name][client] if large else None
            o = orthanc["queries"][name][client] if orthanc else None
            matches = " / ".join(f"{t.matches:,}" for t in (s, big or o) if t)
            lines.append(f"| {name} | {matches} | {_ms(s)} | {_ms(big)} | {_ratio(big, s)} "
                         f"| {_ms(o)} | {_ratio(o, big)} |")
        lines.append("")
    return "\n".join(lines)


def _json(doc):
    if isinstance(doc, Timing):
        return {"median": doc.median, "seconds": doc.seconds, "matches": doc.matches}
    if isinstance(doc, dict):
        return {k: _json(v) for k, v in doc.items()}
    return doc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_find", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work and report directory")
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--per-study", type=int, default=50, help="instances per study")
    parser.add_argument("--small-studies", type=int, default=200,
                        help="studies of the small archive (same instances per study)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per query and client")
    parser.add_argument("--runs-large", type=int, default=3,
                        help="timed runs of the queries answering every study")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds after which a query's runs stop (at least one run)")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--peers", default="pacs,orthanc",
                        type=lambda text: [p for p in text.split(",") if p],
                        help="which peers to run (pacs, orthanc), comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the archives afterwards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="400 x 5 and 40 x 5 instances, 2 runs, no Orthanc")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.studies, args.per_study, args.small_studies = 400, 5, 40
        args.runs = args.runs_large = 2
        args.no_orthanc = True
    args.out.mkdir(parents=True, exist_ok=True)
    large = catalogue(args.studies, args.per_study, args.seed)
    small = catalogue(args.small_studies, args.per_study, args.seed + 1)
    doc: dict = {"machine": {"python": sys.version.split()[0], "platform": platform.platform()},
                 "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        if "pacs" in args.peers:
            doc["pacs_small"] = run_pacs("small", small, args)
            doc["pacs_large"] = run_pacs("large", large, args)
        if "orthanc" in args.peers and not args.no_orthanc:
            if find_orthanc() is None:
                log("Orthanc not installed: skipped")
            else:
                doc["orthanc"] = run_orthanc(large, args)
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    report = render(doc)
    (args.out / "report.md").write_text(report + "\n")
    (args.out / "results.json").write_text(json.dumps(_json(doc), indent=2))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
