"""scanner.lookups: the MX stage and the MX-host stage (RFC 7672 §2.2), over a table of lookups."""

from __future__ import annotations

import pytest

from scanner.dns import DnsClient
from scanner.lookups import combine_status, host_stage, mx_stage
from scanner.model import DnssecStatus, Lookup, Outcome, Reason, TlsaStatus
from tests.fakedns import Reply, running

S, INS, B, X = (
    DnssecStatus.SECURE,
    DnssecStatus.INSECURE,
    DnssecStatus.BOGUS,
    DnssecStatus.INDETERMINATE,
)
EE = "3 1 1 " + "ab" * 32  # usable
PKIX = "1 1 1 " + "cd" * 32  # unusable for SMTP (§3.1.3)


def lk(
    status: DnssecStatus, *records: str, rcode: str = "NOERROR", chain: tuple[str, ...] = ()
) -> Lookup:
    return Lookup("", "", status, rcode, records, chain)


class TableClient:
    """A DnsClient stand-in answering from a table; unknown questions are secure NXDOMAIN."""

    def __init__(self, table: dict[tuple[str, str], Lookup]) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []

    async def lookup(self, qname: str, rdtype: str) -> Lookup:
        self.asked.append((qname, rdtype))
        got = self.table.get((qname, rdtype), lk(S, rcode="NXDOMAIN"))
        return Lookup(qname, rdtype, got.status, got.rcode, got.records, got.cname_chain)

    def tlsa_asked(self) -> list[str]:
        return [q for q, t in self.asked if t == "TLSA"]


def test_combine_status() -> None:
    assert combine_status(S, S) is S
    assert combine_status(S, INS) is INS
    assert combine_status(INS, X) is X
    assert combine_status(X, B) is B
    assert combine_status(B, S) is B


# -- MX stage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mx", "outcome", "reason"),
    [
        (lk(S, "0 ."), Outcome.NO_MAIL, Reason.NULL_MX),
        (lk(S, rcode="NXDOMAIN"), Outcome.NXDOMAIN, Reason.NXDOMAIN),
        (lk(INS, rcode="NXDOMAIN"), Outcome.NXDOMAIN, Reason.NXDOMAIN),
        (lk(B, "10 mx.example.com.", rcode="SERVFAIL"), Outcome.BOGUS, Reason.DNSSEC_INVALID),
        (lk(X, rcode="TIMEOUT"), Outcome.DNS_FAILURE, Reason.DNS_FAILURE),
        (lk(X, rcode="REFUSED"), Outcome.DNS_FAILURE, Reason.DNS_FAILURE),
    ],
)
async def test_mx_early_outcomes(mx: Lookup, outcome: Outcome, reason: Reason) -> None:
    client = TableClient({("example.com", "MX"): mx})
    r = await mx_stage(client, "example.com")
    assert (r.outcome, r.reason, r.hosts, r.implicit) == (outcome, reason, (), False)
    assert r.mx_status is mx.status
    assert client.asked == [("example.com", "MX")]  # nothing else looked up


async def test_mx_hosts_sorted_and_deduplicated() -> None:
    mx = lk(S, "20 MX1.example.com.", "10 mx2.example.com.", "5 mx1.example.com.", "30 192.0.2.1.")
    r = await mx_stage(TableClient({("example.com", "MX"): mx}), "example.com")
    assert r.outcome is None
    assert not r.implicit
    assert r.hosts == ((5, "mx1.example.com"), (10, "mx2.example.com"), (30, "192.0.2.1"))
    assert r.mx_status is S
    assert r.host is None


