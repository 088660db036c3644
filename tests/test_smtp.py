"""The sans-IO SMTP reply parser (RFC 5321 §4.2) and the thin dialogue over a memory stream."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.smtp import (
    MAX_LINE,
    MAX_LINES,
    PeerClosedError,
    Reply,
    ReplyParser,
    SmtpConnection,
    SmtpProtocolError,
    clean_text,
    ehlo_keywords,
    offers,
)


def test_single_line_reply() -> None:
    assert ReplyParser().feed(b"220 mx.example.net ESMTP\r\n") == [
        Reply(220, ("mx.example.net ESMTP",))
    ]


def test_multiline_reply_and_partial_feeds() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250-mx.example.net\r\n250-PIPE") == []
    assert parser.pending
    replies = parser.feed(b"LINING\r\n250 STARTTLS\r\n")
    assert replies == [Reply(250, ("mx.example.net", "PIPELINING", "STARTTLS"))]
    assert not parser.pending


def test_bare_lf_and_several_replies_in_one_chunk() -> None:
    replies = ReplyParser().feed(b"220 hi\n250-a\n250 b\r\n221 bye\n")
    assert [r.code for r in replies] == [220, 250, 221]
    assert replies[1].lines == ("a", "b")


def test_code_without_text() -> None:
    assert ReplyParser().feed(b"250\r\n") == [Reply(250, ("",))]


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"2200 ok\r\n",  # no separator after the code
        b"620 no such first digit\r\n",  # RFC 5321 §4.2: first digit 2-5
        b"260 second digit above 5\r\n",
        b"25 short\r\n",
        b"\r\n",
        b"250-a\r\n251 b\r\n",  # code changes mid-reply (§4.2.1)
    ],
)
def test_garbage_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(SmtpProtocolError):
        ReplyParser().feed(wire)


def test_line_length_cap_without_newline() -> None:
    parser = ReplyParser()
    parser.feed(b"220 " + b"a" * (MAX_LINE - 10))
    with pytest.raises(SmtpProtocolError, match="longer than"):
        parser.feed(b"a" * 20)


def test_line_length_cap_with_newline() -> None:
    with pytest.raises(SmtpProtocolError, match="longer than"):
        ReplyParser().feed(b"220 " + b"a" * MAX_LINE + b"\r\n")


def test_lines_per_reply_cap() -> None:
    parser = ReplyParser()
    parser.feed(b"250-x\r\n" * MAX_LINES)
    with pytest.raises(SmtpProtocolError, match="lines"):
        parser.feed(b"250 last\r\n")


def test_text_is_cleaned() -> None:
    (reply,) = ReplyParser().feed(b"554 go\x1b[31m away\x00 \xff\xc2\x85\r\n")
    assert reply.text == "go[31m away \ufffd"
    assert clean_text("a\tb\x7fc", 2) == "ab"
    assert len(Reply(220, ("x" * 5000,)).text) == 512


def test_ehlo_keywords_are_case_insensitive() -> None:
    reply = Reply(250, ("mx.example.net greets you", "SIZE 1000", "starttls", "8BITMIME"))
    kws = ehlo_keywords(reply)
    assert kws == ("SIZE 1000", "starttls", "8BITMIME")
    assert offers(kws, "STARTTLS")
    assert not offers(kws, "PIPELINING")
    assert not offers(("STARTTLSX",), "STARTTLS")


# RFC 5321 §4.2 reply-code grammar and printable text without CR/LF.
codes = st.builds(
    lambda a, b, c: a * 100 + b * 10 + c,
    st.integers(2, 5),
    st.integers(0, 5),
    st.integers(0, 9),
)
texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
replies = st.builds(Reply, codes, st.lists(texts, min_size=1, max_size=6).map(tuple))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 64), max_size=20))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes, cuts: list[int]) -> None:
    parser = ReplyParser()
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            for reply in parser.feed(data[pos : pos + cut]):
                assert 200 <= reply.code <= 559
                assert 1 <= len(reply.lines) <= MAX_LINES
            pos += cut
    except SmtpProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(replies, min_size=1, max_size=8), st.data())
def test_round_trip_split_anywhere(sent: list[Reply], data: st.DataObject) -> None:
    wire = b"".join(r.to_wire() for r in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    parser = ReplyParser()
    got: list[Reply] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        got.extend(parser.feed(wire[prev:cut]))
        prev = cut
    assert got == sent
    assert not parser.pending


async def test_dialogue_over_a_stream() -> None:
    client, server = trio.testing.memory_stream_pair()
    conn = SmtpConnection(client)
    await server.send_all(b"220-first\r\n")
    await server.send_all(b"220 second\r\n")
    greeting = await conn.read_reply()
    assert greeting == Reply(220, ("first", "second"))

    async def answer() -> None:
        assert await server.receive_some() == b"EHLO scanner.example\r\n"
        await server.send_all(b"250-hi\r\n250 STARTTLS\r\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        ehlo = await conn.command("EHLO scanner.example")
    assert ehlo.lines == ("hi", "STARTTLS")
    await server.send_all(b"221 bye\r\n250 extra")
    await conn.read_reply()
    assert conn.buffered  # a partial reply is still buffered
    await server.aclose()
    with pytest.raises(PeerClosedError):
        await conn.read_reply()
