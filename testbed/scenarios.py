"""The scenario catalogue: what each kind of domain looks like and what a scan must conclude.

Expected verdicts are written by hand from docs/verdicts.md (the binding contract), one row per
scenario; `testbed.world` builds each scenario's DNS and SMTP side and copies these rows into the
manifest. Per-host expectations (TLSA status, base name, SNI) come from the construction itself.
A test (tests/test_testbed_world.py) cross-checks each row against its hosts with the contract's
aggregation rules, so a row that contradicts its own construction fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.spec import SmtpBehaviour


@dataclass(frozen=True)
class Expect:
    """The domain-level part of a verdict (docs/verdicts.md); None where the field is null."""

    outcome: str
    starttls: bool | None = None
    dnssec: bool | None = None
    tlsa: str | None = None
    tlsa_unusable: bool | None = None
    dane: str | None = None
    stage: str | None = None
    reason: str | None = None
    reason_known: bool = True  # False: the contract leaves the exact reason open


def _ok(
    starttls: bool,
    dnssec: bool,
    tlsa: str,
    unusable: bool,
    dane: str,
    stage: str,
    reason: str | None = None,
    reason_known: bool = True,
) -> Expect:
    return Expect("ok", starttls, dnssec, tlsa, unusable, dane, stage, reason, reason_known)


def _fail(outcome: str, reason: str | None, reason_known: bool = True) -> Expect:
    return Expect(outcome, reason=reason, reason_known=reason_known)


# Frequently used rows.
_PLAINTEXT = _ok(False, False, "none", False, "none", "plaintext")
_STARTTLS = _ok(True, False, "none", False, "none", "starttls")
_DNSSEC = _ok(True, True, "none", False, "none", "dnssec")
_VALID = _ok(True, True, "all", False, "valid", "dane")
_UNUSABLE = _ok(True, True, "none", True, "none", "dnssec")


def _unreachable(reason: str) -> Expect:
    """The only MX host never greeted: the reason is its endpoint's (RFC 8460-style set)."""
    return _fail("unreachable", reason)


@dataclass(frozen=True)
class Scenario:
    """How a self-hosted scenario domain is built (read by testbed.world) and what it yields.

    ``zone``: "signed" / "unsigned" / "island" (signed zone under the unsigned TLD) / the name
    of a fault ("drop", "servfail", "truncate": zone served by that fault server) /
    "nxdomain" (not delegated at all).
    ``mx``: "host" (one MX host mx.<domain>), "none" (implicit MX), "null" (RFC 7505),
    "two" (mx1 with TLSA, mx2 without), "other-zone", "sub-zone", "cname" (MX host is a CNAME),
    "many" (world.MANY_MX_HOSTS hosts on world.MANY_MX_ADDRESSES addresses).
    ``tlsa``: what is published at the host's TLSA name: "" none, or a kind understood by world.
    ``profile``: which endpoint serves the host: behaviour + chain kind.
    ``host_tlsa``: the per-host TLSA status expected (RFC 7672 §2.2), for every host.
    """

    name: str
    expect: Expect
    zone: str = "unsigned"
    mx: str = "host"
    tlsa: str = ""
    behaviour: SmtpBehaviour = SmtpBehaviour.STARTTLS
    chain: str = "ee"  # ee, ee-rsa, ta, ta-root, ta-mismatch, stale, sni
    host_tlsa: str = "not_queried"
    signing_fault: str | None = None  # a testbed.spec.SigningFault value
    fault_rrset: str = ""  # "mx" or "tlsa": which RRset the signing fault breaks
    needs_ipv6: bool = False
    tlsa_base: str = "host"  # "host", "expanded", "original" (for MX host CNAMEs)
    reachable: bool = True
    catalogue: bool = True  # False: only in worlds whose weights name it (too big for every one)


def _s(name: str, expect: Expect, **kw: object) -> Scenario:
    return Scenario(name, expect, **kw)  # type: ignore[arg-type]


