"""Command line: flags → load_config() → Server(config).run(), and the admin tools."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine import __version__
from engine.config import Config, ConfigError, load_config


def _config_from_args(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    return config.with_overrides(
        network={"ae_title": getattr(args, "ae_title", None), "host": getattr(args, "host", None),
                 "port": getattr(args, "port", None)},
        storage={"data_dir": args.data_dir},
        web={"port": getattr(args, "web_port", None)},
    )


def _open_readonly(config: Config):
    from engine.index.database import IndexDatabase
    from engine.index.reader import IndexReader
    from engine.store.blob_store import FilesystemBlobStore

    index_dir = config.storage.data_dir / "index"
    if not (index_dir / "data.mdb").exists():
        raise ConfigError(f"no archive in {config.storage.data_dir}")
    db = IndexDatabase(index_dir, config.storage.index_map_size, readonly=True)
    return FilesystemBlobStore(config.storage.data_dir), db, IndexReader(db)


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.ops.logs import setup_logging
    from engine.server import Server

    config = _config_from_args(args)
    setup_logging(config.logging)
    try:
        Server(config).run()
    except OSError as exc:
        tls_port = f" (TLS port {config.tls.port})" if config.tls.port else ""
        if config.web.enabled:
            tls_port += f" (DICOMweb {config.web.host}:{config.web.port})"
        print(f"pacs: cannot serve on {config.network.host}:{config.network.port}{tls_port} "
              f"with data in {config.storage.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    store, db, reader = _open_readonly(_config_from_args(args))
    try:
        s = reader.stats()
        totals = reader.compression_totals()
        queued, failed = reader.compression_queue_length(), len(reader.compression_failures())
    finally:
        db.close()
    print(f"patients   {s.patients}\nstudies    {s.studies}\nseries     {s.series}\n"
          f"instances  {s.instances}\nconflicts  {s.conflicts}\n"
          f"bytes      {s.bytes_stored} ({s.bytes_stored / 1e9:.3f} GB)")
    if totals or queued or failed:
        print(f"\ncompression: {queued} queued, {failed} not compressible (see log)")
        print(f"{'modality':<10}{'instances':>10}{'MB before':>12}{'MB after':>12}{'ratio':>8}")
        for modality, t in sorted(totals.items()):
            ratio = t.bytes_before / t.bytes_after if t.bytes_after else 0.0
            print(f"{modality:<10}{t.count:>10}{t.bytes_before / 1e6:>12.1f}"
                  f"{t.bytes_after / 1e6:>12.1f}{ratio:>8.2f}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    """Run the compression stage by hand, with a progress bar (the server may be running)."""
    from rich.progress import Progress

    from engine.codec.workers import CodecWorkers
    from engine.compression.policy import CompressionPolicy
    from engine.compression.stage import CompressionStage
    from engine.index.database import IndexDatabase
    from engine.index.reader import IndexReader
    from engine.index.writer import GroupCommitWriter
    from engine.store.blob_store import FilesystemBlobStore

    config = _config_from_args(args)
    storage = config.storage
    if not (storage.data_dir / "index" / "data.mdb").exists():
        raise ConfigError(f"no archive in {storage.data_dir}")
    # No store.open(): it would clear tmp/, where a running server has files in flight.
    store = FilesystemBlobStore(storage.data_dir, storage.min_free_bytes)
    db = IndexDatabase(storage.data_dir / "index", storage.index_map_size)
    writer = GroupCommitWriter(db, storage.duplicate_policy, storage.group_commit_max)
    writer.start()
    reader = IndexReader(db)
    workers = CodecWorkers(config.codec.workers, config.codec.task_timeout,
                           config.codec.memory_limit)
    stage = CompressionStage(store, reader, writer, CompressionPolicy(config.compression),
                             workers)
    try:
        if args.retry_failed:
            cleared = writer.run_job(lambda tx: tx.clear_compression_failures())
            print(f"{cleared} earlier failure(s) will be tried again")
        total = reader.stats().instances
        with Progress(disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("compressing", total=None if args.study else total)
            report = stage.run_now(args.study, lambda n: progress.advance(task, n))
    finally:
        workers.close()
        writer.stop()
        db.close()
    print(f"compressed {report.compressed}, skipped {report.skipped}, failed {report.failed}; "
          f"{report.bytes_before / 1e6:.1f} MB -> {report.bytes_after / 1e6:.1f} MB"
          + (f" (ratio {report.ratio:.2f})" if report.compressed else ""))
    for uid, reason in report.failures[:20]:
        print(f"FAILED  {uid}: {reason}")
    return 1 if report.failed else 0


def cmd_queue(args: argparse.Namespace) -> int:
    """The router's forward queue: status per destination, or retry / drop jobs."""
    import time

    config = _config_from_args(args)
    if args.action == "list":
        store, db, reader = _open_readonly(config)
        try:
            jobs = reader.forward_jobs(args.destination, args.study, 10_000)
        finally:
            db.close()
        now = time.time()
        for job in jobs:
            when = ("dead" if job.state == "dead" else
                    "due now" if job.next_attempt <= now else
                    f"retry in {job.next_attempt - now:.0f}s")
            error = (f"0x{job.last_status:04X} " if job.last_status is not None else "") + \
                job.last_error
            print(f"{job.order.destination:<16} {job.sop_instance_uid:<64} {job.attempts:>3} "
                  f"{when:<16} {error}")
        if not jobs:
            print("(queue empty)")
        elif len(jobs) == 10_000:
            print("(first 10,000 jobs; narrow with --destination or --study)")
        return 0
    if args.action == "warnings":
        store, db, reader = _open_readonly(config)
        try:
            rows = reader.forward_warnings(args.destination, 1000)
        finally:
            db.close()
        for name, uid, status, when in rows:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
            print(f"{stamp}  {name:<16} 0x{status:04X}  {uid}")
        if not rows:
            print("(no instance was delivered with a warning)")
        return 0
    if args.action == "status":
        store, db, reader = _open_readonly(config)
        try:
            summary = reader.forward_summary()
        finally:
            db.close()
        now = time.time()
        print(f"{'destination':<16}{'pending':>9}{'in flight':>10}{'retrying':>10}{'dead':>7}"
              f"{'oldest':>10}  last error")
        for name, s in sorted(summary.items()):
            age = f"{now - s.oldest_created:.0f}s" if s.oldest_created else "-"
            error = (f"0x{s.last_status:04X} " if s.last_status is not None else "") + \
                s.last_error
            if s.down_since is not None:
                error = (f"DOWN for {now - s.down_since:.0f}s, next attempt in "
                         f"{max(0.0, s.next_probe - now):.0f}s: {error}")
            print(f"{name:<16}{s.pending:>9}{s.in_flight:>10}{s.retrying:>10}{s.dead:>7}"
                  f"{age:>10}  {error}")
        if not summary:
            print("(queue empty)")
        warned = sum(s.warnings for s in summary.values())
        if warned:
            print(f"{warned} instance(s) delivered with a warning status: pacs queue warnings")
        return 0
    from engine.index.database import IndexDatabase
    from engine.index.writer import GroupCommitWriter

    storage = config.storage
    if not (storage.data_dir / "index" / "data.mdb").exists():
        raise ConfigError(f"no archive in {storage.data_dir}")
    db = IndexDatabase(storage.data_dir / "index", storage.index_map_size)
    writer = GroupCommitWriter(db, storage.duplicate_policy, storage.group_commit_max)
    writer.start()
    try:
        if args.action == "retry":
            count = writer.run_job(lambda tx: tx.forward_retry(args.destination, args.study,
                                                               time.time()))
            print(f"{count} job(s) due again now (a running server picks them up)")
        else:
            count = writer.run_job(lambda tx: tx.forward_drop(args.destination, args.study,
                                                              dead_only=not args.all))
            print(f"{count} job(s) dropped")
    finally:
        writer.stop()
        db.close()
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    """Evaluate the routing rules against stored instances; moves nothing."""
    import pydicom

    from engine.ingest.pipeline import Origin
    from engine.query.sequence import element_text
    from engine.routing.router import RuleRouter

    config = _config_from_args(args)
    if not config.routing.rules:
        print("no [[routing.rules]] in the configuration: nothing would be forwarded")
        return 0
    router = RuleRouter(config.routing.rules, lambda names: None)
    since = (args.since or "").replace("-", "")
    store, db, reader = _open_readonly(config)
    counts: dict[str, int] = {}
    evaluated = printed = 0
    try:
        for uid, record in reader.iter_instances():
            if since and record.received_at[:10].replace("-", "") < since:
                continue
            try:  # every attribute a rule may name, not only the indexed ones
                ds = pydicom.dcmread(reader.external_path(record.content_hash)
                                     or store.path_of(record.content_hash),
                                     stop_before_pixels=True)
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                print(f"UNREADABLE {uid}: {exc}", file=sys.stderr)
                continue
            attributes = {el.keyword: element_text(el) for el in ds
                          if el.keyword and el.VR not in ("SQ", "OB", "OW", "UN")}
            orders = router.route(Origin(record.calling_ae_title), record.sop_class_uid,
                                  attributes)
            evaluated += 1
            for order in orders:
                counts[order.destination] = counts.get(order.destination, 0) + 1
            if orders and printed < args.limit:
                printed += 1
                print(f"{uid}  " + ", ".join(f"{o.destination} (rule {o.rule}, {o.trigger})"
                                             for o in orders))
    finally:
        db.close()
    print(f"{evaluated} instance(s) evaluated; calling AE from the index, called AE and "
          "source IP unknown (empty)")
    for name in sorted(config.routing.destinations):
        print(f"  {name:<16} {counts.get(name, 0)} instance(s)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from engine.ingest.integrity import verify_archive

    config = _config_from_args(args)
    store, db, reader = _open_readonly(config)
    try:
        report = verify_archive(store, reader, remove_orphans=args.remove_orphans)
    finally:
        db.close()
    for uid in report.missing:
        print(f"MISSING   {uid}")
    for uid in report.mismatched:
        print(f"MISMATCH  {uid}")
    for address in report.orphans:
        print(f"ORPHAN    {address}{' (removed)' if args.remove_orphans else ''}")
    print(f"checked {report.checked} objects"
          + (f" ({report.external} imported in place)" if report.external else "")
          + f": {len(report.missing)} missing, "
          f"{len(report.mismatched)} mismatched, {len(report.orphans)} orphans")
    return 0 if report.ok else 1


def cmd_find(args: argparse.Namespace) -> int:
    """Query the local index with the C-FIND matching rules, without a DICOM client."""
    import json

    from pydicom.dataset import Dataset

    from engine.query.find import FindExecutor, FindQuery, InvalidQuery, element_text
    from engine.query.model import PATIENT_ROOT_FIND, STUDY_ROOT_FIND

    config = _config_from_args(args)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = args.level.upper()
    try:
        for item in args.key:
            keyword, _, value = item.partition("=")
            setattr(identifier, keyword.strip(), value)
    except (AttributeError, ValueError, TypeError) as exc:
        print(f"pacs: invalid key {item!r}: {exc}", file=sys.stderr)
        return 2
    model = PATIENT_ROOT_FIND if args.model == "patient" else STUDY_ROOT_FIND
    store, db, reader = _open_readonly(config)
    try:
        query = FindQuery.from_identifier(model, identifier, config.query.fuzzy_person_names)
        rows = []
        for ds in FindExecutor(reader, store).run(query):
            rows.append({el.keyword or str(el.tag): element_text(el) for el in ds
                         if el.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")})
            if len(rows) >= args.limit:
                break
    except InvalidQuery as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    columns = list(rows[0]) if rows else [k.partition("=")[0] for k in args.key]
    widths = {c: max([len(c)] + [len(r.get(c, "")) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row.get(c, "").ljust(widths[c]) for c in columns))
    print(f"({len(rows)} match{'es' if len(rows) != 1 else ''})", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import a legacy archive's files (copy into the store, or register them in place)."""
    from engine.migration.importer import ImportBusy, ImportOptions, Importer
    from engine.migration.report import print_summary

    from engine.ops.logs import setup_logging

    config = _config_from_args(args)
    setup_logging(config.logging)
    missing = [str(p) for p in args.paths if not p.exists() and not p.is_symlink()]
    if missing:
        print(f"pacs: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.report is not None and args.report.suffix.lower() not in (".json", ".csv"):
        print("pacs: --report must name a .json or .csv file", file=sys.stderr)
        return 2
    options = ImportOptions(tuple(args.paths), in_place=args.in_place,
                            workers=max(args.workers or 0, 0), route=args.route,
                            ae_title=args.source_ae, report=args.report,
                            settle_seconds=args.settle)
    importer = Importer(config, options)
    try:
        summary = importer.run()
    except ImportBusy as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: what was committed stays committed
        summary = importer.summary
        summary.interrupted = True
    print_summary(summary, args.report, importer.problems, sys.stdout)
    if summary.fatal:
        return 2
    if summary.interrupted:
        return 130
    return 1 if summary.rejected else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Selected instances to a folder (DICOMDIR) or a DICOM peer; the archive is only read."""
    from engine.migration.export import ExportError, run_export
    from engine.migration.export_selection import InvalidSelection, Selection
    from engine.ops.audit_log import AuditLog

    config = _config_from_args(args)
    store, db, reader = _open_readonly(config)
    trail = AuditLog.from_config(config.audit, config.storage.data_dir)
    try:
        selection = Selection.from_options(args.patient, args.study, args.series, args.key)
        report = run_export(config, store, reader, selection, folder=args.folder, to=args.to,
                            deidentify=args.deidentify, uncompressed=args.uncompressed,
                            calling_ae=args.calling_ae, audit_trail=trail)
    except (ExportError, InvalidSelection) as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pacs: interrupted" + (f"; {args.folder} is incomplete (no DICOMDIR)"
                                     if args.folder else ""), file=sys.stderr)
        return 130
    finally:
        trail.close()
        db.close()
    for uid, reason in report.failures:
        print(f"FAILED   {uid}: {reason}")
    for uid, reason in report.warnings:
        print(f"WARNING  {uid}: {reason}")
    print(report.summary())
    return 0 if report.ok else 1


def cmd_health(args: argparse.Namespace) -> int:
    """Probe a running server's /health: exit 0 ready, 1 not ready, 2 no answer."""
    import json
    import urllib.error
    import urllib.request

    url = args.url
    if url is None:
        config = _config_from_args(args)
        if config.web.enabled:
            host, port = config.web.host, config.web.port
        elif config.metrics.port:
            host, port = config.metrics.host, config.metrics.port
        else:
            print("pacs: neither [web] nor [metrics] port serves /health in this "
                  "configuration", file=sys.stderr)
            return 2
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # this machine, where no credentials are needed
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"pacs: no answer from {url}: {reason}", file=sys.stderr)
        return 2
    try:
        body = json.loads(raw)
    except ValueError:
        print(f"pacs: {url} answered {status} without a health report", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(body, indent=1))
    else:
        print(f"{body.get('status', '?')} ({status})")
        for name, check in body.get("checks", {}).items():
            details = ", ".join(f"{k}={v}" for k, v in check.items() if k != "ok")
            print(f"  {'ok  ' if check.get('ok') else 'FAIL'}  {name}"
                  + (f"  ({details})" if details else ""))
    if status == 200 and body.get("ready", False):
        return 0
    return 1 if status == 503 else 2


def cmd_bench(args: argparse.Namespace) -> int:
    """The benchmark suite against DCMTK, Orthanc and pynetdicom (engine.bench)."""
    from engine.bench.runner import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacs", description="pacs-engine DICOM archive")
    parser.add_argument("--version", action="version", version=f"pacs-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="TOML configuration file")
        p.add_argument("--data-dir", type=Path, help="archive directory (default ./pacs-data)")

    serve = sub.add_parser("serve", help="run the DICOM archive server")
    common(serve)
    serve.add_argument("--ae-title", help="our AE title (default PACS)")
    serve.add_argument("--host", help="listen address (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (default 11112)")
    serve.add_argument("--web-port", type=int, help="DICOMweb port (default 8042; 0 = any "
                                                    "free port)")
    serve.set_defaults(func=cmd_serve)

    stats = sub.add_parser("stats", help="count patients, studies, series, instances, bytes")
    common(stats)
    stats.set_defaults(func=cmd_stats)

    verify = sub.add_parser("verify", help="re-hash every file against the index")
    common(verify)
    verify.add_argument("--remove-orphans", action="store_true",
                        help="delete files no index entry references (never acknowledged)")
    verify.set_defaults(func=cmd_verify)

    compress = sub.add_parser("compress", help="store uncompressed images as JPEG 2000 "
                                                "Lossless now, following [compression]")
    common(compress)
    compress.add_argument("--now", action="store_true", required=True,
                          help="run the stage now, ignoring the delay and time window")
    compress.add_argument("--study", help="only this Study Instance UID")
    compress.add_argument("--retry-failed", action="store_true",
                          help="try again instances that failed before")
    compress.set_defaults(func=cmd_compress)

    queue = sub.add_parser("queue", help="the router's forward queue: status, list, retry, "
                                         "drop, warnings")
    common(queue)
    queue.add_argument("action", nargs="?",
                       choices=("status", "list", "retry", "drop", "warnings"), default="status")
    queue.add_argument("--destination", help="only this destination")
    queue.add_argument("--study", help="only this Study Instance UID")
    queue.add_argument("--all", action="store_true",
                       help="drop: also jobs still pending (default: dead ones only)")
    queue.set_defaults(func=cmd_queue)

    route = sub.add_parser("route", help="which stored instances the rules would send where")
    common(route)
    route.add_argument("--dry-run", action="store_true", required=True,
                       help="evaluate only (the rules never move anything from here)")
    route.add_argument("--since", help="only instances received on or after YYYY-MM-DD")
    route.add_argument("--limit", type=int, default=1000, help="print at most this many")
    route.set_defaults(func=cmd_route)

    imp = sub.add_parser("import", help="import a legacy archive's DICOM files (directories, "
                                         "DICOMDIR); resumable, safe beside a running server")
    common(imp)
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                     help="files or directories to import")
    imp.add_argument("--in-place", action="store_true",
                     help="register files where they lie (hash recorded) instead of copying")
    imp.add_argument("--workers", type=int, default=0,
                     help="reader processes (default: one per core)")
    imp.add_argument("--report", type=Path,
                     help="write every file not imported, with its reason (.json or .csv)")
    imp.add_argument("--route", action="store_true",
                     help="apply the configured routing rules (default: imports are not routed)")
    imp.add_argument("--source-ae", default="IMPORT",
                     help="calling AE title recorded for imported instances (default IMPORT)")
    imp.add_argument("--settle", type=float, default=2.0, metavar="SECONDS",
                     help="read files modified this recently at the end (default 2)")
    imp.set_defaults(func=cmd_import)

    export = sub.add_parser("export", help="write selected instances to a folder (DICOMDIR) "
                                           "or send them to a DICOM peer; reads the archive only")
    common(export)
    export.add_argument("--patient", metavar="ID", help="every instance of this Patient ID")
    export.add_argument("--study", action="append", default=[], metavar="UID",
                        help="this Study Instance UID (repeatable)")
    export.add_argument("--series", action="append", default=[], metavar="UID",
                        help="this Series Instance UID (repeatable)")
    export.add_argument("-k", "--key", action="append", default=[],
                        help="Keyword=value matched as by `pacs find` (wildcards, ranges, "
                             "UID lists); repeatable, all must match")
    where = export.add_mutually_exclusive_group(required=True)
    where.add_argument("--folder", type=Path,
                       help="write Part 10 files and a DICOMDIR into this empty or new folder")
    where.add_argument("--to", metavar="AE[@HOST:PORT]",
                       help="C-STORE to this peer: AE@host:port, or an AE title of "
                            "[retrieve] destinations")
    export.add_argument("--deidentify", action="store_true",
                        help="PS3.15 Basic Profile copies, UIDs remapped with the archive's "
                             "routing secret")
    export.add_argument("--uncompressed", action="store_true",
                        help="Explicit VR Little Endian instead of the stored transfer syntax")
    export.add_argument("--calling-ae", help="our AE title towards the peer "
                                             "(default [network] ae_title)")
    export.set_defaults(func=cmd_export)

    find = sub.add_parser("find", help="query the index with C-FIND matching rules")
    common(find)
    find.add_argument("-k", "--key", action="append", default=[],
                      help="Keyword=value to match (wildcards, ranges, UID lists), or Keyword "
                           "alone to return it; repeatable")
    find.add_argument("--level", default="STUDY", help="PATIENT, STUDY, SERIES or IMAGE")
    find.add_argument("--model", choices=("study", "patient"), default="study",
                      help="Query/Retrieve information model (default: study root)")
    find.add_argument("--limit", type=int, default=1000, help="print at most this many")
    find.add_argument("--json", action="store_true", help="JSON instead of a table")
    find.set_defaults(func=cmd_find)

    health = sub.add_parser("health", help="probe a running server's /health (exit 0 ready, "
                                           "1 not ready, 2 no answer)")
    common(health)
    health.add_argument("--url", help="the /health URL (default: from [web] or [metrics] "
                                      "of the configuration, on this machine)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait "
                                                                   "(default 5)")
    health.add_argument("--json", action="store_true", help="print the JSON report")
    health.set_defaults(func=cmd_health)

    from engine.bench.runner import add_arguments as bench_arguments

    bench = sub.add_parser("bench", help="benchmark pacs against DCMTK storescp, Orthanc and "
                                         "pynetdicom: report, JSON, plots; every result checked")
    bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
