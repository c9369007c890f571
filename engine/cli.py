"""Command line: flags → load_config() → Server(config).run(), and the admin tools."""
from __future__ import annotations

import argparse
import logging
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
    from engine.server import Server

    config = _config_from_args(args)
    logging.basicConfig(level=config.logging.level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        Server(config).run()
    except OSError as exc:
        print(f"pacs: cannot serve on {config.network.host}:{config.network.port} with data in "
              f"{config.storage.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    store, db, reader = _open_readonly(_config_from_args(args))
    try:
        s = reader.stats()
    finally:
        db.close()
    print(f"patients   {s.patients}\nstudies    {s.studies}\nseries     {s.series}\n"
          f"instances  {s.instances}\nconflicts  {s.conflicts}\n"
          f"bytes      {s.bytes_stored} ({s.bytes_stored / 1e9:.3f} GB)")
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
    print(f"checked {report.checked} objects: {len(report.missing)} missing, "
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
    serve.set_defaults(func=cmd_serve)

    stats = sub.add_parser("stats", help="count patients, studies, series, instances, bytes")
    common(stats)
    stats.set_defaults(func=cmd_stats)

    verify = sub.add_parser("verify", help="re-hash every file against the index")
    common(verify)
    verify.add_argument("--remove-orphans", action="store_true",
                        help="delete files no index entry references (never acknowledged)")
    verify.set_defaults(func=cmd_verify)

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