@pytest.mark.parametrize(
    ("mx_st", "a_st", "aaaa_st", "want"),
    [(S, S, S, S), (S, INS, S, INS), (INS, S, S, INS), (S, S, X, X)],
)
async def test_implicit_mx_status(
    mx_st: DnssecStatus, a_st: DnssecStatus, aaaa_st: DnssecStatus, want: DnssecStatus
) -> None:
    # RFC 5321 §5.1: NODATA -> the domain itself, preference 0; secure only if the denial
    # of MX and the domain's own address records are secure (docs/verdicts.md).
    client = TableClient(
        {
            ("example.com", "MX"): lk(mx_st),
            ("example.com", "A"): lk(a_st, "192.0.2.1"),
            ("example.com", "AAAA"): lk(aaaa_st),
            ("_25._tcp.example.com", "TLSA"): lk(S, EE),
        }
    )
    r = await mx_stage(client, "Example.COM.")
    assert (r.outcome, r.implicit, r.hosts) == (None, True, ((0, "example.com"),))
    assert r.mx_status is want
    assert r.host is not None
    assert r.host.addresses == ("192.0.2.1",)


@pytest.mark.parametrize(
    ("a", "outcome", "reason"),
    [
        (lk(B, rcode="SERVFAIL"), Outcome.BOGUS, Reason.DNSSEC_INVALID),
        (lk(X, rcode="TIMEOUT"), Outcome.DNS_FAILURE, Reason.ADDRESS_LOOKUP_FAILURE),
        (lk(S), None, None),  # no address at all: carry on, unreachable later
    ],
)
async def test_implicit_mx_without_address(
    a: Lookup, outcome: Outcome | None, reason: Reason | None
) -> None:
    client = TableClient(
        {("example.com", "MX"): lk(S), ("example.com", "A"): a, ("example.com", "AAAA"): lk(S)}
    )
    r = await mx_stage(client, "example.com")
    assert (r.outcome, r.reason, r.implicit) == (outcome, reason, True)
    assert r.host is not None
    assert r.host.addresses == ()


# -- host stage -----------------------------------------------------------------------------


async def test_secure_addresses_query_tlsa_at_host() -> None:
    client = TableClient(
        {
            ("mx.example.com", "A"): lk(S, "192.0.2.1"),
            ("mx.example.com", "AAAA"): lk(S, "2001:db8::1"),
            ("_25._tcp.mx.example.com", "TLSA"): lk(S, EE),
        }
    )
    h = await host_stage(client, "MX.Example.com.")
    assert h.name == "mx.example.com"
    assert h.address_status is S
    assert h.addresses == ("192.0.2.1", "2001:db8::1")
    assert (h.tlsa_base, h.tlsa_status, h.reason) == ("mx.example.com", TlsaStatus.USABLE, None)
    assert [r.to_text() for r in h.tlsa_records] == [EE]
    assert h.tlsa_lookup is not None
    assert h.tlsa_lookup.status is S


@pytest.mark.parametrize(
    ("tlsa", "status"),
    [
        (lk(S, PKIX), TlsaStatus.UNUSABLE),
        (lk(S, "3 1 1 abcd"), TlsaStatus.UNUSABLE),  # malformed digest length
        (lk(S), TlsaStatus.ABSENT),
        (lk(INS, EE), TlsaStatus.INSECURE),
        (lk(B, rcode="SERVFAIL"), TlsaStatus.BOGUS),
        (lk(X, rcode="TIMEOUT"), TlsaStatus.INDETERMINATE),
    ],
)
async def test_tlsa_statuses(tlsa: Lookup, status: TlsaStatus) -> None:
    client = TableClient(
        {
            ("mx.example.com", "A"): lk(S, "192.0.2.1"),
            ("mx.example.com", "AAAA"): lk(S),
            ("_25._tcp.mx.example.com", "TLSA"): tlsa,
        }
    )
    h = await host_stage(client, "mx.example.com")
    assert h.tlsa_status is status
    want_reason = {
        TlsaStatus.BOGUS: Reason.DNSSEC_INVALID,
        TlsaStatus.INDETERMINATE: Reason.TLSA_LOOKUP_FAILURE,
    }.get(status)
    assert h.reason is want_reason


