"""SQL -> small DataFrames. Every aggregation runs in the database (SQLAlchemy Core GROUP BY).

A scan may hold tens of millions of domain results: nothing here fetches one row per domain
except the explicit per-domain lists (movers, broken domains, :func:`iter_domain_rows`, which
streams). Queries use the keys and indexes of :mod:`scanner.store.schema` (``scan_id`` first).
The functions return DataFrames with the columns named in their docstrings; shares and
reshaping happen in :mod:`analysis.metrics`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scanner.model import DaneStatus, EndpointStatus, Outcome, Reason, Stage, TlsaStatus
from scanner.store import schema as s
from scanner.store.schema import ScanStatus

ScanRef = int | str  # a scan id, or "latest"

STAGE_RANK: dict[str, int] = {st.value: i for i, st in enumerate(Stage)}
GREETED = tuple(st.value for st in EndpointStatus if st.greeted)


class NoScan(LookupError):
    """The database holds no (complete) scan matching the request."""


def _frame(
    conn: sa.Connection, query: sa.Select[Any, Any, Any] | sa.Select[Any], columns: Sequence[str]
) -> pd.DataFrame:
    rows = [tuple(r) for r in conn.execute(query)]
    return pd.DataFrame.from_records(rows, columns=list(columns))


# --- scans ----------------------------------------------------------------------------------


def scans(engine: Engine, *, complete_only: bool = True) -> pd.DataFrame:
    """Scans in logical order: ``scan_id, label, logical_date, status, result_count``.

    ``logical_date`` is the scan's logical date, or the UTC date it started when none was
    given; ordering is by that date, then id (two scans of one night stay in run order).
    """
    c = s.scans.c
    q = sa.select(c.id, c.label, c.logical_date, c.started_at, c.status, c.result_count)
    if complete_only:
        q = q.where(c.status == ScanStatus.COMPLETE.value)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    records = []
    for r in rows:
        day = r.logical_date
        if day is None and r.started_at is not None:
            started = r.started_at
            if started.tzinfo is not None:
                started = started.astimezone(dt.UTC)
            day = started.date()
        records.append((int(r.id), r.label, day, r.status, r.result_count))
    records.sort(key=lambda x: (x[2] or dt.date.min, x[0]))
    return pd.DataFrame.from_records(
        records, columns=["scan_id", "label", "logical_date", "status", "result_count"]
    )


def resolve_scan(engine: Engine, ref: ScanRef) -> int:
    """``"latest"`` -> the last complete scan in logical order; an id (int or digits) -> itself."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        sid = int(ref)
        with engine.connect() as conn:
            found = conn.execute(sa.select(s.scans.c.id).where(s.scans.c.id == sid)).first()
        if found is None:
            raise NoScan(f"no scan {sid}")
        return sid
    if ref != "latest":
        raise ValueError(f"scan must be an id or 'latest', not {ref!r}")
    table = scans(engine)
    if table.empty:
        raise NoScan("no complete scan in the database")
    return int(table["scan_id"].iloc[-1])


def earlier_scans(engine: Engine, scan_id: int) -> list[int]:
    """Complete scans before ``scan_id`` in logical order (oldest first)."""
    table = scans(engine)
    ids = [int(x) for x in table["scan_id"]]
    if scan_id not in ids:
        # An unfinished scan is compared with every complete scan dated before it.
        everything = scans(engine, complete_only=False)
        row = everything[everything["scan_id"] == scan_id]
        if row.empty:
            raise NoScan(f"no scan {scan_id}")
        day = row["logical_date"].iloc[0]
        keep = [
            int(i)
            for i, d in zip(table["scan_id"], table["logical_date"], strict=True)
            if (d, int(i)) < (day, scan_id)
        ]
        return keep
    return ids[: ids.index(scan_id)]


def previous_scan(engine: Engine, scan_id: int) -> int | None:
    before = earlier_scans(engine, scan_id)
    return before[-1] if before else None


# --- expressions ----------------------------------------------------------------------------


