"""The pipeline's new facts on a scripted resolver: the MX lookup's own answer, internal errors
as their own outcome, and the cost caps (MX hosts per domain, addresses per host, SMTP sessions
per address). The SMTP side is tests/fakesmtp.py's plain ESMTP server at SMTP_HOST (the real
probe over memory streams; any other address refuses), all on trio's virtual clock."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, cast

import pytest
import trio
import trio.testing

from scanner.config import Config
from scanner.model import (
    DaneStatus,
    DnssecStatus,
    DomainVerdict,
    EndpointStatus,
    Lookup,
    Outcome,
    Reason,
    Stage,
)
from scanner.pipeline import Scanner, run
from tests.fakesmtp import plain_esmtp, serving
from tests.test_pipeline import SMTP_HOST

if TYPE_CHECKING:
    from scanner.dns import DnsClient

pytest_plugins = ["tests.nonet"]
pytestmark = pytest.mark.usefixtures("no_real_network")

S = DnssecStatus.SECURE
TLSA = "3 1 1 " + "ab" * 32


class Script:
    """A resolver answering from a table; every question is counted. A lookup of a name in
    ``explode`` raises, as a bug in the DNS client would."""

    def __init__(self, answers: dict[tuple[str, str], Lookup],
                 explode: frozenset[str] = frozenset()) -> None:
        self.answers = answers
        self.explode = explode
        self.asked: Counter[tuple[str, str]] = Counter()

    async def lookup(self, qname: str, rdtype: str) -> Lookup:
        await trio.lowlevel.checkpoint()
        self.asked[(qname, rdtype)] += 1
        if qname in self.explode:
            raise RuntimeError(f"resolver client bug at {qname}")
        found = self.answers.get((qname, rdtype))
        return found if found is not None else Lookup(qname, rdtype, S, "NXDOMAIN")


def mx(domain: str, *hosts: str, status: DnssecStatus = S) -> dict[tuple[str, str], Lookup]:
    records = tuple(f"{10 + i} {h}." for i, h in enumerate(hosts))
    return {(domain, "MX"): Lookup(domain, "MX", status, "NOERROR", records)}


def host(name: str, *addresses: str, tlsa: bool = True) -> dict[tuple[str, str], Lookup]:
    out = {(name, "A"): Lookup(name, "A", S, "NOERROR", addresses),
           (name, "AAAA"): Lookup(name, "AAAA", S, "NOERROR")}
    if tlsa:
        owner = f"_25._tcp.{name}"
        out[(owner, "TLSA")] = Lookup(owner, "TLSA", S, "NOERROR", (TLSA,))
    return out


async def scan(script: Script, lines: list[str], **knobs: object
               ) -> tuple[dict[str, DomainVerdict], list[str], Scanner]:
    out: dict[str, DomainVerdict] = {}

    async def emit(v: DomainVerdict) -> None:
        out[v.input] = v

    config = Config(allow_private=True, retry_transient=False,
                    connect_timeout=2.0, greeting_timeout=2.0, command_timeout=2.0,
                    **knobs)  # type: ignore[arg-type]
    async with serving({SMTP_HOST: plain_esmtp}) as smtp:
        scanner = Scanner(config, cast("DnsClient", script), ipv6=False, prober=smtp.probe)
        await run(scanner, list(enumerate(lines, 1)), emit)
    return out, smtp.sessions, scanner


async def test_the_mx_answer_is_kept_for_early_outcomes(
        autojump_clock: trio.testing.MockClock) -> None:
    bogus = Lookup("bogus.example", "MX", DnssecStatus.BOGUS, "SERVFAIL", ede_code=7,
                   ede_text="RRSIG expired")
    failed = Lookup("down.example", "MX", DnssecStatus.INDETERMINATE, "TIMEOUT")
    script = Script({("bogus.example", "MX"): bogus, ("down.example", "MX"): failed,
                     **mx("ok.example", "mx.ok.example"), **host("mx.ok.example", SMTP_HOST)})
    got, _, _ = await scan(script, ["bogus.example", "down.example", "ok.example"])
    b, d, ok = got["bogus.example"], got["down.example"], got["ok.example"]
    assert (b.outcome, b.mx_status, b.mx_rcode, b.mx_ede_code, b.mx_ede_text) == (
        Outcome.BOGUS, DnssecStatus.BOGUS, "SERVFAIL", 7, "RRSIG expired")
    assert (d.outcome, d.mx_status, d.mx_rcode) == (
        Outcome.DNS_FAILURE, DnssecStatus.INDETERMINATE, "TIMEOUT")
    assert (ok.outcome, ok.mx_rcode, ok.mx_ede_code) == (Outcome.OK, "NOERROR", None)


async def test_an_exception_inside_the_pipeline_is_an_internal_error(
        autojump_clock: trio.testing.MockClock) -> None:
    script = Script({**mx("ok.example", "mx.ok.example"), **host("mx.ok.example", SMTP_HOST)},
                    explode=frozenset({"crash.example"}))
    got, _, scanner = await scan(script, ["Crash.Example.", "ok.example", "nx.example"])
    crash = got["Crash.Example."]
    assert crash.outcome is Outcome.INTERNAL_ERROR
    assert crash.reason is Reason.INTERNAL_ERROR
    assert crash.error == "RuntimeError: resolver client bug at crash.example"
    assert crash.domain == "crash.example"
    assert crash.line == 1
    assert (crash.mx_status, crash.stage) == (None, None)  # nothing about the domain is claimed
    assert got["ok.example"].outcome is Outcome.OK  # the others are judged as ever
    assert got["nx.example"].outcome is Outcome.NXDOMAIN
    assert scanner.stats.outcomes["internal_error"] == 1


def many_mx(domain: str, n: int) -> tuple[list[str], dict[tuple[str, str], Lookup]]:
    names = [f"mx{i:03d}.{domain}" for i in range(n)]
    answers = mx(domain, *names)
    for name in names:
        answers |= host(name, SMTP_HOST)
    return names, answers


async def test_mx_hosts_beyond_the_cap_are_listed_not_looked_up(
        autojump_clock: trio.testing.MockClock) -> None:
    names, answers = many_mx("many.example", 300)
    script = Script(answers)
    got, sessions, _ = await scan(script, ["many.example"], max_mx_hosts=10)
    v = got["many.example"]
    assert len(v.hosts) == 300
    assert [h.host.name for h in v.hosts] == names  # preference order
    looked_up = {q for q, t in script.asked if t == "A"}
    assert looked_up == set(names[:10])
    assert all(h.reason is Reason.NOT_PROBED_CAP and not h.endpoints for h in v.hosts[10:])
    # Usable TLSA, so each host gets its own SNI: one session per probed host, no more.
    assert len(sessions) == 10
    # Judged on a subset: never DANE-valid; here the probed hosts lack STARTTLS: broken.
    assert v.outcome is Outcome.OK
    assert v.dane is DaneStatus.BROKEN
    assert v.reason is Reason.STARTTLS_NOT_SUPPORTED


async def test_sessions_per_address_are_capped_whatever_the_sni(
        autojump_clock: trio.testing.MockClock) -> None:
    _, answers = many_mx("many.example", 12)
    got, sessions, scanner = await scan(Script(answers), ["many.example"], max_mx_hosts=12,
                                        max_address_sessions=3)
    assert len(sessions) == 3
    assert scanner.address_sessions[SMTP_HOST] == 3
    statuses = Counter(ep.status for h in got["many.example"].hosts for ep in h.endpoints)
    assert statuses == {EndpointStatus.NO_STARTTLS: 3, EndpointStatus.NOT_PROBED_CAP: 9}


async def test_addresses_beyond_the_host_cap_are_not_probed(
        autojump_clock: trio.testing.MockClock) -> None:
    others = [f"127.81.0.{i}" for i in range(30, 60)]
    answers = mx("wide.example", "mx.wide.example") | host(
        "mx.wide.example", SMTP_HOST, *others, tlsa=False)
    got, sessions, _ = await scan(Script(answers), ["wide.example"], max_host_addresses=2)
    (h,) = got["wide.example"].hosts
    assert [ep.address for ep in h.endpoints] == [SMTP_HOST, *others]
    assert [ep.status for ep in h.endpoints[2:]] == [EndpointStatus.NOT_PROBED_CAP] * 29
    assert h.endpoints[0].status is EndpointStatus.NO_STARTTLS
    assert h.endpoints[1].status is EndpointStatus.CONNECTION_REFUSED
    assert len(sessions) == 1
    v = got["wide.example"]
    assert v.stage is Stage.PLAINTEXT
    assert v.reason is Reason.NOT_PROBED_CAP
