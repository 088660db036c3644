"""Two frozen dataclasses of knobs: :class:`Config` (what a scan measures) and
:class:`RunOptions` (how it is run).

Each knob is written once, here: its default, its command-line option and help, and the check
its value must pass. The CLI's options (:func:`add_options`, :func:`given`), the Config
options stored with a scan (:func:`to_options`), the Config a resumed scan or a ``danescan
worker`` rebuilds (:func:`from_options`) and the run options handed to ``danescan worker``
processes (:func:`worker_argv`) all derive from the fields, so a knob cannot be forgotten in
one of those places.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping

    from sqlalchemy.engine import Engine


@dataclass(frozen=True, slots=True)
class ResolverAddress:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> ResolverAddress:
        """``IP`` or ``IP@PORT`` (IPv4 or IPv6); a name is refused: reaching it needs a lookup."""
        host, sep, port_text = text.rpartition("@")
        if not sep:
            host, port_text = text, "53"
        ipaddress.ip_address(host)  # ValueError for a name or garbage
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"not a port: {port_text!r}")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return self.host if self.port == 53 else f"{self.host}@{self.port}"


# -- value checks: each parses command-line text and raises ValueError with a short reason ------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number above 0")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of at least 0")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be a port number, 1-65535")
    return value


def iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError("must be a date, YYYY-MM-DD") from exc


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def interval(text: str) -> float:
    """``24h``, ``90m``, ``3600s`` or plain seconds -> seconds."""
    unit = _UNITS.get(text[-1:].lower())
    try:
        value = float(text[:-1]) * unit if unit else float(text)
    except ValueError as exc:
        raise ValueError("must be an interval such as 24h, 90m or 3600 (seconds)") from exc
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be an interval above 0")
    return value


def argparse_type(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """``check`` as an argparse ``type``: a bad value becomes a usage error (exit 2)."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            kind = check.__name__.replace("_", " ")
            reason = str(exc) if "must" in str(exc) else f"must be a {kind}"
            raise argparse.ArgumentTypeError(f"{text!r}: {reason}") from exc

    parse.__name__ = check.__name__
    return parse


@dataclass(frozen=True, slots=True)
class Option:
    """How a Config or RunOptions field appears on the command line. ``flag`` options are
    booleans set by their presence (``invert``: the option turns the field off); a ``repeat``
    option is given once per value of a tuple field; a ``worker`` option is handed on to the
    ``danescan worker`` processes of a scan (:func:`worker_argv`)."""

    name: str
    help: str
    check: Callable[[str], Any] | None = None
    flag: bool = False
    invert: bool = False
    metavar: str | None = None
    repeat: bool = False
    worker: bool = False


def _knob(default: Any, option: Option | None = None) -> Any:
    return field(default=default, metadata={"option": option})


