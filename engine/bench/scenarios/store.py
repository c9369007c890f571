"""C-STORE ingest: CT (~525 KB), large CR (~15 MB) and tiny CT (~10 KB) instances over
1, 4 and 16 associations (one storescu process each), to every peer in turn.

The three sizes separate per-byte costs (large) from per-instance costs (tiny);
the association counts show whether a server scales with concurrent senders.
"""
from __future__ import annotations

from engine.bench.data import DataSpec, prepare_data
from engine.bench.scenarios.ingest import store_run
from engine.bench.senders import run_senders

#: profile → (per-series instances, seed, text)
PROFILES = {"ct": (100, 1000, "CT instances (~525 KB)"),
            "large": (2, 2000, "large CR instances (~15 MB)"),
            "tiny": (100, 3000, "tiny CT instances (~10 KB)")}


def run(ctx) -> None:
    sizes = ctx.sizes["store"]
    associations = ctx.sizes["associations"]
    cases = []
    for profile, (per_series, seed, text) in PROFILES.items():
        count = sizes[profile]
        parts = max(k for k in associations if k <= count)
        data = prepare_data(DataSpec(f"{profile}-{count}-p{parts}", profile, count, parts,
                                     per_series, seed), ctx.cache, ctx.log)
        data.digests()  # computed before any clock runs
        for k in associations:
            if k > count:
                continue
            name = f"{profile}-x{k}"
            ctx.case("store", name, text=f"{count} {text} over {k} association"
                     + ("s" if k > 1 else ""), instances=data.files, bytes=data.bytes,
                     profile=profile, associations=k, primary="instances_per_s")
            cases.append((name, data, k))
    for round_ in range(1, ctx.rounds + 1):
        for name, data, k in cases:
            for peer in ctx.peers:
                ctx.log(f"round {round_}/{ctx.rounds} store/{name} → {peer}")
                timeout = ctx.timeout + data.bytes / 2e6

                def send(port, run_dir, data=data, k=k, timeout=timeout):
                    return run_senders(data.groups(k), port, run_dir, timeout)
                store_run(ctx, "store", name, peer, round_, data, send, k)
