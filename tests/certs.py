"""Hand-built certificates and TLSA records for the DANE and verdict tests.

Keys are generated once per process (RSA generation is the slow part) and reused.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from scanner.model import TlsaRecord

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KeyKind = Literal["ec", "rsa", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@cache
def key(name: str, kind: KeyKind = "ec") -> PrivateKey:
    """A private key, the same one for the same (name, kind) within a test run."""
    del name  # only part of the cache key
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    subject: str,
    subject_key: PrivateKey,
    *,
    issuer: x509.Certificate | None = None,
    issuer_key: PrivateKey | None = None,
    sans: tuple[str, ...] | None = None,
    ca: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    pss: bool = False,
    key_usage: bool = True,
) -> x509.Certificate:
    """A certificate for ``subject`` (CN), self-signed unless an issuer is given.

    ``sans=None`` gives a SAN with the subject name; ``sans=()`` gives no SAN at all.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer = issuer_key or subject_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=30))
        .not_valid_after(not_after or NOW + timedelta(days=60))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    names = (subject,) if sans is None else sans
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return builder.sign(signer, None)
    if pss:
        assert isinstance(signer, rsa.RSAPrivateKey)
        return builder.sign(
            signer, hashes.SHA256(),
            rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                    salt_length=padding.PSS.DIGEST_LENGTH),
        )
    return builder.sign(signer, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def tlsa(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> TlsaRecord:
    """The TLSA record (RFC 6698 §2.1) matching ``cert`` with the given parameters."""
    content = der(cert) if selector == 0 else spki(cert)
    if mtype == 1:
        data = hashlib.sha256(content).digest()
    elif mtype == 2:
        data = hashlib.sha512(content).digest()
    else:
        data = content
    return TlsaRecord(usage, selector, mtype, data)


def wrong(rec: TlsaRecord) -> TlsaRecord:
    """The same parameters and length, data that matches nothing."""
    flipped = bytes([rec.data[0] ^ 0xFF]) + rec.data[1:]
    return TlsaRecord(rec.usage, rec.selector, rec.mtype, flipped)


class Pki:
    """A small private PKI: root CA -> intermediate CA -> leaf for mx.example.net."""

    def __init__(self, kind: KeyKind = "ec", leaf_sans: tuple[str, ...] | None = None,
                 tag: str = "pki") -> None:
        self.root_key = key(f"{tag}-root", kind)
        self.int_key = key(f"{tag}-int", kind)
        self.leaf_key = key(f"{tag}-leaf", kind)
        self.root = make_cert("Root CA", self.root_key, ca=True)
        self.intermediate = make_cert("Intermediate CA", self.int_key, issuer=self.root,
                                      issuer_key=self.root_key, ca=True)
        self.leaf = make_cert("mx.example.net", self.leaf_key, issuer=self.intermediate,
                              issuer_key=self.int_key,
                              sans=leaf_sans if leaf_sans is not None else ("mx.example.net",))

    @property
    def chain(self) -> tuple[bytes, ...]:
        """Leaf, intermediate, root: as a DANE-TA(2) server must present it (RFC 7672 §3.1.2)."""
        return (der(self.leaf), der(self.intermediate), der(self.root))
