"""`danescan check`: one domain's verdict as a readable diagnosis (in the manner of
posttls-finger and the internet.nl mail test). Pure formatting over the verdict objects."""

from __future__ import annotations

from cryptography import x509

from scanner.codec import fingerprint
from scanner.model import DaneMatch, DomainVerdict, EndpointFacts, HostVerdict, Outcome


def _cert_line(der: bytes) -> str:
    fp = fingerprint(der)[:16]
    try:
        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        issuer = cert.issuer.rfc4514_string() or "(empty issuer)"
        until = cert.not_valid_after_utc.date().isoformat()
        return f"{subject}  (issuer {issuer}; until {until}; sha256 {fp}…)"
    except ValueError:
        return f"(unparseable certificate, sha256 {fp}…)"


def _dane_line(m: DaneMatch | None) -> str:
    if m is None:
        return "DANE: not applicable"
    if m.authenticated and m.record is not None:
        return (f"DANE: authenticated — TLSA {m.record.usage} {m.record.selector} "
                f"{m.record.mtype} matched the certificate at depth {m.depth}")
    detail = f" ({m.detail})" if m.detail else ""
    return f"DANE: NOT authenticated — {m.reason}{detail}"


def _endpoint(ep: EndpointFacts, match: DaneMatch | None) -> list[str]:
    sni = f", SNI {ep.sni}" if ep.sni else ", no SNI"
    out = [f"    endpoint [{ep.address}]:{ep.port}{sni}: {ep.status}"]
    if ep.banner is not None:
        out.append(f"      S: {ep.greeting_code} {ep.banner}")
    if ep.ehlo:
        out.append(f"      S: EHLO: {' '.join(ep.ehlo)}")
    if ep.starttls_offered:
        out.append(f"      C: STARTTLS  S: {ep.starttls_code}")
    if ep.tls_version:
        out.append(f"      TLS: {ep.tls_version}, {ep.cipher}")
    for depth, der in enumerate(ep.chain):
        out.append(f"      chain[{depth}]: {_cert_line(der)}")
    if ep.error:
        out.append(f"      error: {ep.error}")
    if ep.status.greeted:
        out.append("      " + _dane_line(match))
    return out


def _host(h: HostVerdict) -> list[str]:
    f = h.host
    pref = "implicit" if h.preference is None else str(h.preference)
    out = [f"  MX {pref} {f.name}: {'reachable' if h.reachable else 'UNREACHABLE'}"
           + (f" ({h.reason})" if h.reason else "")]
    for lk in (f.a, f.aaaa):
        if lk is not None:
            records = ", ".join(lk.records) or ("none" if lk.rcode == "NOERROR" else lk.rcode)
            out.append(f"    {lk.rdtype}: {records} [{lk.status}]")
    base = f" at _25._tcp.{f.tlsa_base}" if f.tlsa_base else ""
    out.append(f"    TLSA{base}: {f.tlsa_status}")
    for r in f.tlsa_records:
        out.append(f"      {r.to_text()}")
    for ep, m in zip(h.endpoints, h.dane, strict=True):
        out.extend(_endpoint(ep, m))
    return out


def _mx_line(v: DomainVerdict) -> str | None:
    """The MX lookup's own answer, e.g. "MX lookup: SERVFAIL, EDE 7 Signature Expired, DNSSEC
    bogus": it says why a domain is bogus or a DNS failure (RFC 8914 extended DNS errors)."""
    if v.mx_rcode is None and v.mx_status is None:
        return None
    parts = [] if v.mx_rcode is None else [v.mx_rcode]
    if v.mx_ede_code is not None:
        name = EDE_NAMES.get(v.mx_ede_code, "")
        text = f" ({v.mx_ede_text})" if v.mx_ede_text else ""
        parts.append(f"EDE {v.mx_ede_code} {name}".rstrip() + text)
    if v.mx_status is not None:
        parts.append(f"DNSSEC {v.mx_status}")
    implicit = " (implicit MX)" if v.implicit_mx else ""
    return f"  MX lookup: {', '.join(parts)}{implicit}"


# RFC 8914 §4 and the IANA "Extended DNS Error Codes" registry.
EDE_NAMES: dict[int, str] = {
    0: "Other Error", 1: "Unsupported DNSKEY Algorithm", 2: "Unsupported DS Digest Type",
    3: "Stale Answer", 4: "Forged Answer", 5: "DNSSEC Indeterminate", 6: "DNSSEC Bogus",
    7: "Signature Expired", 8: "Signature Not Yet Valid", 9: "DNSKEY Missing",
    10: "RRSIGs Missing", 11: "No Zone Key Bit Set", 12: "NSEC Missing",
    13: "Cached Error", 14: "Not Ready", 15: "Blocked", 16: "Censored", 17: "Filtered",
    18: "Prohibited", 19: "Stale NXDomain Answer", 20: "Not Authoritative",
    21: "Not Supported", 22: "No Reachable Authority", 23: "Network Error",
    24: "Invalid Data", 25: "Signature Expired before Valid", 26: "Too Early",
    27: "Unsupported NSEC3 Iterations Value", 28: "Unable to conform to policy",
    29: "Synthesized", 30: "Invalid Query Type",
}


def render(v: DomainVerdict, *, validating: bool = True) -> str:
    lines = [f"{v.input!r} → {v.domain or '(invalid)'}: outcome {v.outcome}"]
    mx = _mx_line(v)
    if mx is not None:
        lines.append(mx)
    for h in v.hosts:
        lines.extend(_host(h))
    if v.outcome is Outcome.OK:
        lines.append(f"  verdict: starttls={v.starttls} dnssec={v.dnssec} tlsa={v.tlsa} "
                     f"tlsa_unusable={v.tlsa_unusable} dane={v.dane} → stage {v.stage}")
    if v.reason:
        lines.append(f"  reason: {v.reason}")
    if v.error:
        lines.append(f"  error inside danescan (please report it): {v.error}")
    if not validating:
        lines.append("  (resolver does not validate: DNSSEC and DANE not judged)")
    return "\n".join(lines)
