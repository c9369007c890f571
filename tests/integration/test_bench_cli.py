"""`pacs bench`: the smoke run checks every result, and a wrong result fails the run.

Correctness only, never speed: a CI machine's figures mean nothing, but a
benchmark that reports a lost instance as a fast run would.  The peer is the
pynetdicom SCP (pure Python, present wherever pacs-engine is installed), so
ratios to a peer are exercised without Debian's Orthanc.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.bench import report, runner
from tests.support import require_tool

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = "store,pynetdicom,find,move,import,compress,forward"


def bench(*args: str, timeout: float = 280) -> subprocess.CompletedProcess:
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
    return subprocess.run([sys.executable, "-m", "engine", "bench", "--size", "smoke", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    for tool in ("storescu", "storescp", "echoscu", "findscu", "movescu"):
        require_tool(tool)
    out = tmp_path_factory.mktemp("bench-smoke")
    return out, bench("--scenarios", SCENARIOS, "--peers", "pynetdicom", "--out", str(out))


@pytest.mark.dcmtk
def test_smoke_run_passes_and_every_run_was_checked(smoke):
    out, proc = smoke
    assert proc.returncode == 0, _output(proc)
    doc = json.loads((out / "results.json").read_text())
    assert doc["ok"] is True
    assert list(doc["scenarios"]) == SCENARIOS.split(",")
    for name, state in doc["scenarios"].items():
        assert state["status"] in ("ok", "not available"), (name, state)
    assert doc["config"]["peers"] == ["pacs", "pynetdicom"]
    for run in doc["runs"]:
        assert run["status"] == "ok", run
        checks = run["checks"]
        if "content_ok" in checks:  # storage: every instance there, with its content
            assert checks["content_ok"] is True and checks["counted"] == checks["expected"]
        elif "lossless_ok" in checks:  # compression: every frame decodes to its source
            assert checks["lossless_ok"] is True and checks["counted"] == checks["expected"]
        else:  # queries: the catalogue's match count, by both clients
            assert checks["matches"] == checks["lean_scu_matches"] == checks["expected_matches"]
    # pacs against the peer, in the same round, on the same data
    store = {(r["case"], r["peer"]) for r in doc["runs"] if r["scenario"] == "store"}
    assert {("ct-x1", "pacs"), ("ct-x1", "pynetdicom"), ("tiny-x4", "pynetdicom")} <= store
    ratios = [row["ratios"] for row in doc["summary"]
              if row["scenario"] == "store" and row["peer"] == "pacs"]
    assert ratios and all(set(r) == {"pynetdicom"} and r["pynetdicom"] > 0 for r in ratios)
    text = (out / "report.md").read_text()
    assert "Result: **PASSED**" in text and text in proc.stdout
    assert "### ct-x1:" in text and "### all-studies@200:" in text
    if "skipped" in doc["plots"]:
        assert "Plots skipped: matplotlib" in text
    else:
        assert (out / "throughput-vs-associations.png").stat().st_size > 1000
        assert (out / "latency-vs-index-size.png").stat().st_size > 1000


@pytest.mark.dcmtk
def test_a_peer_that_drops_an_instance_fails_the_run(tmp_path):
    require_tool("storescu")
    proc = bench("--scenarios", "pynetdicom", "--peers", "pynetdicom", "--out", str(tmp_path),
                 "--fault", "drop:pynetdicom")
    assert proc.returncode == 1, _output(proc)
    assert "FAILED" in proc.stderr
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["ok"] is False
    assert doc["scenarios"]["pynetdicom"]["status"] == "FAILED"
    dropped = [r for r in doc["runs"] if r["peer"] == "pynetdicom"]
    assert len(dropped) == 3
    for run in dropped:
        assert run["status"] == "FAILED" and "missing" in run["reason"]
        assert run["checks"]["content_ok"] is False
        assert run["checks"]["counted"] == run["checks"]["expected"] - 1
        assert run["metrics"] == {}  # no speed for a wrong result
    assert all(r["status"] == "ok" for r in doc["runs"] if r["peer"] == "pacs")
    peer_rows = [r for r in doc["summary"] if r["peer"] == "pynetdicom"]
    assert all(r["ok_runs"] == 0 and r["figures"] == {} for r in peer_rows)
    text = (tmp_path / "report.md").read_text()
    assert "Result: **FAILED**" in text
    assert "- **FAILED** one-association pynetdicom round 1:" in text


@pytest.mark.dcmtk
def test_compare_reports_the_change_of_each_figure(smoke, tmp_path):
    old, first = smoke
    assert first.returncode == 0, _output(first)
    proc = bench("--scenarios", "move", "--peers", "", "--out", str(tmp_path),
                 "--compare", str(old / "results.json"))
    assert proc.returncode == 0, _output(proc)
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["case"], r["peer"], r["metric"]): r for r in doc["comparison"]}
    row = rows[("ct-study", "pacs", "instances_per_s")]
    assert row["old"] > 0 and row["new"] > 0
    assert row["change"] == pytest.approx(row["new"] / row["old"] - 1)
    assert "## Change against" in proc.stdout
    assert "| move/ct-study | pacs | inst/s |" in (tmp_path / "report.md").read_text()


# --- the report's arithmetic, in process --------------------------------------------------
def _doc(runs: list[dict]) -> dict:
    return {"cases": {"store/ct-x1": {"scenario": "store", "case": "ct-x1", "text": "CT",
                                      "primary": "instances_per_s"},
                      "find/q@10k": {"scenario": "find", "case": "q@10k", "primary": "p50_ms"}},
            "runs": runs}


def _run(scenario, case, peer, round_, status="ok", **metrics) -> dict:
    return {"scenario": scenario, "case": case, "peer": peer, "round": round_,
            "status": status, "reason": "" if status == "ok" else "1 of 9 instances missing",
            "metrics": metrics, "checks": {}}


def test_failed_runs_make_no_figure_and_ratios_favour_the_better():
    doc = _doc([
        _run("store", "ct-x1", "pacs", 1, instances_per_s=100.0),
        _run("store", "ct-x1", "pacs", 2, instances_per_s=300.0),
        _run("store", "ct-x1", "pacs", 3, "FAILED"),
        _run("store", "ct-x1", "storescp", 1, instances_per_s=400.0),
        _run("find", "q@10k", "pacs", 1, p50_ms=2.0),
        _run("find", "q@10k", "orthanc", 1, p50_ms=8.0),
    ])
    rows = {(r["scenario"], r["peer"]): r for r in report.summarize(doc)}
    pacs = rows[("store", "pacs")]
    assert (pacs["runs"], pacs["ok_runs"]) == (3, 2)
    assert pacs["figures"]["instances_per_s"] == {"median": 200.0, "min": 100.0, "max": 300.0,
                                                  "n": 2}
    assert pacs["ratios"] == {"storescp": 0.5}  # throughput: pacs ÷ peer
    assert rows[("find", "pacs")]["ratios"] == {"orthanc": 4.0}  # latency: peer ÷ pacs


def test_compare_marks_better_and_worse_by_the_direction_of_each_figure():
    old = {"summary": report.summarize(_doc([
        _run("store", "ct-x1", "pacs", 1, instances_per_s=100.0, peak_rss_mb=50.0)]))}
    new = {"summary": report.summarize(_doc([
        _run("store", "ct-x1", "pacs", 1, instances_per_s=120.0, peak_rss_mb=60.0)]))}
    rows = {r["metric"]: r for r in report.compare(old, new)}
    assert rows["instances_per_s"]["change"] == pytest.approx(0.2)
    assert rows["instances_per_s"]["better"] is True
    assert rows["peak_rss_mb"]["better"] is False  # more memory is worse
    text = report.render_comparison(report.compare(old, new), "old.json")
    assert "+20.0% (better)" in text and "+20.0% (worse)" in text


def test_without_matplotlib_the_plots_are_skipped_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, "engine.bench.plots", raising=False)
    plots = runner.plots(_doc([]), tmp_path)
    assert "matplotlib is not installed" in plots["skipped"]
    assert list(tmp_path.iterdir()) == []
