"""One mapping per fact type between the model's frozen dataclasses and their stored form.

The stored form of a fact is a *record*: a mapping keyed by the fact's column names in
``scanner/store/schema.py``, holding plain JSON values. The writer's rows are records in
column order, the reader rebuilds facts from result rows (mappings with the same keys), and
the shared probe cache publishes records as JSON; so a fact's fields are named here and in the
schema, nowhere else. Enum-valued fields are converted by the enums themselves.

Two things differ by medium and are passed in by the caller: where an endpoint's certificate
chain lives (the cache carries the DER, base64; the database, export and the contract a list of
fingerprints), and how untrusted text is cleaned before it reaches the database
(``text(value, field)``: ``scanner.store.rows`` caps each field as its column; the identity
elsewhere).

The verdict contract's JSON (docs/verdicts.md, ``scan --jsonl``) is built here too, from the same
records: each fact's record projected onto the published keys, in their published order, with
the one table of names the contract spells differently (:data:`PUBLISHED_AS`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from operator import itemgetter
from typing import Any

from scanner import model

Record = dict[str, Any]
Text = Callable[[str | None, str], str | None]  # (text, field name) -> cleaned text


def same(text: str | None, field: str) -> str | None:
    """The identity cleaner: facts kept as they are (shared cache, JSON)."""
    return text


def _decoded(v: Any) -> Any:
    # JSON columns come back decoded, except through raw SQL on some backends: accept text.
    return json.loads(v) if isinstance(v, str) else v


def value(e: StrEnum | None) -> str | None:
    return None if e is None else e._value_


def _enum[E: StrEnum](cls: type[E], v: str | None) -> E | None:
    return None if v is None else cls(v)


_CAP = model.Reason.NOT_PROBED_CAP._value_  # what a cost cap left out (docs/verdicts.md)


def fingerprint(der: bytes) -> str:
    """A certificate's name in the store and the contract: SHA-256 of its DER, hex."""
    return hashlib.sha256(der).hexdigest()


# -- Lookup (a JSON value inside mx_hosts: a_lookup, aaaa_lookup, tlsa_lookup) ----------------


def lookup_record(lk: model.Lookup | None, text: Text = same) -> Record | None:
    if lk is None:
        return None
    return {
        "qname": text(lk.qname, "qname"),
        "rdtype": lk.rdtype,
        "status": lk.status._value_,
        "rcode": lk.rcode,
        "records": [text(r, "records") for r in lk.records],
        "cname_chain": [text(n, "cname_chain") for n in lk.cname_chain],
        "ede_code": lk.ede_code,
        "ede_text": text(lk.ede_text, "ede_text"),
    }


def lookup_from_record(data: Mapping[Any, Any] | str | None) -> model.Lookup | None:
    d: Mapping[Any, Any] | None = _decoded(data)
    if d is None:
        return None
    return model.Lookup(
        qname=d["qname"],
        rdtype=d["rdtype"],
        status=model.DnssecStatus(d["status"]),
        rcode=d["rcode"],
        records=tuple(d["records"]),
        cname_chain=tuple(d["cname_chain"]),
        ede_code=d["ede_code"],
        ede_text=d["ede_text"],
    )


# -- TLSA record (RFC 6698 §2.1): tlsa_records rows, and the contract's JSON ---------------------

TLSA_FIELDS = ("usage", "selector", "mtype", "data")


def tlsa_record(r: model.TlsaRecord) -> Record:
    """JSON form: the data in hex (docs/verdicts.md)."""
    return {"usage": r.usage, "selector": r.selector, "mtype": r.mtype, "data": r.data.hex()}


def tlsa_from_record(d: Mapping[Any, Any]) -> model.TlsaRecord:
    """From the JSON form (data in hex) or a row (data as bytes)."""
    data = d["data"]
    return model.TlsaRecord(d["usage"], d["selector"], d["mtype"],
                      bytes.fromhex(data) if isinstance(data, str) else bytes(data))


