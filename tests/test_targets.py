"""Reading and normalising domain lists."""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.model import Reason
from scanner.targets import TargetsError, is_excluded, normalise, read_targets

LDH = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
INVALID = (None, Reason.INVALID_INPUT)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("example.com", "example.com"),
        ("  Example.COM.  \r", "example.com"),
        ("\ufeffexample.com", "example.com"),
        ("mx-1.sub.example.co.uk", "mx-1.sub.example.co.uk"),
        ("Bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.DE.", "xn--bcher-kva.de"),
        ("faß.de", "xn--fa-hia.de"),  # non-transitional: ß kept, not mapped to "ss"
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("ＥＸＡＭＰＬＥ．ｃｏｍ", "example.com"),  # UTS #46 maps full-width forms
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("123.example", "123.example"),
        ("a." * 126 + "b", "a." * 126 + "b"),  # 253 octets
    ],
)
def test_normalise_valid(raw: str, want: str) -> None:
    assert normalise(raw) == (want, None)


@pytest.mark.parametrize(
    "raw",
    [
        "", "   ", ".", "com", "com.", "localhost", "a..b", ".example.com", "example.com..",
        "-a.example.com", "a-.example.com", "a.-b.com", "a_b.example.com", "_25._tcp.example.com",
        "exa mple.com", "example.com/path", "user@example.com", "http://example.com",
        "1.2.3.4", "1.2.3.4.", "[192.0.2.1]", "::1", "[::1]", "2001:db8::1", "[2001:db8::1]",
        "127.1", "example.123", "x" * 64 + ".com", "a." * 126 + "bc", "\ufffdexample.com",
        "ex\x00ample.com", "a\u200d.com", "*.example.com",
    ],
)
def test_normalise_invalid(raw: str) -> None:
    assert normalise(raw) == INVALID


def valid_output(name: str | None) -> bool:
    if name is None:
        return True
    labels = name.split(".")
    return (
        len(name) <= 253
        and len(labels) >= 2
        and all(len(label) <= 63 and LDH.match(label) for label in labels)
        and not labels[-1].isdigit()
    )


@given(st.text(max_size=300))
@settings(max_examples=400, deadline=None)
def test_normalise_never_raises_on_any_text(text: str) -> None:
    name, reason = normalise(text)
    assert (name is None) == (reason is Reason.INVALID_INPUT)
    assert valid_output(name)


label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)


@given(st.lists(label, min_size=1, max_size=5), st.from_regex(r"[a-z]{2,6}", fullmatch=True))
@settings(max_examples=200, deadline=None)
def test_normalise_ldh_names_round_trip(labels: list[str], tld: str) -> None:
    name = ".".join([*labels, tld])
    out, _ = normalise(name.upper() + ".")
    # ASCII names are not run through IDNA, so R-LDH labels ("ab--cd") are kept too.
    assert out == name.lower()
    assert normalise(out) == (out, None)  # idempotent


def test_is_excluded() -> None:
    ex = frozenset({"example.com", "blocked.net"})
    assert is_excluded("example.com", ex)
    assert is_excluded("mx.sub.example.com", ex)
    assert is_excluded("MX.Blocked.NET.", ex)
    assert not is_excluded("notexample.com", ex)
    assert not is_excluded("example.org", ex)
    assert not is_excluded("com", ex)
    assert not is_excluded("example.com", frozenset())


# -- read_targets ----------------------------------------------------------------------------


PLAIN = b"# top sites\nexample.com\n\n  Example.ORG  \r\n# a comment\nb\xfccher.de\nlast.example"


def read_bytes(data: bytes) -> list[tuple[int, str]]:
    return list(read_targets(io.BytesIO(data)))


def test_plain_text_keeps_line_numbers() -> None:
    assert read_bytes(PLAIN) == [
        (2, "example.com"), (4, "Example.ORG"), (6, "b\ufffdcher.de"), (7, "last.example"),
    ]
    assert normalise("b\ufffdcher.de") == INVALID


def test_tranco_csv() -> None:
    data = b"1,google.com\r\n2,Example.com\n3,\"quoted.example\"\n\n5,b\xc3\xbccher.de\n"
    assert read_bytes(data) == [
        (1, "google.com"), (2, "Example.com"), (3, "quoted.example"), (5, "bücher.de"),
    ]


def test_csv_header_and_other_shapes() -> None:
    assert read_bytes(b"rank,domain\n1,a.example\n") == [(2, "a.example")]
    # A first cell that is not a rank: the domain is the first cell.
    assert read_bytes(b"a.example,extra\n") == [(1, "a.example")]
    # A header-like line later in the file is data (and normalise rejects it).
    assert read_bytes(b"1,a.example\nrank,domain\n") == [(1, "a.example"), (2, "rank")]


