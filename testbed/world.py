"""Build a world: (seed, size, night, weights) -> WorldPlan + ground-truth manifest. Pure, no I/O
except writing the PEM files of the certificates the plan points at.

Addresses inside the world's 127.<block>.0.0/16:
  .0.1 resolver, .0.2 root, .0.3 TLDs, .0.4 domains, .0.5 zones below domains,
  .0.10 / .0.11 / .0.12 fault servers (drop, servfail, truncate), .0.100-.0.249 addresses where
  nothing listens (SMTP connect refused), .1.1-.254.254 SMTP endpoints (spread over /24s).
Hosting shape (issue 19: a world where thousands of hosts share an address measures the
scanner's politeness limit, not the scanner): most self-hosted MX hosts sit alone on an address
of their own, the rest share one with 1-3 others (a small shared-hosting box, one multi-SAN
leaf); a provider's MX host is on tens of addresses sized by its customers, one certificate per
host. Certificates are per address (self-hosted) or per MX host (providers), never per domain.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import idna

from testbed import pki, scenarios
from testbed.scenarios import PROVIDER_KINDS, PROVIDER_ORDER, PROVIDER_SCENARIOS, SCENARIOS
from testbed.smtpbehaviours import PRESENTS_CHAIN
from testbed.spec import (
    Chain,
    DnsFault,
    DnsServer,
    Record,
    Signing,
    SigningFault,
    SmtpBehaviour,
    SmtpEndpoint,
    SmtpSpec,
    WorldPlan,
    Zone,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# Signed TLDs and their algorithms (RFC 8624 recommended ones); `plainland` is unsigned.
TLDS: dict[str, str | None] = {
    "alpha": "ECDSAP256SHA256",
    "beta": "ECDSAP256SHA256",
    "gamma": "RSASHA256",
    "delta": "ED25519",
    "plainland": None,
}
SIGNED_TLDS = ("alpha", "beta", "gamma", "delta")
TLD_SHARES = (0.4, 0.3, 0.15, 0.15)
UNSIGNED_TLD = "plainland"
PROVIDER_NAMES = ("postbox", "mailhaus", "relaywerk", "inboxen", "sendly", "courier", "letterbox")
# Self-hosted MX hosts: this share of them alone on an address, the others on addresses of
# SHARED_SIZES hosts (drawn per address from the seed), while the block has room (`fitted_alone`).
HOSTS_ALONE = 0.7
SHARED_SIZES = (2, 3, 4)
SMTP_ADDRESSES = 254 * 254  # 127.B.1.1-127.B.254.254
REFUSING_ADDRESSES = 150  # 127.B.0.100-127.B.0.249, one host each until they wrap
# The "many-mx" scenario (issue 21): one domain listing hundreds of MX hosts on few addresses.
MANY_MX_HOSTS = 300
MANY_MX_ADDRESSES = 3
# A provider's MX host: one address per PROVIDER_CUSTOMERS_PER_ADDRESS customer domains, at
# least 2 and at most PROVIDER_MAX_ADDRESSES (a big provider's MX name answers with tens of A).
PROVIDER_MAX_ADDRESSES = 32
PROVIDER_CUSTOMERS_PER_ADDRESS = 100
SOA_TIMERS = "3600 600 86400 300"

_WORDS_A = (
    "north", "blue", "quiet", "amber", "swift", "iron", "silver", "green", "red", "bright",
    "old", "lucky", "wild", "sunny", "stone", "river", "cedar", "maple", "frost", "golden",
)  # fmt: skip
_WORDS_B = (
    "mail", "works", "shop", "labs", "haus", "garden", "bakery", "studio", "media", "tech",
    "farm", "clinic", "books", "travel", "hotel", "design", "energy", "school", "music", "wood",
)  # fmt: skip
_IDN_WORDS = ("bücher", "münchen", "café", "straße", "smörgås", "日本", "παράδειγμα", "пример")


@dataclass(frozen=True)
class Params:
    seed: int
    domains: int
    night: int = 0
    block: int = 100
    delay: tuple[float, float] = (0.0, 0.0)
    ipv6: bool = False
    weights: dict[str, float] | None = None
    greeting_delay: float = 1.5
    climb: float = 0.05  # share of domains climbing a rung per night
    regress: float = 0.01  # share regressing per night
    providers: int = 5


@dataclass
class DomainDraft:
    index: int
    line: str  # as listed (U-label form for IDNs)
    name: str  # A-label, no trailing dot
    tld: str
    scenario: str
    pinned: bool  # catalogue domains and those under the unsigned TLD never move at night


@dataclass
class Built:
    plan: WorldPlan
    manifest: list[dict[str, Any]]
    lines: list[str]


def unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a hash of ``parts``: the world's only randomness."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


_SIXTEEN = struct.Struct(">16I")
_INV32 = 1.0 / 2.0**32


def units(*parts: object) -> list[float]:
    """Sixteen uniforms in [0, 1) from one hash of ``parts`` (cheaper than sixteen `unit` calls)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=64).digest()
    return [x * _INV32 for x in _SIXTEEN.unpack(h)]


