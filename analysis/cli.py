"""``danescan report``: registered into scanner/cli.py's subcommands by :func:`register`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanner.store import db

EXIT_OK, EXIT_ERROR = 0, 2


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "report",
        help="write the CSV report, its data dictionary and charts for a stored scan",
        description="Write funnel, by-TLD, by-provider, progression, transitions, TLSA "
        "parameters, breakage and per-domain CSVs, README.md (data dictionary) and PNG "
        "charts for one complete scan.",
    )
    p.add_argument(
        "--scan",
        default="latest",
        metavar="latest|ID",
        help="the scan to report (default: the latest complete scan)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help=f"database URL or SQLite path (default: $DATABASE_URL, then {db.DEFAULT_SQLITE})",
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    # pandas and matplotlib load only for this command, not for every `danescan` start; they
    # are the 'report' extra, absent on a scanning node.
    from scanner import extras

    extras.require("report", "report", "pandas", "matplotlib")
    from analysis import load, report

    engine = db.make_engine(db.resolve_url(args.db))
    try:
        counts = report.build(engine, args.out, args.scan)
    except (load.NoScan, ValueError) as exc:
        print(f"danescan report: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        engine.dispose()
    total = counts.get("domains.csv", 0)
    print(f"report: {len(counts)} CSV files, {total} domains, README.md and 3 charts in {args.out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m analysis.cli report ...``) until scanner/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="danescan")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
