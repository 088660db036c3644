"""Deterministic certificates for the testbed's mail servers (`cryptography`, no openssl calls).

Everything is derived from (world seed, label): ECDSA keys from a hashed scalar, certificates
signed deterministically (RFC 6979 for ECDSA, PKCS#1 v1.5 for RSA), fixed serials and dates, so
the same seed gives byte-identical certificates and therefore identical TLSA digests in the zones.
RSA keys cannot be derived cheaply; they come from a small pool whose primes are drawn from a
seeded generator and cached on disk (the first world on a machine pays ~1 s once). A world with
tens of thousands of addresses has as many leaves: ordinary ones share KEY_POOL_SIZE ECDSA keys
(`Pki.pool_key`; a key pair signs many leaves), each key written once. DANE needs only that a
host's TLSA names what that host serves, and every leaf still differs (names, serial).

DANE-TA (RFC 7672 §3.1.2) needs a CA hierarchy: one root and one intermediate per world; leaves
issued by the intermediate carry the MX host names as SANs. DANE-EE leaves (§3.1.1) are
self-signed.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from testbed.spec import Chain

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

NOT_BEFORE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2099, 12, 31, tzinfo=dt.UTC)
RSA_POOL_SIZE = 8
KEY_POOL_SIZE = 1024
RSA_BITS = 2048
_RSA_CACHE = Path(os.environ.get("DANESCAN_CACHE", "/tmp/danescan-cache")) / "rsa-pool"
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


def _digest_int(*parts: object) -> int:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h, "big")


def ec_key(seed: int, label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key whose scalar is a hash of (seed, label): cheap and reproducible."""
    scalar = _digest_int("ec", seed, label) % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


# --- RSA pool ---------------------------------------------------------------------------------

_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p**0.5) + 1))]


def _is_probable_prime(n: int, rng: random.Random) -> bool:
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(24):
        a = rng.randrange(2, n - 2)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(rng: random.Random, bits: int, e: int) -> int:
    while True:
        n = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if (n - 1) % e and _is_probable_prime(n, rng):
            return n


def _rsa_from_primes(p: int, q: int, e: int = 65537) -> rsa.RSAPrivateKey:
    d = pow(e, -1, (p - 1) * (q - 1))
    pub = rsa.RSAPublicNumbers(e, p * q)
    priv = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), pub
    )
    return priv.private_key(unsafe_skip_rsa_key_validation=True)


def rsa_key(index: int) -> rsa.RSAPrivateKey:
    """Pool key ``index % RSA_POOL_SIZE``: primes from a generator seeded by the index, cached."""
    return _rsa_key(index % RSA_POOL_SIZE)