def test_gzip_detected_by_magic(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"  # no .gz suffix on purpose
    path.write_bytes(gzip.compress(b"1,a.example\n2,b.example\n"))
    assert list(read_targets(path)) == [(1, "a.example"), (2, "b.example")]
    assert list(read_targets(str(path))) == [(1, "a.example"), (2, "b.example")]


def test_plain_file_with_gz_suffix(tmp_path: Path) -> None:
    path = tmp_path / "list.gz"
    path.write_bytes(b"a.example\n")
    assert list(read_targets(path)) == [(1, "a.example")]


def test_truncated_gzip_yields_what_it_can_then_raises() -> None:
    lines = b"".join(b"%d,d%d.example\n" % (i, i) for i in range(1, 20001))
    blob = gzip.compress(lines)
    got: list[tuple[int, str]] = []
    with pytest.raises(TargetsError):
        got.extend(read_targets(io.BytesIO(blob[: len(blob) * 2 // 3])))
    assert len(got) > 1000
    # Everything yielded is a complete, correct line.
    assert all(raw == f"d{n}.example" for n, raw in got)
    assert [n for n, _ in got] == list(range(1, len(got) + 1))


def test_corrupt_gzip_raises_targets_error() -> None:
    blob = bytearray(gzip.compress(b"a.example\n" * 1000))
    blob[20:40] = b"\x00" * 20
    with pytest.raises(TargetsError):
        read_bytes(bytes(blob))


def test_missing_file_is_targets_error(tmp_path: Path) -> None:
    with pytest.raises(TargetsError):
        list(read_targets(tmp_path / "nope.txt"))


def test_empty_and_tiny_inputs() -> None:
    assert read_bytes(b"") == []
    assert read_bytes(b"\x1f") == []
    assert read_bytes(b"a") == [(1, "a")]
    assert read_bytes(b"\n\n#\n") == []


class Trickle(io.RawIOBase):
    """A pipe that hands out one byte per read."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out, self.data = self.data[:1], self.data[1:]
        return out


def test_gzip_magic_split_across_reads() -> None:
    blob = gzip.compress(b"a.example\nb.example\n")
    assert list(read_targets(Trickle(blob))) == [(1, "a.example"), (2, "b.example")]  # type: ignore[arg-type]


def test_stdin_dash_plain_and_gzip() -> None:
    code = ("import sys; from scanner.targets import read_targets; "
            "print(list(read_targets('-')))")
    for data in (b"1,a.example\n2,b.example\n", gzip.compress(b"1,a.example\n2,b.example\n")):
        out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                             check=True, cwd=Path(__file__).resolve().parent.parent)
        assert out.stdout.strip() == b"[(1, 'a.example'), (2, 'b.example')]"


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_read_targets_any_bytes(data: bytes) -> None:
    try:
        items = read_bytes(data)
    except TargetsError:
        assert data[:2] == b"\x1f\x8b"  # only a (broken) gzip stream may end early
        return
    numbers = [n for n, _ in items]
    assert numbers == sorted(set(numbers))
    for _, raw in items:
        assert raw
        assert "\n" not in raw
        assert valid_output(normalise(raw)[0])


LINE_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\n\r")


@given(st.lists(st.text(alphabet=LINE_CHARS, max_size=40), max_size=30), st.booleans())
@settings(max_examples=150, deadline=None)
def test_read_targets_text_lines_plain_and_gzip(lines: list[str], compress: bool) -> None:
    data = "\n".join(lines).encode("utf-8")
    if compress:
        data = gzip.compress(data)
    items = dict(read_bytes(data))
    for n, source in enumerate(lines, 1):
        text = source.strip()
        if not text or text.startswith("#"):
            assert n not in items
        elif "," not in text:
            assert items[n] == text  # every plain line comes back, stripped, at its number
        elif n in items:
            assert items[n]
            assert items[n].strip() == items[n]


def test_csv_rows_without_a_domain_are_kept_as_given() -> None:
    # Every non-blank, non-comment line gets a result: a row naming no domain is judged
    # invalid with the line as given, never dropped.
    data = b"1,a.example\n23,\n,\n,b.example\n5, \n"
    items = read_bytes(data)
    assert items == [(1, "a.example"), (2, "23,"), (3, ","), (4, ",b.example"), (5, "5,")]
    assert all(normalise(raw) == INVALID for _, raw in items[1:])


def test_a_comma_first_line_is_not_taken_for_a_header() -> None:
    assert read_bytes(b",\n1,a.example\n") == [(1, ","), (2, "a.example")]
    assert read_bytes(b"rank,domain\n1,a.example\n") == [(2, "a.example")]


def test_small_truncated_gzip_yields_its_decodable_lines(tmp_path: Path) -> None:
    # A list small enough to fit one read: its decodable lines must still come out.
    lines = b"".join(b"d%d.example\n" % i for i in range(1, 301))
    blob = gzip.compress(lines)
    path = tmp_path / "list.gz"
    path.write_bytes(blob[: len(blob) // 2])
    got: list[tuple[int, str]] = []
    with pytest.raises(TargetsError) as info:
        got.extend(read_targets(path))
    assert 50 < len(got) < 300
    assert got == [(n, f"d{n}.example") for n in range(1, len(got) + 1)]
    message = str(info.value)
    assert str(path) in message
    assert f"after line {len(got)}" in message


def test_concatenated_gzip_members() -> None:
    blob = gzip.compress(b"a.example\n") + gzip.compress(b"b.example\n")
    assert read_bytes(blob) == [(1, "a.example"), (2, "b.example")]
