"""PNG plots of a run: throughput against associations, latency against index size.

matplotlib is an optional extra (`pip install 'pacs-engine[bench]'`): importing
this module raises ImportError without it, and the runner then notes in the
report that the plots were skipped.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402


def _median(doc: dict, scenario: str, case: str, peer: str, key: str) -> float | None:
    for row in doc.get("summary", []):
        if (row["scenario"], row["case"], row["peer"]) == (scenario, case, peer):
            figure = row["figures"].get(key)
            return figure["median"] if figure else None
    return None


def throughput_plot(doc: dict, path: Path) -> bool:
    cases = [c for c in doc["cases"].values() if c["scenario"] == "store"]
    profiles = list(dict.fromkeys(c["profile"] for c in cases))
    if not profiles:
        return False
    fig, axes = plt.subplots(1, len(profiles), figsize=(5 * len(profiles), 4), squeeze=False)
    for ax, profile in zip(axes[0], profiles):
        mine = sorted((c for c in cases if c["profile"] == profile),
                      key=lambda c: c["associations"])
        for peer in doc["config"].get("peers", []):
            points = [(c["associations"], _median(doc, "store", c["case"], peer,
                                                  "instances_per_s")) for c in mine]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=peer)
        ax.set_ylim(bottom=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks([c["associations"] for c in mine], [str(c["associations"]) for c in mine])
        ax.set_title(f"C-STORE {profile}")
        ax.set_xlabel("associations")
        ax.set_ylabel("instances/s (median)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def latency_plot(doc: dict, path: Path) -> bool:
    cases = [c for c in doc["cases"].values() if c["scenario"] == "find"]
    queries = list(dict.fromkeys(c["query"] for c in cases))
    if not queries:
        return False
    peers = sorted({r["peer"] for r in doc["runs"] if r["scenario"] == "find"})
    cols = min(4, len(queries))
    rows = -(-len(queries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, query in zip(axes.flat, queries):
        mine = sorted((c for c in cases if c["query"] == query), key=lambda c: c["index_size"])
        for peer in peers:
            points = [(c["index_size"], _median(doc, "find", c["case"], peer, "p50_ms"))
                      for c in mine]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                line, = ax.plot(*zip(*points), marker="o", label=f"{peer} (findscu)")
                lean = [(c["index_size"], _median(doc, "find", c["case"], peer, "raw_p50_ms"))
                        for c in mine]
                lean = [(x, y) for x, y in lean if y is not None]
                if lean:
                    ax.plot(*zip(*lean), marker="s", linestyle="--", color=line.get_color(),
                            label=f"{peer} (lean SCU)")
        ax.set_xscale("log")
        ax.set_title(query, fontsize=10)
        ax.set_xlabel("instances in the index")
        ax.set_ylabel("p50 ms")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(queries):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_plots(doc: dict, out: Path) -> dict[str, str]:
    """Write the plots there is data for; name → file name relative to `out`."""
    written = {}
    if throughput_plot(doc, out / "throughput-vs-associations.png"):
        written["throughput vs associations"] = "throughput-vs-associations.png"
    if latency_plot(doc, out / "latency-vs-index-size.png"):
        written["latency vs index size"] = "latency-vs-index-size.png"
    return written
