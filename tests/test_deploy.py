"""deploy/: the cron line and the systemd unit's commands, run as cron and systemd would.

Each runs in a clean environment (``env -i``) on a small testbed world, with the deploy
files' paths pointed at temporary ones. Last night's scan was cut off before any shard was
done; the resume step must finish it and tonight's scan must land in the database the env
file names, with both steps' output in the log.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from scanner import run
from scanner.config import Config, ResolverAddress
from scanner.store import db, scans
from testbed import control

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DANESCAN = Path(sys.executable).with_name("danescan")
# The testbed's servers are on loopback: the one change to the deploy files' scan flags.
TEST_FLAGS = "--allow-private --greeting-timeout 3 --connect-timeout 3 --retry-delay 1"
# What cron gives a job besides the variables the line sets itself.
CRON_ENV = ("PATH=/usr/bin:/bin", "SHELL=/bin/sh")

pytestmark = pytest.mark.testbed
pytest_plugins = ["tests.conftest_store"]
# The env file's database: SQLite with one worker, or PostgreSQL with two (the example's).
BACKENDS = pytest.mark.parametrize("empty_url", ["sqlite", "postgresql"], indirect=True)


class Site:
    """The deploy files' paths, made temporary, and what a night there should leave."""

    def __init__(self, root: Path, world: control.World, url: str) -> None:
        self.root = root
        self.workdir = root / "var-lib"
        self.workdir.mkdir()
        self.log = root / "danescan.log"
        self.optout = root / "optout.txt"
        self.optout.write_text("# nobody opted out\n")
        self.env_file = root / "danescan.env"
        self.url = url
        self.lines = len([ln for ln in world.domains_file.read_text().splitlines() if ln.strip()])
        self.env = {
            "DATABASE_URL": self.url,
            "DANESCAN_LIST": str(world.domains_file),
            "DANESCAN_RESOLVER": world.resolver,
            "DANESCAN_EHLO": "danescan-deploy-test.invalid",
            "DANESCAN_WORKERS": "2" if url.startswith("postgresql") else "1",
        }
        example = _env_file((DEPLOY / "danescan.env.example").read_text())
        assert set(example) == set(self.env), "the test's env file follows the example's keys"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        self.cut_off = self._cut_off_scan(world)

    def _cut_off_scan(self, world: control.World) -> int:
        """Last night's scan: input stored, then stopped before any shard was judged."""
        config = Config(resolvers=(ResolverAddress(world.resolver),), allow_private=True,
                        ehlo_name=self.env["DANESCAN_EHLO"], greeting_timeout=3.0,
                        connect_timeout=3.0, retry_delay=1.0)
        engine = db.make_engine(self.url)
        try:
            db.ensure_schema(engine)
            scan_id = run.start_scan(engine, str(world.domains_file), config, label="nightly",
                                     logical_date=dt.date.today() - dt.timedelta(days=1))
            scans.mark_interrupted(engine, scan_id)
        finally:
            engine.dispose()
        return scan_id

    def localize(self, text: str) -> str:
        """The deploy text with every machine path replaced; each must occur in it."""
        for real, here in (
            ("/opt/danescan/.venv/bin/danescan", str(DANESCAN)),
            ("/etc/danescan/danescan.env", str(self.env_file)),
            ("/etc/danescan/optout.txt", str(self.optout)),
            ("/var/lib/danescan", str(self.workdir)),
            ("/var/log/danescan.log", str(self.log)),
            ("--label nightly", f"--label nightly {TEST_FLAGS}"),
        ):
            # systemd logs to the journal: only the cron line names a log file.
            assert real in text or real == "/var/log/danescan.log", f"{real} not in the file"
            text = text.replace(real, here)
        return text

    def assert_night(self) -> None:
        """Both scans complete in the env file's database, one result per line; the log holds
        the resume step's output; nothing fell back to the default SQLite file."""
        assert not (self.workdir / "danescan.sqlite").exists()
        engine = db.make_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text(
                    "SELECT s.id, s.status, (SELECT count(*) FROM domain_results r"
                    " WHERE r.scan_id = s.id) FROM scans s ORDER BY s.id")).all()
        finally:
            engine.dispose()
        assert [tuple(r) for r in rows] == [
            (self.cut_off, "complete", self.lines),
            (self.cut_off + 1, "complete", self.lines),
        ]
        log = self.log.read_text()
        assert re.search(rf"\bscan {self.cut_off}\b", log), log


def _env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile= reads them (no quoting used here)."""
    pairs = (ln.split("=", 1) for ln in text.splitlines() if ln.strip() and ln[0] != "#")
    return {k.strip(): v.strip() for k, v in pairs}


@BACKENDS
def test_cron_line(
    make_world: Callable[..., control.World], tmp_path: Path, empty_url: str
) -> None:
    site = Site(tmp_path, make_world(domains=20, seed=5), empty_url)
    (entry,) = [ln for ln in (DEPLOY / "crontab.example").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    command = site.localize(entry.split(None, 5)[5])
    run = subprocess.run(["env", "-i", *CRON_ENV, "/bin/sh", "-c", command],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    # Everything goes to the log: cron would mail anything else.
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    site.assert_night()


def _unit_service(text: str) -> dict[str, list[str]]:
    section = ""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def _exec_argv(value: str, env: dict[str, str]) -> tuple[bool, list[str]]:
    """systemd's Exec line: (failure ignored?, argv); ``${VAR}`` is one word of the value."""
    ignore = value.startswith("-")
    words = shlex.split(value.lstrip("-@:+!"))
    return ignore, [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in words]


@BACKENDS
def test_systemd_unit(
    make_world: Callable[..., control.World], tmp_path: Path, empty_url: str
) -> None:
    site = Site(tmp_path, make_world(domains=20, seed=6), empty_url)
    service = _unit_service(site.localize((DEPLOY / "danescan-nightly.service").read_text()))
    env = _env_file(Path(service["EnvironmentFile"][0].lstrip("-")).read_text())
    assert env == site.env
    (workdir,) = service["WorkingDirectory"]
    (pre,) = service["ExecStartPre"]
    (start,) = service["ExecStart"]
    ignore, resume = _exec_argv(pre, env)
    # The resume takes the scan's stored options: no flag that could differ from them.
    assert resume == [str(DANESCAN), "scan", "--resume"]
    with site.log.open("w") as journal:
        for may_fail, argv in ((ignore, resume), _exec_argv(start, env)):
            code = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
                                  cwd=workdir, stdout=journal, stderr=subprocess.STDOUT,
                                  timeout=300).returncode
            assert code == 0 or may_fail, site.log.read_text()
    site.assert_night()