def tlsa_row(r: model.TlsaRecord) -> tuple[int, int, int, bytes]:
    return (r.usage, r.selector, r.mtype, r.data)


# -- MX host (mx_hosts + its tlsa_records) ------------------------------------------------------


# ``mx_hosts`` columns a host's facts fill (``reachable`` is a verdict's, set by the writer).
HOST_FIELDS = (
    "name", "address_status", "addresses", "a_lookup", "aaaa_lookup", "tlsa_base",
    "tlsa_status", "tlsa_count", "tlsa_lookup", "reason",
)  # fmt: skip


def host_record(h: model.HostFacts, text: Text = same) -> Record:
    """``mx_hosts`` columns that are facts of the host (not ``reachable``, a verdict's), plus
    its TLSA records in their JSON form."""
    d = _host_facts(h, text)
    d["a_lookup"] = lookup_record(h.a, text)
    d["aaaa_lookup"] = lookup_record(h.aaaa, text)
    d["tlsa_lookup"] = lookup_record(h.tlsa_lookup, text)
    return d


def mx_host_record(h: model.HostFacts, reachable: bool, text: Text = same) -> Record:
    """An ``mx_hosts`` row's record short of ``scan_id``: the host's facts, and ``reachable``
    from the verdict that stores the host."""
    d = host_record(h, text)
    d["reachable"] = reachable
    return d


def _host_facts(h: model.HostFacts, text: Text) -> Record:
    """:func:`host_record` short of the raw lookups (flat media and the contract omit them)."""
    return {
        "name": text(h.name, "name"),
        "address_status": value(h.address_status),
        "addresses": list(h.addresses),
        "tlsa_base": text(h.tlsa_base, "tlsa_base"),
        "tlsa_status": h.tlsa_status._value_,
        "tlsa_count": len(h.tlsa_records),
        "reason": value(h.reason),
        "tlsa_records": [tlsa_record(r) for r in h.tlsa_records],
    }


def host_from_record(d: Mapping[Any, Any], records: Sequence[model.TlsaRecord] | None = None
                     ) -> model.HostFacts:
    """From a record, or an ``mx_hosts`` row with its TLSA ``records`` read apart."""
    if records is None:
        records = [tlsa_from_record(r) for r in d["tlsa_records"]]
    return model.HostFacts(
        name=d["name"],
        a=lookup_from_record(d["a_lookup"]),
        aaaa=lookup_from_record(d["aaaa_lookup"]),
        address_status=_enum(model.DnssecStatus, d["address_status"]),
        tlsa_base=d["tlsa_base"],
        tlsa_status=model.TlsaStatus(d["tlsa_status"]),
        tlsa_records=tuple(records),
        tlsa_lookup=lookup_from_record(d["tlsa_lookup"]),
        reason=_enum(model.Reason, d["reason"]),
    )


# A host's fields in flat media (export's host level, CSV): the raw lookups are left to the
# database, the name to the caller's frame.
HOST_FLAT_FIELDS = (
    *(f for f in HOST_FIELDS if f not in ("name", "a_lookup", "aaaa_lookup", "tlsa_lookup")),
    "tlsa_records",
)  # fmt: skip


def host_flat(h: model.HostFacts) -> Record:
    """Values of HOST_FLAT_FIELDS; TLSA records in presentation form (RFC 6698 §2.2)."""
    d = _host_facts(h, same)
    d["tlsa_records"] = [r.to_text() for r in h.tlsa_records]
    return {f: d[f] for f in HOST_FLAT_FIELDS}


# -- MX host as one domain sees it (domain_mx) ----------------------------------------------------

LINK_FIELDS = ("preference", "reachable", "reason")


def link_row(hv: model.HostVerdict) -> tuple[Any, ...]:
    """Values of LINK_FIELDS: the host's place and judgement in one domain's verdict."""
    reason = hv.reason
    return (hv.preference, hv.reachable, None if reason is None else reason._value_)