B = SmtpBehaviour
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        # MX shapes (RFC 5321 §5.1 implicit MX, RFC 7505 null MX).
        _s("no-mx", _STARTTLS, mx="none"),
        _s("no-mx-dane", _VALID, zone="signed", mx="none", tlsa="311", host_tlsa="usable"),
        _s("null-mx", _fail("no_mail", "null-mx"), zone="signed", mx="null"),
        _s("nxdomain", _fail("nxdomain", "nxdomain"), zone="nxdomain", mx="null"),
        # The ladder, self-hosted.
        _s("plain", _PLAINTEXT, behaviour=B.PLAIN),
        _s("starttls-unsigned", _STARTTLS),
        _s("signed-no-tlsa", _DNSSEC, zone="signed", host_tlsa="absent"),
        _s("dane-ee-311", _VALID, zone="signed", tlsa="311", host_tlsa="usable"),
        _s("dane-ee-301", _VALID, zone="signed", tlsa="301", host_tlsa="usable"),
        _s("dane-ee-312", _VALID, zone="signed", tlsa="312", host_tlsa="usable", chain="ee-rsa"),
        _s("dane-ta-211", _VALID, zone="signed", tlsa="ta211", host_tlsa="usable", chain="ta"),
        _s(
            "dane-ta-201",
            _VALID,
            zone="signed",
            tlsa="ta201",
            host_tlsa="usable",
            chain="ta-root",
        ),
        # §3.1.2: DANE-TA needs a name match; the leaf names an unrelated host.
        _s(
            "dane-ta-name-mismatch",
            _ok(True, True, "all", False, "broken", "tlsa", "certificate-host-mismatch"),
            zone="signed",
            tlsa="ta211",
            host_tlsa="usable",
            chain="ta-mismatch",
        ),
        # Certificate rolled over, TLSA still names the old key.
        _s(
            "tlsa-stale",
            _ok(True, True, "all", False, "broken", "tlsa", "tlsa-no-match"),
            zone="signed",
            tlsa="311-old",
            host_tlsa="usable",
            chain="stale",
        ),
        # §3.1.3: usages 0 and 1 are unusable for SMTP: TLS mandatory, no authentication.
        _s("tlsa-usage-01", _UNUSABLE, zone="signed", tlsa="pkix", host_tlsa="unusable"),
        # A SHA-256 digest that is not 32 bytes long cannot match anything: unusable.
        _s("tlsa-malformed", _UNUSABLE, zone="signed", tlsa="malformed", host_tlsa="unusable"),
        # RFC 4035 §5 failures.
        _s(
            "bogus-signature",
            _fail("bogus", "dnssec-invalid"),
            zone="signed",
            tlsa="311",
            host_tlsa="usable",
            signing_fault="bad-signature",
            fault_rrset="mx",
        ),
        _s(
            "rrsig-expired",
            _ok(True, True, "none", False, "broken", "dnssec", "dnssec-invalid"),
            zone="signed",
            tlsa="311",
            host_tlsa="bogus",
            signing_fault="expired",
            fault_rrset="tlsa",
        ),
        _s(
            "missing-dnskey",
            _fail("bogus", "dnssec-invalid"),
            zone="signed",
            tlsa="311",
            host_tlsa="usable",
            signing_fault="missing-dnskey",
        ),
        # Where the MX host lives.
        _s("mx-other-zone", _VALID, zone="signed", mx="other-zone", tlsa="311", host_tlsa="usable"),
        _s(
            "mx-unsigned-subzone",
            _DNSSEC,
            zone="signed",
            mx="sub-zone",
            tlsa="311",
            host_tlsa="not_queried",
        ),
        _s("island", _STARTTLS, zone="island", tlsa="311", host_tlsa="not_queried"),
        # CNAMEs (RFC 7672 §2.2.2-2.2.3).
        _s("tlsa-cname", _VALID, zone="signed", tlsa="311-cname", host_tlsa="usable"),
        _s(
            "mx-cname-expanded",
            _VALID,
            zone="signed",
            mx="cname",
            tlsa="311",
            host_tlsa="usable",
            tlsa_base="expanded",
        ),
        _s(
            "mx-cname-original",
            _VALID,
            zone="signed",
            mx="cname",
            tlsa="311",
            host_tlsa="usable",
            tlsa_base="original",
        ),
        # §8.1: the SNI is the TLSA base domain; the default chain is a decoy.
        _s("sni-chain", _VALID, zone="signed", tlsa="311", host_tlsa="usable", chain="sni"),
        _s(
            "partial-tlsa",
            _ok(True, True, "partial", False, "partial", "dnssec"),
            zone="signed",
            mx="two",
            tlsa="311",
            host_tlsa="usable",  # mx1; mx2 is "absent"
        ),
        _s("aaaa-v6", _VALID, zone="signed", tlsa="311", host_tlsa="usable", needs_ipv6=True),
        # DNS faults on the domain's own server.
        _s("dns-drop", _fail("dns_failure", "dns-failure"), zone="drop"),
        _s("dns-servfail", _fail("dns_failure", "dns-failure"), zone="servfail"),
        _s("dns-truncate", _VALID, zone="truncate", tlsa="311", host_tlsa="usable"),
        # SMTP faults.
        _s("smtp-refused", _unreachable("connection-refused"), behaviour=B.PLAIN, reachable=False),
        _s("smtp-silent", _unreachable("greeting-timeout"), behaviour=B.SILENT, reachable=False),
        _s("smtp-garbage", _unreachable("protocol-error"), behaviour=B.GARBAGE, reachable=False),
        _s(
            "banner-421", _unreachable("greeting-rejected"), behaviour=B.BANNER_421, reachable=False
        ),
        _s(
            "banner-554", _unreachable("greeting-rejected"), behaviour=B.BANNER_554, reachable=False
        ),
        _s("smtp-tarpit", _STARTTLS, behaviour=B.TARPIT),
        # Issue 21: hundreds of DANE-valid MX hosts on three addresses. With the default caps
        # (scanner.config: 10 MX hosts) the scanner judges a subset: never DANE-valid.
        _s(
            "many-mx",
            _ok(True, True, "partial", False, "partial", "dnssec", "not-probed-cap"),
            zone="signed",
            mx="many",
            tlsa="311",
            host_tlsa="usable",
            catalogue=False,
        ),
        _s("starttls-454", _PLAINTEXT, behaviour=B.STARTTLS_454),
        _s("tls-fail", _PLAINTEXT, behaviour=B.TLS_FAIL),
    ]
}

