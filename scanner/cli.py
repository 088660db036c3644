"""`danescan` subcommands: arguments -> one frozen Config (and RunOptions) -> :mod:`scanner.run`.

Nothing here scans. Every knob's option comes from its Config or RunOptions field
(:func:`scanner.config.add_options`); this module reads the few inputs that are not plain
values (resolvers, the opt-out list, the EHLO name's environment variable), and turns the
errors a user can fix into one line and an exit status (:class:`scanner.errors.ExitCode`,
one table of the errors expected: :func:`_expected`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from scanner import config as knobs
from scanner.config import Config, ResolverAddress, RunOptions
from scanner.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from sqlalchemy.engine import Engine

log = logging.getLogger("danescan")

# `check` is interactive: a short policy (no 60 s retry pass; a greeting wait that still
# outlasts the deliberate 15-20 s delays of postscreen and greet_pause).
CHECK_DEFAULTS = Config(connect_timeout=5.0, greeting_timeout=20.0, command_timeout=10.0,
                        tls_timeout=10.0, retry_transient=False)


def _version() -> str:
    try:
        return version("danescan")
    except PackageNotFoundError:
        return "unknown"


# -- options ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """One line for a bad argument (the full usage is one ``--help`` away), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_db_option(p: argparse.ArgumentParser) -> None:
    knobs.add_options(p, RunOptions, {"db"})


def add_config_options(p: argparse.ArgumentParser) -> None:
    """What a scan measures: the opt-out list and every Config knob."""
    p.add_argument("--exclude", type=Path, metavar="FILE",
                   help="opt-out list: domains and address prefixes (CIDR), one per line")
    knobs.add_options(p)


def _resolvers(given: Sequence[str]) -> tuple[ResolverAddress, ...]:
    """The resolvers asked for: addresses, or ``system`` for /etc/resolv.conf's. Never an
    implicit fallback: a scanner's DNSSEC verdicts are only as good as the resolver it was
    told to trust, and a test machine's resolv.conf may point somewhere it must not reach."""
    from scanner.dns import system_resolvers

    out: list[ResolverAddress] = []
    for item in given:
        if item == "system":
            found = system_resolvers()
            if not found:
                raise UsageError("--resolver system: no nameserver in /etc/resolv.conf")
            out.extend(found)
        else:
            try:
                out.append(ResolverAddress.parse(item))
            except ValueError as exc:
                raise UsageError(f"--resolver {item!r}: {exc} (an IP address, optionally "
                                 "@PORT: a name would need a lookup to reach it)") from exc
    return tuple(out)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _exclusions(path: Path | None) -> dict[str, Any]:
    """The opt-out list as Config fields (empty when no list is given)."""
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read exclusion list {path}: {exc.strerror or exc}") from exc
    domains: set[str] = set()
    prefixes: list[str] = []
    for line in text.splitlines():
        item = line.split("#", 1)[0].strip().lower().rstrip(".")
        if not item:
            continue
        if _is_network(item):
            prefixes.append(item)
        else:
            domains.add(item)
    return {"exclude_domains": frozenset(domains), "exclude_prefixes": tuple(prefixes)}


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields this command line sets (the opt-out list included)."""
    flags = knobs.given(args)
    flags.update(_exclusions(getattr(args, "exclude", None)))
    if "ehlo_name" not in flags and os.environ.get("DANESCAN_EHLO_NAME"):
        flags["ehlo_name"] = os.environ["DANESCAN_EHLO_NAME"]
    return flags


def config_from(args: argparse.Namespace, base: Config = knobs.DEFAULTS) -> Config:
    """A new scan's (or check's) Config: ``base`` with this command line's values."""
    flags = _flags(args)
    resolvers = _resolvers(args.resolvers or os.environ.get("DANESCAN_RESOLVER", "").split())
    if not resolvers:
        raise UsageError("no resolver given: pass --resolver IP[@PORT] (a validating resolver "
                         "such as Unbound), --resolver system for /etc/resolv.conf's, or set "
                         "DANESCAN_RESOLVER")
    config = dataclasses.replace(base, resolvers=resolvers, **flags)
    if not config.allow_private and "ehlo_name" not in flags:
        raise UsageError("probing public addresses needs --ehlo-name NAME (or "
                         "DANESCAN_EHLO_NAME): identify your scanner to the servers it probes")
    return config


def run_options(args: argparse.Namespace) -> RunOptions:
    """How this command runs: the RunOptions fields given, the top-level -q, --archive."""
    archive = getattr(args, "archive", None)
    return RunOptions(**knobs.given(args, RunOptions), quiet=args.quiet,
                      after_complete=_archiver(archive) if archive else None)


def _archiver(directory: Path) -> Callable[[Engine, int], None]:
    """``scan --archive DIR``: each completed night goes to the archive (analysis' job; only
    this dispatcher may name it)."""
    from analysis import cli as analysis_cli

    return analysis_cli.archiver(directory)


