"""The aggregations behind every metric, written once as Ibis expressions.

Each function takes a :class:`~analysis.engines.Source` (DuckDB over the archive or over
the live store's rows, Spark over the archive) and returns a small DataFrame with the
columns named in its docstring; the engine does the per-domain work, nothing here fetches one
row per domain except the explicit per-domain lists (movers, broken domains,
:func:`domain_rows`, which streams). Shares and reshaping happen in :mod:`analysis.metrics`.

Counting rule: a list that names a domain several times (``a.example``, ``A.EXAMPLE.``) has one
result per line, but a domain counts once per scan, at its first line (:func:`one_per_domain`);
lines naming no valid domain count one each.
Text is never sorted by the engine (engines may sort by a collation, DuckDB and Spark by code
point): frames are sorted in Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analysis import psl
from analysis.catalog import NoScan, ScanRef
from scanner.model import DaneStatus, EndpointStatus, Outcome, Reason, Stage, TlsaStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from analysis.engines import Source

__all__ = ["NoScan", "ScanRef"]

STAGE_RANK: dict[str, int] = {st.value: i for i, st in enumerate(Stage)}
GREETED = tuple(st.value for st in EndpointStatus if st.greeted)
OK = Outcome.OK.value


def _fetch(src: Source, expr: ir.Table, columns: Sequence[str]) -> pd.DataFrame:
    """Run ``expr``; Python values (None for null), whatever the engine's dtypes."""
    frame = src.execute(expr.select(*columns))
    out = frame.astype(object).where(frame.notna(), None)
    return out.reset_index(drop=True)


# --- expressions ----------------------------------------------------------------------------


def tld(name: ir.StringValue) -> ir.StringValue:
    """The last label of a name ("" when null)."""
    return name.re_extract(r"([^.]*)$", 1).fill_null("")


def state(d: ir.Table) -> ir.StringValue:
    """A domain's place: its stage when ``ok``, else its outcome (disjoint vocabularies)."""
    return ibis.cases((d.outcome == OK, d.stage.fill_null("")), else_=d.outcome)


def rank(value: ir.StringValue) -> ir.IntegerValue:
    """Ladder rank of a state: plaintext 0 … dane 4; any non-``ok`` outcome -1."""
    return value.cases(*STAGE_RANK.items(), else_=-1)


def one_per_domain(d: ir.Table) -> ir.Table:
    """Each domain once per scan (its first line); lines without a domain stay, one each."""
    first = d.line.min().over(group_by=[d.scan_id, d.domain])
    marked = d.mutate(_first=first)
    return marked.filter(marked.domain.isnull() | (marked.line == marked._first)).drop("_first")


def domains(src: Source, scan_ids: Sequence[int]) -> ir.Table:
    """The ``domains`` table of these scans, each domain once (:func:`one_per_domain`)."""
    return src.view("domains", scan_ids, lambda: one_per_domain(src.table("domains", scan_ids)))


def _primary_mx(src: Source, scan_ids: Sequence[int]) -> ir.Table:
    """The most-preferred MX host per result line: ``ordinal`` 0 (scanner/verdict.py lists
    hosts best first)."""
    dm = src.table("domain_mx", scan_ids)
    return dm.filter(dm.ordinal == 0).select(
        pm_scan=dm.scan_id, pm_line=dm.line, primary_mx=dm.host_name
    )


def _count(t: ir.Table, *keys: str) -> ir.Table:
    return t.group_by(list(keys)).agg(n=t.count().cast("int64"))


# --- domain counts --------------------------------------------------------------------------


def outcome_stage_counts(src: Source, scan_ids: Sequence[int]) -> pd.DataFrame:
    """``scan_id, outcome, stage, n``: domains per outcome and stage (stage None unless ok)."""
    cols = ["scan_id", "outcome", "stage", "n"]
    kept = src.rollup("domain_counts", scan_ids)
    if kept is not None:
        return kept[cols]
    return _fetch(src, _count(domains(src, scan_ids), "scan_id", "outcome", "stage"), cols)