# --- providers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderKind:
    """A mail provider's side: its own zone, MX hosts, TLSA; the domain zone is the customer's."""

    name: str
    signed: bool
    tlsa: str  # "" or a TLSA kind as for Scenario
    behaviour: SmtpBehaviour
    chain: str
    host_tlsa: str


PROVIDER_KINDS: dict[str, ProviderKind] = {
    k.name: k
    for k in [
        ProviderKind("starttls", False, "", B.STARTTLS, "ee", "not_queried"),
        ProviderKind("dane-ee", True, "311", B.STARTTLS, "ee", "usable"),
        ProviderKind("signed-no-tlsa", True, "", B.STARTTLS, "ee", "absent"),
        ProviderKind("dane-ta", True, "ta211", B.STARTTLS, "ta", "usable"),
        ProviderKind("plain", False, "", B.PLAIN, "ee", "not_queried"),
    ]
}
# Largest provider first (Zipf-ish shares by rank).
PROVIDER_ORDER = ("starttls", "dane-ee", "signed-no-tlsa", "dane-ta", "plain")


def provider_expect(kind: ProviderKind, domain_signed: bool) -> Expect:
    """Provider kind x customer zone signed: the MX RRset's security is the customer's zone's."""
    starttls = kind.behaviour is not B.PLAIN
    if not domain_signed:
        # §2.2.1: an insecure MX RRset: no DANE, tlsa none, whatever the provider publishes.
        return _ok(starttls, False, "none", False, "none", "starttls" if starttls else "plaintext")
    if not starttls:
        return _ok(False, True, "none", False, "none", "plaintext")
    if kind.host_tlsa == "usable":
        return _VALID
    return _DNSSEC


def provider_scenario_name(kind: str, domain_signed: bool) -> str:
    return f"provider-{kind}-{'signed' if domain_signed else 'unsigned'}"


PROVIDER_SCENARIOS: dict[str, tuple[str, bool]] = {
    provider_scenario_name(k, s): (k, s) for k in PROVIDER_ORDER for s in (True, False)
}


