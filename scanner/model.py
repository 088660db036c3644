"""The plain data every stage of danescan exchanges: closed vocabularies and frozen results.

Stages pass these one way: DNS facts -> MX-host facts -> endpoint (SMTP/TLS) facts -> verdicts.
Nothing here does I/O. The JSON field names of :class:`DomainVerdict` are the published contract
(docs/verdicts.md); change them only with a schema-version bump.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

SCHEMA_VERSION = 2  # 2: error, mx_rcode, mx_ede_code, mx_ede_text; internal_error


class DnssecStatus(StrEnum):
    """RFC 7672 §2.1.1: the four DNSSEC states of an answer, one enum everywhere."""

    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"
    INDETERMINATE = "indeterminate"


class Outcome(StrEnum):
    """Domain-level outcome; only the domain's own lookups (input, MX) and reachability set it."""

    OK = "ok"
    INVALID = "invalid"
    EXCLUDED = "excluded"
    NXDOMAIN = "nxdomain"
    NO_MAIL = "no_mail"  # null MX, RFC 7505
    DNS_FAILURE = "dns_failure"
    BOGUS = "bogus"
    UNREACHABLE = "unreachable"
    # A bug in danescan, not a fact about the domain: never counted as a DNS or SMTP result.
    INTERNAL_ERROR = "internal_error"


class TlsaStatus(StrEnum):
    """What the TLSA lookup of one MX host established (RFC 7672 §2.2)."""

    ABSENT = "absent"  # secure denial of existence
    USABLE = "usable"  # secure, >= 1 usable record: DANE authentication mandatory
    UNUSABLE = "unusable"  # secure, records present, none usable (§3.1.3): TLS mandatory
    INSECURE = "insecure"
    BOGUS = "bogus"
    INDETERMINATE = "indeterminate"
    NOT_QUERIED = "not_queried"  # address records not secure, or addresses failed


class TlsaCoverage(StrEnum):
    """Domain-level `tlsa`: how many MX hosts have a usable TLSA RRset."""

    ALL = "all"
    PARTIAL = "partial"
    NONE = "none"


class DaneStatus(StrEnum):
    """Domain-level `dane` (first match wins: broken, valid, partial, none)."""

    BROKEN = "broken"
    VALID = "valid"
    PARTIAL = "partial"
    NONE = "none"


class Stage(StrEnum):
    """The ladder: the highest rung with every lower rung held."""

    PLAINTEXT = "plaintext"
    STARTTLS = "starttls"
    DNSSEC = "dnssec"
    TLSA = "tlsa"
    DANE = "dane"


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)


class EndpointStatus(StrEnum):
    """How one SMTP probe of (address, SNI) ended; a closed set in the manner of zgrab2."""

    SUCCESS = "success"  # 220, EHLO, STARTTLS offered and accepted, handshake completed
    NO_STARTTLS = "no-starttls"  # greeted 220 but STARTTLS not offered
    STARTTLS_REFUSED = "starttls-refused"  # STARTTLS offered, answered 4xx/5xx
    HANDSHAKE_ERROR = "handshake-error"
    CONNECTION_REFUSED = "connection-refused"
    CONNECT_TIMEOUT = "connect-timeout"
    GREETING_TIMEOUT = "greeting-timeout"  # connected, no 220 within the greeting timeout
    GREETING_REJECTED = "greeting-rejected"  # 4xx/5xx greeting
    IO_TIMEOUT = "io-timeout"  # a later reply did not come in time
    CONNECTION_RESET = "connection-reset"
    PROTOCOL_ERROR = "protocol-error"  # garbage where an SMTP reply was due
    NOT_PROBED_PRIVATE = "not-probed-private"  # special-purpose address, no --allow-private
    NOT_PROBED_IPV6 = "not-probed-ipv6"  # machine has no IPv6 reachability
    NOT_PROBED_EXCLUDED = "not-probed-excluded"  # address on the exclusion list
    NOT_PROBED_CAP = "not-probed-cap"  # beyond a per-domain, per-host or per-address cost cap

    @property
    def greeted(self) -> bool:
        """The endpoint answered with a 220 greeting (it is a reachable endpoint)."""
        return self in _GREETED

    @property
    def transient(self) -> bool:
        """Worth one retry later in the scan (timeouts, 4xx)."""
        return self in _TRANSIENT


_GREETED = frozenset(
    {
        EndpointStatus.SUCCESS,
        EndpointStatus.NO_STARTTLS,
        EndpointStatus.STARTTLS_REFUSED,
        EndpointStatus.HANDSHAKE_ERROR,
        EndpointStatus.IO_TIMEOUT,
    }
)
_TRANSIENT = frozenset(
    {
        EndpointStatus.CONNECT_TIMEOUT,
        EndpointStatus.GREETING_TIMEOUT,
        EndpointStatus.IO_TIMEOUT,
        EndpointStatus.CONNECTION_RESET,
    }
)


