"""``danescan report`` and ``danescan archive`` (registered into scanner/cli.py's subcommands by
:func:`register`), ``danescan db prune`` (:func:`cmd_prune`) and ``scan --archive``
(:func:`archiver`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scanner.errors import UsageError
from scanner.store import db

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Engine

log = logging.getLogger("danescan")

EXIT_OK, EXIT_ERROR = 0, 2
_DB_HELP = f"database URL or SQLite path (default: $DATABASE_URL, then {db.DEFAULT_SQLITE})"


def _db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, metavar="URL", help=_DB_HELP)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "report",
        help="write the CSV report, its data dictionary and charts for a stored scan",
        description="Write funnel, by-TLD, by-provider, progression, transitions, TLSA "
        "parameters, breakage and per-domain CSVs, README.md (data dictionary) and PNG "
        "charts for one complete scan, from the archive (--archive) or the live database.",
    )
    p.add_argument(
        "--scan",
        default="latest",
        metavar="latest|ID",
        help="the scan to report (default: the latest complete scan)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    _db_option(p)
    p.add_argument(
        "--archive",
        default=None,
        metavar="DIR",
        help="read the Parquet archive at DIR (a path or an hdfs://, s3a:// URI with "
        "--engine spark) instead of the database",
    )
    p.add_argument(
        "--engine",
        choices=["duckdb", "spark"],
        default="duckdb",
        help="engine for --archive: duckdb (embedded, default) or spark (local, or the "
        "cluster spark-submit configures)",
    )
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "archive",
        help="write complete nights from the database to the Parquet archive",
        description="Write every complete night not yet archived (or the --scan ones, "
        "replacing their nights) to DIR/<table>/night=YYYY-MM-DD/*.parquet.",
    )
    _db_option(p)
    p.add_argument("--to", required=True, type=Path, metavar="DIR", help="the archive")
    p.add_argument(
        "--scan",
        action="append",
        default=None,
        metavar="latest|ID",
        help="archive this complete scan (repeatable; default: every night not yet archived)",
    )
    p.set_defaults(func=cmd_archive)


def cmd_report(args: argparse.Namespace) -> int:
    # pandas, Ibis and matplotlib load only for this command, not for every `danescan` start;
    # they are the 'report' extra, absent on a scanning node.
    from scanner import extras

    extras.require("report", "report", "pandas", "matplotlib", "ibis", "duckdb")
    from analysis import archive, catalog, engines, report

    engine = None if args.archive is not None else db.make_engine(db.resolve_url(args.db))
    try:
        source = (
            engines.store_source(engine)
            if engine is not None
            else engines.archive_source(args.archive, args.engine)
        )
        try:
            counts = report.build(source, args.out, args.scan)
        finally:
            source.close()
    except (archive.ArchiveError, catalog.NoScan, ValueError) as exc:
        print(f"danescan report: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if engine is not None:
            engine.dispose()
    total = counts.get("domains.csv", 0)
    print(f"report: {len(counts)} CSV files, {total} domains, README.md and 3 charts in {args.out}")
    return EXIT_OK


def cmd_archive(args: argparse.Namespace) -> int:
    from scanner import extras

    extras.require("archive", "report", "pyarrow", "ibis", "duckdb")
    from analysis import archive, catalog, nightly

    engine = db.make_engine(db.resolve_url(args.db))
    try:
        nights = nightly.archive_nights(engine, args.to, args.scan)
    except (archive.ArchiveError, catalog.NoScan, ValueError) as exc:
        print(f"danescan archive: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        engine.dispose()
    for n in nights:
        print(f"archive: {n.night} scan {n.scan_id}, {n.rows['domains']} results")
    if not nights:
        print(f"archive: every complete night is in {args.to} already")
    return EXIT_OK


def archiver(directory: Path) -> Callable[[Engine, int], None]:
    """``scan --archive DIR``: a function that archives one completed scan's night (and its
    rollups). The extra is checked now, before anything is scanned."""
    from scanner import extras

    extras.require("scan --archive", "report", "pyarrow", "ibis", "duckdb")

    def archive_night(engine: Engine, scan_id: int) -> None:
        from analysis import archive, nightly

        try:
            night = nightly.archive_scan(engine, scan_id, directory)
        except archive.ArchiveError as exc:
            raise UsageError(f"scan {scan_id} is complete, but archiving it failed: {exc}; "
                             f"retry with danescan archive --to {directory}") from exc
        log.info("scan %s archived: night %s in %s", scan_id, night.night, directory)

    return archive_night


def cmd_prune(args: argparse.Namespace) -> int:
    """``danescan db prune --keep-nights N --archive DIR`` (its options: scanner/cli.py)."""
    from scanner import extras

    extras.require("db prune", "report", "pyarrow")
    from analysis import archive

    if args.keep_nights is None or args.archive is None:
        print("danescan db prune: needs --keep-nights N and --archive DIR", file=sys.stderr)
        return EXIT_ERROR
    engine = db.make_engine(db.resolve_url(args.db))
    try:
        pruned = archive.prune(engine, args.archive, args.keep_nights)
    except archive.ArchiveError as exc:
        print(f"danescan db prune: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        engine.dispose()
    print(f"db prune: {len(pruned)} scans deleted ({', '.join(map(str, pruned)) or 'none'})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m analysis.cli report ...``)."""
    parser = argparse.ArgumentParser(prog="danescan")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
