"""Domain lists: read them streaming, and normalise each name to the A-label form we scan.

Reading never loads the whole list: a 1 M-line Tranco CSV (optionally gzipped, or on stdin)
is yielded line by line, with line numbers kept for ordering and resume.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import re
import sys
import zlib
from typing import TYPE_CHECKING, BinaryIO

import idna

from scanner.model import Reason

if TYPE_CHECKING:
    from collections.abc import Iterator

_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# Characters an IP literal can consist of: IPv4 is digits and dots only; anything else that
# ipaddress accepts has a colon (IPv6, scoped IPv6). Names fail this test without the cost of
# ipaddress's exception (the check runs twice per input line).
_IPV4_CHARS = frozenset("0123456789.")
_GZIP_MAGIC = b"\x1f\x8b"


class TargetsError(Exception):
    """The list could not be read to its end (truncated or corrupt gzip, I/O error).

    Raised only after every line that could be read was yielded; the caller records it.
    """


# -- normalise -----------------------------------------------------------------------------


def normalise(line: str) -> tuple[str | None, Reason | None]:
    """``(A-label domain, None)`` or ``(None, Reason.INVALID_INPUT)``; never raises.

    Strip, lower-case, drop one trailing dot; names with non-ASCII characters go through
    IDNA 2008 with UTS #46 non-transitional mapping (so "faß.de" stays distinct from
    "fass.de"). The result must be a host name of LDH labels (RFC 5890 §2.3.1, RFC 1123 §2.1):
    at least two labels, each 1-63 octets without a leading or trailing hyphen, at most 253
    octets in all, and not an IP literal or an all-numeric top-level label (RFC 3696 §2).
    ASCII names are not run through IDNA, so reserved-LDH labels such as "ab--cd" (valid DNS
    names that IDNA 2008 rejects) are kept as they are.
    """
    try:
        return _normalise(line)
    except Exception:  # never let one odd line stop a scan
        return None, Reason.INVALID_INPUT


def _normalise(line: str) -> tuple[str | None, Reason | None]:
    invalid = (None, Reason.INVALID_INPUT)
    text = line.strip().lstrip("\ufeff").strip()
    if not text or _is_ip_literal(text):
        return invalid
    if text.isascii():
        name = text.lower()
    else:
        try:
            name = idna.encode(text, uts46=True, transitional=False).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError, ValueError):
            return invalid
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or _is_ip_literal(name):
        return invalid
    labels = name.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return invalid
    if not all(_LDH_LABEL.match(label) for label in labels):
        return invalid
    return name, None


def _is_ip_literal(text: str) -> bool:
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" not in candidate and not _IPV4_CHARS.issuperset(candidate):
        return False
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def is_excluded(domain: str, excluded: frozenset[str]) -> bool:
    """Whether the domain or any of its parent domains is on the exclusion (opt-out) list."""
    if not excluded:
        return False
    name = domain.lower().rstrip(".")
    while name:
        if name in excluded:
            return True
        _, _, name = name.partition(".")
    return False


# -- read ----------------------------------------------------------------------------------


def read_targets(source: str | os.PathLike[str] | BinaryIO) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, raw domain text)`` from a path, ``"-"`` (stdin) or a binary file.

    One domain per line, or Tranco-style CSV ``rank,domain`` (a line with a comma: the cell
    after a numeric first cell, else the first cell); a CSV header on the first data line is
    skipped. A row whose domain cell is empty (``23,``, ``,``, ``,b.example``) yields the line
    as given, which :func:`normalise` judges invalid: every non-blank, non-comment line gets a
    result. ``#`` comments and blank lines are skipped, line numbers still counted. gzip is
    recognised by its magic bytes, not the file name. Undecodable bytes become U+FFFD, so such
    lines are judged invalid instead of the reader failing.

    A list that cannot be read to its end (truncated or corrupt gzip, an I/O error) raises
    :class:`TargetsError` naming the source and the last line read, after every line decoded
    before the damage was yielded.
    """
    if isinstance(source, str | os.PathLike):
        name = str(source)
        if name == "-":
            yield from _read_stream(sys.stdin.buffer, "standard input")
            return
        try:
            stream = open(source, "rb")
        except OSError as exc:
            raise TargetsError(f"cannot open {name}: {exc.strerror or exc}") from exc
        with stream:
            yield from _read_stream(stream, name)
    else:
        yield from _read_stream(source, getattr(source, "name", None) or "input")


