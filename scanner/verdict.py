"""The verdict rules of docs/verdicts.md, pure: host and endpoint facts -> domain verdict.

Nothing here looks anything up; every rule is applied in exactly one place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scanner import codec
from scanner.jsontext import dumps
from scanner.model import (
    DaneMatch,
    DaneStatus,
    DnssecStatus,
    DomainVerdict,
    EndpointFacts,
    EndpointStatus,
    HostFacts,
    HostVerdict,
    Lookup,
    Outcome,
    Reason,
    Stage,
    TlsaCoverage,
    TlsaStatus,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

# How a probe that did not end in SUCCESS is named in the reason vocabulary.
_ENDPOINT_REASON: dict[EndpointStatus, Reason] = {
    EndpointStatus.NO_STARTTLS: Reason.STARTTLS_NOT_SUPPORTED,
    EndpointStatus.STARTTLS_REFUSED: Reason.STARTTLS_REFUSED,
    EndpointStatus.HANDSHAKE_ERROR: Reason.HANDSHAKE_ERROR,
    EndpointStatus.CONNECTION_REFUSED: Reason.CONNECTION_REFUSED,
    EndpointStatus.CONNECT_TIMEOUT: Reason.CONNECT_TIMEOUT,
    EndpointStatus.GREETING_TIMEOUT: Reason.GREETING_TIMEOUT,
    EndpointStatus.GREETING_REJECTED: Reason.GREETING_REJECTED,
    EndpointStatus.IO_TIMEOUT: Reason.IO_TIMEOUT,
    EndpointStatus.CONNECTION_RESET: Reason.CONNECTION_RESET,
    EndpointStatus.PROTOCOL_ERROR: Reason.PROTOCOL_ERROR,
    EndpointStatus.NOT_PROBED_PRIVATE: Reason.NOT_PROBED,
    EndpointStatus.NOT_PROBED_IPV6: Reason.NOT_PROBED,
    EndpointStatus.NOT_PROBED_EXCLUDED: Reason.NOT_PROBED,
    EndpointStatus.NOT_PROBED_CAP: Reason.NOT_PROBED_CAP,
}


def endpoint_reason(status: EndpointStatus) -> Reason | None:
    """The reason a probe ended as it did; None for SUCCESS."""
    return _ENDPOINT_REASON.get(status)


# -- cost caps -----------------------------------------------------------------------------
# RFC 7672 sets no bound on MX hosts, addresses or sessions; a scanner must, or one domain
# that lists hundreds of hosts on someone else's addresses makes it an amplifier. What a cap
# leaves out is recorded, never guessed: a host not looked up, an endpoint not probed.


def capped_host(preference: int | None, name: str) -> HostVerdict:
    """An MX host beyond ``max_mx_hosts``: listed, never looked up."""
    facts = HostFacts(name, None, None, None, None, TlsaStatus.NOT_QUERIED,
                      reason=Reason.NOT_PROBED_CAP)
    return HostVerdict(preference, facts, (), (), False, Reason.NOT_PROBED_CAP)


# A provider's host with more addresses than the cap leaves the same ones out for each of its
# domains (and the verdict of a DANE-TA host is built per domain, §3.2.3): the facts are
# immutable, so the last few thousand are handed out again rather than rebuilt.
@functools.lru_cache(maxsize=4096)
def capped_endpoint(address: str, port: int, sni: str | None) -> EndpointFacts:
    """An endpoint beyond ``max_host_addresses`` or ``max_address_sessions``: never probed."""
    return EndpointFacts(address=address, port=port, sni=sni,
                         status=EndpointStatus.NOT_PROBED_CAP, attempts=0)


def is_capped(h: HostVerdict) -> bool:
    """This host was judged on less than all of it: not looked up, or an endpoint left out."""
    return h.host.reason is Reason.NOT_PROBED_CAP or any(
        ep.status is EndpointStatus.NOT_PROBED_CAP for ep in h.endpoints)


# -- hosts ---------------------------------------------------------------------------------


def host_verdict(preference: int | None, host: HostFacts, endpoints: Sequence[EndpointFacts],
                 dane: Sequence[DaneMatch | None]) -> HostVerdict:
    """One MX host as seen for one domain.

    ``reachable``: some endpoint greeted with 220. ``reason``: why it is unreachable, or else
    the first failure among its TLSA lookup and its greeting endpoints (see :func:`_host_failure`).
    """
    if len(dane) != len(endpoints):
        raise ValueError("dane matches must be aligned with endpoints")
    eps, matches = tuple(endpoints), tuple(dane)
    reachable = any(ep.status.greeted for ep in eps)
    if reachable:
        reason = _host_failure(host, eps, matches)
    else:
        reason = _unreachable_reason(host, eps)
    return HostVerdict(preference, host, eps, matches, reachable, reason)


def _unreachable_reason(host: HostFacts, eps: tuple[EndpointFacts, ...]) -> Reason:
    if host.reason is not None:
        return host.reason
    if not eps:
        return Reason.NO_ADDRESS
    return endpoint_reason(eps[0].status) or Reason.UNREACHABLE


def _host_failure(host: HostFacts, eps: tuple[EndpointFacts, ...],
                  matches: tuple[DaneMatch | None, ...]) -> Reason | None:
    """The first thing that keeps this host from being DANE-valid, or None.

    TLSA lookup failures first (§2.1.1: bogus -> ``dnssec-invalid``, indeterminate ->
    ``tlsa-lookup-failure``); then, per greeting endpoint in order, a STARTTLS failure or (with
    usable TLSA, §2.2) a failed authentication.
    """
    if host.tlsa_status is TlsaStatus.BOGUS:
        return Reason.DNSSEC_INVALID
    if host.tlsa_status is TlsaStatus.INDETERMINATE:
        return Reason.TLSA_LOOKUP_FAILURE
    for ep, m in zip(eps, matches, strict=True):
        if not ep.status.greeted:
            continue
        if ep.status is not EndpointStatus.SUCCESS:
            return endpoint_reason(ep.status)
        if host.tlsa_status is TlsaStatus.USABLE:
            if m is None:
                return Reason.VALIDATION_FAILURE  # usable TLSA, yet no match was computed
            if not m.authenticated:
                return m.reason or Reason.VALIDATION_FAILURE
    return None


def _dane_failure(h: HostVerdict) -> Reason | None:
    """Why this host makes the domain's ``dane`` broken (rule 1 of docs/verdicts.md), or None.

    A bogus or indeterminate TLSA lookup breaks DANE whether or not the host answers; the
    host's own failure (:func:`_host_failure`) counts on reachable hosts with usable TLSA, or
    with only unusable TLSA, where TLS is still mandatory (§2.2).
    """
    status = h.host.tlsa_status
    if status in _TLSA_BROKEN or (h.reachable and status in _TLSA_SECURE_RECORDS):
        return _host_failure(h.host, h.endpoints, h.dane)
    return None


_TLSA_BROKEN = frozenset({TlsaStatus.BOGUS, TlsaStatus.INDETERMINATE})
_TLSA_SECURE_RECORDS = frozenset({TlsaStatus.USABLE, TlsaStatus.UNUSABLE})


def _dane_valid(h: HostVerdict) -> bool:
    """Usable TLSA, reachable, and no host failure: every greeting endpoint authenticated."""
    return (
        h.host.tlsa_status is TlsaStatus.USABLE
        and h.reachable
        and _host_failure(h.host, h.endpoints, h.dane) is None
    )


# -- domains -------------------------------------------------------------------------------


def domain_verdict(input: str, domain: str, mx_status: DnssecStatus,
                   hosts: Sequence[HostVerdict], *, implicit_mx: bool, validating: bool = True,
                   line: int | None = None, mx: Lookup | None = None) -> DomainVerdict:
    """The contract's rules for a domain whose MX lookup succeeded (docs/verdicts.md).

    ``mx``: the MX lookup itself, whose RCODE and extended DNS error the verdict keeps.
    """
    hs = tuple(hosts)
    rcode, ede_code, ede_text = _mx_answer(mx)

    def verdict(outcome: Outcome, reason: Reason | None, **ladder: Any) -> DomainVerdict:
        return DomainVerdict(input=input, domain=domain, outcome=outcome, reason=reason,
                             mx_status=mx_status, implicit_mx=implicit_mx, hosts=hs, line=line,
                             mx_rcode=rcode, mx_ede_code=ede_code, mx_ede_text=ede_text,
                             **ladder)

    if not any(h.reachable for h in hs):
        why = next((h.reason for h in hs if h.reason is not None), Reason.UNREACHABLE)
        return verdict(Outcome.UNREACHABLE, why)

    # STARTTLS: every endpoint that greeted offered it and completed the handshake.
    starttls = all(
        ep.status is EndpointStatus.SUCCESS for h in hs for ep in h.endpoints if ep.status.greeted
    )
    if not validating:
        # A non-validating resolver cannot tell secure from insecure: DNSSEC facts are unknown.
        stage = Stage.STARTTLS if starttls else Stage.PLAINTEXT
        return verdict(Outcome.OK, _cap_reason(hs), starttls=starttls, stage=stage)

    # §2.2.1: DANE applies only when the MX RRset is secure; for an implicit MX, the denial of
    # MX and the domain's own address records (RFC 5321 §5.1).
    dnssec = mx_status is DnssecStatus.SECURE and (
        not implicit_mx or all(h.host.address_status is DnssecStatus.SECURE for h in hs)
    )
    tlsa, tlsa_unusable, dane = TlsaCoverage.NONE, False, DaneStatus.NONE
    reason: Reason | None = None
    if dnssec:
        n_usable = sum(h.host.tlsa_status is TlsaStatus.USABLE for h in hs)
        if n_usable == len(hs):
            tlsa = TlsaCoverage.ALL
        elif n_usable:
            tlsa = TlsaCoverage.PARTIAL
        tlsa_unusable = any(h.host.tlsa_status is TlsaStatus.UNUSABLE for h in hs)
        dane, reason = _dane_status(hs)
    else:
        reason = _cap_reason(hs)

    stage = Stage.PLAINTEXT
    if starttls:
        stage = Stage.STARTTLS
        if dnssec:
            stage = Stage.DNSSEC
            if tlsa is TlsaCoverage.ALL:
                stage = Stage.TLSA
                if dane is DaneStatus.VALID:
                    stage = Stage.DANE
    return verdict(Outcome.OK, reason, starttls=starttls, dnssec=dnssec, tlsa=tlsa,
                   tlsa_unusable=tlsa_unusable, dane=dane, stage=stage)


def _dane_status(hs: tuple[HostVerdict, ...]) -> tuple[DaneStatus, Reason | None]:
    """First match wins: broken, valid, partial, none (docs/verdicts.md)."""
    for h in hs:
        failure = _dane_failure(h)
        if failure is not None:
            return DaneStatus.BROKEN, failure
    if any(is_capped(h) for h in hs):
        # Judged on a subset of its hosts or endpoints: never DANE-valid; at best partial.
        partial = any(_dane_valid(h) for h in hs)
        return (DaneStatus.PARTIAL if partial else DaneStatus.NONE), Reason.NOT_PROBED_CAP
    if all(h.host.tlsa_status is TlsaStatus.USABLE for h in hs):
        return DaneStatus.VALID, None
    if any(_dane_valid(h) for h in hs):
        return DaneStatus.PARTIAL, None
    return DaneStatus.NONE, None


def _cap_reason(hs: tuple[HostVerdict, ...]) -> Reason | None:
    """Where DANE was not judged, a cost cap is still the reason worth naming."""
    return Reason.NOT_PROBED_CAP if any(is_capped(h) for h in hs) else None


def _mx_answer(mx: Lookup | None) -> tuple[str | None, int | None, str | None]:
    """The MX lookup's RCODE and extended DNS error (RFC 8914), kept by the verdict."""
    if mx is None:
        return None, None, None
    return mx.rcode, mx.ede_code, mx.ede_text


