"""C-FIND latency of the standard queries at 10k instances (and 1M in `full`),
pacs against Orthanc, every answer checked.

Both servers hold the same seeded catalogue (engine.bench.catalogue): pacs
through its index writer, Orthanc over its REST API (one instance per study, the
probe study whole: study-level answers are the same).  Both run for the whole
scale; each round asks every query of every peer in turn, with DCMTK findscu
(one process per query, as a user runs it) and a lean SCU on one open
association (the server's own time).  A query whose match count differs from
the catalogue's, or between peers or clients, fails its run.
"""
from __future__ import annotations

import shutil

from engine.bench.catalogue import catalogue, fill_index
from engine.bench.environment import BenchError, find_dcmtk
from engine.bench.find_clients import RawFind, expected_matches, probe_study, queries, \
    time_findscu
from engine.bench.find_peers import OrthancFindPeer, PacsFindPeer
from engine.bench.measure import ServerMeter, percentile

BUDGET = 60.0  # seconds per query, peer and round at most (at least one run)


def label(instances: int) -> str:
    if instances >= 1_000_000:
        return f"{instances / 1e6:g}M"
    return f"{instances / 1e3:g}k" if instances >= 1000 else str(instances)


def run(ctx) -> None:
    findscu = find_dcmtk("findscu")
    if findscu is None:
        raise BenchError("DCMTK findscu not found (apt install dcmtk)")
    cfg = ctx.sizes["find"]
    peers = ["pacs"] + (["orthanc"] if "orthanc" in ctx.peers else [])
    for n_studies, per_study in cfg["scales"]:
        studies = catalogue(n_studies, per_study, seed=0)
        size = n_studies * per_study
        _scale(ctx, findscu, studies, size, peers, cfg["runs"])


def _scale(ctx, findscu: str, studies, size: int, peers: list[str], runs: int) -> None:
    name = label(size)
    query_list = queries(studies)
    expected = {q.name: expected_matches(studies, q) for q in query_list}
    for q in query_list:
        ctx.case("find", f"{q.name}@{name}", query=q.name, index_size=size, primary="p50_ms",
                 text=f"{q.level.lower()}-level query, {expected[q.name]:,} matches, index of "
                      f"{size:,} instances ({len(studies):,} studies)",
                 expected_matches=expected[q.name])
    servers, clients = {}, {}
    work = ctx.work("find", name)
    try:
        for peer in peers:
            run_dir = work / peer
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            if peer == "pacs":
                archive = run_dir / "archive"
                archive.mkdir()
                count, seconds = fill_index(archive, studies, ctx.log)
                ctx.log(f"find {name}: pacs index filled with {count:,} instances in "
                        f"{seconds:.0f} s")
                server = PacsFindPeer(archive)
                servers[peer] = server
                server.start(run_dir)
            else:
                server = OrthancFindPeer()
                servers[peer] = server
                server.start(run_dir)
                loaded = server.load(studies, {probe_study(studies).uid}, ctx.log)
                ctx.log(f"find {name}: Orthanc loaded with {loaded:,} instances")
            clients[peer] = RawFind(server.port)
        for round_ in range(1, ctx.rounds + 1):
            for q in query_list:
                counts = {}
                for peer in peers:
                    run = _one(ctx, findscu, servers[peer], clients[peer], q, peer, round_,
                               runs, expected[q.name], work / peer, name)
                    counts[peer] = run["checks"].get("matches")
                if len(set(counts.values())) > 1:
                    ctx.notes.append(f"find {q.name}@{name} round {round_}: peers disagree "
                                     f"on the matches: {counts}")
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()
        if not ctx.keep:
            shutil.rmtree(work, ignore_errors=True)


def _one(ctx, findscu, server, client, query, peer, round_, runs, expected, scratch,
         scale) -> dict:
    run = {"scenario": "find", "case": f"{query.name}@{scale}", "peer": peer, "round": round_,
           "status": "FAILED", "checks": {"expected_matches": expected}}
    try:
        client.run(query)  # warm-up: page cache and first-use costs, not timed
        with ServerMeter(server.proc.pid) as meter:
            dcmtk = time_findscu(findscu, server.port, query, runs, BUDGET, scratch)
            lean = client.time(query, runs, BUDGET)
        run["checks"].update(matches=dcmtk.matches, lean_scu_matches=lean.matches)
        if dcmtk.matches != expected or lean.matches != expected:
            run["reason"] = (f"{query.name}: findscu found {dcmtk.matches}, the lean SCU "
                             f"{lean.matches}, expected {expected}")
        else:
            run["status"] = "ok"
            run["metrics"] = {
                "p50_ms": percentile(dcmtk.seconds, 50) * 1e3,
                "p99_ms": percentile(dcmtk.seconds, 99) * 1e3,
                "raw_p50_ms": percentile(lean.seconds, 50) * 1e3,
                "raw_p99_ms": percentile(lean.seconds, 99) * 1e3,
                "peak_rss_mb": round(meter.peak_rss / 1e6, 1),
                "samples": len(dcmtk.seconds)}
    except (BenchError, OSError, Exception) as exc:  # noqa: BLE001 - a failed run, reported
        run["reason"] = f"{type(exc).__name__}: {exc}"
    return ctx.record(run)
