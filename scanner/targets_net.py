"""Address policy for probing: which addresses we must not connect to, whether IPv6 can reach
anything, and the per-address / per-prefix connection limits that keep the scanner polite.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

type IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 6890 and the IANA IPv4 Special-Purpose Address Registry: ranges an MX must not point at
# (or that a scanner must not probe). Whole 192.0.0.0/24 is kept although 192.0.0.9 and .10 are
# anycast services: no mail server lives there.
_V4_SPECIAL = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", RFC 791
        "10.0.0.0/8",  # private, RFC 1918
        "100.64.0.0/10",  # shared address space (CGNAT), RFC 6598
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link local, RFC 3927
        "172.16.0.0/12",  # private, RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments, RFC 6890
        "192.0.2.0/24",  # TEST-NET-1, RFC 5737
        "192.88.99.0/24",  # deprecated 6to4 relay anycast, RFC 7526
        "192.168.0.0/16",  # private, RFC 1918
        "198.18.0.0/15",  # benchmarking, RFC 2544
        "198.51.100.0/24",  # TEST-NET-2, RFC 5737
        "203.0.113.0/24",  # TEST-NET-3, RFC 5737
        "224.0.0.0/4",  # multicast, RFC 5771
        "240.0.0.0/4",  # reserved, RFC 1112 (includes 255.255.255.255, limited broadcast)
    )
)

# IANA IPv6 Special-Purpose Address Registry. Everything outside 2000::/3 (global unicast) is
# special except the well-known NAT64 prefix, handled below.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_SPECIAL = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        # Inside 2001::/23 (IETF protocol assignments, RFC 2928) only the blocks that are not
        # globally reachable: 2001:1::1/128, 2001:3::/32 (AMT), 2001:4:112::/48 (AS112-v6),
        # 2001:20::/28 (ORCHIDv2) and 2001:30::/28 (drone DET) are reachable services, but
        # none hosts mail, so treating the whole /23 as special only skips what no MX uses.
        "2001::/23",  # includes Teredo 2001::/32 (RFC 4380): a tunnel client, not a server
        "2001:db8::/32",  # documentation, RFC 3849
        "3fff::/20",  # documentation, RFC 9637
        "5f00::/16",  # SRv6 SIDs, RFC 9602
    )
)
_V6_NOT_GLOBAL_UNICAST_OK = ipaddress.IPv6Network("64:ff9b::/96")  # NAT64 well-known, RFC 6052
_V6_6TO4 = ipaddress.IPv6Network("2002::/16")  # RFC 3056


# The probe of one endpoint parses its address half a dozen times (the probe policy, the
# connection limits of this process and of the scan, the probe itself): these pure functions
# remember the last few thousand addresses. Bounded, so memory follows the addresses in flight.
_ADDRESS_MEMO = 4096


@functools.lru_cache(maxsize=_ADDRESS_MEMO)
def parse_address(address: str) -> IPAddress:
    """An IP literal, nothing else (no names: the probe never resolves)."""
    return ipaddress.ip_address(address)


@functools.lru_cache(maxsize=_ADDRESS_MEMO)
def is_special_purpose(address: str) -> bool:
    """True when ``address`` is in a special-purpose (not globally reachable) range.

    Decisions for the ranges that embed IPv4: ``::ffff:0:0/96`` (IPv4-mapped) is always special —
    it is not an IPv6 destination at all, and probing it would be an IPv4 connection counted as
    IPv6. ``64:ff9b::/96`` (NAT64, globally reachable per IANA) and ``2002::/16`` (6to4, which
    IANA leaves "N/A") are special when the embedded IPv4 address is, otherwise probed.
    Raises ValueError for anything that is not an IP literal.
    """
    return _special(parse_address(address))


def _special(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in _V4_SPECIAL)
    if ip.scope_id is not None:  # fe80::1%eth0 and friends
        return True
    if ip in _V6_NOT_GLOBAL_UNICAST_OK:
        return _special(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip not in _V6_GLOBAL_UNICAST:  # ::, ::1, ::ffff:0:0/96, 100::/64, fc00::/7, fe80::/10,
        return True  # ff00::/8, 64:ff9b:1::/48 (RFC 8215) and all unassigned space
    if ip in _V6_6TO4:
        return _special(ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))
    return any(ip in net for net in _V6_SPECIAL)


type IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def _networks(prefixes: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in prefixes)


def is_excluded_address(address: str, prefixes: tuple[str, ...]) -> bool:
    """True when ``address`` lies in one of ``prefixes`` ("192.0.2.0/24", "2001:db8::/32" or a
    bare address); the opt-out list of operators who asked not to be probed. Raises ValueError
    for a malformed prefix (the CLI should have refused it) or a non-literal address."""
    ip = parse_address(address)
    return any(ip in net for net in _networks(prefixes) if net.version == ip.version)


# Any global unicast address serves: only the kernel's route lookup is consulted and nothing is
# ever sent. 2000::1 lies in 2000::/3 (global unicast) and belongs to nobody.
IPV6_PROBE_TARGET = "2000::1"


def ipv6_reachable(target: str = IPV6_PROBE_TARGET) -> bool:
    """Whether this machine has a usable IPv6 route to the Internet, without sending a packet.

    connect() on a UDP socket only asks the routing table for a route and a source address;
    nothing is sent until a datagram is written, and we never write one. No route (ENETUNREACH)
    means False. A route whose source address is itself special-purpose (only ::1, link-local
    or a ULA fc00::/7 behind a default route) is treated as unreachable too: RFC 6724 source
    selection would have picked a global address if the machine had one.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))
            source = sock.getsockname()[0]
    except OSError:
        return False
    return not is_special_purpose(source)


@functools.lru_cache(maxsize=_ADDRESS_MEMO)
def prefix_key(address: str) -> str:
    """The politeness prefix of an address: its IPv4 /24 or IPv6 /48."""
    ip = parse_address(address)
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


@dataclass(slots=True)
class _Entry:
    limiter: trio.CapacityLimiter
    users: int = 0  # tasks holding or waiting for the limiter


class _KeyedLimiters:
    """One CapacityLimiter per key, created on first use and dropped when nobody uses it."""

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(trio.CapacityLimiter(self._limit))
        entry.users += 1
        try:
            async with entry.limiter:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]


class Politeness:
    """Per-address and per-prefix (IPv4 /24, IPv6 /48) connection limits.

    ``async with politeness.slot(address):`` around each connection. The address slot is taken
    first so that a task queued behind a busy address does not hold prefix capacity meanwhile.
    Memory stays bounded by the number of addresses in flight.
    """

    __slots__ = ("_addresses", "_prefixes")

    def __init__(self, per_address: int, per_prefix: int) -> None:
        self._addresses = _KeyedLimiters(per_address)
        self._prefixes = _KeyedLimiters(per_prefix)

    @property
    def tracked(self) -> tuple[int, int]:
        """(addresses, prefixes) currently holding or awaiting a slot."""
        return len(self._addresses), len(self._prefixes)

    @asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        key = str(parse_address(address))  # one key per address however it is spelled
        async with self._addresses.hold(key), self._prefixes.hold(prefix_key(key)):
            yield