def tld_of(name: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """The last label of a name, in SQL both SQLite and PostgreSQL run.

    ``rtrim(x, <every non-dot character of x>)`` keeps x up to its last dot; what follows is
    the TLD. (No reverse()/split_part() in SQLite.)
    """
    head = sa.func.rtrim(name, sa.func.replace(name, ".", ""))
    return sa.func.substr(name, sa.func.length(head) + 1)


def _state(dr: Any) -> sa.ColumnElement[str]:
    """A domain's place: its stage when ``ok``, else its outcome (the two vocabularies are
    disjoint)."""
    return sa.case(
        (dr.c.outcome == Outcome.OK.value, sa.func.coalesce(dr.c.stage, "")), else_=dr.c.outcome
    )


def _rank(state: sa.ColumnElement[str]) -> sa.ColumnElement[int]:
    """Ladder rank of a state: plaintext 0 … dane 4; any non-``ok`` outcome -1."""
    return sa.case(STAGE_RANK, value=state, else_=-1)


def _primary_mx(scan_ids: Sequence[int]) -> sa.Subquery:
    """The most-preferred MX host per result line: ``ordinal`` 0, since the verdict lists hosts
    best first (lowest preference, then name; scanner/verdict.py ``MxDecision.hosts``)."""
    dm = s.domain_mx
    return (
        sa.select(dm.c.scan_id, dm.c.line, dm.c.host_name)
        .where(dm.c.scan_id.in_(list(scan_ids)), dm.c.ordinal == 0)
        .subquery("primary_mx")
    )


# --- domain counts --------------------------------------------------------------------------


def outcome_stage_counts(engine: Engine, scan_ids: Sequence[int]) -> pd.DataFrame:
    """``scan_id, outcome, stage, n``: results per outcome and stage (stage None unless ok)."""
    dr = s.domain_results
    q = (
        sa.select(dr.c.scan_id, dr.c.outcome, dr.c.stage, sa.func.count())
        .where(dr.c.scan_id.in_(list(scan_ids)))
        .group_by(dr.c.scan_id, dr.c.outcome, dr.c.stage)
    )
    with engine.connect() as conn:
        return _frame(conn, q, ["scan_id", "outcome", "stage", "n"])


def tld_counts(engine: Engine, scan_id: int) -> pd.DataFrame:
    """``group, outcome, stage, n`` with group = the domain's TLD ("" for invalid input)."""
    dr, d = s.domain_results, s.domains
    tld = sa.func.coalesce(tld_of(d.c.name), "").label("grp")
    q = (
        sa.select(tld, dr.c.outcome, dr.c.stage, sa.func.count())
        .select_from(dr.outerjoin(d, d.c.id == dr.c.domain_id))
        .where(dr.c.scan_id == scan_id)
        .group_by(tld, dr.c.outcome, dr.c.stage)
    )
    with engine.connect() as conn:
        return _frame(conn, q, ["group", "outcome", "stage", "n"])


def primary_host_counts(engine: Engine, scan_id: int) -> pd.DataFrame:
    """``host, outcome, stage, n`` with host = the most-preferred MX host ("" when none).

    Grouped by host in SQL; the caller maps hosts onto providers (the PSL is not SQL).
    """
    dr = s.domain_results
    pm = _primary_mx([scan_id])
    host = sa.func.coalesce(pm.c.host_name, "").label("host")
    q = (
        sa.select(host, dr.c.outcome, dr.c.stage, sa.func.count())
        .select_from(
            dr.outerjoin(pm, sa.and_(pm.c.scan_id == dr.c.scan_id, pm.c.line == dr.c.line))
        )
        .where(dr.c.scan_id == scan_id)
        .group_by(host, dr.c.outcome, dr.c.stage)
    )
    with engine.connect() as conn:
        return _frame(conn, q, ["host", "outcome", "stage", "n"])


# --- MX host counts -------------------------------------------------------------------------


def host_stage_counts(engine: Engine, scan_ids: Sequence[int]) -> pd.DataFrame:
    """``scan_id, reachable, stage, n``: MX hosts (once per host per scan) per ladder rung.

    A host's rung, as for a domain but over its own endpoints (every domain it serves):
    ``plaintext`` reachable; ``starttls`` every greeting endpoint completed STARTTLS;
    ``dnssec`` its address records are secure; ``tlsa`` its TLSA RRset is usable; ``dane``
    every greeting endpoint authenticated (RFC 7672 §3). Unreachable hosts have stage None.
    """
    dm, dres, ep, h = s.domain_mx, s.dane_results, s.endpoints, s.mx_hosts
    ids = list(scan_ids)
    greeted = ep.c.status.in_(GREETED)
    per_host = (
        sa.select(
            dm.c.scan_id,
            dm.c.host_name,
            sa.func.max(
                sa.case((sa.and_(greeted, ep.c.status != EndpointStatus.SUCCESS.value), 1), else_=0)
            ).label("tls_bad"),
            sa.func.min(
                sa.case(
                    (sa.and_(greeted, dres.c.authenticated == sa.true()), 1),
                    (greeted, 0),
                    else_=None,
                )
            ).label("dane_ok"),
        )
        .select_from(
            dm.join(
                dres,
                sa.and_(
                    dres.c.scan_id == dm.c.scan_id,
                    dres.c.line == dm.c.line,
                    dres.c.host_ordinal == dm.c.ordinal,
                ),
            ).join(
                ep,
                sa.and_(
                    ep.c.scan_id == dres.c.scan_id,
                    ep.c.address == dres.c.address,
                    ep.c.port == dres.c.port,
                    ep.c.sni == dres.c.sni,
                ),
            )
        )
        .where(dm.c.scan_id.in_(ids))
        .group_by(dm.c.scan_id, dm.c.host_name)
        .subquery("per_host")
    )
    reachable = sa.func.coalesce(h.c.reachable, sa.false())
    stage = sa.case(
        (reachable == sa.false(), None),
        (sa.func.coalesce(per_host.c.tls_bad, 1) == 1, Stage.PLAINTEXT.value),
        (sa.func.coalesce(h.c.address_status, "") != "secure", Stage.STARTTLS.value),
        (h.c.tlsa_status != TlsaStatus.USABLE.value, Stage.DNSSEC.value),
        (sa.func.coalesce(per_host.c.dane_ok, 0) == 1, Stage.DANE.value),
        else_=Stage.TLSA.value,
    ).label("stage")
    inner = (
        sa.select(h.c.scan_id, reachable.label("reachable"), stage)
        .select_from(
            h.outerjoin(
                per_host,
                sa.and_(per_host.c.scan_id == h.c.scan_id, per_host.c.host_name == h.c.name),
            )
        )
        .where(h.c.scan_id.in_(ids))
        .subquery("host_stage")
    )
    q = sa.select(inner.c.scan_id, inner.c.reachable, inner.c.stage, sa.func.count()).group_by(
        inner.c.scan_id, inner.c.reachable, inner.c.stage
    )
    with engine.connect() as conn:
        out = _frame(conn, q, ["scan_id", "reachable", "stage", "n"])
    out["reachable"] = out["reachable"].astype(bool)
    return out


# --- transitions ----------------------------------------------------------------------------


def _one_per_domain(scan_id: int, name: str) -> sa.Subquery:
    """Each domain once per scan (its first line, should the input list it twice):
    ``domain_id, state``."""
    dr = s.domain_results
    first = (
        sa.select(dr.c.domain_id, sa.func.min(dr.c.line).label("line"))
        .where(dr.c.scan_id == scan_id, dr.c.domain_id.is_not(None))
        .group_by(dr.c.domain_id)
        .subquery(f"{name}_first")
    )
    return (
        sa.select(first.c.domain_id, _state(dr).label("state"))
        .select_from(first.join(dr, sa.and_(dr.c.scan_id == scan_id, dr.c.line == first.c.line)))
        .subquery(name)
    )


def transition_counts(engine: Engine, scan_a: int, scan_b: int) -> pd.DataFrame:
    """``from_state, to_state, n`` over domains (by ``domain_id``) of either scan; a domain
    missing from one side has state ``absent`` there."""
    a = _one_per_domain(scan_a, "a")
    b = _one_per_domain(scan_b, "b")
    src = sa.func.coalesce(a.c.state, "absent").label("from_state")
    dst = sa.func.coalesce(b.c.state, "absent").label("to_state")
    q = (
        sa.select(src, dst, sa.func.count())
        .select_from(a.join(b, a.c.domain_id == b.c.domain_id, full=True))
        .group_by(src, dst)
    )
    with engine.connect() as conn:
        return _frame(conn, q, ["from_state", "to_state", "n"])


def movers(engine: Engine, scan_a: int, scan_b: int) -> pd.DataFrame:
    """``domain, from_state, to_state, from_rank, to_rank`` for domains in both scans whose
    ladder rank changed (non-``ok`` outcomes rank below ``plaintext``)."""
    a = _one_per_domain(scan_a, "a")
    b = _one_per_domain(scan_b, "b")
    d = s.domains
    ra, rb = _rank(a.c.state), _rank(b.c.state)
    q = (
        sa.select(d.c.name, a.c.state, b.c.state, ra, rb)
        .select_from(a.join(b, a.c.domain_id == b.c.domain_id).join(d, d.c.id == a.c.domain_id))
        .where(ra != rb)
        .order_by(d.c.name)
    )
    with engine.connect() as conn:
        return _frame(conn, q, ["domain", "from_state", "to_state", "from_rank", "to_rank"])


# --- cohorts --------------------------------------------------------------------------------


def first_reached(engine: Engine, scan_ids: Sequence[int]) -> pd.DataFrame:
    """``first_starttls, first_dnssec, first_dane, n``: domains grouped by the index (0-based,
    in the order of ``scan_ids``) of the first scan where they had STARTTLS, a secure MX RRset
    and stage ``dane``; None where never. Per-domain minima in a subquery, then one GROUP BY."""
    dr = s.domain_results
    ids = list(scan_ids)
    if not ids:
        return pd.DataFrame(columns=["first_starttls", "first_dnssec", "first_dane", "n"])
    order = sa.case({sid: i for i, sid in enumerate(ids)}, value=dr.c.scan_id)

    def first(cond: sa.ColumnElement[bool], name: str) -> sa.Label[Any]:
        return sa.func.min(sa.case((cond, order), else_=None)).label(name)

    ok = dr.c.outcome == Outcome.OK.value
    per_domain = (
        sa.select(
            dr.c.domain_id,
            first(sa.and_(ok, dr.c.starttls == sa.true()), "fs"),
            first(sa.and_(ok, dr.c.dnssec == sa.true()), "fd"),
            first(sa.and_(ok, dr.c.stage == Stage.DANE.value), "fa"),
        )
        .where(dr.c.scan_id.in_(ids), dr.c.domain_id.is_not(None))
        .group_by(dr.c.domain_id)
        .subquery("per_domain")
    )
    p = per_domain.c
    q = sa.select(p.fs, p.fd, p.fa, sa.func.count()).group_by(p.fs, p.fd, p.fa)
    with engine.connect() as conn:
        return _frame(conn, q, ["first_starttls", "first_dnssec", "first_dane", "n"])


# --- TLSA -----------------------------------------------------------------------------------


def tlsa_parameter_counts(engine: Engine, scan_id: int) -> pd.DataFrame:
    """``usage, selector, mtype, records, hosts``: TLSA records of the scan's MX hosts."""
    t = s.tlsa_records
    q = (
        sa.select(
            t.c.usage,
            t.c.selector,
            t.c.mtype,
            sa.func.count(),
            sa.func.count(sa.distinct(t.c.host_name)),
        )
        .where(t.c.scan_id == scan_id)
        .group_by(t.c.usage, t.c.selector, t.c.mtype)
    )
    with engine.connect() as conn:
        return _frame(conn, q, ["usage", "selector", "mtype", "records", "hosts"])


def tlsa_host_counts(engine: Engine, scan_id: int) -> pd.DataFrame:
    """``tlsa_status, records, hosts``: MX hosts per TLSA status and record count."""
    h = s.mx_hosts
    q = (
        sa.select(h.c.tlsa_status, h.c.tlsa_count, sa.func.count())
        .where(h.c.scan_id == scan_id)
        .group_by(h.c.tlsa_status, h.c.tlsa_count)
    )
    with engine.connect() as conn:
        return _frame(conn, q, ["tlsa_status", "records", "hosts"])


# --- breakage -------------------------------------------------------------------------------


def _broken(dr: Any) -> sa.ColumnElement[bool]:
    return sa.and_(dr.c.outcome == Outcome.OK.value, dr.c.dane == DaneStatus.BROKEN.value)


def broken_domains(engine: Engine, scan_id: int, earlier: Sequence[int]) -> pd.DataFrame:
    """``domain, reason, stage, stale``: DANE-broken domains of a scan.

    ``stale`` (reason ``tlsa-no-match`` only): a TLSA record the host still publishes in this
    scan authenticated this domain's endpoint in one of the ``earlier`` scans, so the record
    matched the certificate seen then and the certificate changed without a TLSA update (the
    classic rollover mistake, RFC 7671 §8.1).
    """
    dr, d = s.domain_results, s.domains
    prev = dr.alias("prev")
    pdr = s.dane_results.alias("pdr")
    pdm = s.domain_mx.alias("pdm")
    cdm = s.domain_mx.alias("cdm")
    tr = s.tlsa_records.alias("tr")
    ids = list(earlier)
    stale_q = (
        sa.select(sa.literal(1))
        .select_from(
            prev.join(pdr, sa.and_(pdr.c.scan_id == prev.c.scan_id, pdr.c.line == prev.c.line))
            .join(
                pdm,
                sa.and_(
                    pdm.c.scan_id == pdr.c.scan_id,
                    pdm.c.line == pdr.c.line,
                    pdm.c.ordinal == pdr.c.host_ordinal,
                ),
            )
            .join(
                cdm,
                sa.and_(
                    cdm.c.scan_id == scan_id,
                    cdm.c.line == dr.c.line,
                    cdm.c.host_name == pdm.c.host_name,
                ),
            )
            .join(
                tr,
                sa.and_(
                    tr.c.scan_id == scan_id,
                    tr.c.host_name == cdm.c.host_name,
                    tr.c.usage == pdr.c.usage,
                    tr.c.selector == pdr.c.selector,
                    tr.c.mtype == pdr.c.mtype,
                    tr.c.data == pdr.c.data,
                ),
            )
        )
        .where(
            prev.c.domain_id == dr.c.domain_id,
            prev.c.scan_id.in_(ids),
            pdr.c.authenticated == sa.true(),
        )
    )
    stale = (
        sa.and_(dr.c.reason == Reason.TLSA_NO_MATCH.value, stale_q.exists())
        if ids
        else (sa.false())
    )
    q = (
        sa.select(d.c.name, dr.c.reason, dr.c.stage, sa.case((stale, 1), else_=0))
        .select_from(dr.join(d, d.c.id == dr.c.domain_id))
        .where(dr.c.scan_id == scan_id, _broken(dr))
        .order_by(d.c.name)
    )
    with engine.connect() as conn:
        out = _frame(conn, q, ["domain", "reason", "stage", "stale"])
    out["stale"] = out["stale"].astype(bool)
    return out


def repaired_domains(engine: Engine, scan_id: int, since: int) -> pd.DataFrame:
    """``domain, prev_reason, state``: broken at ``since``, in ``scan_id`` and not broken."""
    dr, d = s.domain_results, s.domains
    prev = dr.alias("prev")
    q = (
        sa.select(d.c.name, prev.c.reason, _state(dr))
        .select_from(
            prev.join(
                dr, sa.and_(dr.c.domain_id == prev.c.domain_id, dr.c.scan_id == scan_id)
            ).join(d, d.c.id == dr.c.domain_id)
        )
        .where(prev.c.scan_id == since, _broken(prev), sa.not_(_broken(dr)))
        .distinct()
        .order_by(d.c.name)
    )
    with engine.connect() as conn:
        return _frame(conn, q, ["domain", "prev_reason", "state"])


# --- per-domain rows ------------------------------------------------------------------------

DOMAIN_ROW_COLUMNS = (
    "line", "input", "domain", "outcome", "starttls", "dnssec", "tlsa", "tlsa_unusable", "dane",
    "stage", "reason", "mx_status", "implicit_mx", "primary_mx",
)  # fmt: skip


def iter_domain_rows(
    engine: Engine, scan_id: int, chunk: int = 10_000
) -> Iterator[tuple[Any, ...]]:
    """Every result line of a scan in line order (``DOMAIN_ROW_COLUMNS``), streamed."""
    dr, d = s.domain_results, s.domains
    pm = _primary_mx([scan_id])
    q = (
        sa.select(
            dr.c.line,
            dr.c.input,
            d.c.name,
            dr.c.outcome,
            dr.c.starttls,
            dr.c.dnssec,
            dr.c.tlsa,
            dr.c.tlsa_unusable,
            dr.c.dane,
            dr.c.stage,
            dr.c.reason,
            dr.c.mx_status,
            dr.c.implicit_mx,
            pm.c.host_name,
        )
        .select_from(
            dr.outerjoin(d, d.c.id == dr.c.domain_id).outerjoin(
                pm, sa.and_(pm.c.scan_id == dr.c.scan_id, pm.c.line == dr.c.line)
            )
        )
        .where(dr.c.scan_id == scan_id)
        .order_by(dr.c.line)
    )
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q)
        for row in result:
            yield tuple(row)
