"""The fact tables of the history, one definition for the live store and the archive.

Each :class:`FactTable` names a table of the store (:mod:`scanner.store.schema`), the columns
it drops or adds, its sort order and its categorical columns. From that one definition come

- the SELECT that reads one scan's rows from PostgreSQL or SQLite (:func:`select`), used to
  write the archive and, compiled to SQL, as the live store's view for the metrics;
- the Arrow schema of the archive (:func:`arrow_schema`), mapped from the SQLAlchemy column
  types, so no column is encoded by hand a second time.

The ``domains`` table carries the verdict contract's field names (docs/verdicts.md): the
store's ``domain_id`` becomes ``domain``, the A-label itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from scanner.store import schema as s

# Bumped whenever a column changes meaning or type; readers check it (parquet metadata).
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class FactTable:
    name: str  # archive table name
    source: sa.Table  # the store's table
    sort: tuple[str, ...]
    categories: tuple[str, ...] = ()  # closed vocabularies: dictionary-encoded in Parquet
    drop: tuple[str, ...] = ()
    per_scan: bool = True  # False: shared across scans (certificates, once per fingerprint)

    @property
    def columns(self) -> tuple[str, ...]:
        names = [c.name for c in self.source.columns if c.name not in self.drop]
        if self.name == "domains":  # the A-label after the input, as in the verdict contract
            names.insert(names.index("input") + 1, "domain")
        return tuple(names)


FACT_TABLES: tuple[FactTable, ...] = (
    FactTable(
        "domains",
        s.domain_results,
        sort=("domain", "line"),
        categories=("outcome", "tlsa", "dane", "stage", "reason", "mx_status", "mx_rcode"),
        drop=("domain_id", "shard_no"),
    ),
    FactTable("domain_mx", s.domain_mx, sort=("line", "ordinal"), categories=("reason",)),
    FactTable(
        "mx_hosts",
        s.mx_hosts,
        sort=("name",),
        categories=("address_status", "tlsa_status", "reason"),
    ),
    FactTable("tlsa", s.tlsa_records, sort=("host_name", "ordinal")),
    FactTable(
        "endpoints",
        s.endpoints,
        sort=("address", "port", "sni"),
        categories=("status", "tls_version", "cipher"),
    ),
    FactTable(
        "dane", s.dane_results, sort=("line", "host_ordinal", "ordinal"), categories=("reason",)
    ),
    FactTable(
        "certificates",
        s.certificates,
        sort=("sha256",),
        categories=("key_type",),
        per_scan=False,
    ),
)
BY_NAME: dict[str, FactTable] = {t.name: t for t in FACT_TABLES}
PER_SCAN: tuple[FactTable, ...] = tuple(t for t in FACT_TABLES if t.per_scan)


def _column(table: FactTable, name: str) -> sa.Column[Any]:
    if table.name == "domains" and name == "domain":
        return s.domains.c.name
    return table.source.c[name]


def arrow_type(column: sa.Column[Any]) -> pa.DataType:
    """The Arrow type of a store column (JSON is stored as its text)."""
    t = column.type
    if isinstance(t, sa.JSON):
        return pa.string()
    if isinstance(t, sa.SmallInteger):
        return pa.int16()
    if isinstance(t, sa.BigInteger):
        return pa.int64()
    if isinstance(t, sa.Integer):
        return pa.int32()
    if isinstance(t, sa.Boolean):
        return pa.bool_()
    if isinstance(t, sa.LargeBinary):
        return pa.binary()
    if isinstance(t, sa.DateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(t, sa.Date):
        return pa.date32()
    if isinstance(t, sa.String):
        return pa.string()
    raise TypeError(f"no Arrow type for {column.table.name}.{column.name}: {t!r}")


def arrow_schema(table: FactTable) -> pa.Schema:
    fields = []
    for name in table.columns:
        col = _column(table, name)
        nullable = bool(col.nullable) or (table.name == "domains" and name == "domain")
        fields.append(pa.field(name, arrow_type(col), nullable=nullable))
    return pa.schema(fields, metadata={"danescan.schema_version": str(SCHEMA_VERSION)})


def json_columns(table: FactTable) -> tuple[str, ...]:
    return tuple(n for n in table.columns if isinstance(_column(table, n).type, sa.JSON))


def select(table: FactTable, scan_ids: list[int] | None = None) -> sa.Select[Any]:
    """The table's rows as the archive holds them (``scan_ids``: restrict to those scans)."""
    cols = [_column(table, n).label(n) for n in table.columns]
    q = sa.select(*cols)
    if table.name == "domains":
        dr = s.domain_results
        q = q.select_from(dr.outerjoin(s.domains, s.domains.c.id == dr.c.domain_id))
    if scan_ids is not None and table.per_scan:
        q = q.where(table.source.c.scan_id.in_(scan_ids))
    return q
