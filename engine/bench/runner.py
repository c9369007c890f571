"""`pacs bench`: options, sizes, the scenario registry, rounds, and the verdict.

The runner owns what every scenario shares: the output directory, the data
cache, which peers are really there, the JSON written after every run (a run
stopped half-way still leaves its figures), and the exit status: 0 only when
every run of every scenario that ran was checked and found right.  Scenarios
(engine.bench.scenarios) own their loops and interleave peers inside each round
(A B A B), so drift on a noisy machine hits every peer alike.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.bench.environment import BenchError

SCENARIOS = ("store", "pynetdicom", "find", "move", "import", "compress", "forward")
PEER_CHOICES = ("dcmtk", "orthanc", "pynetdicom")
SCHEMA = 1

#: Counts per size.  smoke: about a minute, for CI (correctness, never speed); standard:
#: ~20 minutes on 2 cores; full: the 1M-instance index and the issue's counts (hours).
SIZES: dict[str, dict] = {
    "smoke": {
        "rounds": 1, "associations": [1, 4], "store": {"ct": 8, "large": 2, "tiny": 16},
        "pynetdicom": {"batch": 20, "each": 8, "parallel": 20},
        "find": {"scales": [(40, 5)], "runs": 3}, "move": 8,
        "import": {"ct": 8, "tiny": 24}, "compress": 4, "forward": {"count": 8, "parallel": [1]},
    },
    "standard": {
        "rounds": 3, "associations": [1, 4, 16], "store": {"ct": 400, "large": 32, "tiny": 1000},
        "pynetdicom": {"batch": 1000, "each": 250, "parallel": 1000},
        "find": {"scales": [(200, 50)], "runs": 20}, "move": 400,
        "import": {"ct": 400, "tiny": 2000}, "compress": 40,
        "forward": {"count": 400, "parallel": [1, 4]},
    },
    "full": {
        "rounds": 5, "associations": [1, 4, 16],
        "store": {"ct": 2000, "large": 64, "tiny": 2000},
        "pynetdicom": {"batch": 1000, "each": 1000, "parallel": 1000},
        "find": {"scales": [(200, 50), (20_000, 50)], "runs": 50}, "move": 1000,
        "import": {"ct": 2000, "tiny": 10_000}, "compress": 200,
        "forward": {"count": 1000, "parallel": [1, 4]},
    },
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """What a scenario gets: sizes, peers, directories, and where its runs go."""

    size: str
    rounds: int
    out: Path
    cache: Path
    peers: list[str]  # store peers that will run, "pacs" first
    timeout: float
    fault: str | None
    doc: dict
    keep: bool = False
    log: Callable[[str], None] = log
    notes: list[str] = field(default_factory=list)
    shared: dict = field(default_factory=dict)  # data prepared once, used by many runs

    @property
    def sizes(self) -> dict:
        return SIZES[self.size]

    def work(self, *parts: str) -> Path:
        path = self.out.joinpath("work", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def case(self, scenario: str, case: str, **meta) -> None:
        """Describe a case once: text, data, primary figure, x for plots."""
        self.doc["cases"][f"{scenario}/{case}"] = {"scenario": scenario, "case": case, **meta}

    def record(self, run: dict) -> dict:
        """Keep one run (written to the JSON at once) and log its outcome."""
        run.setdefault("metrics", {})
        run.setdefault("checks", {})
        run.setdefault("reason", "")
        self.doc["runs"].append(run)
        self.save()
        label = f"{run['scenario']}/{run['case']} {run['peer']} round {run['round']}"
        if run["status"] == "ok":
            m = run["metrics"]
            figure = next((f"{m[k]:,.1f} {k}" for k in ("instances_per_s", "p50_ms")
                           if m.get(k) is not None), "")
            self.log(f"  ok   {label}: {figure}")
        else:
            self.log(f"  {run['status']} {label}: {run['reason']}")
        return run

    def faulty(self, peer: str) -> bool:
        """The test hook: --fault drop:PEER makes PEER lose one instance after each run."""
        return self.fault == f"drop:{peer}"

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.doc, indent=2, default=str))


def failed_run(scenario: str, case: str, peer: str, round_: int, reason: str) -> dict:
    return {"scenario": scenario, "case": case, "peer": peer, "round": round_,
            "status": "FAILED", "reason": reason}


def _csv(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        unknown = [t for t in items if t not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
        return items
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS),
                   help="comma-separated, from " + ",".join(SCENARIOS) + " (default: all)")
    p.add_argument("--size", choices=tuple(SIZES), default="standard",
                   help="smoke: seconds, checks only; standard (default); full: 1M-instance "
                        "index and the largest counts")
    p.add_argument("--peers", type=_csv(PEER_CHOICES), default=list(PEER_CHOICES),
                   help="peers beside pacs when installed: dcmtk (storescp, storescp +B), "
                        "orthanc, pynetdicom (default: all; '' for pacs alone)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case (default by size)")
    p.add_argument("--out", type=Path, default=Path("bench-out"),
                   help="report.md, results.json, plots, data cache (default ./bench-out)")
    p.add_argument("--cache", type=Path, help="data cache (default OUT/cache)")
    p.add_argument("--compare", type=Path, metavar="OLD.json",
                   help="report the change of every figure against an earlier results.json")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install -y the Debian packages of missing peers "
                        "(dcmtk, orthanc)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="bound of each timed step, seconds (default 900)")
    p.add_argument("--keep", action="store_true", help="keep each run's received data")
    # Test hook: a peer that loses an instance must make the run (and the exit) fail.
    p.add_argument("--fault", help=argparse.SUPPRESS)


def _store_peers(asked: list[str], ctx_notes: list[str]) -> list[str]:
    from engine.bench.peers import PEER_GROUPS, make_peer

    names = ["pacs"] + [n for group in asked for n in PEER_GROUPS[group]]
    ready = []
    for name in names:
        why = make_peer(name).unavailable()
        if why:
            ctx_notes.append(f"peer {name} skipped: {why}.")
            log(f"skipping {name}: {why}")
        else:
            ready.append(name)
    return ready


def plots(doc: dict, out: Path) -> dict:
    """The PNG plots, or why they were skipped: never a failed run for want of them."""
    try:
        from engine.bench.plots import write_plots
    except ImportError:
        return {"skipped": "matplotlib is not installed (pip install 'pacs-engine[bench]' "
                           "for the PNG plots)"}
    try:
        return write_plots(doc, out)
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the measured figures
        return {"skipped": f"plotting failed: {type(exc).__name__}: {exc}"}


def run(args: argparse.Namespace) -> int:
    from engine.bench import report
    from engine.bench.environment import find_dcmtk, install_peers, machine_info
    from engine.bench.scenarios import REGISTRY

    rounds = args.rounds or SIZES[args.size]["rounds"]
    if rounds < 1:
        print("pacs bench: --rounds must be >= 1", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or out / "cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    old = None
    if args.compare:
        try:
            old = json.loads(args.compare.read_text())
        except (OSError, ValueError) as exc:
            print(f"pacs bench: cannot read {args.compare}: {exc}", file=sys.stderr)
            return 2
    notes: list[str] = []
    if args.install_peers:
        notes += install_peers(["dcmtk", *args.peers], log)
    if find_dcmtk("storescu") is None:
        print("pacs bench: DCMTK storescu not found: install the Debian package 'dcmtk' "
              "(or run with --install-peers)", file=sys.stderr)
        return 2
    doc = {"schema": SCHEMA, "started_at": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": machine_info(out),
           "config": {"size": args.size, "rounds": rounds, "scenarios": args.scenarios,
                      "peers_asked": args.peers, "sizes": SIZES[args.size],
                      "fault": args.fault, "command": " ".join(sys.argv)},
           "notes": notes, "scenarios": {}, "cases": {}, "runs": []}
    ctx = Context(args.size, rounds, out, cache, _store_peers(args.peers, notes),
                  args.timeout, args.fault, doc, args.keep, notes=notes)
    doc["config"]["peers"] = ctx.peers
    try:
        for name in args.scenarios:
            log(f"scenario {name}")
            first = len(doc["runs"])
            started = time.monotonic()
            state = {"status": "ok", "reason": ""}
            try:
                why_not = REGISTRY[name](ctx)
                if why_not:  # the scenario cannot run here (e.g. `pacs import` absent)
                    state = {"status": "not available", "reason": why_not}
            except (BenchError, OSError) as exc:
                state = {"status": "FAILED", "reason": f"{type(exc).__name__}: {exc}"}
            except Exception as exc:  # a bug of the scenario: reported, never a fast figure
                state = {"status": "FAILED", "reason": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()[-3000:]}
            runs = doc["runs"][first:]
            if state["status"] == "ok" and any(r["status"] != "ok" for r in runs):
                state = {"status": "FAILED",
                         "reason": f"{sum(r['status'] != 'ok' for r in runs)} of {len(runs)} "
                                   "runs failed their checks"}
            if state["status"] == "ok" and not runs:
                state = {"status": "FAILED", "reason": "no run was made"}
            state["seconds"] = round(time.monotonic() - started, 1)
            doc["scenarios"][name] = state
            log(f"scenario {name}: {state['status']} {state['reason']}")
            ctx.save()
    except KeyboardInterrupt:
        notes.append("interrupted (Ctrl-C): the figures cover the runs made so far.")
        doc["interrupted"] = True
    doc["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
    doc["summary"] = report.summarize(doc)
    doc["ok"] = (not doc.get("interrupted")
                 and all(s["status"] in ("ok", "not available")
                         for s in doc["scenarios"].values()))
    if doc["ok"] and not args.keep:  # received data is gone already; logs of a failure stay
        shutil.rmtree(out / "work", ignore_errors=True)
    doc["plots"] = plots(doc, out)
    if old is not None:
        doc["comparison"] = report.compare(old, doc)
        doc["comparison_source"] = str(args.compare)
    ctx.save()
    text = report.render(doc)
    (out / "report.md").write_text(text)
    print(text)  # the comparison, with --compare, is its last section
    if not doc["ok"]:
        print("pacs bench: FAILED: a run gave a wrong result or could not be completed "
              "(see report.md)", file=sys.stderr)
    return 0 if doc["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacs bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