GROUP_COLUMNS = ("group", "outcome", "stage", "n")


def group_counts(src: Source, scan_id: int, by: str) -> pd.DataFrame:
    """``group, outcome, stage, n``: domains per TLD (``by="tld"``) or per mail provider
    (``by="provider"``), from the night's rollup where kept."""
    cols = list(GROUP_COLUMNS)
    kept = src.rollup(f"{by}_counts", [scan_id])
    if kept is not None:
        return kept[cols]
    if by == "tld":
        return tld_counts(src, scan_id)
    if by == "provider":
        hosts = primary_host_counts(src, scan_id)
        return providers_of(hosts, provider_map(src, scan_id, hosts["host"]))
    raise ValueError(f"by must be 'tld' or 'provider', not {by!r}")


def tld_counts(src: Source, scan_id: int) -> pd.DataFrame:
    """``group, outcome, stage, n`` with group = the domain's TLD ("" for invalid input)."""
    d = domains(src, [scan_id])
    expr = _count(d.mutate(group=tld(d.domain)), "group", "outcome", "stage")
    return _fetch(src, expr, list(GROUP_COLUMNS))


def primary_host_counts(src: Source, scan_id: int) -> pd.DataFrame:
    """``host, outcome, stage, n`` with host = the most-preferred MX host ("" when none).

    Grouped by host in the engine; the caller maps hosts onto providers (the PSL is not SQL).
    """
    d = domains(src, [scan_id])
    pm = _primary_mx(src, [scan_id])
    j = d.left_join(pm, [d.scan_id == pm.pm_scan, d.line == pm.pm_line])
    expr = _count(j.mutate(host=j.primary_mx.fill_null("")), "host", "outcome", "stage")
    return _fetch(src, expr, ["host", "outcome", "stage", "n"])


def providers_for(hosts: pa.Array, known: pa.Table | None = None) -> pa.Array:
    """The provider (:func:`analysis.psl.provider_of`) of each of ``hosts`` (distinct, no
    nulls), taken from ``known`` (``host, provider``) where it holds the host."""
    if known is None:
        return pa.array([psl.provider_of(h) for h in hosts.to_pylist()], type=pa.string())
    names, providers = (known.column(c).combine_chunks() for c in ("host", "provider"))
    found = pc.take(providers, pc.index_in(hosts, value_set=names))
    if found.null_count == 0:
        return found
    missing = pc.filter(hosts, pc.is_null(found))
    extra = pa.table({"host": missing, "provider": providers_for(missing)})
    return providers_for(hosts, pa.concat_tables([known.select(["host", "provider"]), extra]))


def provider_map(src: Source, scan_id: int, hosts: Iterable[str]) -> pa.Table:
    """``host, provider`` for these hosts, from the night's ``providers`` rollup where kept."""
    distinct = pa.array(pd.unique(pd.Series(list(hosts), dtype=object)), type=pa.string())
    distinct = distinct.drop_null()
    known = src.rollup_arrow("providers", [scan_id])
    return pa.table({"host": distinct, "provider": providers_for(distinct, known)})


