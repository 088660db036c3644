"""The command line's failure paths: one clear line and a classified exit code, no traceback."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from scanner.cli import main
from tests.fakedns import refusing_resolver

if TYPE_CHECKING:
    from collections.abc import Callable


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
    assert rc == 2
    assert "cannot open" in text


def test_no_resolver_is_refused_never_guessed(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine's /etc/resolv.conf points off-machine: nothing may fall back to it.
    monkeypatch.delenv("DANESCAN_RESOLVER", raising=False)
    (tmp_path / "list.txt").write_text("example.com\n")
    rc, text = run(capsys, "scan", str(tmp_path / "list.txt"), "--no-db")
    assert rc == 2
    assert "no resolver given" in text
    rc, text = run(capsys, "check", "example.com", "--resolver", "resolver.example")
    assert rc == 2
    assert "'resolver.example'" in text


def test_resolver_from_environment(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # 127.83.0.1: nothing answers there; the environment's resolver is the one asked.
    monkeypatch.setenv("DANESCAN_RESOLVER", "127.83.0.1")
    rc, text = run(capsys, "check", "example.com", "--dns-timeout", "0.1")
    assert rc == 2
    assert "127.83.0.1" in text


def test_database_unreachable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("example.com\n")
    rc, text = run(capsys, "scan", str(tmp_path / "list.txt"), "--resolver", "127.0.0.1",
                   "--db", "postgresql://nobody@127.0.0.1:1/none")
    assert rc == 2
    assert "database unavailable" in text


@pytest.mark.parametrize("insecure", [[], ["--insecure-resolver-ok"]])
def test_resolver_that_does_not_answer(capsys: pytest.CaptureFixture[str],
                                       insecure: list[str]) -> None:
    # Nothing answers DNS on 127.83.0.1: refused at start, even for a STARTTLS-only survey.
    rc, text = run(capsys, "check", "example.com", "--resolver", "127.83.0.1",
                   "--dns-timeout", "0.1", *insecure)
    assert rc == 2
    assert "does not answer" in text
    assert "127.83.0.1" in text


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
    assert "does not answer" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["exa mple..com", "localhost", "192.0.2.1", "a" * 64 + ".com"])
def test_check_invalid_input(capsys: pytest.CaptureFixture[str], name: str) -> None:
    rc, text = run(capsys, "check", name, "--resolver", "127.83.0.1", "--dns-timeout", "0.1",
                   "--insecure-resolver-ok")
    assert rc == 4
    assert "outcome invalid" in text


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
    assert rc == 4
    assert "input incomplete" in text
    assert "cut.gz" in text
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
    assert rc == 4
    assert "incomplete" in text
    assert "cut.gz" in text
    assert "after line" in text
    engine = db.make_engine(url)
    with engine.connect() as conn:
        status, lines = conn.execute(sa.select(schema.scans.c.status,
                                               schema.scans.c.input_lines)).one()
        stored = conn.execute(sa.select(sa.func.count()).select_from(
            schema.domain_results)).scalar_one()
    # Never `complete`: the list could not be read to its end.
    assert status == "incomplete"
    assert lines > 1000
    assert stored == lines


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
    assert option in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not db_file.exists()


def test_public_scan_needs_an_ehlo_name(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DANESCAN_EHLO_NAME")
    (tmp_path / "list.txt").write_text("example.com\n")
    rc, text = run(capsys, "scan", str(tmp_path / "list.txt"), "--no-db", "--jsonl", "-",
                   "--resolver", "127.0.0.1")
    assert rc == 2
    assert "--ehlo-name" in text


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
    assert rc == 2
    assert "running" in text
    assert "--allow-incomplete" in text
    assert not out.exists()
    rc, text = run(capsys, "export", "--db", url, "--out", str(out))
    assert rc == 2
    assert "no complete scan" in text
    rc, _ = run(capsys, "export", "--scan", str(scan_id), "--db", url, "--out", str(out),
                "--allow-incomplete")
    assert rc == 0
    assert out.read_text() == ""


# -- internal errors: a bug while judging a line is counted apart and exits 5 ---------------


@pytest.fixture
def buggy_step(monkeypatch: pytest.MonkeyPatch) -> str:
    """A pure step of the pipeline that raises for one domain (a bug in danescan, as far as
    the scan can tell); returns that domain."""
    from scanner import pipeline
    from scanner.targets import is_excluded as real

    def is_excluded(domain: str, excluded: frozenset[str]) -> bool:
        if domain == "crash.example":
            raise RuntimeError("bug at crash.example")
        return real(domain, excluded)

    monkeypatch.setattr(pipeline, "is_excluded", is_excluded)
    return "crash.example"


# Lines that ask the resolver nothing: the bug, and a name that is not one (`invalid`).
BUGGY_LIST = "crash.example\nnot a name\n"


@pytest.mark.usefixtures("buggy_step")
def test_a_scan_with_internal_errors_exits_5_and_says_so(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="danescan")
    (tmp_path / "list.txt").write_text(BUGGY_LIST)
    url = f"sqlite:///{tmp_path}/ie.sqlite"
    with refusing_resolver() as resolver:
        rc, _ = run(capsys, "scan", str(tmp_path / "list.txt"), "--db", url, "--workers", "1",
                    "--resolver", resolver, "--insecure-resolver-ok")
    assert rc == 5
    assert "internal_error 1" in caplog.text
    assert "1 lines hit an internal error (a bug in danescan" in caplog.text
    assert "scan 1 complete" in caplog.text  # stored as finished: only the exit code says it


@pytest.mark.usefixtures("buggy_step")
def test_a_scan_without_database_with_internal_errors_exits_5(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import json

    (tmp_path / "list.txt").write_text(BUGGY_LIST)
    out = tmp_path / "out.jsonl"
    with refusing_resolver() as resolver:
        rc, _ = run(capsys, "scan", str(tmp_path / "list.txt"), "--no-db", "--jsonl", str(out),
                    "--resolver", resolver, "--insecure-resolver-ok")
    assert rc == 5
    outcomes = [json.loads(line)["outcome"] for line in out.read_text().splitlines()]
    assert sorted(outcomes) == ["internal_error", "invalid"]


@pytest.mark.usefixtures("buggy_step")
def test_a_worker_with_internal_errors_exits_5(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    from scanner import run as scan_run
    from scanner.config import Config, ResolverAddress
    from scanner.store import db, scans
    from scanner.store.schema import ScanStatus

    (tmp_path / "list.txt").write_text(BUGGY_LIST)
    url = f"sqlite:///{tmp_path}/w.sqlite"
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    with refusing_resolver() as resolver:
        config = Config(resolvers=(ResolverAddress.parse(resolver),), insecure_resolver_ok=True)
        scan_id = scan_run.start_scan(engine, str(tmp_path / "list.txt"), config)
        rc, _ = run(capsys, "-q", "worker", "--scan", str(scan_id), "--db", url)
    assert rc == 5
    assert scans.scan_status(engine, scan_id) is ScanStatus.COMPLETE
    assert scans.scan_counts(engine, scan_id)["outcome"]["internal_error"] == 1


def test_check_of_a_domain_that_hits_a_bug_exits_5(capsys: pytest.CaptureFixture[str],
                                                   buggy_step: str) -> None:
    with refusing_resolver() as resolver:
        rc, text = run(capsys, "check", buggy_step, "--resolver", resolver,
                       "--insecure-resolver-ok")
    assert rc == 5
    assert "outcome internal_error" in text
    assert "RuntimeError: bug at crash.example" in text


# -- run options: each written once, handed to worker processes from the fields -------------


def test_worker_processes_get_the_run_options_they_share() -> None:
    import datetime as dt

    from scanner.cli import build_parser, run_options
    from scanner.config import RunOptions, worker_argv, worker_names

    assert worker_argv(RunOptions()) == []  # defaults go without saying
    opts = RunOptions(db="sqlite:///x", jsonl="out.jsonl", label="n", date=dt.date(2026, 1, 2),
                      workers=3, shard_size=7, every=60.0, lease_seconds=12.5,
                      dns_log="q.log", shared=False, progress_interval=5.0,
                      resolvers=("127.0.0.1@5353", "system"))
    argv = worker_argv(opts)
    assert argv == ["--lease-seconds", "12.5", "--dns-log", "q.log", "--no-shared",
                    "--resolver", "127.0.0.1@5353", "--resolver", "system"]
    got = run_options(build_parser("worker").parse_args(["-q", "worker", *argv]))
    assert worker_names(RunOptions) == {"lease_seconds", "dns_log", "shared", "resolvers"}
    for name in worker_names(RunOptions):
        assert getattr(got, name) == getattr(opts, name)
    # The scan's own options (where its output goes, how it is split) stay with the scan.
    assert (got.jsonl, got.shard_size, got.every) == (None, 1000, None)


def test_a_scan_reads_every_run_option() -> None:
    import datetime as dt

    from scanner.cli import build_parser, run_options
    from scanner.config import RunOptions

    args = build_parser("scan").parse_args([
        "scan", "list.txt", "--db", "sqlite:///x", "--jsonl", "o.jsonl", "--label", "n",
        "--date", "2026-01-02", "--workers", "3", "--shard-size", "7", "--every", "1m",
        "--lease-seconds", "12.5", "--dns-log", "q.log", "--no-shared",
        "--progress-interval", "5", "--resolver", "127.0.0.1", "--resolver", "::1@53"])
    assert run_options(args) == RunOptions(
        db="sqlite:///x", jsonl="o.jsonl", label="n", date=dt.date(2026, 1, 2), workers=3,
        shard_size=7, every=60.0, lease_seconds=12.5, dns_log="q.log", shared=False,
        progress_interval=5.0, resolvers=("127.0.0.1", "::1@53"))
    assert run_options(build_parser("scan").parse_args(["scan", "l.txt"])) == RunOptions()


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [(KeyboardInterrupt(), 3, "danescan: interrupted"),
     (FileNotFoundError(2, "No such file or directory"), 2,
      "danescan: [Errno 2] No such file or directory")],
)
def test_one_table_of_expected_errors(capsys: pytest.CaptureFixture[str],
                                      exc: BaseException, code: int, line: str) -> None:
    """A nursery's group of expected errors is unwrapped to its first and reported from the
    same table; a group holding a bug keeps its traceback."""
    import argparse

    from scanner import cli

    def raising(err: BaseException) -> Callable[[argparse.Namespace], int]:
        def command(_args: argparse.Namespace) -> int:
            raise BaseExceptionGroup("nursery", [err])
        return command

    with pytest.raises(type(exc), match=r".*") as info:
        cli._unwrap_groups(raising(exc), argparse.Namespace())
    assert info.value is exc
    assert cli._report(info.value) == code
    assert capsys.readouterr().err.strip() == line
    with pytest.raises(BaseExceptionGroup, match="nursery"):
        cli._unwrap_groups(raising(ValueError("a bug")), argparse.Namespace())


def test_dns_log_hears_every_question(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("a.example\nnot a name\n")
    log_file = tmp_path / "questions.txt"
    with refusing_resolver() as resolver:
        rc, _ = run(capsys, "scan", str(tmp_path / "list.txt"), "--db",
                    f"sqlite:///{tmp_path}/q.sqlite", "--workers", "1", "--resolver", resolver,
                    "--insecure-resolver-ok", "--dns-log", str(log_file))
    assert rc == 0
    assert "a.example. MX" in log_file.read_text().splitlines()


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_during_set_up_is_a_polite_stop(tmp_path: Path, sigint: str) -> None:
    """SIGTERM before the scan's own signal watcher runs (here: while it waits for its
    resolver's first answer) ends the command as Ctrl-C does, exit 3, not killed by it;
    also where SIGINT is ignored, as in a script's background job."""
    import signal
    import socket

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))  # a resolver that hears and never answers
    port = listener.getsockname()[1]
    domains = tmp_path / "d.txt"
    domains.write_text("a.example\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanner.cli", "scan", str(domains), "--db",
         str(tmp_path / "s.sqlite"), "--resolver", f"127.0.0.1@{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ignore_sigint if sigint == "ignored" else None,
    )  # fmt: skip
    try:
        listener.settimeout(60)
        listener.recvfrom(4096)  # the scan is in its set-up: asking its resolver
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        listener.close()
    assert proc.returncode == 3, err
    assert "interrupted" in err
