"""The command line's failure paths: one clear line and a classified exit code, no traceback."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from scanner.cli import main
from tests.fakedns import refusing_resolver


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return rc, text


def test_missing_input_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, text = run(capsys, "scan", str(tmp_path / "nope.txt"), "--db",
                   f"sqlite:///{tmp_path}/x.sqlite", "--resolver", "127.0.0.1")
    assert rc == 2 and "cannot open" in text


def test_no_resolver_is_refused_never_guessed(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine's /etc/resolv.conf points off-machine: nothing may fall back to it.
    monkeypatch.delenv("DANESCAN_RESOLVER", raising=False)
    (tmp_path / "list.txt").write_text("example.com\n")
    rc, text = run(capsys, "scan", str(tmp_path / "list.txt"), "--no-db")
    assert rc == 2 and "no resolver given" in text
    rc, text = run(capsys, "check", "example.com", "--resolver", "resolver.example")
    assert rc == 2 and "'resolver.example'" in text  # a name would need a lookup


def test_resolver_from_environment(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # 127.83.0.1: nothing answers there; the environment's resolver is the one asked.
    monkeypatch.setenv("DANESCAN_RESOLVER", "127.83.0.1")
    rc, text = run(capsys, "check", "example.com", "--dns-timeout", "0.1")
    assert rc == 2 and "127.83.0.1" in text


def test_database_unreachable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("example.com\n")
    rc, text = run(capsys, "scan", str(tmp_path / "list.txt"), "--resolver", "127.0.0.1",
                   "--db", "postgresql://nobody@127.0.0.1:1/none")
    assert rc == 2 and "database unavailable" in text


@pytest.mark.parametrize("insecure", [[], ["--insecure-resolver-ok"]])
def test_resolver_that_does_not_answer(capsys: pytest.CaptureFixture[str],
                                       insecure: list[str]) -> None:
    # Nothing answers DNS on 127.83.0.1: refused at start, even for a STARTTLS-only survey.
    rc, text = run(capsys, "check", "example.com", "--resolver", "127.83.0.1",
                   "--dns-timeout", "0.1", *insecure)
    assert rc == 2 and "does not answer" in text and "127.83.0.1" in text


def test_usage_errors_from_a_worker_under_python_m(tmp_path: Path) -> None:
    # `python -m scanner.cli` runs cli.py as __main__; the worker (batch.py) raises the
    # UsageError of the imported scanner.cli. It must still end as one line, not a traceback.
    (tmp_path / "list.txt").write_text("example.com\n")
    done = subprocess.run(
        [sys.executable, "-m", "scanner.cli", "-q", "scan", str(tmp_path / "list.txt"),
         "--db", str(tmp_path / "s.sqlite"), "--resolver", "127.83.0.1", "--dns-timeout", "0.1"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=120,
    )
    assert done.returncode == 2
    assert "does not answer" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["exa mple..com", "localhost", "192.0.2.1", "a" * 64 + ".com"])
def test_check_invalid_input(capsys: pytest.CaptureFixture[str], name: str) -> None:
    rc, text = run(capsys, "check", name, "--resolver", "127.83.0.1", "--dns-timeout", "0.1",
                   "--insecure-resolver-ok")
    assert rc == 2 and "outcome invalid" in text


def test_truncated_gzip_without_database(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    # Varied lines so that half the compressed stream still holds many whole lines.
    data = gzip.compress(b"".join(b"bad name %d %x\n" % (i, i * 7919 % 65521)
                                  for i in range(20000)))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.jsonl"
    with refusing_resolver() as resolver:
        rc, text = run(capsys, "scan", str(tmp_path / "cut.gz"), "--no-db", "--jsonl", str(out),
                       "--resolver", resolver, "--dns-timeout", "0.1", "--insecure-resolver-ok")
    assert rc == 2 and "input incomplete" in text
    # What was readable was judged and kept.
    assert len(out.read_text().splitlines()) > 0


def test_truncated_gzip_into_the_database(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    import sqlalchemy as sa

    from scanner.store import db, schema

    data = gzip.compress(b"".join(b"bad name %d %x\n" % (i, i * 7919 % 65521)
                                  for i in range(20000)))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    url = f"sqlite:///{tmp_path}/cut.sqlite"
    with refusing_resolver() as resolver:
        rc, text = run(capsys, "scan", str(tmp_path / "cut.gz"), "--db", url, "--workers", "1",
                       "--resolver", resolver, "--dns-timeout", "0.1", "--insecure-resolver-ok")
    assert rc == 2 and "input incomplete" in text
    engine = db.make_engine(url)
    with engine.connect() as conn:
        status, lines = conn.execute(sa.select(schema.scans.c.status,
                                               schema.scans.c.input_lines)).one()
        stored = conn.execute(sa.select(sa.func.count()).select_from(
            schema.domain_results)).scalar_one()
    assert status == "complete" and lines > 1000 and stored == lines