# -- commands --------------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    from scanner import run

    opts = run_options(args)
    if opts.every is not None and (args.resume is not None or args.domains is None):
        raise UsageError("--every needs DOMAINS (each run scans the list afresh), not --resume")
    if args.resume is not None:
        if args.domains is not None:
            raise UsageError("give DOMAINS or --resume, not both")
        if args.no_db:
            raise UsageError("--resume needs the database (--no-db scans cannot be resumed)")
        return run.resume(opts, args.resume, _flags(args), _resolvers(opts.resolvers))
    if args.domains is None:
        raise UsageError("give DOMAINS (a file or -), or --resume")
    config = config_from(args)
    if args.no_db:
        if opts.jsonl is None:
            raise UsageError("--no-db needs --jsonl PATH")
        return run.scan_to_jsonl(config, opts, args.domains)
    return run.scan(config, opts, args.domains)


def cmd_worker(args: argparse.Namespace) -> int:
    """Work on a scan started elsewhere: its Config comes from the scan row."""
    from scanner import run

    if args.parent_pid is not None:
        run.die_with_parent(args.parent_pid)
    opts = run_options(args)
    return run.worker(opts, args.scan, _resolvers(opts.resolvers))


def cmd_check(args: argparse.Namespace) -> int:
    import trio

    from scanner import diagnosis, run
    from scanner.model import DaneStatus, Outcome

    config = config_from(args, CHECK_DEFAULTS)

    def say(text: str) -> None:
        if not args.quiet:
            print(f"  ... {text}", file=sys.stderr, flush=True)

    v, scanner = trio.run(run.check, config, args.domain, say)
    print(diagnosis.render(v, validating=scanner.validating))
    if v.outcome is Outcome.INTERNAL_ERROR:
        return ExitCode.INTERNAL_ERRORS
    if v.outcome in (Outcome.INVALID, Outcome.DNS_FAILURE):
        return ExitCode.INCOMPLETE
    return ExitCode.OK if v.dane is DaneStatus.VALID else ExitCode.NOT_DANE


def cmd_db(args: argparse.Namespace) -> int:
    from scanner.store import db

    if args.action == "prune":
        if args.keep_nights is None or args.archive is None:
            raise UsageError("db prune needs --keep-nights N and --archive DIR")
        from analysis import cli as analysis_cli  # the archive belongs to analysis

        return analysis_cli.cmd_prune(args)
    db.upgrade(db.resolve_url(args.db))
    print("database at head")
    return ExitCode.OK


def cmd_export(args: argparse.Namespace) -> int:
    from scanner import run

    scan: int | str = args.scan if args.scan == "latest" else int(args.scan)
    return run.export(run_options(args), scan, args.format, args.level, args.out,
                      allow_incomplete=args.allow_incomplete)


def _scan_ref(text: str) -> str:
    if text != "latest" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: a scan id or 'latest'")
    return text


