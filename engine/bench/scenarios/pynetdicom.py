"""pynetdicom's own storage benchmark, run against every peer: many datasets on one
association, one dataset per association, and 10 simultaneous associations.

These are the figures pynetdicom publishes for its SCP, so a reader can place
pacs against them; the sender stays DCMTK storescu for every peer.  The datasets
are tiny CT instances (~10 KB): what is measured is per-message cost.
"""
from __future__ import annotations

from engine.bench.data import DataSpec, prepare_data
from engine.bench.scenarios.ingest import store_run
from engine.bench.senders import run_senders, send_each_alone

PARALLEL = 10


def run(ctx) -> None:
    sizes = ctx.sizes["pynetdicom"]
    count = max(sizes.values())
    data = prepare_data(DataSpec(f"pnd-tiny-{count}-p{PARALLEL}", "tiny", count, PARALLEL,
                                 100, 4000), ctx.cache, ctx.log)
    digests = data.digests()
    files = sorted(data.root.rglob("*.dcm"))
    each = files[:sizes["each"]]
    each_uids = _uids(each)
    each_digests = {u: digests[u] for u in each_uids}
    each_bytes = sum(p.stat().st_size for p in each)
    if sizes["batch"] != count or sizes["parallel"] != count:
        raise ValueError("pynetdicom sizes: batch and parallel must use the whole data set")
    cases = {
        "one-association": (1, lambda port, d: run_senders([data.root], port, d, ctx.timeout),
                            data.files, data.bytes, None,
                            f"{data.files} datasets on one association"),
        "association-per-dataset": (
            1, lambda port, d: send_each_alone(each, port, d, ctx.timeout), len(each),
            each_bytes, each_digests,
            f"one dataset per association × {len(each)} (one storescu each, in turn)"),
        f"{PARALLEL}-associations": (
            PARALLEL, lambda port, d: run_senders(data.groups(PARALLEL), port, d, ctx.timeout),
            data.files, data.bytes, None,
            f"{data.files} datasets over {PARALLEL} simultaneous associations"),
    }
    for name, (k, _, n, nbytes, _, text) in cases.items():
        ctx.case("pynetdicom", name, text=text + " (tiny CT, ~10 KB)", instances=n,
                 bytes=nbytes, associations=k, primary="instances_per_s")
    for round_ in range(1, ctx.rounds + 1):
        for name, (k, send, n, nbytes, expected, _) in cases.items():
            for peer in ctx.peers:
                ctx.log(f"round {round_}/{ctx.rounds} pynetdicom/{name} → {peer}")
                store_run(ctx, "pynetdicom", name, peer, round_, data, send, k,
                          instances=n, nbytes=nbytes, expected=expected)


def _uids(paths) -> list[str]:
    import pydicom

    return [str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                .SOPInstanceUID) for p in paths]