def providers_of(host_counts: pd.DataFrame, providers: pa.Table) -> pd.DataFrame:
    """``host, outcome, stage, n`` -> ``group, outcome, stage, n`` with group = provider
    (``providers``: ``host, provider`` for every host), sorted; column-wise (a provider per
    self-hosted domain: hundreds of thousands of hosts a night)."""
    host = pa.array(host_counts["host"].astype(str).to_numpy(dtype=object), type=pa.string())
    names, known = (providers.column(c).combine_chunks() for c in ("host", "provider"))
    stage = pa.array(
        host_counts["stage"].to_numpy(dtype=object), type=pa.string(), from_pandas=True
    )
    rows = pa.table(
        {
            "group": pc.take(known, pc.index_in(host, value_set=names)),
            "outcome": pa.array(host_counts["outcome"].to_numpy(dtype=object), type=pa.string()),
            "stage": pc.fill_null(stage, ""),  # grouped as a value, null again below
            "n": pa.array(host_counts["n"].to_numpy(dtype="int64")),
        }
    )
    keys = ["group", "outcome", "stage"]
    summed = rows.group_by(keys, use_threads=False).aggregate([("n", "sum")])
    summed = summed.sort_by([(k, "ascending") for k in keys])  # code point order
    blank = pc.equal(summed.column("stage"), "")
    out: pd.DataFrame = pa.table(
        {
            "group": summed.column("group"),
            "outcome": summed.column("outcome"),
            "stage": pc.if_else(blank, pa.scalar(None, pa.string()), summed.column("stage")),
            "n": summed.column("n_sum"),
        }
    ).to_pandas()
    return out[list(GROUP_COLUMNS)]


# --- MX host counts -------------------------------------------------------------------------


def host_stage_counts(src: Source, scan_ids: Sequence[int]) -> pd.DataFrame:
    """``scan_id, reachable, stage, n``: MX hosts (once per host per scan) per ladder rung.

    A host's rung, as for a domain but over its own endpoints (every domain it serves):
    ``plaintext`` reachable; ``starttls`` every greeting endpoint completed STARTTLS;
    ``dnssec`` its address records are secure; ``tlsa`` its TLSA RRset is usable; ``dane``
    every greeting endpoint authenticated (RFC 7672 §3). Unreachable hosts have stage None.
    """
    cols = ["scan_id", "reachable", "stage", "n"]
    kept = src.rollup("host_counts", scan_ids)
    if kept is not None:
        return kept[cols].assign(reachable=kept["reachable"].astype(bool))
    dm = src.table("domain_mx", scan_ids)
    dr = src.table("dane", scan_ids)
    ep = src.table("endpoints", scan_ids)
    links = dm.select(dm.scan_id, dm.line, host_ordinal=dm.ordinal, host=dm.host_name)
    per_ep = links.join(dr, ["scan_id", "line", "host_ordinal"]).select(
        "scan_id", "host", "address", "port", "sni", "authenticated"
    )
    per_ep = per_ep.join(
        ep.select("scan_id", "address", "port", "sni", "status"),
        ["scan_id", "address", "port", "sni"],
    )
    greeted = per_ep.status.isin(GREETED)
    per_host = per_ep.group_by(["scan_id", "host"]).agg(
        tls_bad=ibis.cases(
            (greeted & (per_ep.status != EndpointStatus.SUCCESS.value), 1), else_=0
        ).max(),
        dane_ok=ibis.cases(
            (greeted & (per_ep.authenticated.fill_null(False)), 1), (greeted, 0), else_=None
        ).min(),
    )
    h = src.table("mx_hosts", scan_ids)
    j = h.left_join(per_host, [h.scan_id == per_host.scan_id, h.name == per_host.host])
    reachable = j.reachable.fill_null(False)
    stage = ibis.cases(
        (~reachable, ibis.null(str)),
        (j.tls_bad.fill_null(1) == 1, Stage.PLAINTEXT.value),
        (j.address_status.fill_null("") != "secure", Stage.STARTTLS.value),
        (j.tlsa_status != TlsaStatus.USABLE.value, Stage.DNSSEC.value),
        (j.dane_ok.fill_null(0) == 1, Stage.DANE.value),
        else_=Stage.TLSA.value,
    )
    rows = j.select(scan_id=j.scan_id, reachable=reachable, stage=stage)
    out = _fetch(src, _count(rows, "scan_id", "reachable", "stage"), cols)
    out["reachable"] = out["reachable"].astype(bool)
    return out


# --- transitions ----------------------------------------------------------------------------