# The scanner's own commands: run, they load neither analysis nor the testbed.
CORE_COMMANDS = frozenset({"scan", "worker", "check", "db", "export"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; for one of :data:`CORE_COMMANDS` without the report stack's and the
    testbed's subcommands (their modules are then not even imported)."""
    parser = _Parser(
        prog="danescan",
        description="Measure how mail domains climb STARTTLS -> DNSSEC -> DANE (RFC 7672).",
        epilog="Exit status: 0 done (check: DANE-valid), 1 check: not DANE-valid, 2 usage "
               "error, 3 interrupted (resumable), 4 incomplete (list ended early; check: not "
               "judged), 5 internal errors (a bug in danescan; check: judging the domain hit one).")
    parser.add_argument("--version", action="version", version=f"danescan {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="scan a domain list")
    p.add_argument("domains", metavar="DOMAINS", nargs="?",
                   help="file (text, rank,domain CSV, optionally gzip) or - for stdin")
    p.add_argument("--no-db", action="store_true",
                   help="no database: stream --jsonl only (no shards, no resume)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="SCAN_ID", type=_scan_ref,
                   help="continue the given scan, or the latest unfinished one, with its own "
                        "stored options")
    p.add_argument("--archive", type=Path, default=None, metavar="DIR",
                   help="write each completed night to this Parquet archive (needs the "
                        "'report' extra; see docs/archive.md)")
    knobs.add_options(p, RunOptions)
    add_config_options(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("worker", help="help scan a database scan (any number, any machine)")
    p.add_argument("--scan", type=knobs.argparse_type(knobs.positive_int), default=None,
                   help="scan id (default: the latest unfinished scan)")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    # What a scan hands its worker processes, and the database they share.
    knobs.add_options(p, RunOptions, {"db", *knobs.worker_names(RunOptions)})
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check", help="diagnose one domain, showing each step")
    p.add_argument("domain", help="the domain to diagnose (a name, or an IDN in any script)")
    knobs.add_options(p, RunOptions, {"resolvers"})
    add_config_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("db", help="database maintenance")
    p.add_argument("action", choices=["upgrade", "prune"],
                   help="upgrade: bring the schema to head; prune: drop archived nights from "
                        "the database, keeping the newest --keep-nights")
    p.add_argument("--keep-nights", type=knobs.argparse_type(knobs.positive_int), default=None,
                   metavar="N", help="prune: keep the newest N nights in the database")
    p.add_argument("--archive", type=Path, default=None, metavar="DIR",
                   help="prune: the archive that must hold every pruned night in full")
    add_db_option(p)
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("export", help="write a scan's results from the database")
    add_db_option(p)
    p.add_argument("--scan", default="latest", type=_scan_ref,
                   help="scan id or 'latest' (default: the newest complete scan)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl",
                   help="JSON lines (the verdict contract) or CSV (default %(default)s)")
    p.add_argument("--level", choices=["domain", "host", "endpoint"], default="domain",
                   help="one row per input line, per MX host or per probed endpoint "
                        "(default %(default)s)")
    p.add_argument("--out", default="-", help="file (default: standard output)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="also export a scan that is not complete (running, interrupted, "
                        "failed, or incomplete because its list ended early)")
    p.set_defaults(func=cmd_export)

    if command not in CORE_COMMANDS:
        _register_extras(sub)
    return parser


def _register_extras(sub: Any) -> None:
    """Commands of the report stack and of the source tree's testbed, registered by the
    packages that implement them; only this dispatcher names all three."""
    from analysis import cli as analysis_cli

    analysis_cli.register(sub)
    try:
        from testbed import cli as testbed_cli
    except ImportError:  # the testbed ships with the source tree, not every install
        return
    testbed_cli.register(sub)


# -- the dispatcher --------------------------------------------------------------------------


class _Expected(NamedTuple):
    """An error a user should see as one line (``danescan: LINE``) ending with ``code``;
    ``line`` None: end quietly."""

    types: tuple[type[BaseException], ...]
    line: Callable[[BaseException], str] | None
    code: ExitCode


def _expected() -> tuple[_Expected, ...]:
    """Every error a user should see as one clear line, first match wins (bugs keep their
    traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    from scanner.dns import ResolverOutage
    from scanner.extras import MissingExtra
    from scanner.store.db import DatabaseBusy, DatabaseUrlError, StoreUnavailable
    from scanner.targets import TargetsError

    return (
        _Expected((ResolverOutage,), str, ExitCode.INTERRUPTED),
        _Expected((UsageError, DatabaseUrlError, DatabaseBusy, MissingExtra), str,
                  ExitCode.USAGE),
        _Expected((TargetsError,), lambda e: f"input problem: {e}", ExitCode.USAGE),
        _Expected((StoreUnavailable, SQLAlchemyError),
                  lambda e: f"database unavailable: {_first_line(e)}", ExitCode.USAGE),
        _Expected((KeyboardInterrupt,), lambda e: "interrupted", ExitCode.INTERRUPTED),
        # The reader went away (``danescan export | head``).
        _Expected((BrokenPipeError,), None, ExitCode.OK),
        _Expected((OSError,), str, ExitCode.USAGE),
    )


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named on a command line (the top-level options take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO),
        format="%(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter
    previous = _stop_on_sigterm()
    try:
        return int(_unwrap_groups(args.func, args) or 0)
    except BaseException as exc:
        return _report(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm() -> Any:
    """SIGTERM stops a command as Ctrl-C does, at any moment, set-up included: a scan then
    stores what it judged and ends ``interrupted`` (exit 3), where SIGTERM's default action
    would end the process mid-way. It goes to SIGINT's own handler, so that inside a trio
    run trio delivers it safely; where SIGINT is ignored (a background job of a script) it
    still interrupts. Returns the handler it replaced (None: not the main thread)."""

    def as_interrupt(_signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):  # Python's KeyboardInterrupt, or trio's (raised or deferred)
            handler(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, as_interrupt)
    except ValueError:  # signal handlers belong to the main thread
        return None


def _report(exc: BaseException) -> int:
    for expected in _expected():
        if isinstance(exc, expected.types):
            if expected.line is None:
                _quiet_broken_pipe()
            else:
                print(f"danescan: {expected.line(exc)}", file=sys.stderr)
            return expected.code
    raise exc


def _quiet_broken_pipe() -> None:
    """The reader went away (``danescan export | head``): end quietly, as the Python docs'
    SIGPIPE note advises (stdout pointed at devnull so the interpreter's flush cannot fail)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _unwrap_groups(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Trio nurseries wrap errors in exception groups; a group made only of errors the user
    should see as one clear message is unwrapped to its first member (bugs stay grouped)."""
    try:
        return func(args)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        types = tuple(t for expected in _expected() for t in expected.types)
        if leaves and all(isinstance(e, types) for e in leaves):
            raise leaves[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