def link_fields(d: Mapping[Any, Any]) -> Record:
    """HostVerdict keyword arguments from a domain_mx row (host, endpoints and dane apart)."""
    return {"preference": d["preference"], "reachable": d["reachable"],
            "reason": _enum(model.Reason, d["reason"])}


def is_capped_link(d: Mapping[Any, Any]) -> bool:
    """A host a cost cap left out: its link says so, and no mx_hosts row exists (no facts)."""
    return bool(d["reason"] == _CAP)


# -- endpoint (endpoints) -----------------------------------------------------------------------


ENDPOINT_FIELDS = (
    "address", "port", "sni", "family", "status", "banner", "greeting_code", "ehlo",
    "starttls_offered", "starttls_code", "tls_version", "cipher", "chain", "error", "probed_at",
    "attempts",
)  # fmt: skip


def endpoint_record(ep: model.EndpointFacts, chain: list[str], text: Text = same,
                    ehlo_lines: int | None = None) -> Record:
    """``endpoints`` columns; ``chain`` as the medium keeps it (see the module docstring),
    at most ``ehlo_lines`` EHLO lines. ``sni`` stays None here; the table's key spells no
    SNI ''."""
    return {
        "address": ep.address,
        "port": ep.port,
        "sni": text(ep.sni, "sni"),
        "family": ep.family,
        "status": ep.status._value_,
        "banner": text(ep.banner, "banner"),
        "greeting_code": ep.greeting_code,
        "ehlo": [text(x, "ehlo") for x in ep.ehlo[:ehlo_lines]],
        "starttls_offered": ep.starttls_offered,
        "starttls_code": ep.starttls_code,
        "tls_version": text(ep.tls_version, "tls_version"),
        "cipher": text(ep.cipher, "cipher"),
        "chain": chain,
        "error": text(ep.error, "error"),
        "probed_at": ep.probed_at,
        "attempts": ep.attempts,
    }


def endpoint_from_record(d: Mapping[Any, Any], chain: Sequence[bytes]) -> model.EndpointFacts:
    probed = d["probed_at"]
    if isinstance(probed, str):
        probed = dt.datetime.fromisoformat(probed)
    if probed is not None:  # SQLite keeps naive UTC; PostgreSQL answers in its time zone
        probed = probed.replace(tzinfo=dt.UTC) if probed.tzinfo is None else probed.astimezone(
            dt.UTC)
    return model.EndpointFacts(
        address=d["address"],
        port=d["port"],
        sni=d["sni"] or None,
        status=model.EndpointStatus(d["status"]),
        banner=d["banner"],
        greeting_code=d["greeting_code"],
        ehlo=tuple(_decoded(d["ehlo"])),
        starttls_offered=d["starttls_offered"],
        starttls_code=d["starttls_code"],
        tls_version=d["tls_version"],
        cipher=d["cipher"],
        chain=tuple(chain),
        error=d["error"],
        probed_at=probed,
        attempts=d["attempts"],
    )


def endpoint_json(ep: model.EndpointFacts, chain: list[str] | None = None) -> Record:
    """The record in JSON values, the time as ISO text; the chain as base64 DER (the shared
    cache's form) unless given (fingerprints: export and the contract)."""
    if chain is None:
        chain = [base64.b64encode(c).decode() for c in ep.chain]
    d = endpoint_record(ep, chain)
    d["probed_at"] = None if ep.probed_at is None else ep.probed_at.isoformat()
    return d


def endpoint_chain(d: Mapping[Any, Any]) -> list[str]:
    """An ``endpoints`` row's chain: certificate fingerprints, leaf first."""
    return list(_decoded(d["chain"]))


def endpoint_from_json(d: Mapping[Any, Any]) -> model.EndpointFacts:
    return endpoint_from_record(d, [base64.b64decode(c) for c in d["chain"]])


# -- DANE match (dane_results) ------------------------------------------------------------------

