"""Issue 17's acceptance: a fact's column names are spelled in the codec and the schema only.

The scanner's sources are parsed (``ast``, not text search) and every string literal, every
word of a literal that is SQL text, every record key given as a keyword (``dict(name=...)``,
``record.update(name=...)``) and every SQLAlchemy column access (``table.c.<name>``) is
checked against the fact tables' column names, taken from the schema. (Keyword arguments of
the model's constructors are the model's field names, which the facts share on purpose: they
are not checked.) Left out:
- key columns, the names rows are found and joined by (a primary-key column of any fact
  table: ``scan_id``, ``line``, ``ordinal``, a host's ``name``, an endpoint's ``address``,
  ``port`` and ``sni``, ...), and ``domain_id`` and ``shard_no``, which place a result in the
  name registry and the scan's bookkeeping: the writer and the reader must name them to find
  rows, and none is a fact's field to encode;
- docstrings and other bare strings (prose), the values of enum members (a vocabulary, such
  as Stage.DANE = "dane"), and ``__slots__``/``__all__`` (Python names);
- the few literals in :data:`ALLOWED`, each a different thing that shares a column's name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from scanner.store import schema

SCANNER = Path(__file__).resolve().parent.parent / "scanner"
OWNERS = frozenset({"codec.py", "store/schema.py"})

_KEYS = {c.name for t in schema.FACT_TABLES for c in t.c if c.primary_key}
FACT_COLUMNS = frozenset(
    c.name for t in schema.FACT_TABLES for c in t.c
) - _KEYS - {"domain_id", "shard_no"}

# (module, literal): why it is not a fact's column.
ALLOWED: dict[tuple[str, str], str] = {
    ("diagnosis.py", "reachable"): "prose for the operator (a host line of `check`)",
    ("run.py", "outcome"): "a key of the scan's summary counts (scans.scan_counts)",
    ("run.py", "stage"): "a key of the scan's summary counts (scans.scan_counts)",
    ("store/scans.py", "status"): "the shards table's status (scan bookkeeping)",
    ("store/writer.py", "status"): "the shards table's status, in the writer's lock query",
    ("store/writer.py", "addresses"): "the look-up query's array of endpoint addresses",
    ("targets.py", "input"): "the label of an input stream without a file name",
    ("tls.py", "reason"): "ssl.SSLError's reason attribute",
}


def _skipped(tree: ast.AST) -> set[int]:
    """ids of the string constants that are prose, enum values or Python names."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            out.add(id(node.value))  # docstrings and bare strings
        elif isinstance(node, ast.ClassDef) and any(
            (b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")).endswith("Enum")
            for b in node.bases
        ):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign):
                    out.update(id(n) for n in ast.walk(stmt.value))
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in ("__slots__", "__all__") for t in node.targets
        ):
            out.update(id(n) for n in ast.walk(node.value))
    return out


_SQL = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|COPY|UNION)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z_][a-z0-9_]*")


def spellings(source: str) -> list[tuple[int, str]]:
    """(line, name) for each fact column name ``source`` spells as a literal, a record key or
    a column access."""
    tree = ast.parse(source)
    skipped = _skipped(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                id(node) not in skipped):
            if node.value in FACT_COLUMNS:
                found.append((node.lineno, node.value))
            elif _SQL.match(node.value):
                found.extend((node.lineno, w) for w in _WORD.findall(node.value)
                             if w in FACT_COLUMNS)
        elif (isinstance(node, ast.Attribute) and node.attr in FACT_COLUMNS
              and isinstance(node.value, ast.Attribute) and node.value.attr == "c"):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Call) and _builds_record(node.func):
            found.extend((node.lineno, k.arg) for k in node.keywords if k.arg in FACT_COLUMNS)
    return found


def _builds_record(func: ast.expr) -> bool:
    return ((isinstance(func, ast.Name) and func.id == "dict")
            or (isinstance(func, ast.Attribute) and func.attr == "update"))


def _sources() -> dict[str, str]:
    return {p.relative_to(SCANNER).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(SCANNER.rglob("*.py"))}


def test_fact_columns_are_spelled_in_the_codec_and_schema_only() -> None:
    seen: set[tuple[str, str]] = set()
    stray = []
    for module, source in _sources().items():
        if module in OWNERS:
            continue
        for line, name in spellings(source):
            if (module, name) in ALLOWED:
                seen.add((module, name))
            else:
                stray.append(f"scanner/{module}:{line}: {name!r}")
    assert not stray, "fact column names outside the codec and the schema:\n" + "\n".join(stray)
    assert seen == set(ALLOWED), f"stale exceptions: {sorted(set(ALLOWED) - seen)}"


def test_the_owners_do_spell_them() -> None:
    """The check looks where the names are: the codec spells every fact field it maps."""
    sources = _sources()
    assert {"banner", "outcome", "usage", "authenticated", "preference", "tlsa_status"} <= {
        name for _, name in spellings(sources["codec.py"])}


def test_a_stray_spelling_is_found() -> None:
    """Literals, keys and column accesses are caught; prose, enum values and keys are not."""
    source = '''
"""Module docstring naming the banner."""
from enum import StrEnum
class Phase(StrEnum):
    EHLO = "ehlo"
def f(row, t):
    """The outcome."""
    row.update(scan_id=1, reachable=True)
    sql = "SELECT line, dane FROM domain_results WHERE scan_id = 1"
    return row["outcome"], {"banner": 1}, t.c.stage, t.c.scan_id, row["line"], "a banner"
'''
    assert sorted(spellings(source)) == [(8, "reachable"), (9, "dane"), (10, "banner"),
                                         (10, "outcome"), (10, "stage")]
    assert {"scan_id", "line", "address", "sni", "name"}.isdisjoint(FACT_COLUMNS)
    assert {"outcome", "banner", "ehlo", "usage", "detail", "reachable"} <= FACT_COLUMNS
