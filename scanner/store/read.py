"""Rebuild the verdicts of a stored scan, streaming in line order (the inverse of rows.py).

Export serialises what this returns with the same function ``scan --jsonl`` uses, so the two
can never disagree. Hosts, endpoints and certificates are read once per chunk of lines and
kept in bounded caches, since many domains share them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from scanner import codec
from scanner.model import (
    DaneMatch,
    DomainVerdict,
    EndpointFacts,
    HostFacts,
    HostVerdict,
    TlsaRecord,
)
from scanner.store import schema as s
from scanner.verdict import capped_endpoint, capped_host

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from sqlalchemy.engine import Engine

IN_CHUNK = 500  # keeps IN lists well under SQLite's and PostgreSQL's parameter limits


def _chunks[T](items: Sequence[T], n: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class _Cache[K, V]:
    """Bounded memo: cleared when full (simple, and export reads in line order anyway)."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self.data: dict[K, V] = {}

    def missing(self, keys: set[K]) -> list[K]:
        if len(self.data) + len(keys) > self.size:
            self.data.clear()
        return [k for k in keys if k not in self.data]


class VerdictReader:
    def __init__(self, conn: sa.Connection, scan_id: int) -> None:
        self.conn = conn
        self.scan_id = scan_id
        self.hosts: _Cache[str, HostFacts] = _Cache()
        self.endpoints: _Cache[tuple[str, int, str], EndpointFacts] = _Cache()
        self.certs: _Cache[str, bytes] = _Cache()

    def chunk(self, after: int, limit: int) -> list[DomainVerdict]:
        dr, d = s.domain_results, s.domains
        rows = self.conn.execute(
            sa.select(dr, d.c.name)
            .select_from(dr.outerjoin(d, d.c.id == dr.c.domain_id))
            .where(dr.c.scan_id == self.scan_id, dr.c.line > after)
            .order_by(dr.c.line)
            .limit(limit)
        ).all()
        if not rows:
            return []
        lo, hi = rows[0].line, rows[-1].line
        links = self._links(lo, hi)
        dane = self._dane(lo, hi)
        self._load_hosts({r.host_name for ls in links.values() for r in ls
                          if not codec.is_capped_link(r._mapping)})
        self._load_endpoints({(r.address, r.port, r.sni) for ds in dane.values() for r in ds
                              if not codec.is_capped_dane(r._mapping)})
        return [self._verdict(r, links.get(r.line, []), dane) for r in rows]

    def _links(self, lo: int, hi: int) -> dict[int, list[Any]]:
        t = s.domain_mx
        out: dict[int, list[Any]] = {}
        for r in self.conn.execute(
            sa.select(t)
            .where(t.c.scan_id == self.scan_id, t.c.line.between(lo, hi))
            .order_by(t.c.line, t.c.ordinal)
        ):
            out.setdefault(r.line, []).append(r)
        return out

    def _dane(self, lo: int, hi: int) -> dict[tuple[int, int], list[Any]]:
        t = s.dane_results
        out: dict[tuple[int, int], list[Any]] = {}
        for r in self.conn.execute(
            sa.select(t)
            .where(t.c.scan_id == self.scan_id, t.c.line.between(lo, hi))
            .order_by(t.c.line, t.c.host_ordinal, t.c.ordinal)
        ):
            out.setdefault((r.line, r.host_ordinal), []).append(r)
        return out

    def _load_hosts(self, names: set[str]) -> None:
        h, tr = s.mx_hosts, s.tlsa_records
        for part in _chunks(self.hosts.missing(names)):
            records: dict[str, list[TlsaRecord]] = {}
            for r in self.conn.execute(
                sa.select(tr)
                .where(tr.c.scan_id == self.scan_id, tr.c.host_name.in_(part))
                .order_by(tr.c.host_name, tr.c.ordinal)
            ):
                records.setdefault(r.host_name, []).append(codec.tlsa_from_record(r._mapping))
            for r in self.conn.execute(
                sa.select(h).where(h.c.scan_id == self.scan_id, h.c.name.in_(part))
            ):
                self.hosts.data[r.name] = codec.host_from_record(
                    r._mapping, records.get(r.name, ()))

    def _load_endpoints(self, keys: set[tuple[str, int, str]]) -> None:
        e = s.endpoints
        found: list[Any] = []
        for part in _chunks(self.endpoints.missing(keys)):
            found.extend(
                self.conn.execute(
                    sa.select(e).where(
                        e.c.scan_id == self.scan_id,
                        sa.tuple_(e.c.address, e.c.port, e.c.sni).in_(part),
                    )
                ).all()
            )
        fps = {fp for r in found for fp in codec.endpoint_chain(r._mapping)}
        self._load_certs(fps)
        for r in found:
            chain = [self.certs.data[fp] for fp in codec.endpoint_chain(r._mapping)]
            self.endpoints.data[(r.address, r.port, r.sni)] = codec.endpoint_from_record(
                r._mapping, chain)

    def _load_certs(self, fps: set[str]) -> None:
        c = s.certificates
        for part in _chunks(self.certs.missing(fps)):
            for r in self.conn.execute(sa.select(c.c.sha256, c.c.der).where(c.c.sha256.in_(part))):
                self.certs.data[r.sha256] = bytes(r.der)

    def _verdict(
        self, r: Any, links: list[Any], dane: dict[tuple[int, int], list[Any]]
    ) -> DomainVerdict:
        hosts = []
        for link in links:
            rows = dane.get((r.line, link.ordinal), [])
            fields = codec.link_fields(link._mapping)
            if codec.is_capped_link(link._mapping) and not rows:
                hosts.append(replace(capped_host(None, link.host_name), **fields))
                continue
            eps: list[EndpointFacts] = []
            matches: list[DaneMatch | None] = []
            for d in rows:
                if codec.is_capped_dane(d._mapping):
                    eps.append(capped_endpoint(d.address, d.port, d.sni or None))
                    matches.append(None)
                    continue
                eps.append(self.endpoints.data[(d.address, d.port, d.sni)])
                matches.append(codec.dane_from_record(d._mapping))
            hosts.append(HostVerdict(host=self.hosts.data[link.host_name], endpoints=tuple(eps),
                                     dane=tuple(matches), **fields))
        return DomainVerdict(domain=r.name, hosts=tuple(hosts), **codec.result_fields(r._mapping))


def iter_verdicts(engine: Engine, scan_id: int, chunk: int = 2000) -> Iterator[DomainVerdict]:
    """Every stored verdict of ``scan_id`` in input-line order, ``chunk`` lines per query round."""
    with engine.connect() as conn:
        reader = VerdictReader(conn, scan_id)
        after = -1
        while True:
            batch = reader.chunk(after, chunk)
            if not batch:
                return
            yield from batch
            after = batch[-1].line or 0