def early_verdict(input: str, domain: str | None, outcome: Outcome, reason: Reason | None,
                  line: int | None = None, *, mx: Lookup | None = None,
                  mx_status: DnssecStatus | None = None) -> DomainVerdict:
    """A verdict decided before any MX host was looked at: invalid, excluded, nxdomain,
    no_mail, dns_failure, bogus. Every ladder field is null.

    ``mx``: the MX lookup that decided it; its status (unless ``mx_status`` is given: an
    implicit MX combines it with the address lookup), RCODE and extended DNS error are kept,
    so a reader can see why a domain is ``bogus`` or ``dns_failure``.
    """
    if mx is not None and mx_status is None:
        mx_status = mx.status
    rcode, ede_code, ede_text = _mx_answer(mx)
    return DomainVerdict(input=input, domain=domain if outcome is not Outcome.INVALID else None,
                         outcome=outcome, reason=reason, mx_status=mx_status, line=line,
                         mx_rcode=rcode, mx_ede_code=ede_code, mx_ede_text=ede_text)


def internal_error_verdict(input: str, domain: str | None, exc: BaseException,
                           line: int | None = None) -> DomainVerdict:
    """A bug in danescan, not a fact about the domain: ``internal_error`` with "Type: message"
    (never recorded as a DNS or SMTP result, so it cannot pass for one)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return DomainVerdict(input=input, domain=domain, outcome=Outcome.INTERNAL_ERROR,
                         reason=Reason.INTERNAL_ERROR, line=line, error=text)


# -- MX ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MxDecision:
    """What a domain's MX lookup means: an early outcome, or the hosts to look at."""

    outcome: Outcome | None  # None: go on with ``hosts``
    reason: Reason | None
    mx_status: DnssecStatus
    hosts: tuple[tuple[int, str], ...] = ()  # (preference, host name), best first
    implicit: bool = False


