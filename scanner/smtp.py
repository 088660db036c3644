"""SMTP replies: a sans-IO parser (RFC 5321 §4.2) and a thin async dialogue over a trio stream.

The parser never trusts the peer: every line, reply and buffer is capped, and anything that is
not an SMTP reply raises :class:`SmtpProtocolError` and nothing else. The dialogue adds only
reading and writing (callers set timeouts); deciding what a reply *means* is probe.py's job.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers exceed it, so be generous
# but bounded: a peer must not be able to make us buffer without limit.
MAX_LINE = 4096
MAX_LINES = 100
TEXT_CAP = 512  # stored text (banner, error details) per field
RECEIVE_SIZE = 16384

# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39, then SP or "-" (or nothing) and text.
_LINE = re.compile(rb"([2-5][0-5][0-9])([ -]?)(.*)", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class SmtpProtocolError(Exception):
    """The peer sent something that is not a well-formed SMTP reply."""


class PeerClosedError(Exception):
    """The peer closed the connection (EOF) where a reply was due."""


def clean_text(text: str, cap: int = TEXT_CAP) -> str:
    """Remove control characters (C0, DEL, C1) and cap the length, for storage and display."""
    return _CONTROL.sub("", text)[:cap]


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete reply: its code and the text of each line (code and separator removed)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """All lines joined by a space, cleaned and capped."""
        return clean_text(" ".join(self.lines))

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    def to_wire(self) -> bytes:
        """Serialise as a server would (used by tests and fake servers)."""
        out = []
        for i, line in enumerate(self.lines):
            sep = " " if i == len(self.lines) - 1 else "-"
            out.append(f"{self.code}{sep}{line}\r\n".encode())
        return b"".join(out)


class ReplyParser:
    """Sans-IO: feed bytes, get back every reply they complete.

    CRLF and bare LF both end a line (servers differ; RFC 5321 §2.3.8 requires CRLF but being
    strict here would only lose measurements). Each line of a multi-line reply must carry the
    same code (§4.2.1). The buffer never holds more than one unterminated line of MAX_LINE bytes.
    """

    __slots__ = ("_buffer", "_code", "_lines")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []

    @property
    def pending(self) -> bool:
        """Bytes or lines are buffered that do not yet form a complete reply."""
        return bool(self._buffer) or self._code is not None

    def feed(self, data: bytes | bytearray) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise SmtpProtocolError(f"reply line longer than {MAX_LINE} bytes")
                break
            if end > MAX_LINE:
                raise SmtpProtocolError(f"reply line longer than {MAX_LINE} bytes")
            line = bytes(self._buffer[:end]).removesuffix(b"\r")
            del self._buffer[: end + 1]
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)
        return replies

    def _line(self, line: bytes) -> Reply | None:
        m = _LINE.fullmatch(line)
        if m is None:
            raise SmtpProtocolError(f"not an SMTP reply line: {_show(line)}")
        code = int(m.group(1))
        sep, text = m.group(2), m.group(3)
        if not sep and text:
            raise SmtpProtocolError(f"no separator after reply code: {_show(line)}")
        if self._code is not None and code != self._code:
            raise SmtpProtocolError(f"reply code changed from {self._code} to {code} mid-reply")
        if len(self._lines) >= MAX_LINES:
            raise SmtpProtocolError(f"reply longer than {MAX_LINES} lines")
        self._code = code
        self._lines.append(clean_text(text.decode("utf-8", errors="replace"), MAX_LINE))
        if sep == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code = None
        self._lines = []
        return reply


def _show(line: bytes) -> str:
    return clean_text(repr(line[:80]), 120)


class SmtpConnection:
    """One SMTP client dialogue over a byte stream; every read is bounded by a timeout."""

    __slots__ = ("_parser", "_replies", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._parser = ReplyParser()
        self._replies: deque[Reply] = deque()

    @property
    def buffered(self) -> bool:
        """Unread data is buffered (e.g. bytes after the STARTTLS 220, an injection risk)."""
        return bool(self._replies) or self._parser.pending

    async def read_reply(self) -> Reply:
        """The next complete reply; raises PeerClosedError, SmtpProtocolError or the stream's
        errors. Unbounded in time: callers wrap it in trio.fail_after."""
        while not self._replies:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise PeerClosedError("connection closed by peer")
            self._replies.extend(self._parser.feed(data))
        return self._replies.popleft()

    async def command(self, line: str) -> Reply:
        """Send one command line (CRLF added) and read its reply."""
        await self.stream.send_all(line.encode("ascii") + b"\r\n")
        return await self.read_reply()


def ehlo_keywords(reply: Reply) -> tuple[str, ...]:
    """EHLO lines after the first (the first line is the server's domain, RFC 5321 §4.1.1.1)."""
    return tuple(clean_text(line, 200) for line in reply.lines[1:])


def offers(keywords: tuple[str, ...], keyword: str) -> bool:
    """EHLO keywords are case-insensitive (RFC 5321 §2.4)."""
    want = keyword.upper()
    return any(kw.split(" ", 1)[0].upper() == want for kw in keywords)
