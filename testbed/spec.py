"""The plain data that describes a testbed world to the programs that serve it.

`testbed.world` builds these from (seed, size, night, weights); `testbed.dnsnet` signs and serves
the zones (NSD per tier, a fault server, a latency front, Unbound); `testbed.smtpd` serves the
mail endpoints. Everything is JSON-serialisable so servers can run as separate processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class DnsFault(StrEnum):
    """Behaviours of a DNS server that NSD cannot play; each runs on its own address."""

    DROP = "drop"  # never answers (timeout)
    SERVFAIL = "servfail"  # answers every query with SERVFAIL
    TRUNCATE = "truncate"  # UDP answers carry TC=1 and no records; TCP answers in full


class SigningFault(StrEnum):
    """Ways a signed zone is deliberately broken (RFC 4035 §5 validation failures)."""

    BAD_SIGNATURE = "bad-signature"  # one RRset's RRSIG has a corrupted signature
    EXPIRED = "expired"  # one RRset's RRSIG expired (valid period in the past)
    MISSING_DNSKEY = "missing-dnskey"  # parent's DS names a key the zone does not publish


@dataclass(frozen=True)
class Record:
    """One resource record; ``owner`` is absolute (with trailing dot)."""

    owner: str
    rdtype: str
    rdata: str  # presentation format, e.g. "10 mx1.example.net." or "3 1 1 ab12..."
    ttl: int = 3600


@dataclass(frozen=True)
class Signing:
    algorithm: str = "ECDSAP256SHA256"  # or RSASHA256, ED25519
    key_id: str = ""  # key material is derived from (world seed, key_id); RSA from a cached pool
    fault: SigningFault | None = None
    fault_owner: str | None = None  # absolute owner of the RRset to break (BAD_SIGNATURE/EXPIRED)
    fault_rdtype: str | None = None


@dataclass(frozen=True)
class Zone:
    """A zone and where it is served. Delegations are NS (+ glue) records inside ``records``;
    DS records for signed children are computed by the signer from the child's keys, for every
    child listed in ``secure_children`` (children served unsigned get NSEC-proven absence of DS).
    """

    origin: str  # absolute, "." for the root
    server: str  # name of the DnsServer that serves it
    records: tuple[Record, ...]
    signing: Signing | None = None
    secure_children: tuple[str, ...] = ()


@dataclass(frozen=True)
class DnsServer:
    """One authoritative server instance on its own loopback address."""

    name: str  # "root", "tld", "domains", "subs", "fault-drop-1", ...
    address: str
    fault: DnsFault | None = None  # None: NSD; else danescan's own fault server
    delay: tuple[float, float] = (0.0, 0.0)  # added per answer (uniform min..max seconds)


class SmtpBehaviour(StrEnum):
    STARTTLS = "starttls"  # 220, EHLO lists STARTTLS, 220 Ready, TLS
    PLAIN = "plain"  # 220, EHLO without STARTTLS
    STARTTLS_454 = "starttls-454"  # STARTTLS advertised, refused with 454
    TLS_FAIL = "tls-fail"  # STARTTLS accepted (220) then the TLS handshake fails
    SILENT = "silent"  # accepts the connection, never greets
    TARPIT = "tarpit"  # greets after ``banner_delay`` seconds, then behaves as STARTTLS
    BANNER_421 = "banner-421"
    BANNER_554 = "banner-554"
    GARBAGE = "garbage"  # sends bytes that are not an SMTP reply


@dataclass(frozen=True)
class Chain:
    """PEM files: ``cert`` holds leaf first then intermediates, as the server presents them."""

    cert: str
    key: str


@dataclass(frozen=True)
class SmtpEndpoint:
    address: str  # IPv4 127.x.y.z or "::1"
    behaviour: SmtpBehaviour
    chains: dict[str, Chain]  # SNI (lower case, no dot) -> chain; "*" is the default
    port: int = 25
    banner_delay: float = 0.0
    hostname: str = "mx.testbed"  # used in the 220 greeting and EHLO reply


@dataclass(frozen=True)
class SmtpSpec:
    endpoints: tuple[SmtpEndpoint, ...]
    session_log: str  # JSON lines: {"t","address","port","peer","sni","starttls","ehlo","end"}
    reply_delay: tuple[float, float] = (0.0, 0.0)  # added to every SMTP reply


def to_json(obj: Any) -> Any:
    """dataclasses -> plain JSON-able structures (enums become their values)."""
    return asdict(obj)


def smtp_spec_from_json(data: dict[str, Any]) -> SmtpSpec:
    eps = tuple(
        SmtpEndpoint(
            address=e["address"],
            behaviour=SmtpBehaviour(e["behaviour"]),
            chains={k: Chain(**c) for k, c in e["chains"].items()},
            port=e.get("port", 25),
            banner_delay=e.get("banner_delay", 0.0),
            hostname=e.get("hostname", "mx.testbed"),
        )
        for e in data["endpoints"]
    )
    return SmtpSpec(eps, data["session_log"], tuple(data.get("reply_delay", (0.0, 0.0))))


@dataclass
class WorldPlan:
    """Everything `up` starts: DNS servers and zones, SMTP endpoints, the resolver address."""

    block: int  # the world's 127.<block>.0.0/16
    resolver: str
    servers: list[DnsServer] = field(default_factory=list)
    zones: list[Zone] = field(default_factory=list)
    smtp: SmtpSpec | None = None


# The latency fronts and the SMTP servers of a world built with a delay read their current delay
# from this file in the world's folder, at start and again on SIGHUP (`control.set_delay`): the
# same world, same processes, measured with and without latency.
DELAY_FILE = "delay.json"


def read_delay(path: str | None, default: tuple[float, float]) -> tuple[float, float]:
    """``[low, high]`` seconds from ``path``; ``default`` when there is none or it is unreadable."""
    if not path:
        return default
    try:
        with open(path, encoding="utf-8") as fh:
            low, high = json.load(fh)
        return float(low), float(high)
    except (OSError, ValueError, TypeError):
        return default