async def test_insecure_addresses_skip_tlsa() -> None:
    client = TableClient(
        {("mx.example.com", "A"): lk(INS, "192.0.2.1"), ("mx.example.com", "AAAA"): lk(S)}
    )
    h = await host_stage(client, "mx.example.com")
    assert (h.address_status, h.tlsa_status, h.tlsa_base) == (INS, TlsaStatus.NOT_QUERIED, None)
    assert h.reason is None
    assert h.addresses == ("192.0.2.1",)
    assert client.tlsa_asked() == []


@pytest.mark.parametrize(("bad", "status"), [(B, B), (X, X)])
async def test_failed_address_lookup(bad: DnssecStatus, status: DnssecStatus) -> None:
    client = TableClient(
        {("mx.example.com", "A"): lk(S, "192.0.2.1"), ("mx.example.com", "AAAA"): lk(bad)}
    )
    h = await host_stage(client, "mx.example.com")
    assert (h.address_status, h.reason) == (status, Reason.ADDRESS_LOOKUP_FAILURE)
    assert h.tlsa_status is TlsaStatus.NOT_QUERIED
    assert h.addresses == ("192.0.2.1",)  # the good family is still usable for probing
    assert client.tlsa_asked() == []


async def test_no_address() -> None:
    client = TableClient({("mx.example.com", "AAAA"): lk(S)})  # A: secure NXDOMAIN
    h = await host_stage(client, "mx.example.com")
    assert (h.address_status, h.reason, h.tlsa_status) == (
        S,
        Reason.NO_ADDRESS,
        TlsaStatus.NOT_QUERIED,
    )


async def test_aaaa_only_host_is_enough() -> None:
    client = TableClient(
        {
            ("mx.example.com", "A"): lk(S),
            ("mx.example.com", "AAAA"): lk(S, "2001:db8::25"),
            ("_25._tcp.mx.example.com", "TLSA"): lk(S, EE),
        }
    )
    h = await host_stage(client, "mx.example.com")
    assert h.addresses == ("2001:db8::25",)
    assert h.tlsa_status is TlsaStatus.USABLE


async def test_invalid_host_name_is_not_looked_up() -> None:
    client = TableClient({})
    h = await host_stage(client, "x" * 64 + ".example")
    assert (h.a, h.aaaa, h.reason) == (None, None, Reason.NO_ADDRESS)
    assert client.asked == []


CHAIN = ("mx.example.com", "mx.provider.net")


def cname_table(status: DnssecStatus) -> dict[tuple[str, str], Lookup]:
    return {
        ("mx.example.com", "A"): lk(status, "192.0.2.1", chain=CHAIN),
        ("mx.example.com", "AAAA"): lk(status, chain=CHAIN),
    }


async def test_secure_cname_chain_uses_expanded_name_first() -> None:
    # §2.2.3: with a secure chain the expanded name is the TLSA base when it has TLSA.
    t = cname_table(S)
    t[("_25._tcp.mx.provider.net", "TLSA")] = lk(S, EE)
    t[("_25._tcp.mx.example.com", "TLSA")] = lk(S, PKIX)
    client = TableClient(t)
    h = await host_stage(client, "mx.example.com")
    assert (h.tlsa_base, h.tlsa_status) == ("mx.provider.net", TlsaStatus.USABLE)
    assert client.tlsa_asked() == ["_25._tcp.mx.provider.net"]


async def test_secure_cname_chain_falls_back_to_original_on_denial() -> None:
    t = cname_table(S)
    t[("_25._tcp.mx.provider.net", "TLSA")] = lk(S, rcode="NXDOMAIN")
    t[("_25._tcp.mx.example.com", "TLSA")] = lk(S, EE)
    client = TableClient(t)
    h = await host_stage(client, "mx.example.com")
    assert (h.tlsa_base, h.tlsa_status) == ("mx.example.com", TlsaStatus.USABLE)
    assert client.tlsa_asked() == ["_25._tcp.mx.provider.net", "_25._tcp.mx.example.com"]


