"""Hand-built DomainVerdicts for the store tests and benchmark (no network, no scanner)."""

from __future__ import annotations

import datetime as dt
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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
    TlsaRecord,
    TlsaStatus,
)

T0 = dt.datetime(2025, 3, 1, 2, 0, 0, 123456, tzinfo=dt.UTC)


@cache
def certificate(name: str) -> bytes:
    """A self-signed EC certificate for ``name`` (DER), cached: key generation is slow."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(T0 - dt.timedelta(days=1))
        .not_valid_after(T0 + dt.timedelta(days=90))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def endpoint(
    address: str,
    sni: str | None,
    status: EndpointStatus = EndpointStatus.SUCCESS,
    *,
    chain: tuple[bytes, ...] = (),
    banner: str | None = "mx.example ESMTP",
    ehlo: tuple[str, ...] = ("PIPELINING", "STARTTLS", "8BITMIME"),
) -> EndpointFacts:
    ok = status is EndpointStatus.SUCCESS
    return EndpointFacts(
        address=address,
        port=25,
        sni=sni,
        status=status,
        banner=banner if status.greeted else None,
        greeting_code=220 if status.greeted else None,
        ehlo=ehlo if status.greeted else (),
        starttls_offered=ok or None,
        starttls_code=220 if ok else None,
        tls_version="TLSv1.3" if ok else None,
        cipher="TLS_AES_256_GCM_SHA384" if ok else None,
        chain=chain,
        error=None if status.greeted else status.value,
        probed_at=T0 + dt.timedelta(seconds=3),
        attempts=1,
    )


def host(
    name: str,
    addresses: tuple[str, ...],
    *,
    tlsa: tuple[TlsaRecord, ...] = (),
    secure: bool = True,
) -> HostFacts:
    st = DnssecStatus.SECURE if secure else DnssecStatus.INSECURE
    v4 = tuple(a for a in addresses if ":" not in a)
    v6 = tuple(a for a in addresses if ":" in a)
    texts = tuple(r.to_text() for r in tlsa)
    tlsa_lookup = Lookup(f"_25._tcp.{name}", "TLSA", st, "NOERROR", texts)
    return HostFacts(
        name=name,
        a=Lookup(name, "A", st, "NOERROR", v4),
        aaaa=Lookup(name, "AAAA", st, "NOERROR", v6, ede_code=None),
        address_status=st,
        tlsa_base=name if secure else None,
        tlsa_status=(TlsaStatus.USABLE if tlsa else TlsaStatus.ABSENT)
        if secure
        else TlsaStatus.NOT_QUERIED,
        tlsa_records=tlsa,
        tlsa_lookup=tlsa_lookup if secure else None,
    )


def dane_host(name: str, address: str, preference: int = 10) -> HostVerdict:
    """A DANE-valid MX host: one endpoint whose leaf matches a 3 1 1 record."""
    der = certificate(name)
    rec = TlsaRecord(3, 1, 1, bytes(range(32)))
    facts = host(name, (address,), tlsa=(rec, TlsaRecord(2, 0, 1, b"\x01" * 32)))
    ep = endpoint(address, name, chain=(der, certificate("ca." + name)))
    return HostVerdict(
        preference=preference,
        host=facts,
        endpoints=(ep,),
        dane=(DaneMatch(True, record=rec, depth=0),),
        reachable=True,
    )


def plain_host(name: str, address: str, preference: int = 10) -> HostVerdict:
    facts = host(name, (address,), secure=False)
    ep = endpoint(address, name, EndpointStatus.NO_STARTTLS)
    return HostVerdict(preference, facts, (ep,), (None,), reachable=True)


def dane_valid(line: int, domain: str, mx: HostVerdict | None = None) -> DomainVerdict:
    return DomainVerdict(
        input=domain,
        domain=domain,
        outcome=Outcome.OK,
        starttls=True,
        dnssec=True,
        tlsa=TlsaCoverage.ALL,
        tlsa_unusable=False,
        dane=DaneStatus.VALID,
        stage=Stage.DANE,
        mx_status=DnssecStatus.SECURE,
        hosts=(mx or dane_host("mx1." + domain, "192.0.2.1"),),
        line=line,
    )


def plaintext(line: int, domain: str, mx: HostVerdict | None = None) -> DomainVerdict:
    return DomainVerdict(
        input=domain,
        domain=domain,
        outcome=Outcome.OK,
        starttls=False,
        dnssec=False,
        tlsa=TlsaCoverage.NONE,
        tlsa_unusable=False,
        dane=DaneStatus.NONE,
        stage=Stage.PLAINTEXT,
        reason=Reason.STARTTLS_NOT_SUPPORTED,
        mx_status=DnssecStatus.INSECURE,
        hosts=(mx or plain_host("mx." + domain, "198.51.100.7"),),
        line=line,
    )


def invalid(line: int, text: str) -> DomainVerdict:
    return DomainVerdict(
        input=text, domain=None, outcome=Outcome.INVALID, reason=Reason.INVALID_INPUT, line=line
    )


def nxdomain(line: int, domain: str) -> DomainVerdict:
    return DomainVerdict(
        input=domain.upper() + ".",
        domain=domain,
        outcome=Outcome.NXDOMAIN,
        reason=Reason.NXDOMAIN,
        mx_status=DnssecStatus.SECURE,
        line=line,
    )


def mixed(line: int, domain: str) -> DomainVerdict:
    """Two hosts, one DANE-valid and one unreachable over IPv6 and IPv4, partial DANE."""
    good = dane_host("mx1." + domain, "192.0.2.10", 10)
    down_facts = host("mx2." + domain, ("192.0.2.11", "2001:db8::11"))
    eps = (
        endpoint("192.0.2.11", "mx2." + domain, EndpointStatus.CONNECT_TIMEOUT),
        endpoint("2001:db8::11", "mx2." + domain, EndpointStatus.NOT_PROBED_IPV6),
    )
    down = HostVerdict(20, down_facts, eps, (None, None), False, Reason.UNREACHABLE)
    return DomainVerdict(
        input=domain,
        domain=domain,
        outcome=Outcome.OK,
        starttls=True,
        dnssec=True,
        tlsa=TlsaCoverage.PARTIAL,
        tlsa_unusable=False,
        dane=DaneStatus.PARTIAL,
        stage=Stage.DNSSEC,
        mx_status=DnssecStatus.SECURE,
        hosts=(good, down),
        line=line,
    )


def sample(n: int = 12) -> list[DomainVerdict]:
    """A varied batch on lines 1..n: shapes rotate, and two domains share one MX host."""
    shared = dane_host("mx.shared.example", "192.0.2.99")
    makers = [
        lambda i: dane_valid(i, f"d{i}.example"),
        lambda i: plaintext(i, f"p{i}.example"),
        lambda i: invalid(i, f"bad domain {i}!"),
        lambda i: nxdomain(i, f"nx{i}.example"),
        lambda i: mixed(i, f"m{i}.example"),
        lambda i: dane_valid(i, f"s{i}.example", shared),
    ]
    return [makers[(i - 1) % len(makers)](i) for i in range(1, n + 1)]


def bogus(line: int, domain: str) -> DomainVerdict:
    """Decided by the MX lookup alone, which keeps its RCODE and extended DNS error."""
    return DomainVerdict(
        input=domain,
        domain=domain,
        outcome=Outcome.BOGUS,
        reason=Reason.DNSSEC_INVALID,
        mx_status=DnssecStatus.BOGUS,
        mx_rcode="SERVFAIL",
        mx_ede_code=7,
        mx_ede_text="signature expired",
        line=line,
    )


def internal_error(line: int, domain: str) -> DomainVerdict:
    return DomainVerdict(
        input=domain,
        domain=domain,
        outcome=Outcome.INTERNAL_ERROR,
        reason=Reason.INTERNAL_ERROR,
        error="RuntimeError: boom",
        line=line,
    )


def capped(line: int, domain: str) -> DomainVerdict:
    """A DANE host with one endpoint left out by a cap, and a host beyond the MX cap."""
    from scanner.verdict import capped_endpoint, capped_host

    good = dane_host("mx1." + domain, "192.0.2.20", 10)
    left_out = capped_endpoint("192.0.2.21", 25, good.host.name)
    good = HostVerdict(10, good.host, (*good.endpoints, left_out), (*good.dane, None), True)
    return DomainVerdict(
        input=domain,
        domain=domain,
        outcome=Outcome.OK,
        starttls=True,
        dnssec=True,
        tlsa=TlsaCoverage.PARTIAL,
        tlsa_unusable=False,
        dane=DaneStatus.PARTIAL,
        stage=Stage.DNSSEC,
        reason=Reason.NOT_PROBED_CAP,
        mx_status=DnssecStatus.SECURE,
        mx_rcode="NOERROR",
        hosts=(good, capped_host(20, "mx2." + domain)),
        line=line,
    )
