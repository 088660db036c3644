"""The analysis fixture database: four "nights" of hand-built verdicts stored by the real Writer.

Verdicts come out of the scanner's own rules (``scanner.verdict.domain_verdict`` /
``host_verdict``) from hand-built host and endpoint facts, so every stored row is one a scan
could produce. The plan below is the whole world; tests/test_analysis.py states the answers,
worked out by hand from this plan (never computed from it).

Pluggable: :func:`build` is one ``Builder`` (``url -> FixtureDb``). A builder that scans
testbed worlds over several nights can return the same ``FixtureDb`` and be offered by the
``analysis_db`` fixture next to this one, with its own expected answers.

Nights (logical dates 2025-03-01 .. 04); "-" = not in that night's input:

  domain         N1         N2         N3             N4
  a.alpha        plaintext  starttls   dnssec         dane
  b.alpha        dane       dane       dane           dane        (mx1.mailco.alpha)
  c.beta         dane       dane       broken:stale   dane        (cert changed at N3; TLSA
                                                                  fixed, next key added at N4)
  d.beta         dnssec     dnssec     dnssec         dnssec
  e.plainland    plaintext  plaintext  plaintext      plaintext   (mx.mail.provider.co.uk)
  f.alpha        nxdomain   nxdomain   nxdomain       nxdomain
  "=1+2"         invalid    invalid    invalid        invalid
  g.beta         starttls   dnssec     dane           broken:tlsa-lookup-failure
  h.alpha        dane       broken:bogus broken:bogus broken:starttls-not-supported
  i.gamma        dane(TA)   dane(TA)   dane(TA)       broken:certificate-host-mismatch
  j.alpha        dane       dane       dane           unreachable
  k.alpha        dane       dane       dane           dane        (mx1 + mx2.mailco.alpha)
  l.alpha        dane       dane       dane           dane        (mx1.mailco.alpha)
  o.alpha        plaintext  plaintext  plaintext      -
  n.delta        -          -          -              starttls
  m.gamma        -          -          -              broken:tlsa-no-match (never matched)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scanner.model import (
    DaneMatch,
    DnssecStatus,
    DomainVerdict,
    EndpointStatus,
    HostVerdict,
    Outcome,
    Reason,
    TlsaRecord,
    TlsaStatus,
)
from scanner.store import db, scans
from scanner.store.writer import Writer
from scanner.verdict import domain_verdict, early_verdict, host_verdict
from tests.conftest_store import _pg_available
from tests.store_helpers import PG_ADMIN, write_sync
from tests.verdict_factory import certificate, endpoint, host

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

NIGHTS: tuple[dt.date, ...] = tuple(dt.date(2025, 3, d) for d in (1, 2, 3, 4))


@dataclass(frozen=True, slots=True)
class FixtureDb:
    """A database holding complete scans: ``scan_ids[k]`` is night ``k`` (logical order)."""

    url: str
    engine: Engine
    scan_ids: tuple[int, ...]
    dates: tuple[dt.date, ...]


Builder = Callable[[str], FixtureDb]

# --- facts ----------------------------------------------------------------------------------

_ADDR: dict[str, str] = {}


def _address(name: str) -> str:
    """One documentation address per host name (RFC 5737), stable across nights."""
    if name not in _ADDR:
        _ADDR[name] = f"192.0.2.{len(_ADDR) + 1}"
    return _ADDR[name]


def spki_record(der: bytes, usage: int = 3) -> TlsaRecord:
    """``usage 1 1``: SHA-256 of the certificate's SubjectPublicKeyInfo (RFC 6698 §2.1)."""
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return TlsaRecord(usage, 1, 1, hashlib.sha256(spki).digest())


def plain(name: str, pref: int = 10) -> HostVerdict:
    """Insecure host, no STARTTLS."""
    facts = host(name, (_address(name),), secure=False)
    ep = endpoint(_address(name), name, EndpointStatus.NO_STARTTLS)
    return host_verdict(pref, facts, (ep,), (None,))


def tls(name: str, *, secure: bool, pref: int = 10) -> HostVerdict:
    """STARTTLS works; no TLSA (absent when secure, not queried when insecure)."""
    facts = host(name, (_address(name),), secure=secure)
    ep = endpoint(_address(name), name, chain=(certificate(name),))
    return host_verdict(pref, facts, (ep,), (None,))