def mx_outcome(domain: str, mx: Lookup) -> MxDecision:
    """Map the MX lookup to an outcome (RFC 7505, RFC 5321 §5.1, RFC 7672 §2.1.1).

    Bogus -> ``bogus``; indeterminate or a failure RCODE -> ``dns_failure``; NXDOMAIN ->
    ``nxdomain``; NODATA -> the domain is its own implicit MX (preference 0); only null MX
    records ("0 .") -> ``no_mail``. A "." among real MX records is ignored (RFC 7505 §3 forbids
    the mix; the real hosts are still the ones a sender would try).
    """
    status = mx.status
    if status is DnssecStatus.BOGUS:
        return MxDecision(Outcome.BOGUS, Reason.DNSSEC_INVALID, status)
    if status is DnssecStatus.INDETERMINATE:
        return MxDecision(Outcome.DNS_FAILURE, Reason.DNS_FAILURE, status)
    if mx.nxdomain:
        return MxDecision(Outcome.NXDOMAIN, Reason.NXDOMAIN, status)
    if mx.nodata:
        return MxDecision(None, None, status, ((0, domain.lower().rstrip(".")),), implicit=True)
    if mx.rcode != "NOERROR":
        return MxDecision(Outcome.DNS_FAILURE, Reason.DNS_FAILURE, status)
    best: dict[str, int] = {}
    null_mx = False
    for text in mx.records:
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        name = parts[1].lower().rstrip(".")
        if not name:
            null_mx = True
            continue
        pref = int(parts[0])
        best[name] = min(pref, best.get(name, pref))
    if not best:
        if null_mx:
            return MxDecision(Outcome.NO_MAIL, Reason.NULL_MX, status)
        return MxDecision(Outcome.DNS_FAILURE, Reason.DNS_FAILURE, status)
    hosts = tuple(sorted(((p, n) for n, p in best.items())))
    return MxDecision(None, None, status, hosts)


