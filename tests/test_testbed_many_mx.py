"""Issue 21 on the simulated internet: a domain listing 300 MX hosts on three addresses costs a
bounded number of SMTP sessions, has one classified result with the cap's reason, and leaves
every other domain's verdict as the manifest says. The manifest comes from how the world was
built (testbed.world), never from a scan."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
import trio

from scanner import verdict
from scanner.config import Config, ResolverAddress
from scanner.dns import DnsClient
from scanner.pipeline import Scanner, run
from testbed import control, world
from testbed.scenarios import ALL_SCENARIOS, SCENARIOS
from tests.test_scan_testbed import mismatches

if TYPE_CHECKING:
    from pathlib import Path

    from scanner.model import DomainVerdict

WEIGHTS = {"starttls-unsigned": 0.3, "dane-ee-311": 0.3, "signed-no-tlsa": 0.2, "plain": 0.15,
           "many-mx": 0.05, "provider": 0.4, "provider-signed": 0.5}
SEED = 10  # draws exactly one many-mx domain among 40 (checked below)


def test_many_mx_is_built_from_its_parts(tmp_path: Path) -> None:
    built = world.build(world.Params(seed=SEED, domains=40, weights=WEIGHTS), tmp_path)
    (row,) = [m for m in built.manifest if m["scenario"] == "many-mx"]
    hosts = row["mx_hosts"]
    assert len(hosts) == world.MANY_MX_HOSTS
    assert len({a for h in hosts for a in h["addresses"]}) == world.MANY_MX_ADDRESSES
    assert [h["preference"] for h in hosts] == sorted(h["preference"] for h in hosts)
    assert {h["tlsa_status"] for h in hosts} == {"usable"}
    assert len({h["sni"] for h in hosts}) == world.MANY_MX_HOSTS  # one SNI per host
    zones = {z.origin: z for z in built.plan.zones}
    kinds = Counter(r.rdtype for r in zones[row["domain"] + "."].records)
    assert kinds["MX"] == world.MANY_MX_HOSTS
    hosts_zone = zones["hosts." + row["domain"] + "."]
    assert hosts_zone.signing is not None
    kinds = Counter(r.rdtype for r in hosts_zone.records)
    assert (kinds["A"], kinds["TLSA"]) == (world.MANY_MX_HOSTS,) * 2
    # Too big for every world: only worlds that weight it get it.
    assert "many-mx" not in ALL_SCENARIOS
    assert not SCENARIOS["many-mx"].catalogue
    assert "many-mx" not in world.catalogue(ipv6=True)


def scan(w: control.World, **caps: int) -> tuple[dict[str, dict[str, Any]], Scanner]:
    config = Config(resolvers=(ResolverAddress.parse(w.resolver),), allow_private=True,
                    ehlo_name="danescan.test", connect_timeout=3.0, greeting_timeout=4.0,
                    command_timeout=4.0, retry_delay=0.5, **caps)  # type: ignore[arg-type]
    lines = list(enumerate(w.domains_file.read_text().splitlines(), 1))
    out: dict[str, dict[str, Any]] = {}

    async def emit(v: DomainVerdict) -> None:
        out[v.input] = verdict.to_json(v)

    async def main() -> Scanner:
        async with DnsClient.open(config) as client:
            scanner = Scanner(config, client, ipv6=False)
            await run(scanner, lines, emit)
            return scanner

    return out, trio.run(main)


def sessions_at(w: control.World, addresses: set[str], since: float, expect: int) -> int:
    """Sessions the servers logged at ``addresses`` since ``since``, once the log shows at least
    the ``expect`` the scanner opened (the servers flush their log every half second)."""

    def count() -> int:
        return sum(1 for s in w.sessions() if s["address"] in addresses and s["t"] >= since)

    deadline = time.monotonic() + 10
    while count() < expect and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # one more flush: anything beyond ``expect`` shows up too
    return count()


@pytest.mark.testbed
def test_many_mx_costs_a_bounded_number_of_sessions(make_world: Any) -> None:
    w: control.World = make_world(domains=40, seed=SEED, weights=WEIGHTS)
    (row,) = w.by_scenario("many-mx")
    addresses = {a for h in row["mx_hosts"] for a in h["addresses"]}
    # The second run loosens the MX cap so the session cap binds (ten hosts per address, six
    # sessions each); six is what a shared address of this world's tail needs (six hosts, one
    # SNI each), so the other domains are out of its reach.
    runs: tuple[dict[str, Any], ...] = ({}, {"max_mx_hosts": 30, "max_address_sessions": 6})
    for caps in runs:
        cfg = replace(Config(), **caps)
        started = time.time()
        results, scanner = scan(w, **caps)
        opened = sum(scanner.address_sessions[a] for a in addresses)
        assert opened == min(cfg.max_mx_hosts, len(addresses) * cfg.max_address_sessions)
        assert all(scanner.address_sessions[a] <= cfg.max_address_sessions for a in addresses)
        # What reached the servers is what the scanner counted.
        assert sessions_at(w, addresses, started, opened) == opened

        # One classified result, with the cap's reason; every other domain as built.
        got = results[row["input"]]
        assert got["reason"] == "not-probed-cap"
        assert got["dane"] == "partial"
        assert len(got["mx_hosts"]) == world.MANY_MX_HOSTS
        capped = [h for h in got["mx_hosts"] if h["reason"] == "not-probed-cap"]
        assert len(capped) >= world.MANY_MX_HOSTS - cfg.max_mx_hosts
        assert len(results) == len(w.manifest)
        assert mismatches(w, results, w.manifest) == []
