"""Verdicts whose contract JSON is pinned byte for byte in tests/data/contract.jsonl.

The factory's certificates are random keys; here every chain is fixed bytes, so the
``chain_sha256`` digests (and so the whole line) are the same on every run.
"""

from __future__ import annotations

import dataclasses

from scanner.model import DomainVerdict, EndpointFacts, EndpointStatus, HostVerdict
from tests import verdict_factory as vf


def _fixed(ep: EndpointFacts) -> EndpointFacts:
    return dataclasses.replace(ep, chain=tuple(f"der {i} {ep.address}".encode()
                                               for i in range(len(ep.chain))))


def _fixed_host(h: HostVerdict) -> HostVerdict:
    return dataclasses.replace(h, endpoints=tuple(_fixed(ep) for ep in h.endpoints))


def _hostile(line: int) -> DomainVerdict:
    """Text a hostile server or input may carry: quotes, backslashes, non-ASCII, U+2028."""
    ep = vf.endpoint("192.0.2.50", 'mx."exämple\\', EndpointStatus.HANDSHAKE_ERROR,
                     banner='mx "ESMTP" \u2028 ünïcode \\ \t')
    ep = dataclasses.replace(ep, error="alert 'bad' \u00e9")
    host = vf.host('mx."exämple\\', ("192.0.2.50",))
    hv = HostVerdict(5, host, (ep,), (None,), True)
    return dataclasses.replace(vf.plaintext(line, "xn--exmple-cua.example", hv),
                               input="  EXÄMPLE.example \u2028")


def samples() -> list[DomainVerdict]:
    out = [*vf.sample(12), vf.bogus(13, "b13.example"), vf.internal_error(14, "e14.example"),
           vf.capped(15, "c15.example"), _hostile(16)]
    return [dataclasses.replace(v, hosts=tuple(_fixed_host(h) for h in v.hosts)) for v in out]