def reference_names(domain: str, host: str, tlsa_base: str | None) -> tuple[str, ...]:
    """DANE-TA reference identifiers (RFC 7672 §3.2.2): the TLSA base domain, the MX host
    name and the next-hop domain; lower case, no trailing dot, no repeats."""
    names = (tlsa_base, host, domain)
    return tuple(dict.fromkeys(n.lower().rstrip(".") for n in names if n))


# -- JSON ----------------------------------------------------------------------------------


def to_json(v: DomainVerdict) -> dict[str, Any]:
    """The contract's JSON object (:mod:`scanner.codec`): every field present, null where it
    does not apply."""
    return codec.verdict_contract(v, [codec.host_contract(h) for h in v.hosts])


class JsonLines:
    """Verdicts as lines of JSON text: ``json.dumps(to_json(v), ensure_ascii=False)``, cheaper.

    The scanner hands one host verdict object to every domain a provider's host serves, and a
    host's text (addresses, endpoints, chain digests) is most of a line: it is encoded once
    per object and spliced into each line. Keyed by ``id()``; the entry holds the object, so
    the id cannot be reused while it is cached. ``limit`` bounds the entries (hosts seen once,
    a self-hosted domain's, would otherwise pile up); past it the table starts afresh, and a
    provider's few hosts are encoded again once.
    """

    def __init__(self, limit: int = 2_000) -> None:
        self._hosts: dict[int, tuple[HostVerdict, str]] = {}
        self._limit = limit

    def line(self, v: DomainVerdict) -> str:
        head = dumps(codec.verdict_contract(v, []))  # ends with the empty hosts list: "[]}"
        hosts = ", ".join(self._host(h) for h in v.hosts)
        return f"{head[:-2]}{hosts}]}}"

    def _host(self, h: HostVerdict) -> str:
        known = self._hosts.get(id(h))
        if known is not None and known[0] is h:
            return known[1]
        text = dumps(codec.host_contract(h))
        if len(self._hosts) >= self._limit:
            self._hosts.clear()
        self._hosts[id(h)] = (h, text)
        return text
