"""The DNS stages of a scan: the domain's MX RRset, then once per MX host its addresses and TLSA.

``mx_stage`` decides the domain-level outcomes the MX lookup can decide (RFC 7505 null MX,
NXDOMAIN, bogus, DNS failure) and the MX host list, including the implicit MX of RFC 5321 §5.1.
``host_stage`` depends on the host name only (the pipeline runs it once per host per scan):
address records with their DNSSEC status, then the TLSA RRset at the TLSA base domain chosen by
RFC 7672 §2.2.2-2.2.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from scanner.dane import classify_tlsa
from scanner.dnswire import encode_name
from scanner.model import DnssecStatus, HostFacts, Lookup, Outcome, Reason, TlsaStatus
from scanner.verdict import mx_outcome

__all__ = [
    "DnsLookups",
    "MxResult",
    "combine_status",
    "host_stage",
    "mx_stage",
]


class DnsLookups(Protocol):
    """What the stages need from :class:`scanner.dns.DnsClient` (a fake will do in tests)."""

    async def lookup(self, qname: str, rdtype: str) -> Lookup: ...


@dataclass(frozen=True, slots=True)
class MxResult:
    lookup: Lookup  # the MX lookup itself
    outcome: Outcome | None  # None: carry on with the hosts
    reason: Reason | None
    implicit: bool  # RFC 5321 §5.1: no MX RRset, the domain is its own MX host
    hosts: tuple[tuple[int, str], ...]  # (preference, host) by preference, no duplicates
    mx_status: DnssecStatus
    # Implicit MX only: the domain's own host facts, already looked up to decide mx_status;
    # the pipeline may seed its per-host single-flight cache with them.
    host: HostFacts | None = None


_RANK = {
    DnssecStatus.SECURE: 0,
    DnssecStatus.INSECURE: 1,
    DnssecStatus.INDETERMINATE: 2,
    DnssecStatus.BOGUS: 3,
}


def combine_status(*statuses: DnssecStatus) -> DnssecStatus:
    """The weakest link: secure only if all are secure (data or secure denial, RFC 4035 §5.4);
    any bogus -> bogus; else any indeterminate -> indeterminate; else insecure."""
    return max(statuses, key=_RANK.__getitem__)


def _host_name(text: str) -> str:
    name = text.lower()
    return name if name == "." else name.rstrip(".")


async def mx_stage(client: DnsLookups, domain: str) -> MxResult:
    """MX lookup and what it decides (RFC 7672 §2.2.1, RFC 7505, RFC 5321 §5.1).

    The mapping of the MX answer itself is :func:`scanner.verdict.mx_outcome` (one place for
    the rule); here the implicit MX additionally gets its address lookup.
    """
    domain = _host_name(domain)
    lk = await client.lookup(domain, "MX")
    d = mx_outcome(domain, lk)
    if d.outcome is None and d.implicit:
        return await _implicit_mx(client, domain, lk)
    return MxResult(lk, d.outcome, d.reason, d.implicit, d.hosts, d.mx_status)


async def _implicit_mx(client: DnsLookups, domain: str, lk: Lookup) -> MxResult:
    """RFC 5321 §5.1: no MX RRset -> the domain itself, preference 0.

    mx_status is secure only if the denial of MX and the domain's address records are secure
    (docs/verdicts.md). The address lookup decides the outcome only when it yields no address:
    bogus -> bogus, failed -> dns_failure. A clean "no address at all" continues as a host
    without addresses and ends ``unreachable`` at the reachability step.
    """
    name = _host_name(domain)
    facts = await host_stage(client, name)
    addr = facts.address_status or DnssecStatus.INDETERMINATE
    status = combine_status(lk.status, addr)
    hosts = ((0, name),)
    if not facts.addresses:
        if addr is DnssecStatus.BOGUS:
            return MxResult(lk, Outcome.BOGUS, Reason.DNSSEC_INVALID, True, hosts, status, facts)
        if addr is DnssecStatus.INDETERMINATE:
            return MxResult(
                lk, Outcome.DNS_FAILURE, Reason.ADDRESS_LOOKUP_FAILURE, True, hosts, status, facts
            )
    return MxResult(lk, None, None, True, hosts, status, facts)


async def host_stage(client: DnsLookups, host: str) -> HostFacts:
    """A and AAAA, then TLSA when the addresses are secure (RFC 7672 §2.2.2-2.2.3).

    * address_status combines A and AAAA with :func:`combine_status` (secure only if both are
      secure, data or denial); a bogus or failed address lookup gives ADDRESS_LOOKUP_FAILURE,
      two clean answers without any address NO_ADDRESS; either way TLSA is not queried.
    * Secure addresses reached directly: TLSA base = the host name.
    * Secure addresses through a CNAME chain (AD covers the whole answer, so the whole chain is
      secure): TLSA at the fully expanded name first, then at the original name if the first
      answer is a secure denial (§2.2.3).
    * Insecure addresses through a CNAME chain: §2.2.2 still applies DANE when the chain's first
      link is secure, with the original name as the only base. A validating resolver reports
      the chain as one unsigned answer, so the first link is asked for separately (qtype CNAME
      at the host name: answered by the alias RRset alone, with its own AD bit).
    * The TLSA owner may itself be a CNAME: the resolver follows it and AD covers it all; the
      base name does not change.
    """
    name = _host_name(host)
    try:
        encode_name(name)
    except ValueError:
        # Not a DNS name (e.g. an over-long label in an MX target): it cannot have addresses.
        return HostFacts(
            name, None, None, None, None, TlsaStatus.NOT_QUERIED, reason=Reason.NO_ADDRESS
        )
    a, aaaa = await _addresses(client, name)
    status = combine_status(a.status, aaaa.status)
    if status in (DnssecStatus.BOGUS, DnssecStatus.INDETERMINATE):
        return HostFacts(
            name,
            a,
            aaaa,
            status,
            None,
            TlsaStatus.NOT_QUERIED,
            reason=Reason.ADDRESS_LOOKUP_FAILURE,
        )
    if not a.records and not aaaa.records:
        return HostFacts(
            name, a, aaaa, status, None, TlsaStatus.NOT_QUERIED, reason=Reason.NO_ADDRESS
        )
    chain = a.cname_chain or aaaa.cname_chain
    expanded = chain[-1] if chain else name
    if status is DnssecStatus.SECURE:
        bases = [expanded, name] if expanded != name else [name]
    elif chain and await _first_link_secure(client, name):
        bases = [name]
    else:
        return HostFacts(name, a, aaaa, status, None, TlsaStatus.NOT_QUERIED)
    base, lk = bases[0], await client.lookup(f"_25._tcp.{bases[0]}", "TLSA")
    tstatus, records = classify_tlsa(lk)
    if len(bases) > 1 and tstatus is TlsaStatus.ABSENT:
        base, lk = bases[1], await client.lookup(f"_25._tcp.{bases[1]}", "TLSA")
        tstatus, records = classify_tlsa(lk)
    reason = {
        TlsaStatus.BOGUS: Reason.DNSSEC_INVALID,
        TlsaStatus.INDETERMINATE: Reason.TLSA_LOOKUP_FAILURE,
    }.get(tstatus)
    return HostFacts(name, a, aaaa, status, base, tstatus, records, lk, reason)


async def _addresses(client: DnsLookups, name: str) -> tuple[Lookup, Lookup]:
    results: dict[str, Lookup] = {}

    async def one(rdtype: str) -> None:
        results[rdtype] = await client.lookup(name, rdtype)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "AAAA")
        await one("A")
    return results["A"], results["AAAA"]


async def _first_link_secure(client: DnsLookups, name: str) -> bool:
    lk = await client.lookup(name, "CNAME")
    return lk.status is DnssecStatus.SECURE and bool(lk.records)
