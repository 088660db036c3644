"""Pacing never changes a verdict (#21): the same list scanned unpaced and with each pacing
knob set low, one at a time and all together, gives every domain the same verdict; and pacing
is backpressure, not a queue that grows."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from scanner.pacing import Pacer
from scanner.pipeline import open_scanner, run
from tests.test_pipeline_fake import FakeProber, FakeResolver, config, world
from tests.test_resolver_testbed import config_for, scan
from tests.test_scan_testbed import FIELDS, mismatches

KNOBS: dict[str, dict[str, Any]] = {
    "dns-rate 20": {"dns_rate": 20.0},
    "per-address 1": {"per_address_connections": 1},
    "per-prefix 1": {"per_prefix_connections": 1},
    "concurrency 10": {"concurrency": 10},
    "connect-rate 2": {"connect_rate": 2.0},
}
KNOBS["all together"] = {k: v for knob in list(KNOBS.values()) for k, v in knob.items()}


@pytest.mark.testbed
async def test_paced_scans_judge_every_domain_as_the_unpaced_one(make_world: Any) -> None:
    # Providers' customers share a handful of addresses: per-address 1 binds hard there.
    w = make_world(domains=40, seed=9, weights={"provider": 0.5})
    unpaced, _ = await scan(w, config_for(w))
    assert len(unpaced) == len(w.manifest)
    assert mismatches(w, unpaced, w.manifest) == []
    want = {k: tuple(v[f] for f in FIELDS) for k, v in unpaced.items()}
    for name, knob in KNOBS.items():
        got, _ = await scan(w, config_for(w, **knob))
        differ = {k: (want[k], tuple(v[f] for f in FIELDS)) for k, v in got.items()
                  if tuple(v[f] for f in FIELDS) != want[k]}
        assert differ == {}, f"{name}: {differ}"


class _PacedResolver(FakeResolver):
    """5 questions per second, and a count of the domains in flight (MX asked, not judged)."""

    def __init__(self, records: dict[tuple[str, str], tuple[str, ...]]) -> None:
        super().__init__(records)
        self.pacer = Pacer(5.0)
        self.started = 0

    async def lookup(self, qname: str, rdtype: str) -> Any:
        if rdtype == "MX":
            self.started += 1
        await self.pacer.wait()
        return await super().lookup(qname, rdtype)


def test_a_slow_rate_holds_domains_back_instead_of_queueing_them(
        autojump_clock: trio.testing.MockClock) -> None:
    resolver, prober = _PacedResolver(world(60, shared_host=False)), FakeProber(seconds=0.1)
    cfg = config(concurrency=10)
    consumed = 0
    judged = 0
    worst_in_flight = worst_ahead = 0

    def items() -> Any:
        nonlocal consumed
        for i in range(60):
            consumed += 1
            yield i + 1, f"d{i}.example"

    async def emit(_: object) -> None:
        nonlocal judged, worst_in_flight, worst_ahead
        judged += 1
        worst_in_flight = max(worst_in_flight, resolver.started - judged + 1)
        worst_ahead = max(worst_ahead, consumed - judged)

    async def go() -> None:
        scanner = await open_scanner(cfg, resolver, prober=prober)
        await run(scanner, items(), emit)

    trio.run(go, clock=autojump_clock)
    assert judged == 60
    assert worst_in_flight <= 10  # --concurrency bounds the domains in flight
    assert worst_ahead <= 2 * 10 + 1  # the reader waits on a channel of --concurrency lines
