"""The command line's failure paths: one clear line and a classified exit code, no traceback."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from scanner.cli import main
from tests.fakedns import refusing_resolver


@pytest.fixture(autouse=True)
def ehlo_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # Probing public addresses needs a named scanner; these tests are about other errors.
    monkeypatch.setenv("DANESCAN_EHLO_NAME", "scanner.test")


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
    assert rc == 4 and "outcome invalid" in text


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
    assert rc == 4 and "input incomplete" in text and "cut.gz" in text
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
    assert rc == 4 and "incomplete" in text and "cut.gz" in text and "after line" in text
    engine = db.make_engine(url)
    with engine.connect() as conn:
        status, lines = conn.execute(sa.select(schema.scans.c.status,
                                               schema.scans.c.input_lines)).one()
        stored = conn.execute(sa.select(sa.func.count()).select_from(
            schema.domain_results)).scalar_one()
    # Never `complete`: the list could not be read to its end.
    assert status == "incomplete" and lines > 1000 and stored == lines


@pytest.mark.parametrize(
    ("option", "value"),
    [("--concurrency", "-5"), ("--concurrency", "0"), ("--per-address", "0"),
     ("--shard-size", "0"), ("--workers", "0"), ("--dns-timeout", "-1"),
     ("--dns-timeout", "nan"), ("--retry-delay", "-2"), ("--greeting-timeout", "0"),
     ("--per-prefix", "x"), ("--smtp-port", "70000"), ("--dns-rate", "-1"),
     ("--every", "0"), ("--date", "2026-13-01"), ("--lease-seconds", "0")],
)
def test_bad_numbers_are_usage_errors_and_write_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, value: str) -> None:
    (tmp_path / "list.txt").write_text("example.com\n")
    db_file = tmp_path / "x.sqlite"
    with pytest.raises(SystemExit) as info:
        main(["scan", str(tmp_path / "list.txt"), "--db", f"sqlite:///{db_file}",
              "--resolver", "127.0.0.1", option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert option in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not db_file.exists()


def test_public_scan_needs_an_ehlo_name(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DANESCAN_EHLO_NAME")
    (tmp_path / "list.txt").write_text("example.com\n")
    rc, text = run(capsys, "scan", str(tmp_path / "list.txt"), "--no-db", "--jsonl", "-",
                   "--resolver", "127.0.0.1")
    assert rc == 2 and "--ehlo-name" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("danescan ")


def test_every_scan_option_says_what_it_does() -> None:
    import argparse

    from scanner.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("scan", "worker", "check", "export"):
        for action in sub.choices[command]._actions:
            if action.help == argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            assert action.help, f"{command} {action.option_strings or action.dest} has no help"


def test_a_failed_start_never_leaves_a_scan_running(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy as sa

    from scanner import run as scan_run
    from scanner.config import Config, ResolverAddress
    from scanner.store import db, scans, schema

    def broken(*args: object, **kwargs: object) -> int:
        raise sa.exc.OperationalError("INSERT INTO shards", {}, Exception("disk I/O error"))

    monkeypatch.setattr(scans, "add_shards", broken)
    (tmp_path / "list.txt").write_text("a.example\n")
    url = f"sqlite:///{tmp_path}/f.sqlite"
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    config = Config(resolvers=(ResolverAddress("127.0.0.1"),))
    with pytest.raises(sa.exc.OperationalError):
        scan_run.start_scan(engine, str(tmp_path / "list.txt"), config)
    with engine.connect() as conn:
        statuses = conn.execute(sa.select(schema.scans.c.status)).scalars().all()
    assert statuses == ["failed"]


def test_export_refuses_a_scan_that_is_not_complete(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    from scanner.store import db, scans

    url = f"sqlite:///{tmp_path}/e.sqlite"
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    scan_id = scans.create_scan(engine, "half", None, None, "127.0.0.1")
    out = tmp_path / "out.jsonl"
    rc, text = run(capsys, "export", "--scan", str(scan_id), "--db", url, "--out", str(out))
    assert rc == 2 and "running" in text and "--allow-incomplete" in text
    assert not out.exists()
    rc, text = run(capsys, "export", "--db", url, "--out", str(out))
    assert rc == 2 and "no complete scan" in text
    rc, _ = run(capsys, "export", "--scan", str(scan_id), "--db", url, "--out", str(out),
                "--allow-incomplete")
    assert rc == 0 and out.read_text() == ""