@dataclass(frozen=True, slots=True)
class Config:
    resolvers: tuple[ResolverAddress, ...] = _knob(())
    smtp_port: int = _knob(25, Option("--smtp-port", "SMTP port to probe (default %(default)s)",
                                      port))
    ehlo_name: str = _knob("danescan.invalid", Option(
        "--ehlo-name", "name sent in EHLO, identifying the scanner to the servers it probes; "
        "required when public addresses are probed (or $DANESCAN_EHLO_NAME); never looked up "
        "from the system"))
    allow_private: bool = _knob(False, Option(
        "--allow-private", "also connect to loopback/RFC 1918/... addresses (testbeds)",
        flag=True))
    insecure_resolver_ok: bool = _knob(False, Option(
        "--insecure-resolver-ok",
        "scan with a resolver that does not validate DNSSEC (a STARTTLS-only survey)", flag=True))
    probe_ipv6: bool | None = _knob(None)  # None: detect at start

    # DNS: the scanner's own deadline and retry budget per lookup (§2.1.1: a timeout is
    # indeterminate, never "no record"). Deadlines start when the query is sent.
    dns_timeout: float = _knob(2.0, Option(
        "--dns-timeout", "seconds a DNS attempt waits before asking again (default "
        "%(default)s); grows with the resolver's measured round-trip time (RFC 6298 "
        "estimator), up to half the lookup's deadline", positive_float))
    dns_attempts: int = _knob(3, Option(
        "--dns-attempts", "sends of one question before the lookup gives up (default "
        "%(default)s)", positive_int))
    dns_deadline: float = _knob(10.0, Option(
        "--dns-deadline", "seconds one round of asking may take, from its first send (default "
        "%(default)s); a question our resolver left unanswered is asked again later, never "
        "judged at once", positive_float))
    # While the resolver shows trouble, a SERVFAIL is asked again over this span before it
    # counts (scanner.dnspace): Unbound answers SERVFAIL for a whole zone for 60 s after one
    # DNSKEY or DS fetch that timed out (BOGUS_KEY_TTL in its validator), and a loaded
    # machine's authorities cause just that.
    dns_failure_span: float = _knob(64.0, Option(
        "--dns-failure-span", "seconds over which, while our resolver answers SERVFAIL for "
        "many names at once, a SERVFAIL is asked again before it counts (default %(default)s; a "
        "validating resolver may fail a zone for a minute after one fetch that timed out)",
        non_negative_float))
    dns_sockets: int = _knob(16, Option(
        "--dns-sockets", "UDP sockets to each resolver; Unbound spreads work over its threads "
        "by client socket (default %(default)s)", positive_int))
    dns_rate: float = _knob(0.0, Option(
        "--dns-rate", "DNS queries per second, at most (0: no cap); pacing never changes a "
        "verdict, only the duration", non_negative_float))
    # Our own resolver silent this long (health query unanswered): stop, resumable. Silence
    # from our resolver is never judged as a fact about a domain.
    resolver_outage_limit: float = _knob(600.0, Option(
        "--resolver-outage-limit", "seconds to wait for a resolver that stopped answering "
        "before the scan stops, resumable (default %(default)s)", positive_float))

    # SMTP: greeting delays of 15-20 s are deliberate anti-spam measures.
    connect_timeout: float = _knob(10.0, Option(
        "--connect-timeout", "seconds for the TCP connection (default %(default)s)",
        positive_float))
    greeting_timeout: float = _knob(30.0, Option(
        "--greeting-timeout", "seconds to wait for the 220 greeting (default %(default)s: "
        "greeting delays of 15-20 s are deliberate anti-spam measures)", positive_float))
    command_timeout: float = _knob(30.0, Option(
        "--command-timeout", "seconds to wait for the reply to EHLO, STARTTLS or QUIT "
        "(default %(default)s)", positive_float))
    tls_timeout: float = _knob(20.0, Option(
        "--tls-timeout", "seconds for the TLS handshake (default %(default)s)", positive_float))
    retry_transient: bool = _knob(True, Option(
        "--no-retry", "no second pass for transient SMTP failures (timeouts, 4xx)", flag=True,
        invert=True))
    retry_delay: float = _knob(60.0, Option(
        "--retry-delay", "seconds before the one retry of a transient SMTP failure (default "
        "%(default)s)", non_negative_float))

    # Concurrency and politeness.
    concurrency: int = _knob(2000, Option(
        "--concurrency", "domains in flight at once (default %(default)s): rate x latency, "
        "with room for slow servers", positive_int))
    smtp_concurrency: int = _knob(200, Option(
        "--smtp-concurrency", "SMTP sessions in flight at once (default %(default)s)",
        positive_int))
    per_address_connections: int = _knob(2, Option(
        "--per-address", "concurrent SMTP connections per address (politeness, default "
        "%(default)s): across all workers sharing a PostgreSQL database, per process on "
        "SQLite or --no-db", positive_int))
    per_prefix_connections: int = _knob(8, Option(
        "--per-prefix", "concurrent SMTP connections per IPv4 /24 or IPv6 /48 (politeness, "
        "default %(default)s), shared like --per-address", positive_int))
    connect_rate: float = _knob(300.0, Option(
        "--connect-rate", "new SMTP connections per second, whole process (politeness, "
        "default %(default)s; 0: no cap)", non_negative_float))
    # Cost caps (RFC 7672 sets none; a scanner must, or one domain makes it an amplifier).
    # Postfix tries 5 addresses by default (smtp_mx_address_limit); posttls-finger reads 100 MX.
    max_mx_hosts: int = _knob(10, Option(
        "--max-mx-hosts", "MX hosts looked at per domain, in preference order (default "
        "%(default)s); a domain judged on fewer than all its hosts is never DANE-valid",
        positive_int))
    max_host_addresses: int = _knob(10, Option(
        "--max-host-addresses", "addresses probed per MX host (default %(default)s)",
        positive_int))
    max_address_sessions: int = _knob(1000, Option(
        "--max-address-sessions", "SMTP sessions one address receives in one scan, whatever "
        "the SNI (default %(default)s)", positive_int))
    exclude_domains: frozenset[str] = _knob(frozenset())
    exclude_prefixes: tuple[str, ...] = _knob(())