_CHUNK = 1 << 16


def _read_stream(raw: BinaryIO, name: str) -> Iterator[tuple[int, str]]:
    chunks = _Chunks(raw, name)
    yield from _lines(chunks, name)


class _Chunks:
    """The decoded bytes of a plain or gzip stream, chunk by chunk.

    gzip is decompressed incrementally (``zlib.decompressobj``) rather than through
    ``gzip.GzipFile``, whose ``read`` discards the data it decoded when the stream then turns
    out truncated: a damaged list still yields every line before the damage. Concatenated gzip
    members (RFC 1952 §2.2) are read one after the other.
    """

    def __init__(self, raw: BinaryIO, name: str) -> None:
        self.raw, self.name = raw, name
        self.compressed = False
        self.problem: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            head = _read_exactly(self.raw, 2)
        except OSError as exc:
            self.problem = f"read error: {exc}"
            return
        if head != _GZIP_MAGIC:
            yield head
            yield from self._plain()
            return
        self.compressed = True
        yield from self._gunzip(head)

    def _plain(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self.raw.read(_CHUNK)
            except OSError as exc:
                self.problem = f"read error: {exc}"
                return
            if not chunk:
                return
            yield chunk

    def _gunzip(self, head: bytes) -> Iterator[bytes]:
        inflate = zlib.decompressobj(wbits=31)  # 16 + 15: gzip header and trailer
        pending = head
        while True:
            if not pending:
                try:
                    pending = self.raw.read(_CHUNK)
                except OSError as exc:
                    self.problem = f"read error: {exc}"
                    return
                if not pending:
                    if not inflate.eof:
                        self.problem = "compressed input is truncated"
                    return
            try:
                out = inflate.decompress(pending)
            except zlib.error as exc:
                self.problem = f"compressed input is corrupt ({exc})"
                return
            pending = b""
            if out:
                yield out
            if inflate.eof:
                rest = inflate.unused_data
                if not rest.strip(b"\x00"):  # trailing zero padding ends the stream
                    rest = b""
                    try:
                        more = self.raw.read(_CHUNK)
                    except OSError as exc:
                        self.problem = f"read error: {exc}"
                        return
                    if not more:
                        return
                    rest = more
                inflate = zlib.decompressobj(wbits=31)
                pending = rest


def _lines(chunks: _Chunks, name: str) -> Iterator[tuple[int, str]]:
    number = 0
    pending = b""
    first_data = True
    for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for raw_line in lines:
            number += 1
            item = _parse_line(raw_line, first_data)
            if item is not None:
                first_data = False
                if item:
                    yield number, item
    if chunks.problem is not None:
        dropped = " (its last, incomplete line dropped)" if pending.strip() else ""
        raise TargetsError(f"{name}: {chunks.problem}; reading stopped after line "
                           f"{number}{dropped}")
    if pending:
        number += 1
        item = _parse_line(pending, first_data)
        if item:
            yield number, item


def _parse_line(raw_line: bytes, first_data: bool) -> str | None:
    """The domain cell of one line; None for a blank/comment line, "" for a skipped header."""
    text = raw_line.decode("utf-8", errors="replace").strip()
    if not text or text.startswith("#"):
        return None
    if "," not in text:
        return text
    try:
        cells = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        cells = text.split(",")
    cells = [c.strip() for c in cells] or [""]
    if cells[0].isdigit() and len(cells) > 1:
        cell = cells[1]
    elif first_data and all(c.replace("_", "").isalpha() for c in cells):
        return ""  # a header such as "rank,domain"
    else:
        cell = cells[0]
    # An empty domain cell names no domain: the line as given, judged invalid.
    return cell or text


def _read_exactly(raw: BinaryIO, n: int) -> bytes:
    """Up to n bytes, however the stream chunks them (a pipe may give 1 byte at a time)."""
    out = b""
    while len(out) < n:
        chunk = raw.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out
