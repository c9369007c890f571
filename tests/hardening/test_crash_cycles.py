"""Battery item 5: kill -9 at random moments of multi-association ingest, restart, verify.

Runs tests/hardening/crash_cycles.py (its docstring says what is checked) with 5 small
cycles; its command line documents the large run (--cycles 50 --max-size 50M).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.hardening.harness import REPO, report


@pytest.mark.slow
def test_kill_9_cycles_lose_nothing_acknowledged(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests/hardening/crash_cycles.py"), "--cycles", "5",
         "--senders", "3", "--min-size", "1K", "--max-size", "2M", "--max-kill", "1.5",
         "--seed", "8", "--workdir", str(tmp_path), "--max-seconds", "90"],
        capture_output=True, text=True, timeout=240, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CRASH-CYCLES ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    totals = json.loads(lines[-1][len("CRASH-CYCLES "):])
    report("item5 crash cycles", **{k: v for k, v in totals.items() if k != "verify_summary"})
    assert totals["cycles"] >= 3
    assert totals["acknowledged"] > 0
    for key in ("acknowledged_but_missing", "hash_mismatches", "index_entries_without_file",
                "partial_files_outside_tmp", "tmp_not_cleared_at_restart", "restart_failures",
                "verify_missing", "verify_mismatched"):
        assert totals[key] == 0, (key, totals, proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