DEFAULTS = Config()


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a scan is run: where it is stored, split and shown. Never what it measures (that
    is the Config), so none of it is stored with the scan."""

    db: str | None = _knob(None, Option(
        "--db", "database URL (postgresql://... or sqlite:///PATH) or SQLite path (default: "
        "$DATABASE_URL, else ./danescan.sqlite)", metavar="URL"))
    jsonl: str | None = _knob(None, Option(
        "--jsonl", "write one JSON object per input line", metavar="PATH"))
    label: str | None = _knob(None, Option("--label", "a name stored with the scan"))
    date: dt.date | None = _knob(None, Option(
        "--date", "logical date of the scan (default: today)", iso_date, metavar="YYYY-MM-DD"))
    workers: int | None = _knob(None, Option(
        "--workers", "scanner processes sharing the scan (default: one per core on "
        "PostgreSQL, one on SQLite; more than one needs PostgreSQL)", positive_int))
    shard_size: int = _knob(1000, Option(
        "--shard-size", "input lines per shard, the unit of resume (default %(default)s)",
        positive_int))
    every: float | None = _knob(None, Option(
        "--every", "continuous operation: scan DOMAINS again every INTERVAL (e.g. 24h), each "
        "run starting when the previous one has finished", interval, metavar="INTERVAL"))
    lease_seconds: float = _knob(600.0, Option(
        "--lease-seconds", "shard and claim lease: how long a dead worker's work waits before "
        "another takes it over (default %(default)s)", positive_float, worker=True))
    dns_log: str | None = _knob(None, Option(
        "--dns-log", "append every DNS question asked ('name TYPE', dnsperf's input format; "
        "with several workers PATH.0, PATH.1, ...)", metavar="PATH", worker=True))
    # Shared claims and connection limits on PostgreSQL.
    shared: bool = _knob(True, Option(
        "--no-shared", "do not share host/endpoint results and connection limits with other "
        "workers (shared by default on PostgreSQL, even by a one-process scan, so that a "
        "worker started later on another machine probes nothing twice; a worker alone "
        "only publishes what it found until a second one registers)",
        flag=True, invert=True, worker=True))
    progress_interval: float = _knob(60.0, Option(
        "--progress-interval", "when stderr is not a terminal: a progress line every SECONDS "
        "(default %(default)s)", positive_float, metavar="SECONDS"))
    # As given (addresses, or 'system'): the CLI parses them into Config.resolvers.
    resolvers: tuple[str, ...] = _knob((), Option(
        "--resolver", "validating resolver(s), repeatable; 'system' for /etc/resolv.conf's "
        "(default: $DANESCAN_RESOLVER, no implicit fallback; a worker or a resumed scan: the "
        "scan's own)", metavar="IP[@PORT]", repeat=True, worker=True))
    quiet: bool = _knob(False)  # the command's own -q: no progress
    # Called with (engine, scan id) when a scan ends complete (`scan --archive`).
    after_complete: Callable[[Engine, int], None] | None = _knob(None)


RUN_DEFAULTS = RunOptions()


def _options(cls: type, names: Collection[str] | None = None
             ) -> Iterator[tuple[dataclasses.Field[Any], Option]]:
    """The fields of ``cls`` that have a command-line option (only ``names``, if given)."""
    for f in dataclasses.fields(cls):
        opt: Option | None = f.metadata["option"]
        if opt is not None and (names is None or f.name in names):
            yield f, opt


def add_options(parser: argparse.ArgumentParser, cls: type = Config,
                names: Collection[str] | None = None) -> None:
    """Every field of ``cls`` with an Option (only ``names``, if given), as a command-line
    option defaulting to None (so a resumed scan can tell a flag given from a default: see
    :func:`given`)."""
    for f, opt in _options(cls, names):
        if opt.flag:
            parser.add_argument(opt.name, dest=f.name, action="store_const",
                                const=not opt.invert, default=None, help=opt.help)
        else:
            help_text = opt.help.replace("%(default)s", str(f.default))
            parser.add_argument(opt.name, dest=f.name, default=None, metavar=opt.metavar,
                                action="append" if opt.repeat else "store",
                                type=argparse_type(opt.check) if opt.check else str,
                                help=help_text)


def worker_names(cls: type) -> frozenset[str]:
    """The fields of ``cls`` handed on to ``danescan worker`` processes."""
    return frozenset(f.name for f, opt in _options(cls) if opt.worker)


def given(args: argparse.Namespace, cls: type = Config) -> dict[str, Any]:
    """The fields of ``cls`` set on this command line (options left out are absent)."""
    out = {}
    for f, opt in _options(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if opt.repeat else value
    return out


def worker_argv(values: Any) -> list[str]:
    """The command-line options that hand ``values``' worker fields (those differing from
    their defaults) to a ``danescan worker`` process: :func:`given` reads them back."""
    argv: list[str] = []
    for f, opt in _options(type(values), worker_names(type(values))):
        value = getattr(values, f.name)
        if value == f.default:
            continue
        if opt.flag:  # a flag differing from its default is set
            argv.append(opt.name)
        elif opt.repeat:
            for item in value:
                argv += [opt.name, str(item)]
        else:
            argv += [opt.name, str(value)]
    return argv


def _fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Config)


def to_options(config: Config) -> dict[str, Any]:
    """The knobs stored with a scan (JSON): its provenance, and what resume and
    ``danescan worker`` rebuild its Config from."""
    out: dict[str, Any] = {}
    for f in _fields():
        value = getattr(config, f.name)
        if f.name == "resolvers":
            value = [str(r) for r in value]
        elif isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_options(options: Mapping[str, Any], **overrides: Any) -> Config:
    """The Config stored by :func:`to_options`; fields a scan predates keep their defaults.

    Scans stored before the options were derived from the fields used other names for a few
    (``exclude_domain_list``); those are read too.
    """
    kwargs: dict[str, Any] = {}
    names = {f.name for f in _fields()}
    for name, value in options.items():
        if name not in names:
            continue
        if name == "resolvers":
            value = tuple(ResolverAddress.parse(r) for r in value)
        elif name == "exclude_domains":
            value = frozenset(value) if isinstance(value, list | tuple) else frozenset()
        elif name == "exclude_prefixes":
            value = tuple(value)
        kwargs[name] = value
    if "exclude_domain_list" in options:
        kwargs["exclude_domains"] = frozenset(options["exclude_domain_list"])
    kwargs.update(overrides)
    return Config(**kwargs)


def conflicts(stored: Config, flags: Mapping[str, Any]) -> list[str]:
    """Options given on a resume that differ from the scan's own (option names; the opt-out
    list's two fields come from ``--exclude``)."""
    out: list[str] = []
    for f in _fields():
        if f.name not in flags or flags[f.name] == getattr(stored, f.name):
            continue
        opt = f.metadata["option"]
        name = opt.name if opt is not None else "--exclude"
        if name not in out:
            out.append(name)
    return out