def addr(block: int, index: int) -> str:
    """The index-th SMTP address of the block, in 127.B.1.1-127.B.254.254 (no .0 or .255).

    Consecutive addresses fall in different /24s (127.B.1.1, 127.B.2.1, ...): on the internet
    the self-hosted tail is spread over as many networks as it has servers, so a scanner's
    per-/24 politeness limit binds here the way it binds there, not on four crowded /24s.
    """
    if not 0 <= index < SMTP_ADDRESSES:
        raise ValueError("world too large for its /16")
    host, net = divmod(index, 254)
    return f"127.{block}.{net + 1}.{host + 1}"


def address_alone(hosts_alone: float) -> float:
    """The chance that a new self-hosted address is drawn for one host, such that a share
    ``hosts_alone`` of the hosts end up alone (the others fill SHARED_SIZES addresses)."""
    shared = sum(SHARED_SIZES) / len(SHARED_SIZES)
    return hosts_alone * shared / (1.0 - hosts_alone + hosts_alone * shared)


def fitted_alone(hosts: int, room: int) -> float:
    """`address_alone` for ``hosts`` self-hosted hosts on at most ``room`` addresses: as drawn
    for `HOSTS_ALONE` if they fit, else fewer alone so that they do (a 300k world holds ~84,000
    self-hosted hosts; the /16 has 64,516 SMTP addresses). ValueError if even no host alone
    would not fit."""
    want = address_alone(HOSTS_ALONE)
    shared = sum(SHARED_SIZES) / len(SHARED_SIZES)
    if room <= 0 or hosts / room > shared:
        raise ValueError(f"{hosts} self-hosted MX hosts do not fit {room} addresses of a /16")
    # Expected hosts per address a + (1 - a) * shared must reach hosts / room.
    return min(want, (shared - hosts / room) / (shared - 1.0))


def _hosts_on(p: float, u: float) -> int:
    """Hosts an address takes: 1 with chance ``p``, else one of SHARED_SIZES (u uniform)."""
    if u < p:
        return 1
    return SHARED_SIZES[min(len(SHARED_SIZES) - 1, int((u - p) / (1.0 - p) * len(SHARED_SIZES)))]


def infra(block: int) -> dict[str, str]:
    return {
        "resolver": f"127.{block}.0.1",
        "root": f"127.{block}.0.2",
        "tld": f"127.{block}.0.3",
        "domains": f"127.{block}.0.4",
        "subs": f"127.{block}.0.5",
        "fault-drop": f"127.{block}.0.10",
        "fault-servfail": f"127.{block}.0.11",
        "fault-truncate": f"127.{block}.0.12",
    }


# --- which domain gets which scenario ------------------------------------------------------------


def catalogue(ipv6: bool) -> list[str]:
    names = [s for s, sc in SCENARIOS.items() if sc.catalogue and (ipv6 or not sc.needs_ipv6)]
    return names + list(PROVIDER_SCENARIOS)


def _draw(u3: list[float], weights: dict[str, float], providers: int) -> str:
    if u3[0] < weights.get("provider", 0.0):
        shares = scenarios.provider_shares(providers)
        u = u3[1]
        p = 0
        while p < providers - 1 and u >= shares[p]:
            u -= shares[p]
            p += 1
        kind = PROVIDER_ORDER[p % len(PROVIDER_ORDER)]
        signed = u3[2] < weights.get("provider-signed", 0.0)
        return scenarios.provider_scenario_name(kind, signed)
    own = [(k, w) for k, w in weights.items() if k in SCENARIOS and w > 0]
    total = sum(w for _, w in own)
    if not own:
        return "starttls-unsigned"
    u = u3[3] * total
    for k, w in own:
        if u < w:
            return k
        u -= w
    return own[-1][0]


def _label(u: list[float], index: int) -> str:
    a = _WORDS_A[int(u[0] * len(_WORDS_A))]
    b = _WORDS_B[int(u[1] * len(_WORDS_B))]
    if index % 53 == 7:  # a few IDNs, so the scanner's IDNA path is exercised
        a = _IDN_WORDS[int(u[2] * len(_IDN_WORDS))]
    sep = "-" if u[3] < 0.3 else ""
    return f"{a}{sep}{b}{index}"


_UNSIGNED_OK = {"plain", "starttls-unsigned", "no-mx", "smtp-refused", "starttls-454"}


