"""The contract's JSON text stays byte for byte what it was (tests/data/contract.jsonl, written
by the encoder before scanner.codec built it), through ``to_json`` and ``JsonLines`` alike."""

from __future__ import annotations

import json
from pathlib import Path

from scanner import codec
from scanner.verdict import JsonLines, to_json
from tests.contract_samples import samples

PINNED = Path(__file__).parent / "data" / "contract.jsonl"


def pinned() -> list[str]:
    # Split on "\n" only: the lines hold U+2028 unescaped, which str.splitlines() splits on.
    return PINNED.read_text(encoding="utf-8").split("\n")[:-1]


def test_json_lines_are_byte_identical() -> None:
    lines = JsonLines(limit=3)
    assert [lines.line(v) for v in samples()] == pinned()


def test_to_json_is_the_same_text() -> None:
    assert [json.dumps(to_json(v), ensure_ascii=False) for v in samples()] == pinned()


def test_published_keys_come_from_the_codec() -> None:
    obj = json.loads(pinned()[4])  # two hosts, one with endpoints left unanswered
    assert tuple(obj) == codec.DOMAIN_CONTRACT
    for h in obj["mx_hosts"]:
        assert tuple(h) == codec.HOST_CONTRACT
        for ep in h["endpoints"]:
            assert tuple(ep) == codec.ENDPOINT_CONTRACT
            assert ep["dane"] is None or tuple(ep["dane"]) == codec.DANE_CONTRACT


def test_the_contract_documents_every_published_key() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "verdicts.md").read_text(encoding="utf-8")
    keys = {*codec.DOMAIN_CONTRACT, *codec.HOST_CONTRACT, *codec.ENDPOINT_CONTRACT,
            *codec.DANE_CONTRACT, *codec.PUBLISHED_AS.values()}
    assert sorted(k for k in keys if f"`{k}`" not in doc) == []
