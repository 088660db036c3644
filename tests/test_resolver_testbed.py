"""Our own resolver failing is not the internet failing (#16 §4, #19 §4), on the testbed.

Each scan runs in-process so the test can act on Unbound at a known point of the scan: every
domain's verdict must still equal the world's manifest, which comes from how the world was
built (tests/test_scan_testbed.py checks an undisturbed scan against the same manifest).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from scanner import pipeline, verdict
from scanner.config import Config, ResolverAddress
from scanner.dns import DnsClient, DnsStats
from scanner.model import DomainVerdict
from scanner.pipeline import open_scanner
from scanner.targets import read_targets
from testbed import control, dnsnet
from tests.test_scan_testbed import mismatches

pytestmark = pytest.mark.testbed

OnVerdict = Callable[[int], Awaitable[None]]


def config_for(w: control.World, **kw: Any) -> Config:
    """The options of tests/test_scan_testbed.py's SCAN_ARGS."""
    base: dict[str, Any] = {
        "resolvers": (ResolverAddress(w.resolver),), "allow_private": True,
        "ehlo_name": "danescan.test", "greeting_timeout": 4.0, "connect_timeout": 3.0,
        "command_timeout": 4.0, "retry_delay": 0.5,
    }
    base.update(kw)
    return Config(**base)


async def scan(w: control.World, config: Config, on_verdict: OnVerdict | None = None
               ) -> tuple[dict[str, dict[str, Any]], DnsStats]:
    results: dict[str, dict[str, Any]] = {}
    lines = verdict.JsonLines()
    async with DnsClient.open(config) as client:
        scanner = await open_scanner(config, client, pipeline.ScanStats())

        async def emit(v: DomainVerdict) -> None:
            results[v.input] = json.loads(lines.line(v))
            if on_verdict is not None:
                await on_verdict(len(results))

        await pipeline.run(scanner, read_targets(str(w.domains_file)), emit)
    return results, client.stats


async def test_thirty_seconds_without_our_resolver_change_no_verdict(make_world: Any) -> None:
    w = make_world(domains=60, seed=4)
    stopped = trio.Event()

    async def outage_after_the_first_verdicts(done: int) -> None:
        if done == 5 and not stopped.is_set():
            stopped.set()
            await trio.to_thread.run_sync(control.stop_resolver, w)
            await trio.sleep(30.0)
            await trio.to_thread.run_sync(control.start_resolver, w)

    # Few domains in flight, so that most of the list is still to come when Unbound stops.
    got, stats = await scan(w, config_for(w, concurrency=8), outage_after_the_first_verdicts)
    assert stopped.is_set()
    assert stats.outages >= 1 and stats.paused > 0  # the outage happened and was noticed
    assert len(got) == len(w.manifest)
    assert mismatches(w, got, w.manifest) == []


async def test_a_resolver_dropping_questions_under_load_changes_no_verdict(
        make_world: Any) -> None:
    # Unbound with a request list of 8 per thread drops questions under the scan's load
    # (requestlist.exceeded); every dropped question must be asked again, none judged.
    w = make_world(domains=80, seed=5, unbound_options={"num-queries-per-thread": "8"})
    got, stats = await scan(w, config_for(w))
    exceeded = dnsnet.resolver_stats(w.dir).get("total.requestlist.exceeded", 0)
    assert exceeded > 0, "Unbound dropped nothing: the test did not load it enough"
    assert stats.retries + stats.reasked > 0
    assert len(got) == len(w.manifest)
    assert mismatches(w, got, w.manifest) == []
