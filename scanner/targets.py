"""Domain lists: read them streaming, and normalise each name to the A-label form we scan.

Reading never loads the whole list: a 1 M-line Tranco CSV (optionally gzipped, or on stdin)
is yielded line by line, with line numbers kept for ordering and resume.
"""

from __future__ import annotations

import csv
import gzip
import io
import ipaddress
import os
import re
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import idna

from scanner.model import Reason

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
    skipped. ``#`` comments and blank lines are skipped, line numbers still counted. gzip is
    recognised by its magic bytes, not the file name. Undecodable bytes become U+FFFD, so
    :func:`normalise` marks such lines invalid instead of the reader failing.
    """
    if isinstance(source, str | os.PathLike):
        if str(source) == "-":
            yield from _read_stream(sys.stdin.buffer)
            return
        try:
            stream = open(source, "rb")
        except OSError as exc:
            raise TargetsError(f"cannot open {source}: {exc.strerror or exc}") from exc
        with stream:
            yield from _read_stream(stream)
    else:
        yield from _read_stream(source)


def _read_stream(raw: BinaryIO) -> Iterator[tuple[int, str]]:
    try:
        head = _read_exactly(raw, 2)
    except OSError as exc:
        raise TargetsError(f"read error: {exc}") from exc
    stream: BinaryIO = io.BufferedReader(_Prefixed(head, raw))
    compressed = head == _GZIP_MAGIC
    if compressed:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
    yield from _lines(stream, compressed)


def _lines(stream: BinaryIO, compressed: bool) -> Iterator[tuple[int, str]]:
    number = 0
    pending = b""
    first_data = True
    while True:
        try:
            chunk = stream.read(1 << 16)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            kind = "compressed input" if compressed else "input"
            dropped = " (its last, incomplete line dropped)" if pending else ""
            raise TargetsError(f"{kind} ended early after line {number}{dropped}: {exc}") from exc
        if not chunk:
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for raw_line in lines:
            number += 1
            item = _parse_line(raw_line, first_data)
            if item is not None:
                first_data = False
                if item:
                    yield number, item
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
        return cells[1]
    if first_data and not any("." in c for c in cells):
        return ""  # a header such as "rank,domain"
    return cells[0]


def _read_exactly(raw: BinaryIO, n: int) -> bytes:
    """Up to n bytes, however the stream chunks them (a pipe may give 1 byte at a time)."""
    out = b""
    while len(out) < n:
        chunk = raw.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


class _Prefixed(io.RawIOBase):
    """A raw stream that first returns bytes already read (for magic-byte sniffing on pipes)."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n