def _states(src: Source, scan_id: int) -> ir.Table:
    """``domain, state``: each domain of a scan once."""
    d = domains(src, [scan_id])
    d = d.filter(d.domain.notnull())
    return d.select(d.domain, state=state(d))


def transition_counts(src: Source, scan_a: int, scan_b: int) -> pd.DataFrame:
    """``from_state, to_state, n`` over domains (by name) of either scan; a domain missing from
    one side has state ``absent`` there."""
    cols = ["from_state", "to_state", "n"]
    kept = src.rollup("transitions", [scan_b])
    if kept is not None and not kept.empty and set(kept["scan_a"]) == {scan_a}:
        return kept[cols]
    a = _states(src, scan_a).rename(a_domain="domain", a_state="state")
    b = _states(src, scan_b).rename(b_domain="domain", b_state="state")
    j = a.outer_join(b, a.a_domain == b.b_domain)
    pairs = j.select(
        from_state=j.a_state.fill_null("absent"), to_state=j.b_state.fill_null("absent")
    )
    return _fetch(src, _count(pairs, "from_state", "to_state"), cols)


def movers(src: Source, scan_a: int, scan_b: int) -> pd.DataFrame:
    """``domain, from_state, to_state, from_rank, to_rank`` for domains in both scans whose
    ladder rank changed (non-``ok`` outcomes rank below ``plaintext``), sorted by domain (the
    night's ``movers`` rollup answers when ``scan_a`` is the previous scan)."""
    cols = ["domain", "from_state", "to_state", "from_rank", "to_rank"]
    kept = src.rollup("movers", [scan_b]) if scan_a == src.catalog.previous(scan_b) else None
    if kept is not None:
        return kept[cols].sort_values("domain", kind="stable").reset_index(drop=True)
    a = _states(src, scan_a).rename(from_state="state")
    b = _states(src, scan_b).rename(to_state="state")
    j = a.join(b, "domain")
    j = j.mutate(from_rank=rank(j.from_state), to_rank=rank(j.to_state))
    j = j.filter(j.from_rank != j.to_rank)
    return _fetch(src, j, cols).sort_values("domain", kind="stable").reset_index(drop=True)


# --- cohorts --------------------------------------------------------------------------------


def first_reached(src: Source, scan_ids: Sequence[int]) -> pd.DataFrame:
    """``first_starttls, first_dnssec, first_dane, n``: domains grouped by the index (0-based,
    in the order of ``scan_ids``) of the first scan where they had STARTTLS, a secure MX RRset
    and stage ``dane``; None where never. Per-domain minima, then one GROUP BY."""
    cols = ["first_starttls", "first_dnssec", "first_dane", "n"]
    ids = list(scan_ids)
    if not ids:
        return pd.DataFrame(columns=cols)
    kept = src.rollup("first_counts", ids[-1:])
    if kept is not None and [*src.catalog.earlier(ids[-1]), ids[-1]] == ids:
        # The rollup names nights; positions count from the first night of the series.
        night = src.catalog.dates()
        position = {night[sid]: k for k, sid in enumerate(ids)}
        out = kept[cols].copy()
        for c in cols[:3]:
            out[c] = [None if v is None else position[v] for v in out[c]]
        return out
    d = domains(src, ids)
    d = d.filter(d.domain.notnull())
    order = d.scan_id.cases(*((sid, k) for k, sid in enumerate(ids)), else_=None)
    ok = d.outcome == OK

    def first(cond: ir.BooleanValue) -> ir.IntegerValue:
        return ibis.cases((cond, order), else_=None).min()

    per_domain = d.group_by("domain").agg(
        first_starttls=first(ok & d.starttls.fill_null(False)),
        first_dnssec=first(ok & d.dnssec.fill_null(False)),
        first_dane=first(ok & (d.stage == Stage.DANE.value)),
    )
    return _fetch(src, _count(per_domain, *cols[:3]), cols)


# --- TLSA -----------------------------------------------------------------------------------