async def test_secure_cname_chain_no_fallback_on_failure() -> None:
    # Only a secure denial moves on to the original name; a failure is never "no TLSA".
    t = cname_table(S)
    t[("_25._tcp.mx.provider.net", "TLSA")] = lk(X, rcode="TIMEOUT")
    t[("_25._tcp.mx.example.com", "TLSA")] = lk(S, EE)
    client = TableClient(t)
    h = await host_stage(client, "mx.example.com")
    assert (h.tlsa_base, h.tlsa_status) == ("mx.provider.net", TlsaStatus.INDETERMINATE)
    assert client.tlsa_asked() == ["_25._tcp.mx.provider.net"]


async def test_insecure_chain_with_secure_first_link_uses_original_only() -> None:
    # §2.2.2: the target zone is unsigned but the first CNAME is secure: DANE still applies,
    # with the original name as the only TLSA base.
    t = cname_table(INS)
    t[("mx.example.com", "CNAME")] = lk(S, "mx.provider.net.")
    t[("_25._tcp.mx.example.com", "TLSA")] = lk(S, EE)
    client = TableClient(t)
    h = await host_stage(client, "mx.example.com")
    assert (h.address_status, h.tlsa_base, h.tlsa_status) == (
        INS,
        "mx.example.com",
        TlsaStatus.USABLE,
    )
    assert client.tlsa_asked() == ["_25._tcp.mx.example.com"]


async def test_insecure_chain_with_insecure_first_link_skips_tlsa() -> None:
    t = cname_table(INS)
    t[("mx.example.com", "CNAME")] = lk(INS, "mx.provider.net.")
    client = TableClient(t)
    h = await host_stage(client, "mx.example.com")
    assert (h.tlsa_status, h.tlsa_base) == (TlsaStatus.NOT_QUERIED, None)
    assert client.tlsa_asked() == []


# -- through the real client and the fake resolver ------------------------------------------


async def test_host_stage_over_the_wire_with_cnames() -> None:
    host, target = "mx.example.com", "mx.provider.net"
    cname = (host, "CNAME", target + ".")
    async with running() as fake:
        fake.add(host, "A", Reply(ad=True, answer=[cname, (target, "A", "192.0.2.10")]))
        fake.add(host, "AAAA", Reply(ad=True, answer=[cname]))
        # The TLSA owner at the expanded name is itself an alias: followed, and secure.
        tlsa_alias = ("_25._tcp." + target, "CNAME", "tlsa.provider.net.")
        fake.add(
            "_25._tcp." + target,
            "TLSA",
            Reply(ad=True, answer=[tlsa_alias, ("tlsa.provider.net", "TLSA", EE)]),
        )
        async with DnsClient.open(fake.config()) as client:
            h = await host_stage(client, host)
    assert h.a is not None
    assert h.a.cname_chain == (host, target)
    assert h.addresses == ("192.0.2.10",)
    assert (h.address_status, h.tlsa_base, h.tlsa_status) == (S, target, TlsaStatus.USABLE)
    assert h.tlsa_lookup is not None
    assert h.tlsa_lookup.cname_chain == ("_25._tcp." + target, "tlsa.provider.net")


async def test_mx_stage_over_the_wire() -> None:
    async with running() as fake:
        fake.add("example.org", "MX", Reply(ad=True, answer=[("example.org", "MX", "0 .")]))
        fake.add("example.net", "MX", Reply(rcode="SERVFAIL", ede=(9, "DNSKEY missing")))
        fake.add(
            "example.net",
            "MX",
            Reply(answer=[("example.net", "MX", "10 mx.example.net.")]),
            cd=True,
        )
        async with DnsClient.open(fake.config()) as client:
            null = await mx_stage(client, "example.org")
            bogus = await mx_stage(client, "example.net")
    assert (null.outcome, null.mx_status) == (Outcome.NO_MAIL, S)
    assert (bogus.outcome, bogus.reason) == (Outcome.BOGUS, Reason.DNSSEC_INVALID)
    assert bogus.lookup.ede_code == 9
