"""Battery item 5: kill -9 cycles during multi-association ingest.

Each cycle (re)starts `pacs serve` on one archive, checks what the previous kill left,
has several pynetdicom clients store instances (log-uniform sizes between --min-size and
--max-size, built from a tools/generate_data.py study) on parallel associations, and
kills the server with SIGKILL at a random moment. Checked after every restart:

- acknowledged but missing: an instance whose C-STORE got status 0x0000, in any cycle so
  far, that is not in the index (must be 0);
- hash mismatches: an instance acknowledged in the last cycle whose file does not re-hash
  to its address (must be 0);
- index entries without a file (must be 0);
- partial files outside tmp/, found before the restart (must be 0); tmp/ is empty after it.

At the end `pacs verify` re-hashes the whole archive (missing and mismatched must be 0;
orphans, files renamed but never indexed, never acknowledged, are reported).

    python tests/hardening/crash_cycles.py --cycles 50 --max-size 50M --senders 4

The test (tests/hardening/test_crash_cycles.py) runs 5 small cycles. Exit status 0 when
every figure that must be 0 is 0. Bounded: --max-seconds stops starting new cycles.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from engine.index.database import IndexDatabase  # noqa: E402
from engine.index.reader import IndexReader  # noqa: E402
from engine.ingest.integrity import rehash  # noqa: E402
from engine.store.blob_store import BlobNotFound, FilesystemBlobStore  # noqa: E402
from tests.hardening.harness import LOOPBACK, PacsProcess, unexpected_data_files  # noqa: E402
from tools.generate_data import generate_study  # noqa: E402

EXPLICIT_LE = "1.2.840.10008.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.2.1125.85"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class Sender(threading.Thread):
    """One association storing instances until told to stop or the server dies."""

    def __init__(self, port: int, prefix: str, rng: random.Random, sizes: tuple[int, int],
                 acknowledged: list, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix, self.rng, self.sizes = port, prefix, rng, sizes
        self.acknowledged, self.stop_event = acknowledged, stop
        self.template = generate_study(rng.randrange(1 << 30), profile="tiny", series=1,
                                       instances_per_series=1)[0]
        self.sent = 0

    def next_dataset(self, n: int):
        ds = self.template
        low, high = self.sizes
        size = int(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        ds.SOPInstanceUID = f"{self.prefix}.{n}"
        if size < 4096:  # ~1 KB: no pixel data at all
            if "PixelData" in ds:
                del ds.PixelData
        else:
            columns = 512
            rows = max(1, size // (columns * 2))
            ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = \
                rows, columns, 16, 12, 11
            seed = self.rng.randrange(1 << 30).to_bytes(4, "little")
            ds.PixelData = (seed * ((rows * columns * 2) // 4 + 1))[:rows * columns * 2]
        return ds

    def run(self) -> None:
        ae = AE(ae_title="CRASHSCU")
        # Short: after the kill a client may wait this long for a response that never comes.
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 4
        ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
        try:
            assoc = ae.associate(LOOPBACK, self.port, ae_title="PACS")
            if not assoc.is_established:
                return
            n = 0
            while not self.stop_event.is_set() and n < 100_000:
                ds = self.next_dataset(n)
                n += 1
                status = assoc.send_c_store(ds)
                self.sent += 1
                if getattr(status, "Status", None) == 0x0000:
                    self.acknowledged.append(ds.SOPInstanceUID)
                elif not assoc.is_established:
                    break
            if assoc.is_established:
                assoc.release()
        except Exception:  # the server was killed under us: exactly the point
            pass


def check_archive(data_dir: Path, acknowledged: set[str], new: set[str]) -> dict:
    """The figures that must be 0, read with the server stopped or idle."""
    db = IndexDatabase(data_dir / "index", 1 << 30, readonly=True)
    store = FilesystemBlobStore(data_dir)
    try:
        reader = IndexReader(db)
        indexed = {}
        without_file = 0
        for uid, record in reader.iter_instances():
            indexed[uid] = record
            if reader.external_path(record.content_hash) is None and \
                    not store.exists(record.content_hash):
                without_file += 1
        missing = acknowledged - indexed.keys()
        mismatches = 0
        for uid in new & indexed.keys():
            record = indexed[uid]
            try:
                if rehash(store, reader, record.content_hash, record.transfer_syntax_uid,
                          record.dataset_offset) != record.content_hash:
                    mismatches += 1
            except BlobNotFound:
                mismatches += 1
        return {"indexed": len(indexed), "acknowledged_but_missing": len(missing),
                "hash_mismatches": mismatches, "index_entries_without_file": without_file,
                "missing_examples": sorted(missing)[:5]}
    finally:
        db.close()


def run(args) -> dict:
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    rng = random.Random(args.seed)
    workdir = Path(args.workdir)
    data_dir = workdir / "data"
    sizes = (parse_size(args.min_size), parse_size(args.max_size))
    acknowledged: list[str] = []
    totals = {"cycles": 0, "acknowledged": 0, "acknowledged_but_missing": 0,
              "hash_mismatches": 0, "index_entries_without_file": 0,
              "partial_files_outside_tmp": 0, "tmp_not_cleared_at_restart": 0,
              "partial_files_in_tmp_at_kill": 0, "restart_failures": 0}
    started = time.monotonic()
    checked: set[str] = set()
    run_id = rng.randrange(1 << 20)
    port = None
    for cycle in range(args.cycles + 1):  # the last round only restarts and checks
        server = PacsProcess(data_dir, {"network": {"artim_timeout": 5.0,
                                                    "idle_timeout": 30.0,
                                                    "dimse_timeout": 60.0}},
                             port=port, log_path=workdir / "server.log")
        try:
            server.start()
        except RuntimeError as exc:
            totals["restart_failures"] += 1
            print(f"cycle {cycle}: restart failed: {exc}", file=sys.stderr)
            break
        port = server.port
        if list((data_dir / "tmp").iterdir()):
            totals["tmp_not_cleared_at_restart"] += 1
        acked = set(acknowledged)
        figures = check_archive(data_dir, acked, acked - checked)
        checked |= acked
        for key in ("acknowledged_but_missing", "hash_mismatches", "index_entries_without_file"):
            totals[key] = max(totals[key], figures[key])
        line = {"cycle": cycle, **{k: v for k, v in figures.items() if v or k == "indexed"}}
        last = cycle == args.cycles or time.monotonic() - started > args.max_seconds
        if last:
            server.stop()
            print(json.dumps(line), flush=True)
            break
        stop = threading.Event()
        senders = [Sender(port, f"{UID_ROOT}.{run_id}.{cycle}.{i}",
                          random.Random(rng.randrange(1 << 30)), sizes, acknowledged, stop)
                   for i in range(args.senders)]
        before = len(acknowledged)
        for sender in senders:
            sender.start()
        time.sleep(rng.uniform(args.min_kill, args.max_kill))
        server.kill()  # SIGKILL at a random moment of the ingest
        stop.set()
        for sender in senders:
            sender.join(30)
        outside = unexpected_data_files(data_dir)
        totals["partial_files_outside_tmp"] += len(outside)
        totals["partial_files_in_tmp_at_kill"] += len(list((data_dir / "tmp").iterdir()))
        totals["cycles"] += 1
        line["acknowledged_this_cycle"] = len(acknowledged) - before
        if outside:
            line["outside_tmp"] = outside[:5]
        print(json.dumps(line), flush=True)
    totals["acknowledged"] = len(acknowledged)
    verify = subprocess.run([sys.executable, "-m", "engine", "verify", "--data-dir",
                             str(data_dir)], capture_output=True, text=True, cwd=REPO,
                            timeout=max(600, args.max_seconds))
    summary = verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else ""
    totals["verify_missing"] = verify.stdout.count("MISSING")
    totals["verify_mismatched"] = verify.stdout.count("MISMATCH")
    totals["verify_orphans"] = verify.stdout.count("ORPHAN")
    totals["verify_summary"] = summary
    totals["seconds"] = round(time.monotonic() - started, 1)
    return totals


MUST_BE_ZERO = ("acknowledged_but_missing", "hash_mismatches", "index_entries_without_file",
                "partial_files_outside_tmp", "tmp_not_cleared_at_restart", "restart_failures",
                "verify_missing", "verify_mismatched")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--senders", type=int, default=4, help="parallel associations")
    parser.add_argument("--min-size", default="1K")
    parser.add_argument("--max-size", default="50M")
    parser.add_argument("--min-kill", type=float, default=0.3,
                        help="seconds of ingest before the kill, at least")
    parser.add_argument("--max-kill", type=float, default=3.0, help="... and at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", required=True, help="where the archive is made")
    parser.add_argument("--max-seconds", type=float, default=3600,
                        help="start no new cycle after this many seconds")
    args = parser.parse_args(argv)
    totals = run(args)
    print("CRASH-CYCLES " + json.dumps(totals), flush=True)
    return 0 if all(totals[k] == 0 for k in MUST_BE_ZERO) and totals["cycles"] else 1


if __name__ == "__main__":
    sys.exit(main())