DANE_FIELDS = ("authenticated", "usage", "selector", "mtype", "data", "depth", "reason", "detail")
NO_DANE: tuple[None, ...] = (None,) * len(DANE_FIELDS)
_NO_RECORD = (None,) * len(TLSA_FIELDS)


def dane_row(m: model.DaneMatch | None, text: Text = same) -> tuple[Any, ...]:
    """``dane_results`` values in DANE_FIELDS order; all null where DANE did not apply."""
    if m is None:
        return NO_DANE
    r, reason, detail = m.record, m.reason, m.detail
    return (
        m.authenticated,
        *(_NO_RECORD if r is None else (r.usage, r.selector, r.mtype, r.data)),
        m.depth,
        None if reason is None else reason._value_,
        None if detail is None else text(detail, "detail"),
    )


# An endpoint a cost cap left out has no endpoints row; its dane_results row says so.
CAPPED_DANE = tuple(_CAP if f == "reason" else None for f in DANE_FIELDS)


def is_capped_dane(d: Mapping[Any, Any]) -> bool:
    return d["authenticated"] is None and d["reason"] == _CAP


def dane_from_record(d: Mapping[Any, Any]) -> model.DaneMatch | None:
    if d["authenticated"] is None:
        return None
    return model.DaneMatch(
        authenticated=d["authenticated"],
        record=None if d["usage"] is None else tlsa_from_record(d),
        depth=d["depth"],
        reason=_enum(model.Reason, d["reason"]),
        detail=d["detail"],
    )


# -- domain result (domain_results) ---------------------------------------------------------------

# The verdict's own columns of domain_results, in the writer's order (after scan_id, line,
# domain_id, shard_no, input; probed_at is the writer's).
RESULT_FIELDS = (
    "outcome", "starttls", "dnssec", "tlsa", "tlsa_unusable", "dane", "stage", "reason",
    "mx_status", "implicit_mx",
)  # fmt: skip
ANSWER_FIELDS = ("mx_rcode", "mx_ede_code", "mx_ede_text", "error")


def result_row(v: model.DomainVerdict) -> tuple[Any, ...]:
    """Values of RESULT_FIELDS (per domain: the writer's hot path, so spelled out)."""
    tlsa, dane, stage, reason, mx = v.tlsa, v.dane, v.stage, v.reason, v.mx_status
    return (
        v.outcome._value_, v.starttls, v.dnssec, None if tlsa is None else tlsa._value_,
        v.tlsa_unusable, None if dane is None else dane._value_,
        None if stage is None else stage._value_, None if reason is None else reason._value_,
        None if mx is None else mx._value_, v.implicit_mx,
    )  # fmt: skip


def answer_row(v: model.DomainVerdict, text: Text = same) -> tuple[Any, ...]:
    """Values of ANSWER_FIELDS: the MX lookup's answer and an internal error's text."""
    rcode, code, ede, error = v.mx_rcode, v.mx_ede_code, v.mx_ede_text, v.error
    if code is None and ede is None and error is None:
        return (None if rcode is None else text(rcode, "mx_rcode"), None, None, None)
    if code is not None and not -32768 <= code <= 32767:
        code = None  # EDE codes are 16-bit (RFC 8914 §4; 49152-65535 private use); column signed
    return (text(rcode, "mx_rcode"), code, text(ede, "mx_ede_text"), text(error, "error"))


def result_fields(d: Mapping[Any, Any]) -> Record:
    """DomainVerdict keyword arguments from a domain_results row (the domain's name, kept in
    ``domains``, and its hosts are the reader's)."""
    return {
        "input": d["input"],
        "line": d["line"],
        "outcome": model.Outcome(d["outcome"]),
        "starttls": d["starttls"],
        "dnssec": d["dnssec"],
        "tlsa": _enum(model.TlsaCoverage, d["tlsa"]),
        "tlsa_unusable": d["tlsa_unusable"],
        "dane": _enum(model.DaneStatus, d["dane"]),
        "stage": _enum(model.Stage, d["stage"]),
        "reason": _enum(model.Reason, d["reason"]),
        "mx_status": _enum(model.DnssecStatus, d["mx_status"]),
        "implicit_mx": d["implicit_mx"],
        "mx_rcode": d["mx_rcode"],
        "mx_ede_code": d["mx_ede_code"],
        "mx_ede_text": d["mx_ede_text"],
        "error": d["error"],
    }