def dane(
    name: str,
    *,
    cert: str | None = None,
    records: tuple[TlsaRecord, ...] | None = None,
    match: DaneMatch | None = None,
    status: EndpointStatus = EndpointStatus.SUCCESS,
    tlsa_status: TlsaStatus | None = None,
    pref: int = 10,
) -> HostVerdict:
    """Secure host with TLSA: by default 3 1 1 of its certificate, authenticated at depth 0."""
    der = certificate(cert or name)
    recs = records if records is not None else (spki_record(der),)
    facts = host(name, (_address(name),), tlsa=recs)
    if tlsa_status is not None:
        facts = replace(facts, tlsa_status=tlsa_status, tlsa_records=recs)
    if (
        match is None
        and status is EndpointStatus.SUCCESS
        and facts.tlsa_status is (TlsaStatus.USABLE)
    ):
        match = DaneMatch(True, record=recs[0], depth=0)
    ok_tls = status is EndpointStatus.SUCCESS
    ep = endpoint(_address(name), name, status, chain=(der,) if ok_tls else ())
    return host_verdict(pref, facts, (ep,), (match,))


def down(name: str) -> HostVerdict:
    facts = host(name, (_address(name),))
    ep = endpoint(_address(name), name, EndpointStatus.CONNECT_TIMEOUT)
    return host_verdict(10, facts, (ep,), (None,))


# --- the plan -------------------------------------------------------------------------------


def _mailco() -> tuple[HostVerdict, HostVerdict]:
    """Provider mailco.alpha: mx1 publishes the current and the next key (rollover-ready)."""
    der1 = certificate("mx1.mailco.alpha")
    mx1 = dane(
        "mx1.mailco.alpha",
        records=(spki_record(der1), spki_record(certificate("next.mx1.mailco.alpha"))),
    )
    mx2 = dane("mx2.mailco.alpha", pref=20)
    return mx1, mx2


def _c_beta(night: int) -> HostVerdict:
    old = spki_record(certificate("mx.c.beta"))
    if night < 2:
        return dane("mx.c.beta")
    if night == 2:  # new certificate, TLSA still the old key's: stale (RFC 7671 §8.1)
        return dane(
            "mx.c.beta",
            cert="mx.c.beta#2",
            records=(old,),
            match=DaneMatch(False, reason=Reason.TLSA_NO_MATCH, detail="no record matched"),
        )
    new = spki_record(certificate("mx.c.beta#2"))
    nxt = spki_record(certificate("mx.c.beta#3"))
    return dane("mx.c.beta", cert="mx.c.beta#2", records=(new, nxt))


def _ta(name: str, *, ok: bool) -> HostVerdict:
    """DANE-TA (2 1 1) of the issuing CA; ``ok=False``: the leaf names another host."""
    ca = certificate("ca." + name)
    rec = spki_record(ca, usage=2)
    match = (
        DaneMatch(True, record=rec, depth=1)
        if ok
        else DaneMatch(False, rec, 1, Reason.CERTIFICATE_HOST_MISMATCH, "leaf names other.host")
    )
    facts = host(name, (_address(name),), tlsa=(rec,))
    ep = endpoint(_address(name), name, chain=(certificate(name), ca))
    return host_verdict(10, facts, (ep,), (match,))


