"""One frozen dataclass of every knob the scanner has; the CLI builds it, everything reads it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ResolverAddress:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> ResolverAddress:
        """``IP``, ``IP@PORT`` or ``[IPv6]:PORT``-free form ``IPv6@PORT``."""
        host, sep, port = text.rpartition("@")
        if not sep:
            return cls(text)
        return cls(host, int(port))

    def __str__(self) -> str:
        return self.host if self.port == 53 else f"{self.host}@{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    resolvers: tuple[ResolverAddress, ...] = ()
    smtp_port: int = 25
    ehlo_name: str = "danescan.invalid"
    allow_private: bool = False
    insecure_resolver_ok: bool = False
    probe_ipv6: bool | None = None  # None: detect at start

    # DNS: the scanner's own deadline and retry budget per lookup (§2.1.1: a timeout is
    # indeterminate, never "no record").
    dns_timeout: float = 2.0  # one attempt
    dns_attempts: int = 3
    dns_deadline: float = 10.0  # whole lookup, CD retry included
    dns_sockets: int = 16  # Unbound spreads work over its threads by client socket
    dns_rate: float = 0.0  # queries/s cap, 0 = none
    # Our own resolver silent this long (health query unanswered): stop, resumable. Silence
    # from our resolver is never judged as a fact about a domain.
    resolver_outage_limit: float = 600.0

    # SMTP: greeting delays of 15-20 s are deliberate anti-spam measures.
    connect_timeout: float = 10.0
    greeting_timeout: float = 30.0
    command_timeout: float = 30.0
    tls_timeout: float = 20.0
    retry_transient: bool = True  # second pass for timeouts and 4xx, later in the scan
    retry_delay: float = 60.0

    # Concurrency and politeness.
    concurrency: int = 2000  # domains in flight: rate x latency (Little), with stragglers
    smtp_concurrency: int = 200  # SMTP sessions in flight
    per_address_connections: int = 2
    per_prefix_connections: int = 8  # per IPv4 /24 or IPv6 /48
    connect_rate: float = 100.0  # new SMTP connections per second, whole scan; 0 = no cap
    # Cost caps (RFC 7672 sets none; a scanner must, or one domain makes it an amplifier).
    # Postfix tries 5 addresses by default (smtp_mx_address_limit); posttls-finger reads 100 MX.
    max_mx_hosts: int = 10  # per domain, in preference order
    max_host_addresses: int = 10  # per MX host, A then AAAA
    max_address_sessions: int = 1000  # SMTP sessions per address per scan, whatever the SNI
    exclude_domains: frozenset[str] = field(default_factory=frozenset)
    exclude_prefixes: tuple[str, ...] = ()