def plan_domains(p: Params) -> list[DomainDraft]:
    """Night 0 by construction, then nights 1..K stepped per domain (RNG from seed, night, name)."""
    weights = dict(scenarios.DEFAULT_WEIGHTS if p.weights is None else p.weights)
    unknown = set(weights) - set(SCENARIOS) - {"provider", "provider-signed"}
    if unknown:
        raise ValueError(f"unknown scenario weights: {sorted(unknown)}")
    if not p.ipv6:
        weights.pop("aaaa-v6", None)
    cat = catalogue(p.ipv6) if p.domains >= scenarios.CATALOGUE_MIN_DOMAINS else []
    drafts: list[DomainDraft] = []
    for i in range(p.domains):
        u = units(p.seed, "domain", i)
        pinned = i < len(cat)
        scenario = cat[i] if pinned else _draw(u[0:4], weights, p.providers)
        sc = SCENARIOS.get(scenario)
        if sc is not None and sc.zone == "island":
            tld = UNSIGNED_TLD
        elif (scenario in _UNSIGNED_OK or scenario.endswith("-unsigned")) and u[4] < 0.04:
            tld, pinned = UNSIGNED_TLD, True
        else:
            v = u[5]
            k = 0
            while k < len(SIGNED_TLDS) - 1 and v >= TLD_SHARES[k]:
                v -= TLD_SHARES[k]
                k += 1
            tld = SIGNED_TLDS[k]
        ulabel = _label(u[6:10], i)
        line = f"{ulabel}.{tld}"
        alabel = ulabel
        if not ulabel.isascii():
            alabel = idna.encode(ulabel, uts46=True, transitional=False).decode()
        drafts.append(DomainDraft(i, line, f"{alabel}.{tld}", tld, scenario, pinned))
    for night in range(1, p.night + 1):
        for d in drafts:
            if not d.pinned:
                u = units(p.seed, night, d.name)
                d.scenario = scenarios.step(d.scenario, u[0], u[1], p.climb, p.regress)
    return drafts


# --- endpoints and certificates -------------------------------------------------------------------


@dataclass
class _Cert:
    """One key + chain, presented by one or more addresses (a provider host, a shared address)."""

    label: str
    kind: str  # ee, ee-rsa, ta, ta-root, ta-mismatch, stale, sni
    names: list[str]
    rsa_index: int | None
    issued: pki.Issued | None = None
    decoy: pki.Issued | None = None
    old_spki: bytes = b""


# Leaves whose scenario compares keys (a rollover's old and new key, an SNI decoy's) get a key
# of their own; the others share `pki.Pki.pool_key` keys.
_OWN_KEY = frozenset({"stale", "sni"})


@dataclass
class _Addr:
    address: str
    behaviour: SmtpBehaviour
    banner_delay: float
    cert: _Cert
    hosts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _TlsaRef:
    """A TLSA record whose data needs the certificate, filled in once certificates exist."""

    owner: str
    kind: str
    host: str