class Reason(StrEnum):
    """The one closed vocabulary of failure reasons (RFC 8460 result types where they fit)."""

    # RFC 8460 §4.3
    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    # danescan's own
    TLSA_NO_MATCH = "tlsa-no-match"  # usable records, none matched the presented chain
    TLSA_LOOKUP_FAILURE = "tlsa-lookup-failure"  # TLSA indeterminate: a DANE sender defers
    INVALID_INPUT = "invalid-input"
    EXCLUDED = "excluded"
    NXDOMAIN = "nxdomain"
    NULL_MX = "null-mx"
    DNS_FAILURE = "dns-failure"
    ADDRESS_LOOKUP_FAILURE = "address-lookup-failure"
    NO_ADDRESS = "no-address"
    CONNECTION_REFUSED = "connection-refused"
    CONNECT_TIMEOUT = "connect-timeout"
    GREETING_TIMEOUT = "greeting-timeout"
    GREETING_REJECTED = "greeting-rejected"
    STARTTLS_REFUSED = "starttls-refused"
    HANDSHAKE_ERROR = "handshake-error"
    IO_TIMEOUT = "io-timeout"
    CONNECTION_RESET = "connection-reset"
    PROTOCOL_ERROR = "protocol-error"
    NOT_PROBED = "not-probed"
    NOT_PROBED_CAP = "not-probed-cap"  # left out by a cost cap (RFC 7672 sets none; we must)
    UNREACHABLE = "unreachable"
    INTERNAL_ERROR = "internal-error"


@dataclass(frozen=True, slots=True)
class Lookup:
    """One DNS question's answer as danescan needs it: records in text form and their status.

    ``rcode`` is the final RCODE text (NOERROR, NXDOMAIN, SERVFAIL, REFUSED) or ``"TIMEOUT"``.
    ``cname_chain`` lists owner names followed from the query name (query name first) when the
    answer went through CNAMEs; ``cname_secure`` is False when the first CNAME link was insecure.
    """

    qname: str
    rdtype: str
    status: DnssecStatus
    rcode: str
    records: tuple[str, ...] = ()
    cname_chain: tuple[str, ...] = ()
    ede_code: int | None = None
    ede_text: str | None = None

    @property
    def nxdomain(self) -> bool:
        return self.rcode == "NXDOMAIN"

    @property
    def nodata(self) -> bool:
        return self.rcode == "NOERROR" and not self.records


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """One TLSA record (RFC 6698 §2.1) kept as raw fields, so malformed data is representable."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def to_text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


@dataclass(frozen=True, slots=True)
class HostFacts:
    """Everything looked up for one MX host, once per scan (§2.2)."""

    name: str
    a: Lookup | None
    aaaa: Lookup | None
    address_status: DnssecStatus | None  # combined status of the address records
    tlsa_base: str | None  # the TLSA base domain used (§2.2.3), None when not queried
    tlsa_status: TlsaStatus
    tlsa_records: tuple[TlsaRecord, ...] = ()
    tlsa_lookup: Lookup | None = None
    reason: Reason | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        out: list[str] = []
        for lk in (self.a, self.aaaa):
            if lk is not None and lk.status in (DnssecStatus.SECURE, DnssecStatus.INSECURE):
                out.extend(lk.records)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class EndpointFacts:
    """One SMTP probe of (address, SNI), once per scan."""

    address: str
    port: int
    sni: str | None
    status: EndpointStatus
    banner: str | None = None  # the greeting text, capped, control characters removed
    greeting_code: int | None = None
    ehlo: tuple[str, ...] = ()  # EHLO keywords as sent by the server
    starttls_offered: bool | None = None
    starttls_code: int | None = None
    tls_version: str | None = None
    cipher: str | None = None
    chain: tuple[bytes, ...] = ()  # DER, leaf first, as presented
    error: str | None = None  # short detail for humans
    probed_at: datetime | None = None
    attempts: int = 1

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass(frozen=True, slots=True)
class DaneMatch:
    """Result of authenticating one endpoint's chain for one MX host of one domain (§3)."""

    authenticated: bool
    record: TlsaRecord | None = None  # the record that matched
    depth: int | None = None  # chain position of the matched certificate (0 = leaf)
    reason: Reason | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class HostVerdict:
    """Per-domain view of one MX host: its facts, its endpoints and how each authenticated."""

    preference: int | None
    host: HostFacts
    endpoints: tuple[EndpointFacts, ...]
    dane: tuple[DaneMatch | None, ...]  # aligned with endpoints; None where DANE does not apply
    reachable: bool
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class DomainVerdict:
    """One object per input line: the published contract (docs/verdicts.md)."""

    input: str
    domain: str | None
    outcome: Outcome
    starttls: bool | None = None
    dnssec: bool | None = None
    tlsa: TlsaCoverage | None = None
    tlsa_unusable: bool | None = None
    dane: DaneStatus | None = None
    stage: Stage | None = None
    reason: Reason | None = None
    mx_status: DnssecStatus | None = None
    implicit_mx: bool = False
    hosts: tuple[HostVerdict, ...] = field(default=())
    line: int | None = None  # input line number (1-based), for ordering and resume
    # The MX lookup's own answer (also for the early outcomes it decided: bogus, dns_failure).
    mx_rcode: str | None = None
    mx_ede_code: int | None = None
    mx_ede_text: str | None = None
    error: str | None = None  # internal_error only: "ExceptionType: message"
