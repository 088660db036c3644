"""`danescan check`'s text: the MX lookup's own answer says why a domain is bogus."""

from __future__ import annotations

from scanner import diagnosis
from scanner.model import DnssecStatus, Lookup, Outcome, Reason
from scanner.verdict import early_verdict, internal_error_verdict
from tests import verdict_factory as vf


def test_bogus_shows_the_mx_rcode_and_extended_error() -> None:
    lk = Lookup("b.example", "MX", DnssecStatus.BOGUS, "SERVFAIL", ede_code=7,
                ede_text="RRSIG expired")
    text = diagnosis.render(early_verdict("b.example", "b.example", Outcome.BOGUS,
                                          Reason.DNSSEC_INVALID, mx=lk))
    assert "  MX lookup: SERVFAIL, EDE 7 Signature Expired (RRSIG expired), DNSSEC bogus\n" in text
    assert "reason: dnssec-invalid" in text


def test_failures_without_ede_and_ok_domains() -> None:
    lk = Lookup("d.example", "MX", DnssecStatus.INDETERMINATE, "TIMEOUT")
    text = diagnosis.render(early_verdict("d.example", "d.example", Outcome.DNS_FAILURE,
                                          Reason.DNS_FAILURE, mx=lk))
    assert "MX lookup: TIMEOUT, DNSSEC indeterminate" in text
    unnamed = Lookup("u.example", "MX", DnssecStatus.BOGUS, "SERVFAIL", ede_code=60000)
    assert "EDE 60000, DNSSEC bogus" in diagnosis.render(
        early_verdict("u.example", "u.example", Outcome.BOGUS, Reason.DNSSEC_INVALID, mx=unnamed))
    ok = vf.dane_valid(1, "ok.example")
    assert "MX lookup: DNSSEC secure\n" in diagnosis.render(ok)  # no RCODE kept before schema 2


def test_invalid_input_has_no_mx_line_and_internal_errors_say_so() -> None:
    assert "MX lookup" not in diagnosis.render(vf.invalid(1, "not a domain"))
    text = diagnosis.render(internal_error_verdict("x.example", "x.example", KeyError("k")))
    assert "outcome internal_error" in text
    assert "error inside danescan (please report it): KeyError: 'k'" in text
