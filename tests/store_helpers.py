"""Small helpers shared by the store tests (fixtures live in tests/conftest_store.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import sqlalchemy as sa
import trio

from scanner.store import scans, schema
from scanner.store.writer import WriteBatch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Engine

    from scanner.model import DomainVerdict
    from scanner.store.writer import Writer

PG_ADMIN = os.environ.get(
    "DANESCAN_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def count(engine: Engine, table: str, scan_id: int | None = None) -> int:
    t = schema.metadata.tables[table]
    q = sa.select(sa.func.count()).select_from(t)
    if scan_id is not None:
        q = q.where(t.c.scan_id == scan_id)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def new_scan(engine: Engine, label: str = "test") -> int:
    return scans.create_scan(engine, label, "list.txt", None, "127.0.0.1@5353", {"k": 1})


async def write(
    writer: Writer, batch: Sequence[DomainVerdict], shard_id: int | None = None
) -> None:
    """Store ``batch`` (completing shard ``shard_id``) the way a scan does: through
    :meth:`Writer.run` on a channel."""
    send, receive = trio.open_memory_channel[WriteBatch](1)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run, receive)
            async with send:
                await send.send(WriteBatch(batch, shard_id))
    except BaseExceptionGroup as group:  # the writer's own error, as a caller of write() saw it
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        raise group from None


def write_sync(writer: Writer, batch: Sequence[DomainVerdict]) -> None:
    """:func:`write` outside trio (fixtures that build a store)."""
    trio.run(write, writer, batch)