def tlsa_parameter_counts(src: Source, scan_id: int) -> pd.DataFrame:
    """``usage, selector, mtype, records, hosts``: TLSA records of the scan's MX hosts."""
    t = src.table("tlsa", [scan_id])
    expr = t.group_by(["usage", "selector", "mtype"]).agg(
        records=t.count().cast("int64"), hosts=t.host_name.nunique().cast("int64")
    )
    return _fetch(src, expr, ["usage", "selector", "mtype", "records", "hosts"])


def tlsa_host_counts(src: Source, scan_id: int) -> pd.DataFrame:
    """``tlsa_status, records, hosts``: MX hosts per TLSA status and record count."""
    h = src.table("mx_hosts", [scan_id])
    expr = h.group_by(["tlsa_status", "tlsa_count"]).agg(hosts=h.count().cast("int64"))
    return _fetch(src, expr.rename(records="tlsa_count"), ["tlsa_status", "records", "hosts"])


# --- breakage -------------------------------------------------------------------------------


def _broken(d: ir.Table) -> ir.BooleanValue:
    return (d.outcome == OK) & (d.dane.fill_null("") == DaneStatus.BROKEN.value)


def matched_records(src: Source, scan_ids: Sequence[int]) -> ir.Table:
    """``domain, host, usage, selector, mtype, data``: every TLSA record that authenticated an
    endpoint of the domain's MX host in one of these scans (the ``matched`` rollup keeps the
    running union, night by night)."""
    ids = list(scan_ids)
    prev = src.table("domains", ids)
    prev = prev.filter(prev.domain.notnull()).select("scan_id", "line", "domain")
    pdr = src.table("dane", ids)
    pdr = pdr.filter(pdr.authenticated.fill_null(False)).select(
        "scan_id", "line", "host_ordinal", "usage", "selector", "mtype", "data"
    )
    pdm = src.table("domain_mx", ids).select(
        "scan_id", "line", host_ordinal="ordinal", host="host_name"
    )
    matched = prev.join(pdr, ["scan_id", "line"]).join(pdm, ["scan_id", "line", "host_ordinal"])
    return matched.select(*MATCHED_COLUMNS).distinct()


MATCHED_COLUMNS = ("domain", "host", "usage", "selector", "mtype", "data")


def _stale(
    src: Source,
    scan_id: int,
    broken: ir.Table,
    earlier: Sequence[int],
    matched: ir.Table | None,
) -> ir.Table:
    """``domain``: broken domains (``tlsa-no-match``) of which a TLSA record the host still
    publishes in ``scan_id`` authenticated the domain's endpoint in an ``earlier`` scan
    (``matched``: those records, when the caller has them)."""
    if matched is None and [*src.catalog.earlier(earlier[-1]), earlier[-1]] == list(earlier):
        matched = src.rollup_table("matched", earlier[-1])
    if matched is None:
        matched = matched_records(src, earlier)
    cdm = src.table("domain_mx", [scan_id]).select(cur_line="line", host="host_name")
    cur = broken.filter(broken.reason == Reason.TLSA_NO_MATCH.value).select("domain", "line")
    cur = cur.join(cdm, cur.line == cdm.cur_line).select("domain", "host")
    tr = src.table("tlsa", [scan_id]).select(
        host="host_name", usage="usage", selector="selector", mtype="mtype", data="data"
    )
    still = cur.join(matched, ["domain", "host"]).join(
        tr, ["host", "usage", "selector", "mtype", "data"]
    )
    return still.select(stale_domain=still.domain).distinct()


BROKEN_COLUMNS = ("domain", "reason", "stage", "stale")
REPAIRED_COLUMNS = ("domain", "prev_reason", "state")


