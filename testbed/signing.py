"""Sign a testbed world's zones (DNSSEC with NSEC, RFC 4033-4035) into master-file text.

Keys are derived from (world seed, key id), so the same seed gives the same keys and DS records
on every run; RSA keys come from a small pool generated once and cached on disk, because RSA
keys cannot be derived cheaply from a seed.

The signer is written for speed rather than with ``dns.dnssec.sign_zone``: a nightly world has
~100,000 small leaf zones. Each RRset is hashed and signed directly (RFC 4034 §3.1.8.1 signed
data), the NSEC chain is built here (RFC 4034 §4, RFC 4035 §2.3), and large worlds are split
over two worker processes, children before parents so each parent can carry its children's DS.
"""

from __future__ import annotations

import base64
import functools
import gc
import hashlib
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from testbed.spec import Signing, SigningFault, Zone

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

INCEPTION_BACKDATE = 3600  # tolerate clock skew between signer and validator
VALIDITY = 30 * 86400
RSA_POOL_SIZE = 16
RSA_POOL_DIR = Path.home() / ".cache" / "danescan" / "rsa-pool"
PARALLEL_THRESHOLD = 10_000  # records; below this a second process costs more than it saves
WORKERS = 2
BIG_ZONE = 5000  # records; such a zone is assembled once and its RRsets signed in parallel

_IN = 1
_NS = 2
_DS = 43
_SOA = 6
_DNSKEY = 48
_NSEC = 47
_RRSIG = 46
_ALGORITHMS = {"RSASHA256": 8, "ECDSAP256SHA256": 13, "ED25519": 15}
type _RRKey = tuple[str, int]
_A, _AAAA, _CNAME, _MX, _PTR, _TLSA, _TXT = 1, 28, 5, 15, 12, 52, 16
_SIMPLE_TXT = re.compile(r'"[^"\\]{0,255}"(\s+"[^"\\]{0,255}")*')
_TYPES = {
    "A": _A,
    "AAAA": _AAAA,
    "NS": 2,
    "CNAME": _CNAME,
    "SOA": 6,
    "MX": _MX,
    "PTR": _PTR,
    "TLSA": _TLSA,
    "DS": 43,
    "TXT": 16,
}
_TYPE_TEXT = {v: k for k, v in _TYPES.items()} | {46: "RRSIG", 47: "NSEC", 48: "DNSKEY"}
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    private: Any
    algorithm: int
    tag: int
    wire: bytes  # canonical rdata, for signing the DNSKEY RRset and for DS digests
    text: str

    def sign(self, data: bytes) -> bytes:
        if self.algorithm == 13:
            # RFC 6605 §4: the signature is r | s, 32 octets each, not DER.
            der = self.private.sign(data, _ECDSA_SHA256)
            r, s = decode_dss_signature(der)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if self.algorithm == 15:
            return bytes(self.private.sign(data))
        return bytes(self.private.sign(data, padding.PKCS1v15(), hashes.SHA256()))


# Random-k ECDSA (20% faster than RFC 6979 deterministic): keys and DS records are what must
# be reproducible from the seed, not signature bytes.
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_key_cache: dict[tuple[int, str, str, str], _Key] = {}


def _material(seed: int, key_id: str, role: str) -> bytes:
    return hashlib.sha256(f"danescan-testbed/{seed}/{key_id}/{role}".encode()).digest()


def _rsa_pool_key(index: int) -> rsa.RSAPrivateKey:
    """Key ``index`` of the on-disk pool, generating the pool on first use (atomic renames, so
    concurrent first uses at worst generate a key twice)."""
    path = RSA_POOL_DIR / f"rsa2048-{index:02d}.pem"
    if not path.exists():
        RSA_POOL_DIR.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pem)
        tmp.replace(path)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


def _derive_key(seed: int, key_id: str, algorithm: str, role: str) -> _Key:
    """``role`` is "ksk", "zsk" or "phantom" (a key that is never published)."""
    cache_key = (seed, key_id, algorithm, role)
    cached = _key_cache.get(cache_key)
    if cached is not None:
        return cached
    material = _material(seed, key_id, role)
    number = _ALGORITHMS[algorithm]
    private: Any
    if number == 13:
        scalar = int.from_bytes(material, "big") % (_P256_ORDER - 1) + 1
        private = ec.derive_private_key(scalar, ec.SECP256R1())
    elif number == 15:
        private = ed25519.Ed25519PrivateKey.from_private_bytes(material)
    else:
        private = _rsa_pool_key(int.from_bytes(material[:4], "big") % RSA_POOL_SIZE)
    flags = 257 if role in ("ksk", "phantom") else 256  # ZONE, plus SEP for key-signing keys
    public = _public_key_field(private, number)
    wire = struct.pack("!HBB", flags, 3, number) + public
    text = f"{flags} 3 {number} {base64.b64encode(public).decode()}"
    key = _Key(private, number, _key_tag(wire), wire, text)
    _key_cache[cache_key] = key
    return key