@functools.cache
def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    path = _RSA_CACHE / f"{RSA_BITS}-{index}.json"
    try:
        data = json.loads(path.read_text())
        return _rsa_from_primes(int(data["p"], 16), int(data["q"], 16))
    except (OSError, ValueError, KeyError):
        pass
    rng = random.Random(f"danescan-rsa-{RSA_BITS}-{index}")
    p = _prime(rng, RSA_BITS // 2, 65537)
    q = _prime(rng, RSA_BITS // 2, 65537)
    while q == p:
        q = _prime(rng, RSA_BITS // 2, 65537)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"p": f"{p:x}", "q": f"{q:x}"}))
    os.replace(tmp, path)
    return _rsa_from_primes(p, q)


# --- certificates ------------------------------------------------------------------------------


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    return builder.sign(key, hashes.SHA256())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(
    subject: str, issuer: str | x509.Name, key: PrivateKey, serial_label: str
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer if isinstance(issuer, x509.Name) else _name(issuer))
        .public_key(key.public_key())
        .serial_number(_digest_int("serial", serial_label) >> 100)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
    )


def spki_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_spki_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def tlsa_data(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> str:
    """Presentation text of a TLSA record for ``cert`` (RFC 6698 §2.1)."""
    blob = cert_der(cert) if selector == 0 else spki_der(cert)
    return f"{usage} {selector} {mtype} {_match(blob, mtype)}"


def tlsa_data_for_spki(usage: int, mtype: int, spki: bytes) -> str:
    return f"{usage} 1 {mtype} {_match(spki, mtype)}"


def _match(blob: bytes, mtype: int) -> str:
    if mtype == 0:
        return blob.hex()
    if mtype == 1:
        return hashlib.sha256(blob).hexdigest()
    if mtype == 2:
        return hashlib.sha512(blob).hexdigest()
    raise ValueError(f"matching type {mtype}")


@dataclass(frozen=True)
class Issued:
    """A chain as the server presents it, plus the pieces TLSA records are computed from."""

    chain: Chain  # PEM file paths
    certs: tuple[x509.Certificate, ...]  # leaf first, as presented

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]


class Pki:
    """The world's certificate factory: writes PEM files under ``directory``."""

    def __init__(self, directory: Path, seed: int) -> None:
        self.directory = directory
        self.seed = seed
        self._key_files: dict[bytes, str] = {}  # SPKI DER -> the key's PEM file
        self._pool: dict[int, PrivateKey] = {}
        directory.mkdir(parents=True, exist_ok=True)
        self.root_key: PrivateKey = rsa_key(seed)
        root_name = f"danescan testbed root CA {seed}"
        root_b = _builder(root_name, root_name, self.root_key, f"{seed}/root")
        root_b = root_b.add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        root_b = root_b.add_extension(_ca_usage(), critical=True)
        root_b = root_b.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(self.root_key.public_key()), critical=False
        )
        self.root = _sign(root_b, self.root_key)
        self.int_key = ec_key(seed, "intermediate-ca")
        int_name = f"danescan testbed intermediate CA {seed}"
        int_b = _builder(int_name, root_name, self.int_key, f"{seed}/intermediate")
        int_b = int_b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        int_b = int_b.add_extension(_ca_usage(), critical=True)
        int_b = int_b.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(self.int_key.public_key()), critical=False
        )
        int_b = int_b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()),
            critical=False,
        )
        self.intermediate = _sign(int_b, self.root_key)  # issued by the root
        self.root_pem = self._write_pem("ca-root.pem", [self.root])
        self.intermediate_pem = self._write_pem("ca-intermediate.pem", [self.intermediate])

    def key(self, label: str, rsa_key_index: int | None = None) -> PrivateKey:
        if rsa_key_index is not None:
            return rsa_key(rsa_key_index)
        return ec_key(self.seed, label)

    def pool_key(self, index: int) -> PrivateKey:
        """Pool key ``index % KEY_POOL_SIZE``, for leaves that need no key of their own."""
        i = index % KEY_POOL_SIZE
        key = self._pool.get(i)
        if key is None:
            key = self._pool[i] = ec_key(self.seed, f"key-pool-{i}")
        return key

    def self_signed(self, label: str, names: list[str], key: PrivateKey) -> Issued:
        """A DANE-EE style leaf: self-signed, names only for the humans reading it."""
        cn = names[0] if names else label
        b = _builder(cn, cn, key, f"{self.seed}/{label}/ee")
        b = _leaf_extensions(b, names)
        cert = _sign(b, key)
        return self._issue(label, key, [cert])

    def ca_issued(
        self, label: str, names: list[str], key: PrivateKey, include_root: bool = False
    ) -> Issued:
        """A leaf issued by the world's intermediate; presents leaf + intermediate (+ root)."""
        cn = names[0] if names else label
        b = _builder(cn, self.intermediate.subject, key, f"{self.seed}/{label}")
        b = _leaf_extensions(b, names)
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.int_key.public_key()),
            critical=False,
        )
        cert = _sign(b, self.int_key)
        chain = [cert, self.intermediate] + ([self.root] if include_root else [])
        return self._issue(label, key, chain)

    def _issue(self, label: str, key: PrivateKey, certs: list[x509.Certificate]) -> Issued:
        cert_path = self._write_pem(f"{label}.crt.pem", certs)
        return Issued(Chain(cert=str(cert_path), key=self._key_file(key)), tuple(certs))

    def _key_file(self, key: PrivateKey) -> str:
        """The key's PEM file, written once however many leaves it signs."""
        spki = key_spki_der(key)
        path = self._key_files.get(spki)
        if path is None:
            name = f"key-{hashlib.sha256(spki).hexdigest()[:24]}.key.pem"
            file = self.directory / name
            file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            path = self._key_files[spki] = str(file)
        return path

    def _write_pem(self, filename: str, certs: list[x509.Certificate]) -> str:
        path = self.directory / filename
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
        return str(path)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_extensions(b: x509.CertificateBuilder, names: list[str]) -> x509.CertificateBuilder:
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if names:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    return b.add_extension(
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
    )
