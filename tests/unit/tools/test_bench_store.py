"""tools.bench_store: the smoke run stores every instance on every peer (correctness, not speed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require_tool
from tools.bench_store import render_report

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.dcmtk
@pytest.mark.slow
def test_smoke_run_reports_every_run_ok_with_matching_counts(tmp_path):
    for tool in ("storescu", "storescp", "echoscu"):
        require_tool(tool)
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench_store", "--smoke", "--scenarios", "ct1,tiny",
         "--peers", "pacs,storescp-B", "--runs", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"

    report = (tmp_path / "report.md").read_text()
    assert "## ct1" in report and "## tiny" in report
    assert report in proc.stdout  # printed too
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["data"]["ct1"]["files"] == 40 and doc["data"]["tiny"]["files"] == 40
    runs = doc["runs"]
    assert sorted((r["scenario"], r["peer"]) for r in runs) == [
        ("ct1", "pacs"), ("ct1", "storescp-B"), ("tiny", "pacs"), ("tiny", "storescp-B")]
    for r in runs:
        assert r["status"] == "ok", r
        assert r["instances"] == doc["data"][r["scenario"]]["files"]
        # every timed instance plus the one untimed warm-up store arrived
        assert r["counted"] == r["expected_count"] == r["instances"] + 1
        assert all(s["returncode"] == 0 for s in r["senders"])


def test_report_lists_a_wrong_count_as_failed_and_leaves_it_out_of_the_figures():
    def run(peer: str, status: str, ips: float | None, reason: str = "") -> dict:
        return {"scenario": "tiny", "peer": peer, "run": 1, "status": status, "reason": reason,
                "instances_per_s": ips, "mb_per_s": ips and ips / 100,
                "cpu_ms_per_instance": ips and 1.0, "peak_rss_mb": ips and 50.0}

    doc = {"finished_at": "now", "notes": [],
           "machine": {"git": "x", "python": "3", "dcmtk": "3.6.7", "nproc": 2, "cpu_model": "c",
                       "memory_gb": 1, "kernel": "k", "disk": "d"},
           "config": {"runs": 2, "scenarios": ["tiny"], "peers": ["pacs", "storescp"]},
           "data": {"tiny": {"files": 10, "bytes": 100_000}},
           "runs": [run("pacs", "ok", 100.0), run("storescp", "ok", 400.0),
                    run("pacs", "FAILED", None, "count 9 != expected 11\nsecond line"),
                    run("storescp", "ok", 200.0)]}
    text = render_report(doc)
    assert "| pacs | 1/2 | 100.0 (100.0–100.0) |" in text
    assert "| storescp | 2/2 | 300.0 (200.0–400.0) |" in text
    assert "| 0.33× |" in text
    assert "- **FAILED** pacs run 1: count 9 != expected 11 / second line" in text
