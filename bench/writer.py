"""Writer throughput: synthetic domain results into PostgreSQL and SQLite, rows/s printed.

    .venv/bin/python bench/writer.py [--n 1000000] [--batch 1000] [--backend pg|sqlite|both]

Sharing is realistic: most domains use one or two of a few hundred provider MX hosts (written
once per scan, then only linked); one in ten runs its own MX host with its own endpoint. The
PostgreSQL run uses a throw-away database ``danescan_bench_<random>`` on 127.0.0.1:5432; the
SQLite run a temporary file. The figure that counts is domain results per second of writer time
(verdict generation is timed separately and excluded).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scanner.model import DomainVerdict, EndpointStatus, HostVerdict
from scanner.store import db, scans
from scanner.store.writer import WriteBatch, Writer
from tests import verdict_factory as vf

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PROVIDERS = 400
OWN_HOST_EVERY = 10


def providers() -> list[HostVerdict]:
    out = []
    for i in range(PROVIDERS):
        if i % 4 == 0:
            out.append(vf.dane_host(f"mx{i}.provider{i % 40}.example", f"192.0.2.{i % 250}"))
        else:
            addr = f"198.51.{i // 250}.{i % 250}"
            out.append(vf.plain_host(f"mx{i}.provider{i % 40}.example", addr))
    return out


def own_host(j: int) -> HostVerdict:
    name = f"mail.own{j}.example"
    addr = f"10.{(j >> 16) & 255}.{(j >> 8) & 255}.{j & 255}"
    facts = vf.host(name, (addr,), secure=False)
    ep = vf.endpoint(addr, name, EndpointStatus.SUCCESS, chain=(vf.certificate("own.example"),))
    return HostVerdict(10, facts, (ep,), (None,), reachable=True)


def verdicts(start: int, count: int, pool: list[HostVerdict]) -> list[DomainVerdict]:
    out = []
    for line in range(start, start + count):
        name = f"domain{line}.example"
        if line % OWN_HOST_EVERY == 0:
            hosts: tuple[HostVerdict, ...] = (own_host(line),)
        elif line % 3 == 0:
            hosts = (pool[line % PROVIDERS], pool[(line * 7 + 1) % PROVIDERS])
        else:
            hosts = (pool[line % PROVIDERS],)
        make = vf.dane_valid if hosts[0].host.tlsa_records else vf.plaintext
        out.append(make(line, name, hosts[0]))
        if len(hosts) > 1:
            out[-1] = DomainVerdict(**{**_fields(out[-1]), "hosts": hosts})
    return out


def _fields(v: DomainVerdict) -> dict[str, object]:
    return {f: getattr(v, f) for f in DomainVerdict.__slots__}  # type: ignore[attr-defined]


async def run_one(url: str, n: int, batch: int) -> tuple[float, float]:
    db.upgrade(url)
    engine = db.make_engine(url)
    scan_id = scans.create_scan(engine, "bench", None, None, None, {})
    writer = Writer(engine, scan_id)
    pool = providers()
    # Feed the writer's bounded channel as the scan does. Generating verdicts takes the trio
    # thread; its time is subtracted (the writer's threads keep running meanwhile, so the
    # figure is conservative).
    send, receive = trio.open_memory_channel[WriteBatch](4)
    gen = 0.0
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run, receive)
        async with send:
            for start in range(1, n + 1, batch):
                g = time.perf_counter()
                vs = verdicts(start, min(batch, n + 1 - start), pool)
                gen += time.perf_counter() - g
                await send.send(WriteBatch(vs))
    write = time.perf_counter() - t0 - gen
    assert writer.written == n
    engine.dispose()
    return gen, write


def report(label: str, n: int, gen: float, write: float) -> None:
    print(
        f"{label:10s} {n:>9,d} domain results in {write:7.1f} s writer time: "
        f"{n / write:9,.0f} results/s  (verdict generation {gen:.1f} s, excluded)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--backend", choices=["pg", "sqlite", "both"], default="both")
    args = ap.parse_args()
    if args.backend in ("pg", "both"):
        name = f"danescan_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
            gen, write = trio.run(run_one, url, args.n, args.batch)
            report("postgresql", args.n, gen, write)
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{os.path.join(tmp, 'bench.sqlite')}"
            gen, write = trio.run(run_one, url, args.n, args.batch)
            report("sqlite", args.n, gen, write)


if __name__ == "__main__":
    main()
