"""analysis.report and ``danescan report``: files, data dictionary, injection, determinism."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import catalog, cli, csvfile, metrics, report

if TYPE_CHECKING:
    from pathlib import Path

    from tests.analysis_fixture import FixtureDb

pytest_plugins = ["tests.conftest_store", "tests.analysis_fixture"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("=1+2", "'=1+2"),
        ("+cmd", "'+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        ("", ""),
        (-3, "-3"),  # numbers stay numbers
        (np.int64(-7), "-7"),
        (-0.5, "-0.500000"),
        (-0.0000001, "0.000000"),
        (1 / 3, "0.333333"),
        (float("nan"), ""),
        (None, ""),
        (pd.NA, ""),
        (True, "true"),
        (np.bool_(False), "false"),
        (dt.date(2025, 3, 4), "2025-03-04"),
    ],
)
def test_cell(value: object, text: str) -> None:
    assert csvfile.cell(value) == text


def test_dictionary_matches_metrics_columns() -> None:
    by_file = {t.file: t.names for t in report.DICTIONARY}
    assert by_file["funnel.csv"] == metrics.FUNNEL_COLUMNS
    assert by_file["funnel_by_tld.csv"] == metrics.FUNNEL_BY_COLUMNS
    assert by_file["funnel_by_provider.csv"] == metrics.FUNNEL_BY_COLUMNS
    assert by_file["progression.csv"] == metrics.PROGRESSION_COLUMNS
    assert by_file["transitions.csv"] == metrics.TRANSITION_COLUMNS
    assert by_file["movers.csv"] == metrics.MOVER_COLUMNS
    assert by_file["cohorts.csv"] == metrics.COHORT_COLUMNS
    assert by_file["dane_lags.csv"] == metrics.LAG_COLUMNS
    assert by_file["tlsa_parameters.csv"] == metrics.TLSA_COLUMNS
    assert by_file["tlsa_rollover.csv"] == metrics.ROLLOVER_COLUMNS
    assert by_file["breakage.csv"] == metrics.BREAKAGE_COLUMNS
    assert by_file["domains.csv"] == report.DOMAIN_COLUMNS


def test_report_files(analysis_db: FixtureDb, tmp_path: Path) -> None:
    out = tmp_path / "r"
    counts = report.build(analysis_db.engine, out)
    files = {t.file for t in report.DICTIONARY}
    assert {p.name for p in out.glob("*.csv")} == files
    for t in report.DICTIONARY:
        rows = read(out / t.file)
        assert rows[0] == list(t.names), t.file  # stable names and order
        assert len(rows) - 1 == counts[t.file]
    for name, _ in report.CHARTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    # The funnel's numbers survive the trip (fixture N4: 12 of 15 ok, 5 DANE domains).
    funnel = {(r[2], r[3], r[4]): r for r in read(out / "funnel.csv")[1:]}
    assert funnel[("domains", "outcome", "ok")][6:9] == ["12", "15", "0.800000"]
    assert funnel[("domains", "stage", "dane")][9:11] == ["5", "0.416667"]
    assert funnel[("domains", "outcome", "ok")][9:11] == ["", ""]
    assert funnel[("mx_hosts", "stage", "dane")][9] == "4"
    assert read(out / "funnel.csv")[1][1] == "2025-03-04"  # ISO date
    domains = read(out / "domains.csv")
    assert len(domains) - 1 == 15
    assert [r[0] for r in domains[1:]] == [str(i) for i in range(1, 16)]  # input order
    b = {r[2]: r for r in domains[1:]}
    assert b["b.alpha"][13:] == ["mx1.mailco.alpha", "alpha", "mailco.alpha"]
    assert b["e.plainland"][15] == "provider.co.uk"
    assert b["a.alpha"][4:6] == ["true", "true"]
    progression = read(out / "progression.csv")
    assert len(progression) - 1 == 4 * 2 * 5  # scans x units x rungs
    assert counts["transitions.csv"] == 6 * 8
    assert counts["breakage.csv"] == 5


def test_report_neutralises_formulas(analysis_db: FixtureDb, tmp_path: Path) -> None:
    report.build(analysis_db.engine, tmp_path)
    raw = (tmp_path / "domains.csv").read_text(encoding="utf-8")
    row = next(r for r in read(tmp_path / "domains.csv") if r[3] == "invalid")
    assert row[1] == "'=1+2"  # the fixture's hostile input line
    assert "\n7,'=1+2," in raw
    for path in tmp_path.glob("*.csv"):
        for r in read(path)[1:]:
            for c in r:
                assert not c.startswith(csvfile.FORMULA_PREFIXES) or _is_number(c), (path, c)


def _is_number(text: str) -> bool:
    try:
        return not math.isnan(float(text))
    except ValueError:
        return False


def test_report_is_deterministic(analysis_db: FixtureDb, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    report.build(analysis_db.engine, a)
    report.build(analysis_db.engine, b)
    names = sorted(p.name for p in a.iterdir() if p.suffix in (".csv", ".md"))
    assert len(names) == len(report.DICTIONARY) + 1
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "funnel.csv").read_bytes().decode("utf-8")  # UTF-8, no BOM
    assert not (a / "funnel.csv").read_bytes().startswith(b"\xef\xbb\xbf")


def test_readme_documents_every_column(analysis_db: FixtureDb, tmp_path: Path) -> None:
    report.build(analysis_db.engine, tmp_path, analysis_db.scan_ids[0])
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    for t in report.DICTIONARY:
        section = text.split(f"## {t.file}\n", 1)[1].split("\n## ", 1)[0]
        for name in t.names:
            assert f"| `{name}` |" in section, (t.file, name)
    for name, _ in report.CHARTS:
        assert f"`{name}`" in text
    # The first scan has no previous one: transitions and movers are header-only.
    assert read(tmp_path / "transitions.csv") == [list(metrics.TRANSITION_COLUMNS)]
    assert read(tmp_path / "movers.csv") == [list(metrics.MOVER_COLUMNS)]


def test_cli_report(analysis_db: FixtureDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                    ) -> None:  # fmt: skip
    out = tmp_path / "cli"
    sid = analysis_db.scan_ids[2]
    rc = cli.main(["report", "--scan", str(sid), "--out", str(out), "--db", analysis_db.url])
    assert rc == 0
    assert "14 domains" in capsys.readouterr().out  # N3 has 14 input lines
    assert read(out / "funnel.csv")[1][0] == str(sid)
    assert len(read(out / "domains.csv")) - 1 == 14


def test_cli_report_without_scans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/empty.sqlite"
    from scanner.store import db

    db.upgrade(url)
    rc = cli.main(["report", "--out", str(tmp_path / "o"), "--db", url])
    assert rc == cli.EXIT_ERROR
    assert "no complete scan" in capsys.readouterr().err
    with pytest.raises(catalog.NoScan):
        catalog.from_store(db.make_engine(url)).resolve("latest")


def test_cells_of_a_long_text_column_follow_cell() -> None:
    texts = [f"d{i}.example" for i in range(3000)] + ["=1+2", "-x", "@a", None, "\tt", "+1"]
    column = pd.Series(texts, dtype=object)
    assert list(csvfile.cells(column)) == [csvfile.cell(v) for v in texts]
    mixed = pd.Series([*range(2000), None, True], dtype=object)  # not only texts: per value
    assert list(csvfile.cells(mixed)) == [csvfile.cell(v) for v in mixed]


_TEXT = st.text(alphabet=st.sampled_from('ab,"\n\r\t =+-@\'é;\x00\u2028'), max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), _TEXT),
            st.one_of(st.none(), st.integers(-(2**40), 2**40)),
            st.one_of(st.none(), st.booleans()),
            st.one_of(st.none(), st.floats(allow_infinity=False), st.just(-0.0)),
            st.one_of(st.none(), st.dates()),
        ),
        max_size=30,
    )
)
def test_writer_matches_the_csv_module(tmp_path_factory: pytest.TempPathFactory,
                                       rows: list[tuple[object, ...]]) -> None:  # fmt: skip
    """Byte for byte what csv.writer writes from :func:`csvfile.cell` of each value, for
    pandas frames and for Arrow batches alike."""
    names = ["text", "int", "flag", "share", "day"]
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    expected = io.StringIO()
    w = csv.writer(expected, lineterminator="\n")
    w.writerow(names)
    w.writerows([[csvfile.cell(v) for v in r] for r in rows])
    frame = pd.DataFrame.from_records(rows, columns=names)
    frame["int"] = frame["int"].astype("Int64")
    assert csvfile.write_csv(path, names, [frame]) == len(rows)
    assert path.read_bytes() == expected.getvalue().encode("utf-8")
    batch = pa.RecordBatch.from_pydict(
        {n: [r[k] for r in rows] for k, n in enumerate(names) if n in ("text", "int", "flag")},
        schema=pa.schema([("text", pa.string()), ("int", pa.int64()), ("flag", pa.bool_())]),
    )
    csvfile.write_csv(path, names[:3], [batch, batch.slice(1)])
    expected = io.StringIO()
    w = csv.writer(expected, lineterminator="\n")
    w.writerow(names[:3])
    w.writerows([[csvfile.cell(v) for v in r[:3]] for r in [*rows, *rows[1:]]])
    assert path.read_bytes() == expected.getvalue().encode("utf-8")