def night_verdicts(night: int) -> list[DomainVerdict]:
    """The verdicts of night ``night`` (0-based), on lines 1..n in plan order."""
    mx1, mx2 = _mailco()
    S, INS = DnssecStatus.SECURE, DnssecStatus.INSECURE
    plan: list[tuple[str, Callable[[int], DomainVerdict] | None]] = []

    def ok(
        domain: str, mx_status: DnssecStatus, *hosts: HostVerdict
    ) -> Callable[[int], DomainVerdict]:
        return lambda line: domain_verdict(
            domain, domain, mx_status, hosts, implicit_mx=False, line=line
        )

    a = [
        ok("a.alpha", INS, plain("mx.a.alpha")),
        ok("a.alpha", INS, tls("mx.a.alpha", secure=False)),
        ok("a.alpha", S, tls("mx.a.alpha", secure=True)),
        ok("a.alpha", S, dane("mx.a.alpha")),
    ][night]
    g = [
        ok("g.beta", INS, tls("mx.g.beta", secure=False)),
        ok("g.beta", S, tls("mx.g.beta", secure=True)),
        ok("g.beta", S, dane("mx.g.beta")),
        ok("g.beta", S, dane("mx.g.beta", records=(), tlsa_status=TlsaStatus.INDETERMINATE)),
    ][night]
    h_bogus = dane("mx.h.alpha", records=(), tlsa_status=TlsaStatus.BOGUS)
    h = [
        ok("h.alpha", S, dane("mx.h.alpha")),
        ok("h.alpha", S, h_bogus),
        ok("h.alpha", S, h_bogus),
        ok("h.alpha", S, dane("mx.h.alpha", status=EndpointStatus.NO_STARTTLS)),
    ][night]
    i = ok("i.gamma", S, _ta("mx.i.gamma", ok=night < 3))
    j = (
        ok("j.alpha", S, dane("mx.j.alpha"))
        if night < 3
        else (
            lambda line: domain_verdict(
                "j.alpha", "j.alpha", S, (down("mx.j.alpha"),), implicit_mx=False, line=line
            )
        )
    )
    plan = [
        ("a.alpha", a),
        ("b.alpha", ok("b.alpha", S, mx1)),
        ("c.beta", ok("c.beta", S, _c_beta(night))),
        ("d.beta", ok("d.beta", S, tls("mx.d.beta", secure=True))),
        ("e.plainland", ok("e.plainland", INS, plain("mx.mail.provider.co.uk"))),
        (
            "f.alpha",
            lambda line: early_verdict(
                "f.alpha", "f.alpha", Outcome.NXDOMAIN, Reason.NXDOMAIN, line, mx_status=S
            ),
        ),
        (
            "=1+2",
            lambda line: early_verdict("=1+2", None, Outcome.INVALID, Reason.INVALID_INPUT, line),
        ),
        ("g.beta", g),
        ("h.alpha", h),
        ("i.gamma", i),
        ("j.alpha", j),
        ("k.alpha", ok("k.alpha", S, mx1, mx2)),
        ("l.alpha", ok("l.alpha", S, mx1)),
        ("o.alpha", ok("o.alpha", INS, plain("mx.o.alpha")) if night < 3 else None),
        ("n.delta", ok("n.delta", INS, tls("mx.n.delta", secure=False)) if night == 3 else None),
        (
            "m.gamma",
            ok(
                "m.gamma",
                S,
                dane(
                    "mx.m.gamma",
                    records=(TlsaRecord(3, 1, 1, b"\x42" * 32),),
                    match=DaneMatch(False, reason=Reason.TLSA_NO_MATCH),
                ),
            )
            if night == 3
            else None,
        ),
    ]
    makers = [m for _, m in plan if m is not None]
    return [make(line) for line, make in enumerate(makers, start=1)]


def build(url: str) -> FixtureDb:
    """Upgrade the (empty) database at ``url`` and store the four nights as complete scans."""
    db.upgrade(url)
    engine = db.make_engine(url)
    ids = []
    for night, day in enumerate(NIGHTS):
        sid = scans.create_scan(engine, f"night {night + 1}", "fixture", day, "127.0.0.1@53")
        write_sync(Writer(engine, sid), night_verdicts(night))
        scans.finish_scan(engine, sid)
        ids.append(sid)
    return FixtureDb(url, engine, tuple(ids), NIGHTS)


# --- pytest fixtures ------------------------------------------------------------------------
# A module-scoped database per backend: analysis reads whole databases ("latest", "every
# scan"), so it cannot share tests.conftest_store's session database (pg_engine), whose scans
# belong to other tests; empty_url is per test, and rebuilding per test would be slow.


def _fresh_pg() -> tuple[str, str]:
    name = f"danescan_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _drop_pg(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def analysis_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FixtureDb]:
    """The hand-built four-night database on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("analysis") / "fixture.sqlite"
        fx = build(f"sqlite:///{path}")
        yield fx
        fx.engine.dispose()
        return
    if os.environ.get("DANESCAN_TEST_PG") == "0" or not _pg_available():
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    name, url = _fresh_pg()
    try:
        fx = build(url)
        yield fx
        fx.engine.dispose()
    finally:
        _drop_pg(name)
