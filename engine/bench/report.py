"""The report: figures per case and peer (median, min–max), ratios to each peer, the
checks' verdict, and the change against an earlier results.json.

Only runs whose checks passed make figures; a failed run is listed with its
reason and never averaged in, so a wrong result cannot look fast.
"""
from __future__ import annotations

from collections import defaultdict

from engine.bench.measure import spread

#: key → (column title, higher is better, digits)
METRICS = {
    "instances_per_s": ("inst/s", True, 1),
    "mb_per_s": ("MB/s", True, 1),
    "cpu_ms_per_instance": ("server CPU ms/inst", False, 2),
    "p50_ms": ("p50 ms", False, 2),
    "p99_ms": ("p99 ms", False, 2),
    "raw_p50_ms": ("lean-SCU p50 ms", False, 3),
    "raw_p99_ms": ("lean-SCU p99 ms", False, 3),
    "compression_ratio": ("size ratio", True, 2),
    "peak_rss_mb": ("peak RSS MB", False, 0),
}
OURS = "pacs"


def summarize(doc: dict) -> list[dict]:
    """One row per (scenario, case, peer): run counts, figures, ratios of pacs to peers."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in doc["runs"]:
        groups[(r["scenario"], r["case"], r["peer"])].append(r)
    rows = []
    for (scenario, case, peer), runs in groups.items():
        ok = [r for r in runs if r["status"] == "ok"]
        keys = sorted({k for r in ok for k in r["metrics"] if k in METRICS})
        figures = {k: spread([r["metrics"].get(k) for r in ok]) for k in keys}
        rows.append({"scenario": scenario, "case": case, "peer": peer, "runs": len(runs),
                     "ok_runs": len(ok), "figures": {k: v for k, v in figures.items() if v}})
    by_case: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        by_case[(row["scenario"], row["case"])][row["peer"]] = row
    for (scenario, case), peers in by_case.items():
        meta = doc["cases"].get(f"{scenario}/{case}", {})
        primary = meta.get("primary", "instances_per_s")
        ours = peers.get(meta.get("ours", OURS))
        if ours is None or primary not in ours["figures"]:
            continue
        higher = METRICS[primary][1]
        mine = ours["figures"][primary]["median"]
        ours["ratios"] = {}
        for name, row in peers.items():
            theirs = row["figures"].get(primary, {}).get("median")
            if row is ours or not theirs or not mine:
                continue
            ours["ratios"][name] = mine / theirs if higher else theirs / mine
    return rows


def _fmt(s: dict | None, digits: int) -> str:
    if not s:
        return "—"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{s['median']:,.{digits}f}"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


SCENARIO_TEXT = {
    "store": "C-STORE ingest",
    "pynetdicom": "pynetdicom's storage benchmark scenarios",
    "find": "C-FIND latency",
    "move": "C-MOVE throughput",
    "import": "Bulk import (`pacs import`)",
    "compress": "Compression to JPEG 2000 Lossless",
    "forward": "Router forwarding",
}


def render(doc: dict) -> str:
    m, cfg = doc["machine"], doc["config"]
    verdict = "**PASSED**: every run's result was checked and right" if doc.get("ok") else \
        "**FAILED**: at least one run gave a wrong result or could not complete"
    lines = [
        f"# pacs bench — size {cfg['size']}, {cfg['rounds']} round(s)", "",
        f"{doc['started_at']} → {doc.get('finished_at', '')} · pacs-engine {m['engine']} "
        f"{m['git']} · Python {m['python']} · DCMTK {m['dcmtk'] or '—'} · "
        f"Orthanc {m['orthanc'] or '—'}", "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gb']} GiB RAM, kernel "
        f"{m['kernel']}, disk {m['disk']}; load average {m['load_1min_at_start']} at start.",
        "",
        f"Peers: {', '.join(cfg.get('peers', []))}. Same data and the same sender for all "
        "(DCMTK storescu/findscu/movescu, TCP_NODELAY=1, 127.0.0.1); rounds interleaved "
        "(every peer once per round); each storage run starts its peer fresh on an empty "
        "directory, stores one untimed warm-up instance, then `sync`. A run counts only if "
        "every instance arrived with its content (digest per SOP Instance UID at the "
        "receiver) or every query returned the expected matches on every peer. Figures: "
        "median (min–max) over rounds; MB = 10^6 bytes of source files; server CPU = "
        "user+sys of the server's process tree; RSS = peak over that tree, sampled every "
        "50 ms. Ratio = pacs ÷ peer for throughput, peer ÷ pacs for latency: above 1, pacs "
        "is better.", "",
        f"Result: {verdict}.", "",
        "| scenario | status | runs ok | seconds | note |", "|---|---|---|---|---|"]
    for name, s in doc["scenarios"].items():
        runs = [r for r in doc["runs"] if r["scenario"] == name]
        ok = sum(r["status"] == "ok" for r in runs)
        lines.append(f"| {name} | {s['status']} | {ok}/{len(runs)} | {s.get('seconds', '')} "
                     f"| {s.get('reason', '').replace('|', '/')} |")
    for note in doc.get("notes", []):
        lines += ["", f"Note: {note}"]
    rows = doc.get("summary", [])
    for scenario in doc["scenarios"]:
        cases = [c for c in doc["cases"].values() if c["scenario"] == scenario]
        if not cases:
            continue
        lines += ["", f"## {scenario}: {SCENARIO_TEXT.get(scenario, scenario)}"]
        for case in cases:
            mine = [r for r in rows if r["scenario"] == scenario and r["case"] == case["case"]]
            if not mine:
                continue
            keys = [k for k in METRICS if any(k in r["figures"] for r in mine)]
            ours = next((r for r in mine if r["peer"] == case.get("ours", OURS)), None)
            ratios = (ours or {}).get("ratios", {})
            lines += ["", f"### {case['case']}: {case.get('text', '')}", "",
                      "| peer | ok runs | " + " | ".join(METRICS[k][0] for k in keys)
                      + " | pacs vs peer |",
                      "|---|---|" + "---|" * len(keys) + "---|"]
            for r in mine:
                ratio = f"{ratios[r['peer']]:.2f}×" if r["peer"] in ratios else "—"
                lines.append(f"| {r['peer']} | {r['ok_runs']}/{r['runs']} | "
                             + " | ".join(_fmt(r["figures"].get(k), METRICS[k][2])
                                          for k in keys) + f" | {ratio} |")
        failed = [r for r in doc["runs"] if r["scenario"] == scenario and r["status"] != "ok"]
        if failed:
            lines.append("")
            for r in failed:
                lines.append(f"- **{r['status']}** {r['case']} {r['peer']} round {r['round']}: "
                             f"{r['reason'].replace(chr(10), ' / ')}")
    plots = doc.get("plots") or {}
    lines += ["", "## Plots", ""]
    if "skipped" in plots:
        lines.append(f"Plots skipped: {plots['skipped']}.")
    else:
        lines += [f"![{name}]({path})" for name, path in plots.items()] or ["No plot: no data."]
    if doc.get("comparison") is not None:
        lines += ["", render_comparison(doc["comparison"], doc.get("comparison_source", ""))]
    return "\n".join(lines) + "\n"


def compare(old: dict, new: dict) -> list[dict]:
    """The change of every median figure present in both documents."""
    before = {(r["scenario"], r["case"], r["peer"]): r for r in old.get("summary", [])}
    out = []
    for row in new.get("summary", []):
        then = before.get((row["scenario"], row["case"], row["peer"]))
        if then is None:
            continue
        for key, now in row["figures"].items():
            was = then["figures"].get(key)
            if not was or not was["median"]:
                continue
            change = now["median"] / was["median"] - 1
            higher = METRICS[key][1]
            out.append({"scenario": row["scenario"], "case": row["case"], "peer": row["peer"],
                        "metric": key, "old": was["median"], "new": now["median"],
                        "change": change,
                        "better": (change > 0) == higher if change else None})
    return out


def render_comparison(rows: list[dict], source: str) -> str:
    lines = [f"## Change against {source}", ""]
    if not rows:
        return "\n".join(lines + ["No figure in common."])
    lines += ["| scenario/case | peer | figure | before | now | change |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        title, _, digits = METRICS[r["metric"]]
        mark = "" if r["better"] is None else (" (better)" if r["better"] else " (worse)")
        lines.append(f"| {r['scenario']}/{r['case']} | {r['peer']} | {title} "
                     f"| {r['old']:,.{digits}f} | {r['new']:,.{digits}f} "
                     f"| {r['change'] * 100:+.1f}%{mark} |")
    return "\n".join(lines)