# -- the verdict contract's JSON (docs/verdicts.md) ------------------------------------------------

# Published names that differ from the record's field: record field -> published name.
PUBLISHED_AS = {"name": "host", "address_status": "address_dnssec", "chain": "chain_sha256"}
_FIELD = {v: k for k, v in PUBLISHED_AS.items()}

DOMAIN_CONTRACT = ("input", "domain", *RESULT_FIELDS, *ANSWER_FIELDS, "line", "mx_hosts")
HOST_CONTRACT = (
    "preference", "host", "addresses", "address_dnssec", "tlsa_base", "tlsa_status",
    "tlsa_records", "reachable", "reason", "endpoints",
)  # fmt: skip
ENDPOINT_CONTRACT = (
    "address", "port", "sni", "status", "banner", "starttls_offered", "tls_version", "cipher",
    "chain_sha256", "dane", "error", "attempts", "probed_at",
)  # fmt: skip
DANE_CONTRACT = ("authenticated", "record", "depth", "reason")


def _published(keys: tuple[str, ...], fields: tuple[str, ...] | None = None
               ) -> Callable[[Any], Record]:
    """A record (or its values in ``fields`` order) -> the contract's object: ``keys``, in
    their order."""
    names = [_FIELD.get(k, k) for k in keys]
    at = itemgetter(*names if fields is None else map(fields.index, names))
    return lambda record: dict(zip(keys, at(record), strict=True))


_host_published = _published(HOST_CONTRACT)
_endpoint_published = _published(ENDPOINT_CONTRACT)
_dane_published = _published(DANE_CONTRACT, (*DANE_FIELDS, "record"))


def verdict_contract(v: model.DomainVerdict, hosts: list[Record]) -> Record:
    """The contract's object for one input line, ``hosts`` its ``mx_hosts`` (the last key:
    ``scanner.verdict.JsonLines`` splices their text in)."""
    return dict(zip(DOMAIN_CONTRACT, (v.input, v.domain, *result_row(v), *answer_row(v),
                                      v.line, hosts), strict=True))


def host_contract(hv: model.HostVerdict) -> Record:
    """One ``mx_hosts`` entry: the host's record and its link's (whose ``reason``, the
    domain's view of the host, is the published one); the addresses with their family and
    DNSSEC status; the endpoints with their DANE match."""
    h = hv.host
    record = _host_facts(h, same)
    record.update(zip(LINK_FIELDS, link_row(hv), strict=True))
    record["addresses"] = [
        {"address": a, "family": family, "dnssec": lk.status._value_}
        for lk, family in ((h.a, 4), (h.aaaa, 6))
        if lk is not None and lk.status in _ANSWERED
        for a in lk.records
    ]
    record["endpoints"] = [endpoint_contract(ep, m)
                           for ep, m in zip(hv.endpoints, hv.dane, strict=True)]
    return _host_published(record)


_ANSWERED = (model.DnssecStatus.SECURE, model.DnssecStatus.INSECURE)


def endpoint_contract(ep: model.EndpointFacts, m: model.DaneMatch | None) -> Record:
    record = endpoint_json(ep, [fingerprint(c) for c in ep.chain])
    record["dane"] = dane_contract(m)
    return _endpoint_published(record)


def dane_contract(m: model.DaneMatch | None) -> Record | None:
    """The match with its TLSA record as one object; null where DANE did not apply."""
    if m is None:
        return None
    r = m.record
    return _dane_published((*dane_row(m), None if r is None else tlsa_record(r)))
