"""Registrable domains from the Public Suffix List snapshot shipped in ``analysis/data``.

A mail provider is named by the registrable domain (public suffix + one label) of a domain's
most-preferred MX host, so ``mx1.mail.example.co.uk`` and ``mx2.example.co.uk`` both count for
``example.co.uk``. The snapshot is read from the package, never downloaded (reports must be
reproducible offline). Only the ICANN section is used by default: the private section splits
one operator into many "suffixes" (``us-east-1.amazonaws.com``), which is right for cookies and
wrong for counting mail providers. A name under a TLD the list does not know (the testbed's
``alpha``, ``plainland`` ...) falls back to the list's implicit ``*`` rule: its last label is
the public suffix.

The matching algorithm is the one published with the list (publicsuffix.org/list, "Algorithm"):
the longest matching rule wins, an exception rule (``!``) wins over the wildcard it cuts.
"""

from __future__ import annotations

import hashlib
from functools import cache, lru_cache
from importlib import resources

import idna

SNAPSHOT = "public_suffix_list.dat"
_PRIVATE_BEGIN = "===BEGIN PRIVATE DOMAINS==="


def _a_label(text: str) -> str | None:
    """A rule or name label in A-label form (the scanner stores A-labels); None if unencodable."""
    if text.isascii():
        return text.lower()
    try:
        return idna.encode(text, uts46=True).decode("ascii")
    except idna.IDNAError:
        try:
            return text.encode("idna").decode("ascii")
        except UnicodeError:
            return None


class PublicSuffixList:
    """Parsed rules: exact suffixes, wildcard parents (``*.ck`` -> ``ck``) and exceptions."""

    def __init__(self, text: str, *, private: bool = False) -> None:
        self.exact: set[str] = set()
        self.wildcard: set[str] = set()
        self.exception: set[str] = set()
        for raw in text.splitlines():
            line = raw.strip()
            if _PRIVATE_BEGIN in line and not private:
                break
            if not line or line.startswith("//"):
                continue
            rule = line.split()[0]
            if rule.startswith("!"):
                name = _a_label(rule[1:])
                if name:
                    self.exception.add(name)
            elif rule.startswith("*."):
                name = _a_label(rule[2:])
                if name:
                    self.wildcard.add(name)
            else:
                name = _a_label(rule)
                if name:
                    self.exact.add(name)

    def public_suffix(self, name: str) -> str:
        """The public suffix of ``name`` (lower case, no trailing dot)."""
        clean = name.lower().rstrip(".")
        start = 0  # candidates from the whole name down to the last label, without a split
        while True:
            candidate = clean[start:]
            dot = clean.find(".", start)
            if candidate in self.exception:
                return clean[dot + 1 :] if dot >= 0 else ""
            if candidate in self.exact:
                return candidate
            if dot < 0:
                return candidate  # the implicit "*" rule: the last label
            if clean[dot + 1 :] in self.wildcard:
                return candidate
            start = dot + 1

    def registrable_domain(self, name: str) -> str | None:
        """Public suffix plus one label; None when ``name`` is itself a public suffix."""
        clean = name.lower().rstrip(".")
        if not clean:
            return None
        suffix = self.public_suffix(clean)
        if clean == suffix:
            return None
        head = clean[: -len(suffix) - 1]
        return f"{head.rsplit('.', 1)[-1]}.{suffix}"


def _text() -> str:
    return resources.files("analysis.data").joinpath(SNAPSHOT).read_text(encoding="utf-8")


@cache
def snapshot(private: bool = False) -> PublicSuffixList:
    """The shipped snapshot, parsed once per process."""
    return PublicSuffixList(_text(), private=private)


@cache
def identity() -> str:
    """A short hash of the shipped snapshot: what results derived from it depend on."""
    return hashlib.sha256(_text().encode("utf-8")).hexdigest()[:12]


def registrable_domain(name: str) -> str | None:
    return snapshot().registrable_domain(name)


@lru_cache(maxsize=1 << 20)  # the provider table and domains.csv ask for the same hosts
def provider_of(host: str | None) -> str:
    """The mail provider of an MX host: its registrable domain, else the host name itself;
    ``""`` when there is no host."""
    if not host:
        return ""
    return registrable_domain(host) or host.lower().rstrip(".")
