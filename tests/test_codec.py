"""scanner.codec: every fact type survives its record form, through JSON text as the shared
cache and the JSON columns carry it, and through the row values the writer stores."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st

from scanner import codec
from scanner.jsontext import dumps
from scanner.model import (
    DaneMatch,
    DaneStatus,
    DnssecStatus,
    DomainVerdict,
    EndpointFacts,
    EndpointStatus,
    HostFacts,
    HostVerdict,
    Lookup,
    Outcome,
    Reason,
    Stage,
    TlsaCoverage,
    TlsaRecord,
    TlsaStatus,
)
from scanner.store import rows, schema

# Text as the network may send it, short of what the store removes on purpose (controls,
# lone surrogates): the record form keeps it exactly.
text = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=30)
maybe_text = st.none() | text
name = st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}", fullmatch=True)
address = st.ip_addresses().map(str)


def enum[E](cls: type[E]) -> st.SearchStrategy[E]:
    return st.sampled_from(list(cls))  # type: ignore[call-overload]


lookups = st.builds(
    Lookup,
    qname=name,
    rdtype=st.sampled_from(["A", "AAAA", "MX", "TLSA", "CNAME"]),
    status=enum(DnssecStatus),
    rcode=st.sampled_from(["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "TIMEOUT"]),
    records=st.lists(text, max_size=3).map(tuple),
    cname_chain=st.lists(name, max_size=3).map(tuple),
    ede_code=st.none() | st.integers(0, 65535),
    ede_text=maybe_text,
)
tlsa_records = st.builds(TlsaRecord, st.integers(0, 255), st.integers(0, 255),
                         st.integers(0, 255), st.binary(max_size=64))
hosts = st.builds(
    HostFacts,
    name=name,
    a=st.none() | lookups,
    aaaa=st.none() | lookups,
    address_status=st.none() | enum(DnssecStatus),
    tlsa_base=st.none() | name,
    tlsa_status=enum(TlsaStatus),
    tlsa_records=st.lists(tlsa_records, max_size=3).map(tuple),
    tlsa_lookup=st.none() | lookups,
    reason=st.none() | enum(Reason),
)
endpoints = st.builds(
    EndpointFacts,
    address=address,
    port=st.integers(1, 65535),
    sni=st.none() | name,
    status=enum(EndpointStatus),
    banner=maybe_text,
    greeting_code=st.none() | st.integers(100, 599),
    ehlo=st.lists(text, max_size=4).map(tuple),
    starttls_offered=st.none() | st.booleans(),
    starttls_code=st.none() | st.integers(100, 599),
    tls_version=st.none() | st.sampled_from(["TLSv1.2", "TLSv1.3"]),
    cipher=maybe_text,
    chain=st.lists(st.binary(min_size=1, max_size=40), max_size=3).map(tuple),
    error=maybe_text,
    probed_at=st.none() | st.datetimes(timezones=st.just(dt.UTC)),
    attempts=st.integers(0, 3),
)
matches = st.builds(DaneMatch, authenticated=st.booleans(), record=st.none() | tlsa_records,
                    depth=st.none() | st.integers(0, 9), reason=st.none() | enum(Reason),
                    detail=maybe_text)
results = st.builds(
    DomainVerdict,
    input=text,
    domain=st.none() | name,
    outcome=enum(Outcome),
    starttls=st.none() | st.booleans(),
    dnssec=st.none() | st.booleans(),
    tlsa=st.none() | enum(TlsaCoverage),
    tlsa_unusable=st.none() | st.booleans(),
    dane=st.none() | enum(DaneStatus),
    stage=st.none() | enum(Stage),
    reason=st.none() | enum(Reason),
    mx_status=st.none() | enum(DnssecStatus),
    implicit_mx=st.booleans(),
    line=st.integers(1, 10**6),
    mx_rcode=st.none() | st.sampled_from(["NOERROR", "SERVFAIL", "TIMEOUT"]),
    mx_ede_code=st.none() | st.integers(0, 32767),
    mx_ede_text=maybe_text,
    error=maybe_text,
)


def through_json(record: object) -> object:
    """What a JSON column or the shared cache hands back."""
    return json.loads(dumps(record))


@given(lookups)
def test_lookup(lk: Lookup) -> None:
    assert codec.lookup_from_record(through_json(codec.lookup_record(lk))) == lk  # type: ignore[arg-type]
    assert codec.lookup_from_record(dumps(codec.lookup_record(lk))) == lk  # JSON text too
    assert codec.lookup_record(lk, rows.stored) == codec.lookup_record(lk)  # clean text stays
    assert codec.lookup_from_record(None) is None
    assert codec.lookup_record(None) is None


@given(tlsa_records)
def test_tlsa_record(r: TlsaRecord) -> None:
    assert codec.tlsa_from_record(through_json(codec.tlsa_record(r))) == r  # type: ignore[arg-type]
    assert codec.tlsa_from_record(dict(zip(codec.TLSA_FIELDS, codec.tlsa_row(r),
                                           strict=True))) == r


@given(hosts)
def test_host(h: HostFacts) -> None:
    record = codec.host_record(h)
    assert codec.host_from_record(through_json(record)) == h  # type: ignore[arg-type]
    # A row: the host's columns, its TLSA records read apart.
    row = {f: through_json(record[f]) for f in codec.HOST_FIELDS}
    assert codec.host_from_record(row, h.tlsa_records) == h
    assert set(codec.HOST_FIELDS) <= set(schema.mx_hosts.c.keys())
    # The writer's record: every column but the key's scan_id.
    assert set(schema.mx_hosts.c.keys()) - set(codec.mx_host_record(h, True)) == {"scan_id"}


@given(endpoints)
def test_endpoint(ep: EndpointFacts) -> None:
    assert codec.endpoint_from_json(through_json(codec.endpoint_json(ep))) == ep  # type: ignore[arg-type]
    # A row: the chain as fingerprints (the reader looks the DER up), the time as stored.
    fps = [codec.fingerprint(der) for der in ep.chain]
    record = codec.endpoint_record(ep, fps)
    row = {**record, "sni": record["sni"] or "", "ehlo": dumps(record["ehlo"]),
           "probed_at": rows.sqlite_ts(ep.probed_at)}
    if row["probed_at"] is not None:
        row["probed_at"] = dt.datetime.fromisoformat(row["probed_at"])  # naive UTC
    assert codec.endpoint_from_record(row, ep.chain) == ep
    assert list(codec.ENDPOINT_FIELDS) == list(record)
    assert list(codec.ENDPOINT_FIELDS) == list(schema.endpoints.c.keys())[1:]


@given(st.none() | matches)
def test_dane_match(m: DaneMatch | None) -> None:
    row = dict(zip(codec.DANE_FIELDS, codec.dane_row(m), strict=True))
    assert codec.dane_from_record(row) == m
    assert set(codec.DANE_FIELDS) <= set(schema.dane_results.c.keys())


@given(results)
def test_domain_result(v: DomainVerdict) -> None:
    row = {**dict(zip(codec.RESULT_FIELDS, codec.result_row(v), strict=True)),
           **dict(zip(codec.ANSWER_FIELDS, codec.answer_row(v), strict=True)),
           "input": v.input, "line": v.line}
    back = DomainVerdict(domain=v.domain, **codec.result_fields(row))
    assert back == v
    assert set(row) <= set(schema.domain_results.c.keys())


def test_out_of_range_ede_code_is_not_stored() -> None:
    """The column is a signed 16-bit integer; EDE private-use codes go up to 65535."""
    v = DomainVerdict(input="x.example", domain="x.example", outcome=Outcome.BOGUS,
                      mx_ede_code=60000)
    assert codec.answer_row(v)[1] is None


def test_text_is_capped_as_its_column() -> None:
    """rows.stored caps each field as the schema caps its column (an info cap, else the
    String length; a Lookup's keys by its JSON columns), and other text at TEXT_MAX."""
    want = {
        "banner": 512, "ehlo": 128, "tls_version": 16, "cipher": 128, "error": 512,
        "detail": 512, "mx_rcode": 16, "mx_ede_text": 512, "records": 65535, "ede_text": 512,
        "qname": 1024, "cname_chain": 1024, "name": 1024, "tlsa_base": 1024, "sni": 1024,
    }  # fmt: skip
    long = "x" * 70_000
    assert {f: len(rows.stored(long, f) or "") for f in want} == want
    assert rows.stored(None, "banner") is None


links = st.builds(HostVerdict, preference=st.none() | st.integers(0, 65535), host=hosts,
                  endpoints=st.just(()), dane=st.just(()), reachable=st.booleans(),
                  reason=st.none() | enum(Reason))


@given(links)
def test_host_link(hv: HostVerdict) -> None:
    row = dict(zip(codec.LINK_FIELDS, codec.link_row(hv), strict=True))
    assert HostVerdict(host=hv.host, endpoints=(), dane=(), **codec.link_fields(row)) == hv
    assert codec.is_capped_link(row) is (hv.reason is Reason.NOT_PROBED_CAP)
    assert list(schema.domain_mx.c.keys())[-len(codec.LINK_FIELDS):] == list(codec.LINK_FIELDS)


def test_capped_dane_row_is_told_apart() -> None:
    capped = dict(zip(codec.DANE_FIELDS, codec.CAPPED_DANE, strict=True))
    assert codec.is_capped_dane(capped)
    assert codec.dane_from_record(capped) is None
    failed = DaneMatch(False, reason=Reason.NOT_PROBED_CAP)
    assert not codec.is_capped_dane(dict(zip(codec.DANE_FIELDS, codec.dane_row(failed),
                                             strict=True)))


@given(hosts)
def test_host_flat(h: HostFacts) -> None:
    flat = codec.host_flat(h)
    assert tuple(flat) == codec.HOST_FLAT_FIELDS
    assert flat["tlsa_records"] == [r.to_text() for r in h.tlsa_records]
    assert all(not isinstance(x, dict) for x in flat.values())  # CSV-ready: no objects
    assert {k: v for k, v in codec.host_record(h).items() if k in flat and k != "tlsa_records"
            } == {k: v for k, v in flat.items() if k != "tlsa_records"}


@given(st.builds(HostVerdict, preference=st.none() | st.integers(0, 65535), host=hosts,
                 endpoints=st.lists(endpoints, max_size=2).map(tuple), dane=st.just(()),
                 reachable=st.booleans(), reason=st.none() | enum(Reason)),
       st.data())
def test_contract_is_the_record_published(hv: HostVerdict, data: st.DataObject) -> None:
    """Every published value is the record's value under its published name, except the
    documented reshapes (addresses with their status, the DANE match's record, the chain's
    digests)."""
    dane = tuple(data.draw(st.none() | matches) for _ in hv.endpoints)
    hv = HostVerdict(hv.preference, hv.host, hv.endpoints, dane, hv.reachable, hv.reason)
    obj = codec.host_contract(hv)
    assert tuple(obj) == codec.HOST_CONTRACT
    record = {**codec.host_record(hv.host),
              **dict(zip(codec.LINK_FIELDS, codec.link_row(hv), strict=True))}
    for k, v in obj.items():
        field = {p: f for f, p in codec.PUBLISHED_AS.items()}.get(k, k)
        if field in record and k != "addresses":
            assert v == record[field], k
    assert [a["address"] for a in obj["addresses"]] == list(hv.host.addresses)
    for ep, m, out in zip(hv.endpoints, dane, obj["endpoints"], strict=True):
        assert out["chain_sha256"] == [codec.fingerprint(c) for c in ep.chain]
        assert out == json.loads(dumps(out))
        assert (out["dane"] is None) is (m is None)
        if m is not None and m.record is not None:
            assert codec.tlsa_from_record(out["dane"]["record"]) == m.record