class _Builder:
    def __init__(self, p: Params, workdir: Path, alone: float) -> None:
        self.p = p
        self.alone = alone  # chance that a new self-hosted address is for one host
        self.ip = infra(p.block)
        self.pki = pki.Pki(workdir / "pki", p.seed)
        self.addrs: list[_Addr] = []
        self.pools: dict[tuple[str, str, float], tuple[_Addr, int]] = {}  # -> address, room
        self.self_hosted: list[_Addr] = []  # the addresses `pooled` opened
        self.host_cert: dict[str, _Cert] = {}
        self.v6_hosts: list[str] = []
        self.refused_next = 0
        self.zones: dict[str, list[Record | _TlsaRef]] = {}
        self.zone_server: dict[str, str] = {}
        self.zone_signing: dict[str, Signing | None] = {}
        self.secure_children: dict[str, list[str]] = {}
        self.manifest: list[dict[str, Any]] = []
        self.provider_hosts: dict[str, list[dict[str, Any]]] = {}
        # Host -> the TLSA records it published the night before, for a certificate rollover
        # that forgot the TLSA update (see :func:`previous_tlsa`).
        self.previous: dict[str, list[str]] = {}

    # addresses ------------------------------------------------------------------------------
    def _new_addr(self, behaviour: SmtpBehaviour, cert: _Cert, delay: float) -> _Addr:
        n = len(self.addrs)
        # Past the block's end the world is placed again with more sharing (see `_placed`).
        a = _Addr(addr(self.p.block, n) if n < SMTP_ADDRESSES else "", behaviour, delay, cert)
        self.addrs.append(a)
        return a

    def _new_cert(self, kind: str, label: str, n: int) -> _Cert:
        rsa = None
        if kind == "ee-rsa" or (kind in ("ee", "ta") and n % 5 == 4):
            rsa = self.p.seed + n  # RSA keys for some hosts, ECDSA for most
        return _Cert(label, kind, [], rsa)

    def pooled(self, host: str, behaviour: SmtpBehaviour, kind: str) -> str:
        """Place a self-hosted MX host on an address of its profile, alone or shared with a few
        others as drawn for that address; returns the address."""
        delay = self.p.greeting_delay if behaviour is SmtpBehaviour.TARPIT else 0.0
        key = (behaviour.value, kind, delay)
        a, room = self.pools.get(key, (None, 0))
        if a is None or len(a.hosts) >= room:
            n = len(self.addrs)
            a = self._new_addr(behaviour, self._new_cert(kind, f"addr-{n}", n), delay)
            room = _hosts_on(self.alone, unit(self.p.seed, "hosts-on", n))
            self.pools[key] = (a, room)
            self.self_hosted.append(a)
        a.hosts.append(host)
        a.cert.names.append(host)
        self.host_cert[host] = a.cert
        return a.address

    def refused(self) -> str:
        """An address in the block where nothing listens (connect refused)."""
        k = self.refused_next % REFUSING_ADDRESSES
        self.refused_next += 1
        return f"127.{self.p.block}.0.{100 + k}"

    # zones ------------------------------------------------------------------------------------
    def zone(
        self, origin: str, server: str, signing: Signing | None, ns: str
    ) -> list[Record | _TlsaRef]:
        rname = "hostmaster." + ("" if origin == "." else origin)
        recs: list[Record | _TlsaRef] = [
            Record(origin, "SOA", f"{ns} {rname} {self.p.night + 1} {SOA_TIMERS}"),
            Record(origin, "NS", ns),
        ]
        self.zones[origin] = recs
        self.zone_server[origin] = server
        self.zone_signing[origin] = signing
        return recs

    def delegate(self, parent: str, child: str, ns: str, secure: bool) -> None:
        self.zones[parent].append(Record(child, "NS", ns))
        if secure:
            self.secure_children.setdefault(parent, []).append(child)

    def algorithm(self, name: str) -> str:
        u = unit(self.p.seed, "alg", name)
        return "RSASHA256" if u < 0.08 else "ED25519" if u < 0.16 else "ECDSAP256SHA256"

    # the infrastructure -----------------------------------------------------------------------
    def infrastructure(self) -> None:
        ip = self.ip
        root = self.zone(".", "root", Signing(key_id="root"), "ns-root.nic.alpha.")
        root.append(Record("ns-root.nic.alpha.", "A", ip["root"]))
        for tld, alg in TLDS.items():
            ns = f"ns-tld.nic.{tld}."
            root.append(Record(f"{tld}.", "NS", ns))
            root.append(Record(ns, "A", ip["tld"]))
            if alg:
                self.secure_children.setdefault(".", []).append(f"{tld}.")
            signing = Signing(algorithm=alg, key_id=f"tld-{tld}") if alg else None
            z = self.zone(f"{tld}.", "tld", signing, ns)
            z.append(Record(ns, "A", ip["tld"]))
            for name, server in (
                ("ns-dom", "domains"),
                ("ns-sub", "subs"),
                ("ns-drop", "fault-drop"),
                ("ns-servfail", "fault-servfail"),
                ("ns-trunc", "fault-truncate"),
            ):
                z.append(Record(f"{name}.nic.{tld}.", "A", ip[server]))
            if tld == "alpha":
                z.append(Record("ns-root.nic.alpha.", "A", ip["root"]))

    def providers(self, drafts: list[DomainDraft]) -> None:
        """Provider zones: two MX hosts each, several addresses per host sized by customers."""
        counts: dict[str, int] = {}
        for d in drafts:
            if d.scenario in PROVIDER_SCENARIOS:
                k = PROVIDER_SCENARIOS[d.scenario][0]
                counts[k] = counts.get(k, 0) + 1
        for rank, kind_name in enumerate(PROVIDER_ORDER):
            kind = PROVIDER_KINDS[kind_name]
            pname = PROVIDER_NAMES[rank % len(PROVIDER_NAMES)]
            tld = SIGNED_TLDS[rank % len(SIGNED_TLDS)]
            origin = f"{pname}.{tld}."
            signing = Signing(self.algorithm(origin), key_id=origin) if kind.signed else None
            z = self.zone(origin, "domains", signing, f"ns-dom.nic.{tld}.")
            self.delegate(f"{tld}.", origin, f"ns-dom.nic.{tld}.", kind.signed)
            customers = counts.get(kind_name, 0)
            n_addr = max(
                2,
                min(PROVIDER_MAX_ADDRESSES, math.ceil(customers / PROVIDER_CUSTOMERS_PER_ADDRESS)),
            )
            hosts = []
            for h in (1, 2):
                host = f"mx{h}.{origin}"
                n = len(self.addrs)
                cert = self._new_cert(kind.chain, f"{pname}-mx{h}", n)
                cert.names.append(host)
                self.host_cert[host] = cert
                addrs = []
                for _ in range(n_addr):
                    a = self._new_addr(kind.behaviour, cert, 0.0)
                    a.hosts.append(host)
                    addrs.append(a.address)
                    z.append(Record(host, "A", a.address))
                if self.p.ipv6 and kind_name == "dane-ee" and h == 1:
                    z.append(Record(host, "AAAA", "::1"))
                    self.v6_hosts.append(host)
                    addrs.append("::1")
                if kind.tlsa:
                    z.append(_TlsaRef(f"_25._tcp.{host}", kind.tlsa, host))
                hosts.append(
                    {
                        "name": host.rstrip("."),
                        "preference": 10 * h,
                        "addresses": addrs,
                        "tlsa_status": kind.host_tlsa,
                        "tlsa_base": None if kind.host_tlsa == "not_queried" else host.rstrip("."),
                        "sni": None if kind.host_tlsa == "not_queried" else host.rstrip("."),
                        "reachable": True,
                        "behaviour": kind.behaviour.value,
                    }
                )
            self.provider_hosts[kind_name] = hosts

    # one domain ---------------------------------------------------------------------------------
    def domain(self, d: DomainDraft) -> None:
        origin = f"{d.name}."
        tld = f"{d.tld}."
        ns_dom = f"ns-dom.nic.{d.tld}."
        entry: dict[str, Any] = {
            "index": d.index,
            "input": d.line,
            "domain": d.name,
            "tld": d.tld,
            "scenario": d.scenario,
            "provider": None,
        }
        if d.scenario in PROVIDER_SCENARIOS:
            kind_name, signed = PROVIDER_SCENARIOS[d.scenario]
            signing = Signing(self.algorithm(origin), key_id=origin) if signed else None
            z = self.zone(origin, "domains", signing, ns_dom)
            self.delegate(tld, origin, ns_dom, signed)
            hosts = self.provider_hosts[kind_name]
            for h in hosts:
                z.append(Record(origin, "MX", f"{h['preference']} {h['name']}."))
            entry["provider"] = kind_name
            entry["zone_signed"] = signed
            self._expect(entry, scenarios.expect_of(d.scenario), hosts)
            return
        sc = SCENARIOS[d.scenario]
        hosts = self._self_hosted(d, sc, origin, tld, ns_dom, entry)
        self._expect(entry, sc.expect, hosts)

    def _self_hosted(
        self,
        d: DomainDraft,
        sc: scenarios.Scenario,
        origin: str,
        tld: str,
        ns_dom: str,
        entry: dict[str, Any],
    ) -> list[dict[str, Any]]:
        signed = sc.zone in ("signed", "island", "truncate")
        entry["zone_signed"] = signed
        if sc.zone == "nxdomain":
            return []
        server, ns = {
            "drop": ("fault-drop", f"ns-drop.nic.{d.tld}."),
            "servfail": ("fault-servfail", f"ns-servfail.nic.{d.tld}."),
            "truncate": ("fault-truncate", f"ns-trunc.nic.{d.tld}."),
        }.get(sc.zone, ("domains", ns_dom))
        signing = None
        if signed:
            fault = SigningFault(sc.signing_fault) if sc.signing_fault else None
            owner, rdtype = None, None
            if sc.fault_rrset == "mx":
                owner, rdtype = origin, "MX"
            elif sc.fault_rrset == "tlsa":
                owner, rdtype = f"_25._tcp.mx.{origin}", "TLSA"
            signing = Signing(self.algorithm(origin), origin, fault, owner, rdtype)
        z = self.zone(origin, server, signing, ns)
        # The island's parent is unsigned: no DS anywhere (RFC 4035 §4.3 insecure).
        self.delegate(tld, origin, ns, signed and sc.zone != "island")
        if sc.zone in ("drop", "servfail"):
            z.append(Record(origin, "MX", f"10 mx.{origin}"))
            z.append(Record(f"mx.{origin}", "A", self.refused()))
            return []
        if sc.mx == "null":
            z.append(Record(origin, "MX", "0 ."))
            return []

        def place(host: str) -> str:
            if not sc.reachable and sc.behaviour is SmtpBehaviour.PLAIN:
                return self.refused()
            return self.pooled(host, sc.behaviour, sc.chain)

        def host_entry(
            name: str, addrs: list[str], status: str, base: str, pref: int
        ) -> dict[str, Any]:
            return {
                "name": name.rstrip("."),
                "preference": pref,
                "addresses": addrs,
                "tlsa_status": status,
                # §2.2.2: no TLSA base without secure address records; no SNI is then expected.
                "tlsa_base": None if status == "not_queried" else base.rstrip("."),
                "sni": None if status == "not_queried" else base.rstrip("."),
                "reachable": sc.reachable,
                "behaviour": "refused"
                if not sc.reachable and sc.behaviour is SmtpBehaviour.PLAIN
                else sc.behaviour.value,
            }

        if sc.mx == "none":  # RFC 5321 §5.1 implicit MX: the domain's own address
            a = place(origin)
            z.append(Record(origin, "A", a))
            if sc.tlsa:
                z.append(_TlsaRef(f"_25._tcp.{origin}", sc.tlsa, origin))
            return [host_entry(origin, [a], sc.host_tlsa, origin, 0)]
        if sc.mx == "two":
            out = []
            for n, status in ((1, sc.host_tlsa), (2, "absent")):
                host = f"mx{n}.{origin}"
                a = place(host)
                z.append(Record(origin, "MX", f"{10 * n} {host}"))
                z.append(Record(host, "A", a))
                if n == 1:
                    z.append(_TlsaRef(f"_25._tcp.{host}", sc.tlsa, host))
                out.append(host_entry(host, [a], status, host, 10 * n))
            return out
        if sc.mx == "other-zone":
            label, _, _ = d.name.partition(".")
            other = f"{label}-mailhost.{d.tld}."
            oz = self.zone(other, "domains", Signing(self.algorithm(other), other), ns_dom)
            self.delegate(tld, other, ns_dom, True)
            host = f"mx.{other}"
            a = place(host)
            z.append(Record(origin, "MX", f"10 {host}"))
            oz.append(Record(host, "A", a))
            oz.append(_TlsaRef(f"_25._tcp.{host}", sc.tlsa, host))
            return [host_entry(host, [a], sc.host_tlsa, host, 10)]
        if sc.mx == "sub-zone":
            sub = f"mail.{origin}"
            ns_sub = f"ns-sub.nic.{d.tld}."
            sz = self.zone(sub, "subs", None, ns_sub)
            self.delegate(origin, sub, ns_sub, False)
            host = f"mx.{sub}"
            a = place(host)
            z.append(Record(origin, "MX", f"10 {host}"))
            sz.append(Record(host, "A", a))
            sz.append(_TlsaRef(f"_25._tcp.{host}", sc.tlsa, host))
            return [host_entry(host, [a], sc.host_tlsa, host, 10)]
        if sc.mx == "cname":  # RFC 7672 §2.2.2: the MX host is an alias
            alias, target = f"mail.{origin}", f"mx-real.{origin}"
            base = target if sc.tlsa_base == "expanded" else alias
            a = place(target)
            self.host_cert[alias] = self.host_cert[target]
            z.append(Record(origin, "MX", f"10 {alias}"))
            z.append(Record(alias, "CNAME", target))
            z.append(Record(target, "A", a))
            z.append(_TlsaRef(f"_25._tcp.{base}", sc.tlsa, target))
            return [host_entry(alias, [a], sc.host_tlsa, base, 10)]
        if sc.mx == "many":
            return self._many_mx(sc, origin, d.tld, z, host_entry)
        host = f"mx.{origin}"
        a = place(host)
        z.append(Record(origin, "MX", f"10 {host}"))
        z.append(Record(host, "A", a))
        addrs = [a]
        if sc.needs_ipv6:
            z.append(Record(host, "AAAA", "::1"))
            self.v6_hosts.append(host)
            addrs.append("::1")
        if sc.tlsa == "311-cname":  # RFC 7672 §2.2.3: TLSA reached through a CNAME
            z.append(Record(f"_25._tcp.{host}", "CNAME", f"tlsa-rr.{origin}"))
            z.append(_TlsaRef(f"tlsa-rr.{origin}", "311", host))
        elif sc.tlsa:
            z.append(_TlsaRef(f"_25._tcp.{host}", sc.tlsa, host))
        return [host_entry(host, addrs, sc.host_tlsa, host, 10)]

    def _many_mx(
        self,
        sc: scenarios.Scenario,
        origin: str,
        tld: str,
        z: list[Record | _TlsaRef],
        host_entry: Callable[[str, list[str], str, str, int], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """MANY_MX_HOSTS hosts, each with its own TLSA RRset (so each gets its own SNI), spread
        round-robin over MANY_MX_ADDRESSES addresses of their own that share one key.

        The hosts live in a signed zone of their own on another server: had the MX answer
        carried their addresses as additional data, Unbound would check hundreds of
        signatures for it, past its per-query validation budget (the KeyTrap limits).
        """
        sub, ns_sub = f"hosts.{origin}", f"ns-sub.nic.{tld}."
        hz = self.zone(sub, "subs", Signing(self.algorithm(sub), sub), ns_sub)
        self.delegate(origin, sub, ns_sub, True)
        n = len(self.addrs)
        cert = self._new_cert(sc.chain, f"many-{n}", n)
        cert.names.append(f"mx000.{sub}")  # DANE-EE (§3.1.1): names are not checked
        addrs = [self._new_addr(sc.behaviour, cert, 0.0) for _ in range(MANY_MX_ADDRESSES)]
        hosts = []
        for i in range(MANY_MX_HOSTS):
            host, a, pref = f"mx{i:03d}.{sub}", addrs[i % len(addrs)], 10 + i
            a.hosts.append(host)
            self.host_cert[host] = cert
            z.append(Record(origin, "MX", f"{pref} {host}"))
            hz.append(Record(host, "A", a.address))
            hz.append(_TlsaRef(f"_25._tcp.{host}", sc.tlsa, host))
            hosts.append(host_entry(host, [a.address], sc.host_tlsa, host, pref))
        return hosts

    def _expect(
        self, entry: dict[str, Any], e: scenarios.Expect, hosts: list[dict[str, Any]]
    ) -> None:
        entry.update(
            outcome=e.outcome,
            starttls=e.starttls,
            dnssec=e.dnssec,
            tlsa=e.tlsa,
            tlsa_unusable=e.tlsa_unusable,
            dane=e.dane,
            stage=e.stage,
            reason=e.reason,
            reason_known=e.reason_known,
            # Without an MX answer the scanner cannot know the hosts.
            mx_hosts=hosts if e.outcome in ("ok", "unreachable") else [],
        )
        self.manifest.append(entry)

    # certificates, TLSA, the plan --------------------------------------------------------------
    def issue(self) -> None:
        seen: set[int] = set()
        for a in self.addrs:
            c = a.cert
            if id(c) in seen or a.behaviour not in PRESENTS_CHAIN:
                continue  # an address that never completes a handshake needs no certificate
            seen.add(id(c))
            # A rolled-over host serves a key no other kind uses, so it never equals last
            # night's key of the same address label.
            label = f"{c.label}-rolled" if c.kind == "stale" else c.label
            if c.kind in _OWN_KEY or c.rsa_index is not None:
                key = self.pki.key(label, c.rsa_index)
            else:
                key = self.pki.pool_key(len(seen))
            names = [n.rstrip(".") for n in c.names]
            if c.kind in ("ta", "ta-root"):
                c.issued = self.pki.ca_issued(c.label, names, key, c.kind == "ta-root")
            elif c.kind == "ta-mismatch":
                c.issued = self.pki.ca_issued(c.label, [f"{c.label}.mismatch.example"], key)
            else:
                c.issued = self.pki.self_signed(c.label, names, key)
            if c.kind == "sni":
                decoy_key = self.pki.key(c.label + "-decoy")
                c.decoy = self.pki.self_signed(c.label + "-decoy", ["decoy.example"], decoy_key)
            if c.kind == "stale":  # the key before the rollover: TLSA still names it
                c.old_spki = pki.key_spki_der(self.pki.key(c.label + "-old"))

    def tlsa_rdata(self, ref: _TlsaRef) -> list[str]:
        c = self.host_cert[ref.host]
        assert c.issued is not None
        leaf = c.issued.leaf
        if ref.kind == "311":
            return [pki.tlsa_data(3, 1, 1, leaf)]
        if ref.kind == "301":
            return [pki.tlsa_data(3, 0, 1, leaf)]
        if ref.kind == "312":
            return [pki.tlsa_data(3, 1, 2, leaf)]
        if ref.kind == "ta211":
            return [pki.tlsa_data(2, 1, 1, self.pki.intermediate)]
        if ref.kind == "ta201":
            return [pki.tlsa_data(2, 0, 1, self.pki.root)]
        if ref.kind == "311-old":  # last night's record if the host was DANE then, else a key
            return self.previous.get(ref.host) or [pki.tlsa_data_for_spki(3, 1, c.old_spki)]
        if ref.kind == "pkix":  # §3.1.3: PKIX-TA / PKIX-EE are unusable for SMTP
            return [pki.tlsa_data(0, 0, 1, leaf), pki.tlsa_data(1, 1, 1, leaf)]
        if ref.kind == "malformed":  # SHA-256 digest one byte short
            return [pki.tlsa_data(3, 1, 1, leaf)[:-2]]
        raise ValueError(ref.kind)

    def plan(self) -> WorldPlan:
        ip = self.ip
        servers = [
            DnsServer(name, ip[name], delay=self.p.delay)
            for name in ("root", "tld", "domains", "subs")
        ]
        servers += [
            DnsServer(f"fault-{f.value}", ip[f"fault-{f.value}"], fault=f, delay=self.p.delay)
            for f in (DnsFault.DROP, DnsFault.SERVFAIL, DnsFault.TRUNCATE)
        ]
        zones = []
        for origin, recs in self.zones.items():
            out: list[Record] = []
            for r in recs:
                if isinstance(r, _TlsaRef):
                    out.extend(Record(r.owner, "TLSA", t) for t in self.tlsa_rdata(r))
                else:
                    out.append(r)
            zones.append(
                Zone(
                    origin,
                    self.zone_server[origin],
                    tuple(out),
                    self.zone_signing[origin],
                    tuple(self.secure_children.get(origin, ())),
                )
            )
        endpoints = [self._endpoint(a) for a in self.addrs]
        if self.v6_hosts:
            chains: dict[str, Chain] = {}
            for h in self.v6_hosts:
                issued = self.host_cert[h].issued
                assert issued is not None
                chains.setdefault("*", issued.chain)
                chains[h.rstrip(".")] = issued.chain
            endpoints.append(
                SmtpEndpoint("::1", SmtpBehaviour.STARTTLS, chains, hostname="v6.mx.testbed")
            )
        smtp = SmtpSpec(tuple(endpoints), session_log="", reply_delay=self.p.delay)
        return WorldPlan(self.p.block, ip["resolver"], servers, zones, smtp)

    def _endpoint(self, a: _Addr) -> SmtpEndpoint:
        c = a.cert
        if c.issued is None:  # never completes a handshake (see `issue`)
            return SmtpEndpoint(a.address, a.behaviour, {}, 25, a.banner_delay, _hostname(a))
        chains = {"*": c.issued.chain}
        if c.decoy is not None:  # §8.1: only the right SNI gets the chain the TLSA names
            chains = {"*": c.decoy.chain}
            chains.update({h.rstrip("."): c.issued.chain for h in a.hosts})
        return SmtpEndpoint(a.address, a.behaviour, chains, 25, a.banner_delay, _hostname(a))


def _hostname(a: _Addr) -> str:
    return a.hosts[0].rstrip(".") if a.hosts else "mx.testbed"


def _placed(p: Params, workdir: Path, drafts: list[DomainDraft]) -> _Builder:
    """Every zone, address and host of the world; placed again with fewer hosts alone while
    the addresses overflow the block (each pass is pure; certificates come later)."""
    alone = address_alone(HOSTS_ALONE)
    for _ in range(8):
        b = _Builder(p, workdir, alone)
        b.infrastructure()
        b.providers(drafts)
        for d in drafts:
            b.domain(d)
        if len(b.addrs) <= SMTP_ADDRESSES:
            return b
        hosts = sum(len(a.hosts) for a in b.self_hosted)
        # Each pool's last address may be part-filled: leave room for them, and a margin for
        # the draw's spread.
        others = len(b.addrs) - len(b.self_hosted)
        room = int((SMTP_ADDRESSES - others - len(b.pools)) * 0.995)
        alone = max(0.0, min(alone - 0.005, fitted_alone(hosts, room)))
    raise ValueError("world too large for its /16")


ROLLED_FROM = ("dane-ee-311", "dane-ee-301", "dane-ee-312")


def previous_tlsa(p: Params, workdir: Path, drafts: list[DomainDraft]) -> dict[str, list[str]]:
    """A certificate rollover across nights: for each domain that is ``tlsa-stale`` tonight
    and was DANE-EE valid last night, the TLSA records its MX host published last night.

    Tonight the host serves a new key and still publishes those records, which matched last
    night's certificate (RFC 7671 §8.1: the TLSA update the rollover needed never happened).
    Last night's world is rebuilt (pure; its certificates go to workdir/previous).
    """
    if p.night == 0:
        return {}
    before = replace(p, night=p.night - 1)
    prev_drafts = plan_domains(before)
    was = {d.name: d.scenario for d in prev_drafts}
    rolled = {
        f"mx.{d.name}." for d in drafts if d.scenario == "tlsa-stale" and was[d.name] in ROLLED_FROM
    }
    if not rolled:
        return {}
    b = _placed(before, workdir / "previous", prev_drafts)
    b.issue()
    return {
        r.host: b.tlsa_rdata(r)
        for recs in b.zones.values()
        for r in recs
        if isinstance(r, _TlsaRef) and r.host in rolled and r.owner == f"_25._tcp.{r.host}"
    }


def build(p: Params, workdir: Path) -> Built:
    """The whole world for night ``p.night``; certificates are written under workdir/pki."""
    drafts = plan_domains(p)
    previous = previous_tlsa(p, workdir, drafts)
    b = _placed(p, workdir, drafts)
    b.previous = previous
    for entry in b.manifest:  # ground truth for the breakage metric's stale_tlsa cause
        entry["tlsa_rollover"] = f"mx.{entry['domain']}." in previous
    b.issue()
    plan = b.plan()
    assert plan.smtp is not None
    plan.smtp = SmtpSpec(
        plan.smtp.endpoints, str(workdir / "smtp-sessions.jsonl"), plan.smtp.reply_delay
    )
    return Built(plan, b.manifest, [d.line for d in drafts])
