"""analysis.metrics against answers worked out by hand from tests/analysis_fixture.py's plan.

Every test runs on SQLite and on PostgreSQL (the ``analysis_db`` fixture). Night N4 is the
latest scan; the counts below are read off the plan table in the fixture's docstring.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import ibis
import pandas as pd
import pytest

from analysis import catalog, engines, load, metrics, psl

if TYPE_CHECKING:
    from tests.analysis_fixture import FixtureDb

pytest_plugins = ["tests.conftest_store", "tests.analysis_fixture"]


def col(df: pd.DataFrame, name: str) -> list[Any]:
    return [None if pd.isna(x) else x for x in df[name].tolist()]


# --- funnel ---------------------------------------------------------------------------------


def test_funnel_domains_latest(analysis_db: FixtureDb) -> None:
    f = metrics.funnel(analysis_db.engine)
    assert list(f.columns) == list(metrics.FUNNEL_COLUMNS)
    assert set(f["scan_id"]) == {analysis_db.scan_ids[3]}
    assert set(f["logical_date"]) == {dt.date(2025, 3, 4)}
    out = f[(f["unit"] == "domains") & (f["level"] == "outcome")].set_index("value")
    # N4: 15 input lines; f.alpha nxdomain, "=1+2" invalid, j.alpha unreachable, 12 ok.
    assert out["count"].to_dict() == {
        "ok": 12, "invalid": 1, "excluded": 0, "nxdomain": 1, "no_mail": 0, "dns_failure": 0,
        "bogus": 0, "unreachable": 1, "internal_error": 0,
    }  # fmt: skip
    assert set(out["denominator"]) == {15}
    assert out.loc["ok", "share"] == pytest.approx(12 / 15)
    st = f[(f["unit"] == "domains") & (f["level"] == "stage")]
    # plaintext e,h; starttls n; dnssec d,g; tlsa i,m; dane a,b,c,k,l.
    assert col(st, "value") == ["plaintext", "starttls", "dnssec", "tlsa", "dane"]
    assert col(st, "count") == [2, 1, 2, 2, 5]
    assert col(st, "reached") == [12, 10, 9, 7, 5]
    assert set(st["denominator"]) == {12}
    assert col(st, "reached_share") == pytest.approx([1.0, 10 / 12, 9 / 12, 7 / 12, 5 / 12])


def test_funnel_mx_hosts_latest(analysis_db: FixtureDb) -> None:
    f = metrics.funnel(analysis_db.engine, analysis_db.scan_ids[3])
    h = f[f["unit"] == "mx_hosts"]
    out = h[h["level"] == "outcome"].set_index("value")["count"].to_dict()
    assert out == {"reachable": 11, "unreachable": 1}  # mx.j.alpha timed out
    st = h[h["level"] == "stage"]
    # plaintext: provider.co.uk, mx.h.alpha; starttls mx.n.delta; dnssec mx.d.beta, mx.g.beta
    # (TLSA indeterminate); tlsa mx.i.gamma, mx.m.gamma; dane mx.a.alpha, mx1+mx2.mailco, mx.c.
    assert col(st, "count") == [2, 1, 2, 2, 4]
    assert col(st, "reached") == [11, 9, 8, 6, 4]
    assert set(st["denominator"]) == {11}
    # The units differ: 5 DANE domains, 4 DANE hosts (mx1.mailco.alpha serves three domains).
    d = f[(f["unit"] == "domains") & (f["value"] == "dane")]
    assert int(d["count"].iloc[0]) == 5


def test_funnel_by_tld(analysis_db: FixtureDb) -> None:
    f = metrics.funnel_by(analysis_db.engine, by="tld")
    assert list(f.columns) == list(metrics.FUNNEL_BY_COLUMNS)
    assert list(dict.fromkeys(f["group"])) == ["", "alpha", "beta", "delta", "gamma", "plainland"]
    g = {k: v.set_index("stage") for k, v in f.groupby("group")}
    assert (g["alpha"]["inputs"].iloc[0], g["alpha"]["ok"].iloc[0]) == (7, 5)
    assert g["alpha"]["count"].tolist() == [1, 0, 0, 0, 4]
    assert (g["beta"]["inputs"].iloc[0], g["beta"]["ok"].iloc[0]) == (3, 3)
    assert g["beta"]["count"].tolist() == [0, 0, 2, 0, 1]
    assert g["gamma"]["count"].tolist() == [0, 0, 0, 2, 0]
    assert g["delta"]["count"].tolist() == [0, 1, 0, 0, 0]
    assert g["plainland"]["count"].tolist() == [1, 0, 0, 0, 0]
    assert (g[""]["inputs"].iloc[0], g[""]["ok"].iloc[0]) == (1, 0)  # the invalid line
    assert g["alpha"].loc["dane", "share"] == pytest.approx(4 / 5)
    assert g["beta"].loc["dnssec", "reached_share"] == pytest.approx(1.0)


def test_funnel_by_provider(analysis_db: FixtureDb) -> None:
    f = metrics.funnel_by(analysis_db.engine, by="provider")
    groups = list(dict.fromkeys(f["group"]))
    assert groups == [
        "", "a.alpha", "c.beta", "d.beta", "g.beta", "h.alpha", "i.gamma", "j.alpha", "m.gamma",
        "mailco.alpha", "n.delta", "provider.co.uk",
    ]  # fmt: skip
    g = {k: v.set_index("stage") for k, v in f.groupby("group")}
    # b, k, l: most-preferred MX mx1.mailco.alpha (k's mx2 at preference 20 does not count).
    assert (g["mailco.alpha"]["inputs"].iloc[0], g["mailco.alpha"]["ok"].iloc[0]) == (3, 3)
    assert g["mailco.alpha"].loc["dane", "count"] == 3
    # mx.mail.provider.co.uk -> provider.co.uk (co.uk is a public suffix).
    assert g["provider.co.uk"].loc["plaintext", "count"] == 1
    assert (g[""]["inputs"].iloc[0], g[""]["ok"].iloc[0]) == (2, 0)  # nxdomain + invalid
    assert (g["j.alpha"]["inputs"].iloc[0], g["j.alpha"]["ok"].iloc[0]) == (1, 0)
    assert int(f["count"].sum()) == 12


def test_funnel_by_rejects_unknown_grouping(analysis_db: FixtureDb) -> None:
    with pytest.raises(ValueError, match="by must be"):
        metrics.funnel_by(analysis_db.engine, by="asn")  # type: ignore[arg-type]


# --- progression ----------------------------------------------------------------------------


def test_progression(analysis_db: FixtureDb) -> None:
    p = metrics.progression(analysis_db.engine)
    assert list(p.columns) == list(metrics.PROGRESSION_COLUMNS)
    dane = p[(p["stage"] == "dane") & (p["unit"] == "domains")]
    assert col(dane, "logical_date") == list(analysis_db.dates)
    assert col(dane, "scan_id") == list(analysis_db.scan_ids)
    # N1: b,c,h,i,j,k,l of 12 ok; N2: h bogus; N3: c stale, g up; N4: see the funnel.
    assert col(dane, "count") == [7, 6, 6, 5]
    assert col(dane, "denominator") == [12, 12, 12, 12]
    assert col(dane, "reached_share") == pytest.approx([7 / 12, 0.5, 0.5, 5 / 12])
    hosts = p[(p["stage"] == "dane") & (p["unit"] == "mx_hosts")]
    # N1 hosts: 11, all reachable; DANE: mx1, mx2, mx.c.beta, mx.h.alpha, mx.i.gamma, mx.j.alpha.
    assert (int(hosts["count"].iloc[0]), int(hosts["denominator"].iloc[0])) == (6, 11)
    starttls = p[(p["stage"] == "starttls") & (p["unit"] == "domains")]
    # N2: everything ok but e, o (plaintext) has STARTTLS -> 10 of 12.
    assert int(starttls["reached"].iloc[1]) == 10
    two = metrics.progression(analysis_db.engine, [analysis_db.scan_ids[2], "latest"])
    assert sorted(set(two["scan_id"])) == sorted(analysis_db.scan_ids[2:])


# --- transitions ----------------------------------------------------------------------------


def test_transitions_previous_to_latest(analysis_db: FixtureDb) -> None:
    t = metrics.transitions(analysis_db.engine)
    assert list(t.columns) == list(metrics.TRANSITION_COLUMNS)
    n3, n4 = analysis_db.scan_ids[2:]
    assert set(t["scan_a"]) == {n3}
    assert set(t["scan_b"]) == {n4}
    cells = {(a, b): n for a, b, n in zip(t["from_state"], t["to_state"], t["count"], strict=True)}
    nonzero = {k: v for k, v in cells.items() if v}
    assert nonzero == {
        ("absent", "starttls"): 1,  # n.delta is new
        ("absent", "tlsa"): 1,  # m.gamma is new
        ("nxdomain", "nxdomain"): 1,
        ("plaintext", "plaintext"): 1,  # e
        ("plaintext", "absent"): 1,  # o left the list
        ("dnssec", "dane"): 1,  # a
        ("dnssec", "dnssec"): 1,  # d
        ("dnssec", "plaintext"): 1,  # h: bogus TLSA -> STARTTLS gone
        ("tlsa", "dane"): 1,  # c repaired
        ("dane", "dane"): 3,  # b, k, l
        ("dane", "dnssec"): 1,  # g
        ("dane", "tlsa"): 1,  # i
        ("dane", "unreachable"): 1,  # j
    }
    states = ["absent", "nxdomain", "unreachable", "plaintext", "starttls", "dnssec", "tlsa",
              "dane"]  # fmt: skip
    assert list(dict.fromkeys(t["to_state"])) == states
    assert list(dict.fromkeys(t["from_state"])) == [s for s in states if s not in
                                                    ("unreachable", "starttls")]  # fmt: skip
    assert len(t) == 6 * 8  # full rows (zeros included) for the six states seen at A
    dane = t[t["from_state"] == "dane"]
    assert set(dane["row_total"]) == {6}
    assert dane["row_share"].sum() == pytest.approx(1.0)
    assert int(t["count"].sum()) == 15  # the invalid line has no domain to follow


def test_movers(analysis_db: FixtureDb) -> None:
    m = metrics.movers(analysis_db.engine)
    assert list(m.columns) == list(metrics.MOVER_COLUMNS)
    got = list(zip(m["domain"], m["direction"], m["steps"], strict=True))
    assert got == [
        ("a.alpha", "climbed", 2),
        ("c.beta", "climbed", 1),
        ("g.beta", "fell", -2),
        ("h.alpha", "fell", -2),
        ("i.gamma", "fell", -1),
        ("j.alpha", "fell", -5),  # dane (4) -> unreachable (below plaintext, -1)
    ]
    first = metrics.movers(analysis_db.engine, analysis_db.scan_ids[0], analysis_db.scan_ids[1])
    # N1 -> N2: a plaintext->starttls, g starttls->dnssec, h dane->dnssec (bogus TLSA).
    assert list(zip(first["domain"], first["steps"], strict=True)) == [
        ("a.alpha", 1), ("g.beta", 1), ("h.alpha", -2),
    ]  # fmt: skip


# --- cohorts --------------------------------------------------------------------------------


def test_cohorts(analysis_db: FixtureDb) -> None:
    c = metrics.cohorts(analysis_db.engine)
    assert list(c.columns) == list(metrics.COHORT_COLUMNS)
    # first signed: N1 b,c,d,h,i,j,k,l (d never DANE); N2 g; N3 a; N4 m (broken, not DANE).
    assert col(c, "scan_id") == list(analysis_db.scan_ids)
    assert col(c, "signed") == [8, 1, 1, 1]
    assert col(c, "reached_dane") == [7, 1, 1, 0]
    assert col(c, "share_reached_dane") == pytest.approx([7 / 8, 1.0, 1.0, 0.0])


def test_dane_lags(analysis_db: FixtureDb) -> None:
    lags = metrics.dane_lags(analysis_db.engine)
    assert list(lags.columns) == list(metrics.LAG_COLUMNS)
    rows = list(lags.itertuples(index=False, name=None))
    # Seven domains were DANE from N1 (lags 0, censored); g: STARTTLS N1, signed N2, DANE N3;
    # a: STARTTLS N2, signed N3, DANE N4.
    assert rows == [
        ("starttls", "dnssec", 0, 7, True),
        ("starttls", "dnssec", 1, 1, False),
        ("starttls", "dnssec", 1, 1, True),
        ("starttls", "dane", 0, 7, True),
        ("starttls", "dane", 2, 1, False),
        ("starttls", "dane", 2, 1, True),
        ("dnssec", "dane", 0, 7, True),
        ("dnssec", "dane", 1, 2, False),
    ]


# --- TLSA -----------------------------------------------------------------------------------


def test_tlsa_parameters_and_rollover(analysis_db: FixtureDb) -> None:
    t = metrics.tlsa_parameters(analysis_db.engine)
    assert list(t.columns) == list(metrics.TLSA_COLUMNS)
    # N4 records: 3 1 1 at a(1), mx1(2), mx2(1), c(2), h(1), m(1) = 8; 2 1 1 at i = 1.
    assert col(t, "parameters") == ["3 1 1", "2 1 1"]
    assert col(t, "records") == [8, 1]
    assert col(t, "record_share") == pytest.approx([8 / 9, 1 / 9])
    assert col(t, "hosts") == [6, 1]
    assert col(t, "host_share") == pytest.approx([6 / 7, 1 / 7])
    r = metrics.tlsa_rollover(analysis_db.engine)
    assert list(r.columns) == list(metrics.ROLLOVER_COLUMNS)
    assert (int(r["hosts_with_tlsa"].iloc[0]), int(r["hosts_multiple"].iloc[0])) == (7, 2)
    assert float(r["share_multiple"].iloc[0]) == pytest.approx(2 / 7)
    n3 = metrics.tlsa_rollover(analysis_db.engine, analysis_db.scan_ids[2])
    # N3: a has no TLSA, g 1, c 1 (stale), mx1 2, mx2 1, i 1, j 1; h bogus (none) -> 1 of 6.
    assert (int(n3["hosts_with_tlsa"].iloc[0]), int(n3["hosts_multiple"].iloc[0])) == (6, 1)


# --- breakage -------------------------------------------------------------------------------


def _breakage_rows(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    return list(zip(df["domain"], df["status"], df["cause"], df["reason"], df["state"],
                    strict=True))  # fmt: skip


def test_breakage_latest_since_previous(analysis_db: FixtureDb) -> None:
    b = metrics.breakage(analysis_db.engine)
    assert list(b.columns) == list(metrics.BREAKAGE_COLUMNS)
    n3, n4 = analysis_db.scan_ids[2:]
    assert set(b["scan_id"]) == {n4}
    assert set(b["since_scan_id"]) == {n3}
    assert _breakage_rows(b) == [
        ("i.gamma", "newly_broken", "ta_name_mismatch", "certificate-host-mismatch", "tlsa"),
        ("g.beta", "newly_broken", "tlsa_lookup_failure", "tlsa-lookup-failure", "dnssec"),
        # m.gamma's record never matched anything: not stale.
        ("m.gamma", "newly_broken", "tlsa_no_match", "tlsa-no-match", "tlsa"),
        ("h.alpha", "still_broken", "starttls_gone", "starttls-not-supported", "plaintext"),
        # c.beta was broken by a stale TLSA at N3 and is DANE again.
        ("c.beta", "repaired", "stale_tlsa", "tlsa-no-match", "dane"),
    ]


def test_breakage_stale_tlsa_detected(analysis_db: FixtureDb) -> None:
    n2, n3 = analysis_db.scan_ids[1:3]
    b = metrics.breakage(analysis_db.engine, n3)
    assert set(b["since_scan_id"]) == {n2}
    assert _breakage_rows(b) == [
        # The 3 1 1 record still published at N3 authenticated c.beta at N1 and N2.
        ("c.beta", "newly_broken", "stale_tlsa", "tlsa-no-match", "tlsa"),
        ("h.alpha", "still_broken", "bogus_dnssec", "dnssec-invalid", "dnssec"),
    ]


def test_breakage_first_scans(analysis_db: FixtureDb) -> None:
    n1, n2 = analysis_db.scan_ids[:2]
    b2 = metrics.breakage(analysis_db.engine, n2)
    assert _breakage_rows(b2) == [
        ("h.alpha", "newly_broken", "bogus_dnssec", "dnssec-invalid", "dnssec"),
    ]
    b1 = metrics.breakage(analysis_db.engine, n1)
    assert b1.empty
    assert list(b1.columns) == list(metrics.BREAKAGE_COLUMNS)
    explicit = metrics.breakage(analysis_db.engine, "latest", since=n1)
    # Against N1 nothing was broken (h was DANE then): all four are new, none repaired.
    assert set(zip(explicit["domain"], explicit["status"], strict=True)) == {
        ("i.gamma", "newly_broken"), ("g.beta", "newly_broken"), ("m.gamma", "newly_broken"),
        ("h.alpha", "newly_broken"),
    }  # fmt: skip


def test_cause_of() -> None:
    assert metrics.cause_of("tlsa-no-match", True) == "stale_tlsa"
    assert metrics.cause_of("tlsa-no-match", False) == "tlsa_no_match"
    assert metrics.cause_of("starttls-refused", False) == "starttls_gone"
    assert metrics.cause_of("certificate-expired", False) == "other"
    assert metrics.cause_of(None, False) == "other"


# --- scans and SQL pieces -------------------------------------------------------------------


def test_scans_and_resolution(analysis_db: FixtureDb) -> None:
    c = catalog.from_store(analysis_db.engine)
    assert col(c.frame, "scan_id") == list(analysis_db.scan_ids)
    assert col(c.frame, "logical_date") == list(analysis_db.dates)
    assert c.resolve("latest") == analysis_db.scan_ids[-1]
    assert c.resolve(str(analysis_db.scan_ids[0])) == analysis_db.scan_ids[0]
    assert c.previous(analysis_db.scan_ids[0]) is None
    assert c.earlier(analysis_db.scan_ids[2]) == list(analysis_db.scan_ids[:2])
    with pytest.raises(catalog.NoScan):
        c.resolve(999_999)
    with pytest.raises(ValueError, match="latest"):
        c.resolve("newest")


def test_tld_on_the_engine(analysis_db: FixtureDb) -> None:
    names = ["a.b.alpha", "localhost", "x.co.uk", "trailing.dot.", "xn--bcher-kva.de"]
    src = engines.store_source(analysis_db.engine)
    try:
        got = [src.con.execute(load.tld(ibis.literal(n))) for n in names]
    finally:
        src.close()
    assert got == ["alpha", "localhost", "uk", "", "de"]


def test_docstrings_list_every_column() -> None:
    pairs = [
        (metrics.funnel, metrics.FUNNEL_COLUMNS),
        (metrics.funnel_by, metrics.FUNNEL_BY_COLUMNS),
        (metrics.progression, metrics.PROGRESSION_COLUMNS),
        (metrics.transitions, metrics.TRANSITION_COLUMNS),
        (metrics.movers, metrics.MOVER_COLUMNS),
        (metrics.cohorts, metrics.COHORT_COLUMNS),
        (metrics.dane_lags, metrics.LAG_COLUMNS),
        (metrics.tlsa_parameters, metrics.TLSA_COLUMNS),
        (metrics.tlsa_rollover, metrics.ROLLOVER_COLUMNS),
        (metrics.breakage, metrics.BREAKAGE_COLUMNS),
    ]
    for fn, cols in pairs:
        doc = " ".join((fn.__doc__ or "").split())
        missing = [c for c in cols if f"``{c}``" not in doc]
        assert not missing, f"{fn.__name__} docstring misses {missing}"


# --- PSL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "registrable"),
    [
        ("mx1.mail.example.co.uk", "example.co.uk"),
        ("aspmx.l.google.com", "google.com"),
        ("www.city.kawasaki.jp", "city.kawasaki.jp"),  # exception rule !city.kawasaki.jp
        ("a.b.kawasaki.jp", "a.b.kawasaki.jp"),  # wildcard *.kawasaki.jp
        ("mx.a.alpha", "a.alpha"),  # unknown TLD: the default "*" rule
        ("MX.Example.COM.", "example.com"),
        ("inbound-smtp.us-east-1.amazonaws.com", "amazonaws.com"),  # ICANN section only
        ("co.uk", None),
        ("alpha", None),
    ],
)
def test_registrable_domain(name: str, registrable: str | None) -> None:
    assert psl.registrable_domain(name) == registrable


def test_psl_idn_rules_and_private_section() -> None:
    text = "// x\nde\n*.ck\n!www.ck\nbücher.example\n// ===BEGIN PRIVATE DOMAINS===\nblog.de\n"
    lst = psl.PublicSuffixList(text)
    assert lst.registrable_domain("a.xn--bcher-kva.example") == "a.xn--bcher-kva.example"
    assert lst.registrable_domain("x.y.ck") == "x.y.ck"
    assert lst.registrable_domain("www.ck") == "www.ck"
    assert lst.registrable_domain("me.blog.de") == "blog.de"
    assert psl.PublicSuffixList(text, private=True).registrable_domain("me.blog.de") == (
        "me.blog.de"
    )
    assert psl.provider_of(None) == ""
    assert psl.provider_of("alpha") == "alpha"
