"""What an import tells its user: live progress, the summary, the per-file report.

Progress is a `rich` bar on a terminal and a plain line every few seconds
otherwise (logs of a migration running for days under nohup or systemd).
Files not imported are streamed to the `--report` file as they happen (JSON or
CSV by its suffix), so a run over millions of files keeps only counters in
memory and an interrupted run still leaves a report of what it saw.
"""
from __future__ import annotations

import csv
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from engine.index.entry import IndexOutcome


@dataclass
class ImportSummary:
    imported: int = 0
    #: Same content already in the archive (an earlier import, a C-STORE, or twice in the tree).
    duplicates: int = 0
    #: Same SOP Instance UID, different content (recorded as the archive core does).
    conflicts: int = 0
    rejected: int = 0
    skipped: int = 0
    #: Already imported by an earlier run and unchanged since (size and mtime).
    unchanged: int = 0
    #: Files read by the workers in this run, and their bytes.
    scanned: int = 0
    bytes_scanned: int = 0
    bytes_imported: int = 0
    interrupted: bool = False
    fatal: str = ""
    reasons: Counter = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def done(self) -> int:
        """Files finished one way or another (what progress counts)."""
        return (self.imported + self.duplicates + self.conflicts + self.rejected
                + self.unchanged)

    def count(self, outcome: IndexOutcome) -> None:
        if outcome is IndexOutcome.STORED:
            self.imported += 1
        elif outcome is IndexOutcome.IDENTICAL:
            self.duplicates += 1
        else:
            self.conflicts += 1

    def as_dict(self) -> dict:
        return {"imported": self.imported, "duplicates": self.duplicates,
                "conflicts": self.conflicts, "rejected": self.rejected,
                "skipped": self.skipped, "unchanged": self.unchanged,
                "scanned": self.scanned, "bytes_scanned": self.bytes_scanned,
                "bytes_imported": self.bytes_imported, "interrupted": self.interrupted,
                "fatal": self.fatal, "elapsed_seconds": round(self.elapsed, 3),
                "reasons": dict(self.reasons.most_common())}


class FileReport:
    """Each file not imported, with its reason, streamed to JSON or CSV (by suffix)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self._first = True
        self._csv = None
        if path is None:
            return
        self._fh = open(path, "w", encoding="utf-8", newline="")
        if path.suffix.lower() == ".csv":
            self._csv = csv.writer(self._fh)
            self._csv.writerow(("path", "status", "reason"))
        else:
            self._fh.write('{"files": [\n')

    def add(self, path: str, status: str, reason: str) -> None:
        if self._fh is None:
            return
        if self._csv is not None:
            self._csv.writerow((path, status, reason))
            return
        row = json.dumps({"path": path, "status": status, "reason": reason},
                         ensure_ascii=False)
        self._fh.write(("" if self._first else ",\n") + row)
        self._first = False

    def close(self, summary: ImportSummary) -> None:
        if self._fh is None:
            return
        if self._csv is None:
            self._fh.write("\n],\n\"summary\": " + json.dumps(summary.as_dict()) + "}\n")
        self._fh.close()
        self._fh = None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Files/s, MB/s and ETA; the totals come from a counting walk running alongside."""

    def __init__(self, summary: ImportSummary, interactive: bool | None = None,
                 interval: float = 5.0, stream: TextIO | None = None) -> None:
        self.summary = summary
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval = interval
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self._counted_files = 0
        self._counted_bytes = 0
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = self._start
        self._rich = None
        self._task = None

    def __enter__(self) -> "Progress":
        if self.interactive:
            from rich.console import Console
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn)

            self._rich = RichProgress(
                TextColumn("[bold]import"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}"),
                console=Console(file=self.stream), transient=False)
            self._rich.__enter__()
            self._task = self._rich.add_task("import", total=None, rates="counting files…")
        return self

    def __exit__(self, *exc) -> None:
        self.update(force=True)
        if self._rich is not None:
            self._rich.__exit__(*exc)

    # -- the counting walk (another thread) ------------------------------------------------
    def counted(self, files: int, size: int) -> None:
        with self._lock:
            self._counted_files += files
            self._counted_bytes += size

    def counting_done(self) -> None:
        with self._lock:
            self.total_files, self.total_bytes = self._counted_files, self._counted_bytes

    # -- the main loop ----------------------------------------------------------------------
    def line(self) -> str:
        s = self.summary
        elapsed = max(time.monotonic() - self._start, 1e-6)
        files_rate = s.done / elapsed
        mb_rate = s.bytes_scanned / elapsed / 1e6
        text = f"{files_rate:,.0f} files/s, {mb_rate:,.1f} MB/s"
        if self.total_files is not None and self.total_files:
            left = max(self.total_files - s.done, 0)
            eta = left / files_rate if files_rate > 0 else 0.0
            text += f", ETA {_duration(eta)}"
        elif self.total_files is None:
            text += f", counting ({self._counted_files:,} files so far)"
        return text + (f"; {s.rejected} rejected" if s.rejected else "")

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._rich is not None:
            if force or now - self._last >= 0.2:
                self._last = now
                self._rich.update(self._task, completed=self.summary.done,
                                  total=self.total_files, rates=self.line())
            return
        if force or now - self._last >= self.interval:
            self._last = now
            total = f"/{self.total_files:,}" if self.total_files is not None else ""
            print(f"import: {self.summary.done:,}{total} files; {self.line()}",
                  file=self.stream, flush=True)


def print_summary(summary: ImportSummary, report_path: Path | None,
                  first_problems: list[tuple[str, str, str]], stream: TextIO) -> None:
    s = summary
    rate = s.scanned / s.elapsed if s.elapsed else 0.0
    mb = s.bytes_scanned / s.elapsed / 1e6 if s.elapsed else 0.0
    print(f"imported {s.imported}, duplicates {s.duplicates}, conflicts {s.conflicts}, "
          f"rejected {s.rejected}, skipped {s.skipped}, unchanged since last run "
          f"{s.unchanged}", file=stream)
    print(f"read {s.scanned} files ({s.bytes_scanned / 1e6:,.1f} MB) in {s.elapsed:.1f} s: "
          f"{rate:,.0f} files/s, {mb:,.1f} MB/s", file=stream)
    for path, status, reason in first_problems:
        print(f"{status.upper():<9} {path}: {reason}", file=stream)
    shown = len(first_problems)
    if s.rejected + s.skipped > shown:
        more = s.rejected + s.skipped - shown
        where = f"see {report_path}" if report_path else "use --report FILE.csv for the list"
        print(f"... and {more} more ({where})", file=stream)
    if s.interrupted:
        print("interrupted: run the same command again to continue", file=stream)
    if s.fatal:
        print(f"stopped: {s.fatal}", file=stream)
