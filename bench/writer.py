"""Writer throughput: synthetic domain results into PostgreSQL and SQLite, rows/s printed.

    .venv/bin/python bench/writer.py [--n 1000000] [--batch 1000] [--backend pg|sqlite|both]

Sharing is realistic: most domains use one or two of a few hundred provider MX hosts (written
once per scan, then only linked); one in ten runs its own MX host with its own endpoint. The
PostgreSQL run uses a throw-away database ``danescan_bench_<random>`` on 127.0.0.1:5432; the
SQLite run a temporary file. The input is loaded as shards of ``--batch`` lines and each batch
completes its shard, as in a scan. The figure that counts is domain results per second of
writer time (verdict generation is timed separately and excluded); CPU per 1000 results of this
process and of the database backends, and the load average, say how much the machine's other
work may have cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typing import TYPE_CHECKING

from scanner.model import DomainVerdict, EndpointStatus, HostVerdict
from scanner.runtime import tuned_for_scanning
from scanner.store import db, scans
from scanner.store.writer import WriteBatch, Writer
from tests import verdict_factory as vf

if TYPE_CHECKING:
    import sqlalchemy as sa

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
            out[-1] = dataclasses.replace(out[-1], hosts=hosts)
    return out


def server_cpu(engine: sa.Engine) -> float | None:
    """CPU seconds used so far by the PostgreSQL backends of this database (None elsewhere)."""
    if not db.is_postgres(engine):
        return None
    with engine.connect() as conn:
        pids = conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        ).scalars().all()
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def run_one(url: str, n: int, batch: int, merge: int) -> Figures:
    db.upgrade(url)
    engine = db.make_engine(url)
    scan_id = scans.create_scan(engine, "bench", None, None, None, {})
    # One shard per batch, as a scan has: the writer then takes its fast path (shard not done).
    lines = ((i, f"domain{i}.example") for i in range(1, n + 1))
    shard_count = scans.add_shards(engine, scan_id, lines, shard_size=batch)
    writer = Writer(engine, scan_id, merge_results=merge)
    pool = providers()
    # Feed the writer's bounded channel as the scan does. Generating verdicts takes the trio
    # thread; its time is subtracted (the writer's threads keep running meanwhile, so the
    # figure is conservative).
    send, receive = trio.open_memory_channel[WriteBatch](4)
    gen = gen_cpu = 0.0
    server0 = server_cpu(engine)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run, receive)
        async with send:
            for shard_no, start in enumerate(range(1, n + 1, batch)):
                g, gc = time.perf_counter(), time.thread_time()
                vs = verdicts(start, min(batch, n + 1 - start), pool)
                gen += time.perf_counter() - g
                gen_cpu += time.thread_time() - gc
                await send.send(WriteBatch(vs, shard_no))
            # Measured while the writer still runs: its own connection (and the backend's
            # CPU figures with it) goes when the channel closes. (A counter the writer's
            # threads update, polled: the writer has no event for it.)
            while writer.written < n:  # noqa: ASYNC110
                await trio.sleep(0.002)
            write = time.perf_counter() - t0 - gen
            client = time.process_time() - cpu0 - gen_cpu
            server1 = server_cpu(engine)
    assert writer.written == n
    assert scans.remaining_shards(engine, scan_id) == 0
    assert shard_count == -(-n // batch)
    engine.dispose()
    server = None if server0 is None or server1 is None else server1 - server0
    return Figures(n, gen, write, client, server)


@dataclass(frozen=True)
class Figures:
    n: int
    gen: float  # seconds generating verdicts (excluded)
    write: float  # seconds of writer time (wall clock)
    client: float  # CPU seconds of this process, generation excluded
    server: float | None  # CPU seconds of the database backends (PostgreSQL)

    def line(self, label: str) -> str:
        per_k = f"client CPU {1000 * self.client / self.n * 1000:.1f} ms"
        if self.server is not None:
            per_k += f", server backend CPU {1000 * self.server / self.n * 1000:.1f} ms"
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
        return (
            f"{label:10s} {self.n:>9,d} domain results in {self.write:7.1f} s writer time: "
            f"{self.n / self.write:9,.0f} results/s  ({per_k} per 1000 results; "
            f"verdict generation {self.gen:.1f} s excluded; load average {load})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--backend", choices=["pg", "sqlite", "both"], default="both")
    ap.add_argument("--merge", type=int, default=8000,
                    help="results per transaction at most when batches queue up (Writer)")
    args = ap.parse_args()
    if args.backend in ("pg", "both"):
        name = f"danescan_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
            with tuned_for_scanning():  # as the scan commands run the writer
                figures = trio.run(run_one, url, args.n, args.batch, args.merge)
            print(figures.line("postgresql"), flush=True)
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{os.path.join(tmp, 'bench.sqlite')}"
            with tuned_for_scanning():  # as the scan commands run the writer
                figures = trio.run(run_one, url, args.n, args.batch, args.merge)
            print(figures.line("sqlite"), flush=True)


if __name__ == "__main__":
    main()
