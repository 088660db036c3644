"""Alembic environment: the target is scanner.store.schema's metadata, nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import context

from scanner.store import schema
from scanner.store.db import make_engine, resolve_url

if TYPE_CHECKING:
    from sqlalchemy import Connection

config = context.config
target_metadata = schema.metadata


def _url() -> str:
    return resolve_url(context.get_x_argument(as_dictionary=True).get("db"))


def _configure(conn: Connection) -> None:
    context.configure(
        connection=conn,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds tables for later migrations.
        render_as_batch=conn.dialect.name == "sqlite",
    )


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:  # scanner.store.db.upgrade passes its own connection
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