def broken_domains(
    src: Source, scan_id: int, earlier: Sequence[int], matched: ir.Table | None = None
) -> pd.DataFrame:
    """``domain, reason, stage, stale``: DANE-broken domains of a scan, sorted by domain.

    ``stale`` (reason ``tlsa-no-match`` only): a TLSA record the host still publishes in this
    scan authenticated this domain's endpoint in one of the ``earlier`` scans, so the record
    matched the certificate seen then and the certificate changed without a TLSA update (the
    classic rollover mistake, RFC 7671 §8.1). ``matched``: the records that authenticated in
    the ``earlier`` scans (:func:`matched_records`), when the caller keeps them. The night's
    ``broken`` rollup answers when ``earlier`` is every scan before this one.
    """
    cols = list(BROKEN_COLUMNS)
    kept = None
    if matched is None and list(earlier) == src.catalog.earlier(scan_id):
        kept = src.rollup("broken", [scan_id])
    if kept is not None:
        out = kept[cols]
    else:
        d = domains(src, [scan_id])
        broken = d.filter(_broken(d) & d.domain.notnull())
        if earlier:
            st = _stale(src, scan_id, broken, earlier, matched)
            j = broken.left_join(st, broken.domain == st.stale_domain)
            rows = j.mutate(stale=j.stale_domain.notnull())
        else:
            rows = broken.mutate(stale=ibis.literal(False))
        out = _fetch(src, rows, cols)
    out = out.assign(stale=out["stale"].astype(bool))
    return out.sort_values("domain", kind="stable").reset_index(drop=True)


def repaired_domains(src: Source, scan_id: int, since: int) -> pd.DataFrame:
    """``domain, prev_reason, state``: broken at ``since``, in ``scan_id`` and not broken
    (the night's ``repaired`` rollup answers when ``since`` is the previous scan)."""
    cols = list(REPAIRED_COLUMNS)
    kept = src.rollup("repaired", [scan_id]) if since == src.catalog.previous(scan_id) else None
    if kept is not None:
        out = kept[cols]
    else:
        p = domains(src, [since])
        p = p.filter(_broken(p) & p.domain.notnull())
        p = p.select(p_domain="domain", prev_reason="reason")
        d = domains(src, [scan_id])
        d = d.filter(~_broken(d) & d.domain.notnull())
        j = p.join(d, p.p_domain == d.domain)
        rows = j.select(domain=j.domain, prev_reason=j.prev_reason, state=state(j)).distinct()
        out = _fetch(src, rows, cols)
    return out.sort_values("domain", kind="stable").reset_index(drop=True)


# --- per-domain rows ------------------------------------------------------------------------

DOMAIN_ROW_COLUMNS = (
    "line", "input", "domain", "outcome", "starttls", "dnssec", "tlsa", "tlsa_unusable", "dane",
    "stage", "reason", "mx_status", "implicit_mx", "primary_mx",
)  # fmt: skip


def domain_batches(
    src: Source, scan_id: int, providers: ir.Table | None = None
) -> Iterator[pa.RecordBatch]:
    """Every result line of a scan in line order (columns ``DOMAIN_ROW_COLUMNS``, and
    ``provider`` from ``providers``, a ``host, provider`` table, when given), streamed as the
    Arrow batches the engine returns."""
    d = src.table("domains", [scan_id])
    pm = _primary_mx(src, [scan_id])
    j = d.left_join(pm, [d.scan_id == pm.pm_scan, d.line == pm.pm_line])
    columns = list(DOMAIN_ROW_COLUMNS)
    if providers is not None:
        p = providers.select(p_host="host", provider="provider")
        j = j.left_join(p, j.primary_mx == p.p_host)
        columns.append("provider")
    yield from src.batches(j.select(*columns).order_by("line"))


def domain_rows(src: Source, scan_id: int) -> Iterator[pd.DataFrame]:
    """:func:`domain_batches` as frames, Python values (None for null)."""
    for batch in domain_batches(src, scan_id):
        frame = batch.to_pandas()
        yield frame.astype(object).where(frame.notna(), None)