def _public_key_field(private: Any, algorithm: int) -> bytes:
    public = private.public_key()
    if algorithm == 13:  # RFC 6605 §4: x | y
        raw = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return bytes(raw[1:])
    if algorithm == 15:  # RFC 8080 §3
        return bytes(
            public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
    numbers = public.public_numbers()  # RFC 3110 §2: exponent length, exponent, modulus
    exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    modulus = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    return bytes((len(exponent),)) + bytes(exponent) + bytes(modulus)


def _key_tag(rdata: bytes) -> int:
    """RFC 4034 Appendix B."""
    total = sum(b << 8 if i % 2 == 0 else b for i, b in enumerate(rdata))
    return (total + (total >> 16)) & 0xFFFF


def _zone_keys(zone: Zone, seed: int) -> tuple[_Key, _Key]:
    """(KSK, ZSK). Zones with signed children and the root get a KSK/ZSK split; leaf zones
    one combined signing key (a CSK, RFC 6781 §3.1.4, as BIND's default policy does): half
    the key work for the ~100,000 domain zones of a big world."""
    assert zone.signing is not None
    key_id = zone.signing.key_id or zone.origin.lower()
    ksk = _derive_key(seed, key_id, zone.signing.algorithm, "ksk")
    if not zone.secure_children and zone.origin != ".":
        return ksk, ksk
    return ksk, _derive_key(seed, key_id, zone.signing.algorithm, "zsk")


def _ds_text(zone: Zone, seed: int) -> str:
    """The DS rdata a parent publishes for ``zone`` (RFC 4509, SHA-256).

    MISSING_DNSKEY: the DS names a key of the same algorithm that the child never publishes,
    so the validator finds no DNSKEY matching the DS (RFC 4035 §5.2)."""
    signing = zone.signing
    assert signing is not None
    if signing.fault is SigningFault.MISSING_DNSKEY:
        key_id = signing.key_id or zone.origin.lower()
        key = _derive_key(seed, key_id, signing.algorithm, "phantom")
    else:
        key = _zone_keys(zone, seed)[0]
    digest = hashlib.sha256(_name_wire(zone.origin.lower()) + key.wire).hexdigest()
    return f"{key.tag} {key.algorithm} 2 {digest}"


# --- wire forms -----------------------------------------------------------------------------
# Names are handled as lower-case absolute strings; dnspython objects only for rare types.
# Canonical forms per RFC 4034 §6.2 (names in these rdata types are lower-cased).


@functools.lru_cache(maxsize=65536)
def _name_wire(name: str) -> bytes:
    if "\\" in name:
        return dns.name.from_text(name).to_digestable()
    out = bytearray()
    for label in name.rstrip(".").split(".") if name != "." else ():
        raw = label.encode().lower()
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def _absolute(name: str, origin: str) -> str:
    name = name.lower()
    if name == "@":
        return origin
    if name.endswith("."):
        return name
    return f"{name}.{origin}" if origin != "." else f"{name}."


def _sort_key(name: str) -> tuple[str, ...]:
    """Canonical DNS name order (RFC 4034 §6.1): label by label from the right."""
    return tuple(reversed(name.rstrip(".").split("."))) if name != "." else ()


def _rdata_wire(rdtype: int, text: str, origin: str) -> bytes:
    fields = text.split()
    if rdtype == _A:
        return socket.inet_aton(fields[0])
    if rdtype == _AAAA:
        return socket.inet_pton(socket.AF_INET6, fields[0])
    if rdtype in (_NS, _CNAME, _PTR) and len(fields) == 1:
        return _name_wire(_absolute(fields[0], origin))
    if rdtype == _MX and len(fields) == 2:
        return struct.pack("!H", int(fields[0])) + _name_wire(_absolute(fields[1], origin))
    if rdtype == _TLSA and len(fields) >= 4:
        return bytes(int(f) for f in fields[:3]) + bytes.fromhex("".join(fields[3:]))
    if rdtype == _DS and len(fields) >= 4:
        head = struct.pack("!HBB", int(fields[0]), int(fields[1]), int(fields[2]))
        return head + bytes.fromhex("".join(fields[3:]))
    if rdtype == _SOA and len(fields) == 7:
        names = _name_wire(_absolute(fields[0], origin)) + _name_wire(_absolute(fields[1], origin))
        return names + struct.pack("!IIIII", *(int(f) for f in fields[2:]))
    if rdtype == _TXT and _SIMPLE_TXT.fullmatch(text):
        strings = [part.encode() for part in re.findall(r'"([^"\\]*)"', text)]
        return b"".join(bytes((len(b),)) + b for b in strings)
    rdata = dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), text, dns.name.from_text(origin)
    )
    return rdata.to_digestable(dns.name.from_text(origin))