def expect_of(scenario: str) -> Expect:
    if scenario in PROVIDER_SCENARIOS:
        kind, signed = PROVIDER_SCENARIOS[scenario]
        return provider_expect(PROVIDER_KINDS[kind], signed)
    return SCENARIOS[scenario].expect


# Every world of CATALOGUE_MIN_DOMAINS or more has each of these at least once.
ALL_SCENARIOS: tuple[str, ...] = (
    *(name for name, s in SCENARIOS.items() if s.catalogue),
    *PROVIDER_SCENARIOS,
)

# --- weights ------------------------------------------------------------------------------------

# "provider" is the share of provider-hosted domains; "provider-signed" the share of those whose
# own zone is signed. Every other key is a self-hosted scenario's relative weight.
DEFAULT_WEIGHTS: dict[str, float] = {
    "provider": 0.70,
    "provider-signed": 0.15,
    "plain": 0.030,
    "starttls-unsigned": 0.100,
    "signed-no-tlsa": 0.030,
    "dane-ee-311": 0.025,
    "no-mx": 0.010,
    "nxdomain": 0.010,
    "null-mx": 0.004,
    "dane-ee-301": 0.003,
    "dane-ee-312": 0.003,
    "dane-ta-211": 0.003,
    "dane-ta-201": 0.002,
    "tlsa-stale": 0.004,
    "tlsa-usage-01": 0.002,
    "starttls-454": 0.003,
    "tls-fail": 0.003,
    "smtp-refused": 0.004,
    "smtp-silent": 0.002,
    "banner-421": 0.002,
    "banner-554": 0.002,
    "smtp-tarpit": 0.002,
    "dns-servfail": 0.002,
    "dns-drop": 0.001,
    "partial-tlsa": 0.002,
    "island": 0.002,
}

# Scenarios a tail domain may be drawn into: everything except fragile one-offs that need a
# dedicated address or ::1 (those appear once each through the catalogue).
CATALOGUE_MIN_DOMAINS = 60


def provider_shares(count: int) -> list[float]:
    """Zipf (1/rank) shares of the provider-hosted domains."""
    raw = [1.0 / (i + 1) for i in range(count)]
    total = sum(raw)
    return [r / total for r in raw]


# --- nights --------------------------------------------------------------------------------------

# One rung up: enable STARTTLS, sign the zone, publish TLSA (and fix what broke).
CLIMB: dict[str, str] = {
    "plain": "starttls-unsigned",
    "starttls-454": "starttls-unsigned",
    "tls-fail": "starttls-unsigned",
    "starttls-unsigned": "signed-no-tlsa",
    "signed-no-tlsa": "dane-ee-311",
    "tlsa-stale": "dane-ee-311",
    "tlsa-usage-01": "dane-ee-311",
    "partial-tlsa": "dane-ee-311",
}
# Regressions: certificate rolled without updating TLSA, DNSSEC turned off, STARTTLS broken.
REGRESS: dict[str, tuple[str, ...]] = {
    "dane-ee-311": ("tlsa-stale", "starttls-unsigned"),
    "dane-ee-301": ("tlsa-stale", "starttls-unsigned"),
    "dane-ee-312": ("tlsa-stale", "starttls-unsigned"),
    "dane-ta-211": ("starttls-unsigned",),
    "dane-ta-201": ("starttls-unsigned",),
    "signed-no-tlsa": ("starttls-unsigned",),
    "starttls-unsigned": ("starttls-454", "tls-fail"),
}


def step(scenario: str, u_move: float, u_pick: float, climb: float, regress: float) -> str:
    """One night for one domain: climb with probability ``climb``, regress with ``regress``.

    Provider-hosted domains climb by signing their own zone and regress by unsigning it.
    """
    if scenario in PROVIDER_SCENARIOS:
        kind, signed = PROVIDER_SCENARIOS[scenario]
        if u_move < climb and not signed:
            return provider_scenario_name(kind, True)
        if climb <= u_move < climb + regress and signed:
            return provider_scenario_name(kind, False)
        return scenario
    if u_move < climb and scenario in CLIMB:
        return CLIMB[scenario]
    if climb <= u_move < climb + regress and scenario in REGRESS:
        options = REGRESS[scenario]
        return options[int(u_pick * len(options)) % len(options)]
    return scenario
