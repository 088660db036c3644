"""Address policy: special-purpose ranges, IPv6 reachability without packets, politeness limits."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from scanner.targets_net import (
    Politeness,
    ipv6_reachable,
    is_excluded_address,
    is_special_purpose,
    prefix_key,
)

SPECIAL = [
    "0.1.2.3",
    "10.20.30.40",
    "100.64.0.1",
    "100.127.255.255",
    "127.0.0.1",
    "127.80.0.1",
    "169.254.1.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.25",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.251",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:192.0.2.1",
    "::ffff:8.8.8.8",  # IPv4-mapped: never an IPv6 destination
    "::192.0.2.1",  # deprecated IPv4-compatible
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::1",  # local-use NAT64, RFC 8215
    "100::1",
    "2001::1",  # Teredo
    "2001:2::1",  # benchmarking
    "2001:10::1",  # deprecated ORCHID
    "2001:db8::25",
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "3fff::1",
    "5f00::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%lo",
    "fec0::1",
    "ff02::1",
    "4000::1",  # outside 2000::/3: unassigned
]

GLOBAL = [
    "1.1.1.1",
    "8.8.8.8",
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.3.1",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "2001:200::1",  # just above 2001::/23
    "2600::1",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("address", SPECIAL)
def test_special(address: str) -> None:
    assert is_special_purpose(address)


@pytest.mark.parametrize("address", GLOBAL)
def test_global(address: str) -> None:
    assert not is_special_purpose(address)


@pytest.mark.parametrize("text", ["mx.example.net", "", "1.2.3", "1.2.3.4/24"])
def test_not_an_address(text: str) -> None:
    with pytest.raises(ValueError):
        is_special_purpose(text)


def test_ipv6_reachable_sends_nothing_and_judges_the_source() -> None:
    # A route to ::1 exists, but its source is loopback: that is not Internet reachability.
    assert ipv6_reachable("::1") is False
    # No usable route (link-local without a scope): an error, reported as False, not raised.
    assert ipv6_reachable("fe80::1") is False
    assert isinstance(ipv6_reachable(), bool)


def test_excluded_addresses() -> None:
    prefixes = ("192.0.2.0/24", "2001:db8:5::/48", "198.51.100.7", " 203.0.113.0/25 ")
    assert is_excluded_address("192.0.2.200", prefixes)
    assert is_excluded_address("2001:db8:5:1::25", prefixes)
    assert is_excluded_address("198.51.100.7", prefixes)
    assert is_excluded_address("203.0.113.1", prefixes)
    assert not is_excluded_address("203.0.113.129", prefixes)
    assert not is_excluded_address("198.51.100.8", prefixes)
    assert not is_excluded_address("2001:db8:6::25", prefixes)
    assert not is_excluded_address("192.0.2.1", ())
    with pytest.raises(ValueError):
        is_excluded_address("192.0.2.1", ("not-a-prefix",))


def test_prefix_key() -> None:
    assert prefix_key("192.0.2.77") == "192.0.2.0/24"
    assert prefix_key("2001:DB8:1:2::1") == "2001:db8:1::/48"


async def _peak(politeness: Politeness, addresses: list[str]) -> int:
    active = peak = 0

    async def worker(address: str) -> None:
        nonlocal active, peak
        async with politeness.slot(address):
            active += 1
            peak = max(peak, active)
            await trio.sleep(1)
            active -= 1

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(worker, address)
    return peak


async def test_per_address_limit(autojump_clock: trio.testing.MockClock) -> None:
    politeness = Politeness(per_address=2, per_prefix=10)
    assert await _peak(politeness, ["192.0.2.1"] * 6) == 2
    assert politeness.tracked == (0, 0)


async def test_same_address_however_spelled(autojump_clock: trio.testing.MockClock) -> None:
    politeness = Politeness(per_address=1, per_prefix=10)
    assert await _peak(politeness, ["2001:db8::1", "2001:DB8:0::1", "2001:db8::0:1"]) == 1


async def test_per_prefix_limit(autojump_clock: trio.testing.MockClock) -> None:
    politeness = Politeness(per_address=5, per_prefix=3)
    v4 = [f"198.51.100.{i}" for i in range(1, 9)]
    assert await _peak(politeness, v4) == 3
    v6 = [f"2001:db8:1:{i:x}::1" for i in range(8)]  # one /48
    assert await _peak(politeness, v6) == 3
    # Two /24s and one /48 are independent.
    mixed = [*v4, *(f"203.0.113.{i}" for i in range(1, 9)), *v6]
    assert await _peak(politeness, mixed) == 9
    assert politeness.tracked == (0, 0)


async def test_cancelled_waiters_leave_nothing_behind() -> None:
    politeness = Politeness(per_address=1, per_prefix=1)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(_hold_forever, politeness, "192.0.2.1")
        await trio.testing.wait_all_tasks_blocked()
        assert politeness.tracked == (1, 1)
        nursery.cancel_scope.cancel()
    assert politeness.tracked == (0, 0)


async def _hold_forever(politeness: Politeness, address: str) -> None:
    async with politeness.slot(address):
        await trio.sleep_forever()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Politeness(per_address=0, per_prefix=1)