def _type_text(rdtype: int) -> str:
    return _TYPE_TEXT.get(rdtype) or dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))


def _nsec(following: str, types: Iterable[int]) -> tuple[str, bytes]:
    """NSEC rdata text and wire (RFC 4034 §4.1.2: window blocks of type bitmaps)."""
    windows: dict[int, bytearray] = {}
    for t in sorted(types):
        bits = windows.setdefault(t >> 8, bytearray(32))
        bits[(t & 0xFF) >> 3] |= 0x80 >> (t & 7)
    bitmap = bytearray()
    for window, bits in sorted(windows.items()):
        used = bits.rstrip(b"\0")
        bitmap += bytes((window, len(used))) + used
    names = " ".join(_type_text(t) for t in sorted(types))
    return f"{following} {names}", _name_wire(following) + bytes(bitmap)


# --- zone assembly --------------------------------------------------------------------------


@dataclass
class _RRset:
    name: str  # lower case, absolute
    rdtype: int
    ttl: int
    texts: list[str]
    wires: list[bytes]


def _collect(origin: str, records: Iterable[tuple[str, str, str, int]]) -> dict[_RRKey, _RRset]:
    rrsets: dict[_RRKey, _RRset] = {}
    for owner, type_text, rdata_text, ttl in records:
        name = _absolute(owner, origin)
        rdtype = _TYPES.get(type_text) or dns.rdatatype.from_text(type_text)
        wire = _rdata_wire(rdtype, rdata_text, origin)
        rrset = rrsets.get((name, rdtype))
        if rrset is None:
            rrsets[(name, rdtype)] = _RRset(name, rdtype, ttl, [rdata_text], [wire])
        elif wire not in rrset.wires:
            rrset.ttl = min(rrset.ttl, ttl)  # RFC 2181 §5.2: one TTL per RRset
            rrset.texts.append(rdata_text)
            rrset.wires.append(wire)
    return rrsets


@functools.lru_cache(maxsize=64)
def _timestamp(t: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def _rrsig(rrset: _RRset, key: _Key, signer: str, inception: int, expiration: int) -> str:
    """RRSIG rdata text for ``rrset``: the signature covers the RRSIG rdata without the
    signature, then every RR in canonical form and order (RFC 4034 §3.1.8.1, §6.3)."""
    labels = 0 if rrset.name == "." else rrset.name.count(".")
    if rrset.name.startswith("*."):
        labels -= 1
    header = struct.pack(
        "!HBBIIIH", rrset.rdtype, key.algorithm, labels, rrset.ttl, expiration, inception, key.tag
    )
    rr_prefix = _name_wire(rrset.name) + struct.pack("!HHI", rrset.rdtype, _IN, rrset.ttl)
    parts = [header, _name_wire(signer)]
    for wire in sorted(rrset.wires):
        parts += (rr_prefix, struct.pack("!H", len(wire)), wire)
    signature = base64.b64encode(key.sign(b"".join(parts))).decode()
    return (
        f"{_type_text(rrset.rdtype)} "
        f"{key.algorithm} {labels} {rrset.ttl} "
        f"{_timestamp(expiration)} {_timestamp(inception)} {key.tag} {signer} {signature}"
    )


def _corrupt(rrsig_text: str) -> str:
    """Flip the first bytes of the signature field: a well-formed RRSIG that fails to verify."""
    head, _, b64 = rrsig_text.rpartition(" ")
    raw = bytearray(base64.b64decode(b64))
    for i in range(min(8, len(raw))):
        raw[i] ^= 0xFF
    return f"{head} {base64.b64encode(bytes(raw)).decode()}"


def _fault_target(signing: Signing, origin: str, rrsets: dict[_RRKey, _RRset]) -> _RRKey | None:
    if signing.fault not in (SigningFault.BAD_SIGNATURE, SigningFault.EXPIRED):
        return None
    owner = _absolute(signing.fault_owner, origin) if signing.fault_owner else origin
    if signing.fault_rdtype:
        return owner, int(dns.rdatatype.from_text(signing.fault_rdtype))
    # Default target: the apex MX if there is one (what a mail scanner asks first), else SOA.
    return (owner, _MX) if (owner, _MX) in rrsets else (owner, _SOA)


def _occluded(name: str, origin: str, cuts: set[str]) -> bool:
    """True for names strictly below a zone cut (glue), walking up towards the apex."""
    while name != origin and name != ".":
        name = name.split(".", 1)[1] or "."
        if name in cuts:
            return True
    return False


@dataclass
class _SigJob:
    """One RRset to sign; the key travels as its derivation inputs (keys do not pickle)."""

    rrset: _RRset
    key_id: str
    algorithm: str
    role: str
    inception: int
    expiration: int
    corrupt: bool


@dataclass
class _Assembled:
    origin: str
    rrsets: list[_RRset]
    jobs: list[_SigJob]


def _assemble(
    zone: Zone, seed: int, now: int, child_ds: Sequence[tuple[str, str, int]]
) -> _Assembled:
    """The zone's RRsets, with DNSKEY and the NSEC chain added when signed, and the list of
    RRsets to sign (the expensive part, which ``_sign_jobs`` may do elsewhere)."""
    origin = zone.origin.lower()
    records = [(r.owner, r.rdtype.upper(), r.rdata, r.ttl) for r in zone.records]
    records += [(owner, "DS", text, ttl) for owner, text, ttl in child_ds]
    rrsets = _collect(origin, records)
    soa = rrsets.get((origin, _SOA))
    if soa is None:
        raise ValueError(f"zone {zone.origin} has no SOA")
    signing = zone.signing
    if signing is None:
        return _Assembled(origin, list(rrsets.values()), [])

    ksk, zsk = _zone_keys(zone, seed)
    keys = [ksk] if ksk is zsk else [ksk, zsk]
    rrsets[(origin, _DNSKEY)] = _RRset(
        origin, _DNSKEY, soa.ttl, [k.text for k in keys], [k.wire for k in keys]
    )
    # Zone cuts: NS below the apex. Names under a cut are glue: neither signed nor in the NSEC
    # chain (RFC 4035 §2.2, §2.3); at the cut only DS and NSEC are signed.
    cuts = {name for name, rdtype in rrsets if rdtype == _NS and name != origin}
    types_at: dict[str, set[int]] = {}
    for name, rdtype in rrsets:
        if not _occluded(name, origin, cuts):
            types_at.setdefault(name, set()).add(rdtype)

    # NSEC TTL: the lesser of the SOA TTL and its minimum field (RFC 9077 §3).
    nsec_ttl = min(soa.ttl, struct.unpack("!I", soa.wires[0][-4:])[0])
    chain = sorted(types_at, key=_sort_key)
    for i, name in enumerate(chain):
        text, wire = _nsec(chain[(i + 1) % len(chain)], types_at[name] | {_NSEC, _RRSIG})
        rrsets[(name, _NSEC)] = _RRset(name, _NSEC, nsec_ttl, [text], [wire])

    target = _fault_target(signing, origin, rrsets)
    if target is not None and target not in rrsets:
        raise ValueError(f"zone {zone.origin}: no RRset {target} to break")
    key_id = signing.key_id or origin
    split = ksk is not zsk
    jobs = []
    for rrkey, rrset in rrsets.items():
        name, rdtype = rrkey
        if name not in types_at or (name in cuts and rdtype not in (_DS, _NSEC)):
            continue
        inception, expiration, corrupt = now - INCEPTION_BACKDATE, now + VALIDITY, False
        if rrkey == target:
            if signing.fault is SigningFault.EXPIRED:
                inception, expiration = now - 40 * 86400, now - 10 * 86400
            else:
                corrupt = True
        role = "zsk" if split and rdtype != _DNSKEY else "ksk"
        jobs.append(_SigJob(rrset, key_id, signing.algorithm, role, inception, expiration, corrupt))
    return _Assembled(origin, list(rrsets.values()), jobs)


def _sign_jobs(jobs: list[_SigJob], signer: str | list[str], seed: int) -> list[str]:
    """RRSIG rdata texts for ``jobs`` (``signer``: one zone's origin, or one per job)."""
    out = []
    for i, job in enumerate(jobs):
        key = _derive_key(seed, job.key_id, job.algorithm, job.role)
        origin = signer if isinstance(signer, str) else signer[i]
        text = _rrsig(job.rrset, key, origin, job.inception, job.expiration)
        out.append(_corrupt(text) if job.corrupt else text)
    return out


def _finish(zone: _Assembled, sigs: list[str]) -> str:
    by_rrset = {(j.rrset.name, j.rrset.rdtype): s for j, s in zip(zone.jobs, sigs, strict=True)}
    return _emit(zone.origin, zone.rrsets, by_rrset)


def _emit(origin: str, rrsets: Iterable[_RRset], sigs: dict[_RRKey, str]) -> str:
    # $ORIGIN makes any relative name in the given rdata mean what the signer took it to mean.
    lines = [f"$ORIGIN {origin}"]
    for rrset in rrsets:
        head = f"{rrset.name} {rrset.ttl} IN "
        type_text = _type_text(rrset.rdtype)
        lines.extend(f"{head}{type_text} {text}" for text in rrset.texts)
        sig = sigs.get((rrset.name, rrset.rdtype))
        if sig is not None:
            lines.append(f"{head}RRSIG {sig}")
    lines.append("")
    return "\n".join(lines)


# --- the world ------------------------------------------------------------------------------

type _Work = tuple[Zone, list[tuple[str, str, int]]]  # a zone and the DS of its signed children
type _Signed = tuple[str, str, str | None]  # origin, zone text, DS rdata for the parent
type _Task = tuple[str, Any]  # ("zones", [_Work]) or ("jobs", ([_SigJob], [signer]))


def _sign_batch(batch: list[_Work], seed: int, now: int) -> list[_Signed]:
    out = []
    for zone, child_ds in batch:
        assembled = _assemble(zone, seed, now, child_ds)
        text = _finish(assembled, _sign_jobs(assembled.jobs, assembled.origin, seed))
        ds = _ds_text(zone, seed) if zone.signing is not None else None
        out.append((zone.origin, text, ds))
    return out


def _run_task(task: _Task, seed: int, now: int) -> Any:
    kind, payload = task
    if kind == "zones":
        return _sign_batch(payload, seed, now)
    jobs, signers = payload
    return _sign_jobs(jobs, signers, seed)


def _weight(item: _Work) -> int:
    return len(item[0].records) + len(item[1])


def _sign_level(work: list[_Work], seed: int, now: int) -> list[_Signed]:
    """Sign one level of the tree, in worker processes when it is big enough.

    Small zones go to the workers whole. A big zone (a TLD with tens of thousands of
    delegations) is assembled here and only its RRsets go out to be signed, split over the
    workers, so a single big zone does not leave a core idle."""
    if sum(map(_weight, work)) < PARALLEL_THRESHOLD:
        return _sign_batch(work, seed, now)
    small = [w for w in work if _weight(w) < BIG_ZONE]
    big = [(w[0], _assemble(w[0], seed, now, w[1])) for w in work if _weight(w) >= BIG_ZONE]
    tasks: list[tuple[int, _Task]] = [(_weight(w), ("zones", [w])) for w in small]
    jobs = [(j, a.origin) for _, a in big for j in a.jobs]
    chunk = max(1, -(-len(jobs) // (4 * WORKERS)))
    for i in range(0, len(jobs), chunk):
        part = jobs[i : i + chunk]
        tasks.append((len(part) // 2, ("jobs", ([j for j, _ in part], [o for _, o in part]))))
    results = _run_parallel(tasks, seed, now, WORKERS)
    done: list[_Signed] = []
    sigs: list[str] = []
    for (_, (kind, _)), result in zip(tasks, results, strict=True):
        if kind == "zones":
            done.extend(result)
        else:
            sigs.extend(result)
    for zone, assembled in big:
        mine, sigs = sigs[: len(assembled.jobs)], sigs[len(assembled.jobs) :]
        ds = _ds_text(zone, seed) if zone.signing is not None else None
        done.append((zone.origin, _finish(assembled, mine), ds))
    return done


def _run_parallel(tasks: list[tuple[int, _Task]], seed: int, now: int, processes: int) -> list[Any]:
    """Run weighted ``tasks`` in ``processes`` worker interpreters (``python -m
    testbed.signing``); results in task order.

    Plain subprocesses rather than multiprocessing: spawn/forkserver re-import the caller's
    ``__main__`` (breaking unguarded scripts), and fork is unsafe in threaded callers."""
    # Heaviest first onto the least loaded worker.
    bins: list[list[int]] = [[] for _ in range(processes)]
    loads = [0] * processes
    for index in sorted(range(len(tasks)), key=lambda i: tasks[i][0], reverse=True):
        slot = loads.index(min(loads))
        bins[slot].append(index)
        loads[slot] += tasks[index][0]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    workers = []
    for indices in bins:
        proc = subprocess.Popen(
            [sys.executable, "-m", "testbed.signing"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        workers.append(proc)
        assert proc.stdin is not None
        # Written whole before the next worker starts: the worker reads all its input first.
        pickle.dump(([tasks[i][1] for i in indices], seed, now), proc.stdin)
        proc.stdin.close()
    results: list[Any] = [None] * len(tasks)
    for proc, indices in zip(workers, bins, strict=True):
        assert proc.stdout is not None
        out = proc.stdout.read()
        if proc.wait() != 0:
            raise RuntimeError(f"signing worker failed with exit code {proc.returncode}")
        for index, result in zip(indices, pickle.loads(out), strict=True):
            results[index] = result
    return results


def _depth(origin: str) -> int:
    return len(dns.name.from_text(origin)) - 1


def sign_zones(zones: list[Zone], seed: int, now: int | None = None) -> dict[str, str]:
    """origin -> master-file text, signed where ``zone.signing`` is set.

    Zones are signed deepest first, so that every zone listing a child in ``secure_children``
    gets that child's DS (RFC 4035 §2.4) before it is signed itself."""
    now = int(time.time()) if now is None else now
    # The cyclic GC would rescan the whole world's objects again and again while millions of
    # small ones are made (measured: half the time of a 100,000-zone world); nothing here
    # makes cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _sign_world(zones, seed, now)
    finally:
        if was_enabled:
            gc.enable()


def _sign_world(zones: list[Zone], seed: int, now: int) -> dict[str, str]:
    by_origin = {z.origin.lower(): z for z in zones}
    parent_of: dict[str, tuple[str, int]] = {}  # child -> (parent, delegation NS TTL)
    for zone in zones:
        if not zone.secure_children:
            continue
        ns_ttl: dict[str, int] = {}
        for r in zone.records:
            if r.rdtype.upper() == "NS":
                owner = r.owner.lower()
                ns_ttl[owner] = min(r.ttl, ns_ttl.get(owner, r.ttl))
        for child in zone.secure_children:
            target = by_origin.get(child.lower())
            if target is None or target.signing is None:
                raise ValueError(f"{zone.origin}: secure child {child} is not a signed zone")
            if child.lower() not in ns_ttl:
                raise ValueError(f"{zone.origin}: secure child {child} is not delegated")
            parent_of[child.lower()] = (zone.origin.lower(), ns_ttl[child.lower()])

    child_ds: dict[str, list[tuple[str, str, int]]] = {}
    result: dict[str, str] = {}
    levels: dict[int, list[Zone]] = {}
    for zone in zones:
        levels.setdefault(_depth(zone.origin), []).append(zone)

    for depth in sorted(levels, reverse=True):
        level = levels[depth]
        work = [(z, child_ds.get(z.origin.lower(), [])) for z in level]
        done = _sign_level(work, seed, now)
        for origin, text, ds in done:
            result[origin] = text
            link = parent_of.get(origin.lower())
            if link is not None and ds is not None:
                child_ds.setdefault(link[0], []).append((origin, ds, link[1]))
    return result


def trust_anchor(zones: list[Zone], seed: int) -> str:
    """The root's DS in master-file form, as Unbound's ``trust-anchor-file`` reads it."""
    root = next((z for z in zones if z.origin == "."), None)
    if root is None or root.signing is None:
        raise ValueError("the world has no signed root zone")
    return f". 3600 IN DS {_ds_text(root, seed)}\n"


def _worker_main() -> None:
    gc.disable()  # see sign_zones
    tasks, seed, now = pickle.load(sys.stdin.buffer)
    results = [_run_task(task, seed, now) for task in tasks]
    pickle.dump(results, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    _worker_main()
