"""Bring a world up and down: build it, start its DNS (testbed.dnsnet) and SMTP (testbed.smtpd)
servers, write the ground truth, and remember what runs so `down` leaves nothing behind.

Each world owns 127.<block>.0.0/16, taken with a lock file under /tmp/danescan-blocks/ (blocks
100-250 are handed out; 77 and 78 are left for tests that pick their block). The ::1:25 listener
exists once per machine, so only one world at a time may be created with ``ipv6=True``.

The tarpit greets after ``greeting_delay`` seconds (1.5 s by default): a scanner under test needs
a greeting timeout above that, and below the silent server's forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import spec, world

BLOCKS_DIR = Path("/tmp/danescan-blocks")
AUTO_BLOCKS = range(100, 251)
RESERVED_BLOCKS = frozenset({77, 78})
SMTPD_READY_TIMEOUT = 120.0
SIGHUP_SETTLE = 0.5  # seconds for the signalled servers to read the new delay
STATE = "world.json"
_REPO = Path(__file__).resolve().parent.parent


class Ipv6Taken(RuntimeError):
    """Another world on this machine serves [::1]:25."""


@dataclass
class World:
    dir: Path
    resolver: str
    block: int
    seed: int
    night: int
    domains_file: Path
    manifest: list[dict[str, Any]]
    session_log: Path
    domains: int = 0
    ipv6: bool = False
    delay: tuple[float, float] = (0.0, 0.0)
    weights: dict[str, float] | None = None
    greeting_delay: float = 1.5
    climb: float = world.Params.climb
    regress: float = world.Params.regress
    _by_domain: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def sessions(self) -> list[dict[str, Any]]:
        """The SMTP session log, parsed (a half-written last line is skipped)."""
        out: list[dict[str, Any]] = []
        try:
            text = self.session_log.read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def expected(self, domain: str) -> dict[str, Any]:
        """The manifest row of ``domain`` (A-label or the list line, trailing dot ignored)."""
        if not self._by_domain:
            for m in self.manifest:
                self._by_domain[m["domain"]] = m
                self._by_domain[m["input"]] = m
        return self._by_domain[domain.rstrip(".").lower() if domain.isascii() else domain]

    def by_scenario(self, scenario: str) -> list[dict[str, Any]]:
        return [m for m in self.manifest if m["scenario"] == scenario]


# --- locks --------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_stale(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    if (Path(data.get("dir", "/nonexistent")) / STATE).exists():
        return False
    return not _pid_alive(int(data.get("pid", 0)))


def _take(path: Path, wdir: Path) -> bool:
    BLOCKS_DIR.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _lock_stale(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"dir": str(wdir), "pid": os.getpid()}, f)
        return True
    return False


def _release(path: Path, wdir: Path) -> None:
    try:
        if json.loads(path.read_text()).get("dir") == str(wdir):
            path.unlink()
    except (OSError, ValueError):
        pass


def allocate_block(wdir: Path, block: int | None = None) -> int:
    if block is not None:
        if not 1 <= block <= 254:
            raise ValueError(f"block {block} outside 1..254")
        if not _take(BLOCKS_DIR / f"{block}.lock", wdir):
            raise RuntimeError(f"block 127.{block}.0.0/16 is taken by another world")
        return block
    for b in AUTO_BLOCKS:
        if b not in RESERVED_BLOCKS and _take(BLOCKS_DIR / f"{b}.lock", wdir):
            return b
    raise RuntimeError("no free 127.<block>.0.0/16 for another world")


# --- processes ----------------------------------------------------------------------------------


def _dnsnet() -> Any:
    # Imported when a world starts: the scenario builder and its tests need no DNS servers.
    import testbed.dnsnet as dnsnet

    return dnsnet


def _spawn_smtpd(wdir: Path, smtp: spec.SmtpSpec) -> subprocess.Popen[bytes]:
    spec_path = wdir / "smtp.json"
    spec_path.write_text(json.dumps(spec.to_json(smtp)))
    env = {**os.environ, "PYTHONPATH": f"{_REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(wdir / "smtpd.out", "wb") as out, open(wdir / "smtpd.err", "wb") as err:
        # Detached (own session) so the world outlives the `up` command that started it.
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testbed.smtpd",
                str(spec_path),
                "--delay-file",
                str(wdir / spec.DELAY_FILE),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=_REPO,
            env=env,
            start_new_session=True,
        )


def _wait_smtpd(wdir: Path, proc: subprocess.Popen[bytes]) -> int:
    """Wait for smtpd's "ready" (every listener bound); returns its pid."""
    out_path = wdir / "smtpd.out"
    deadline = time.monotonic() + SMTPD_READY_TIMEOUT
    while time.monotonic() < deadline:
        if b"ready" in out_path.read_bytes():
            return proc.pid
        if proc.poll() is not None:
            err_text = (wdir / "smtpd.err").read_text()[-2000:]
            raise RuntimeError(f"testbed.smtpd exited {proc.returncode}: {err_text}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("testbed.smtpd did not report ready in time")


def _is_smtpd(pid: int) -> bool:
    try:
        return b"testbed.smtpd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    if not _is_smtpd(pid):
        return  # gone, or the pid was reused by something that is not ours
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _is_smtpd(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _is_smtpd(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# --- files --------------------------------------------------------------------------------------


def _write_truth(wdir: Path, built: world.Built) -> None:
    (wdir / "domains.txt").write_text("".join(f"{line}\n" for line in built.lines))
    with open(wdir / "manifest.jsonl", "w") as f:
        for m in built.manifest:
            f.write(json.dumps(m, ensure_ascii=False) + "\n")


def _state(wdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((wdir / STATE).read_text())
    return data


def _save_state(wdir: Path, state: dict[str, Any]) -> None:
    tmp = wdir / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, wdir / STATE)


def _params(state: dict[str, Any], night: int) -> world.Params:
    return world.Params(
        seed=state["seed"],
        domains=state["domains"],
        night=night,
        block=state["block"],
        delay=(float(state["delay"][0]), float(state["delay"][1])),
        ipv6=state["ipv6"],
        weights=state["weights"],
        greeting_delay=state["greeting_delay"],
        climb=state.get("climb", world.Params.climb),
        regress=state.get("regress", world.Params.regress),
    )


def _world(wdir: Path, state: dict[str, Any], manifest: list[dict[str, Any]]) -> World:
    return World(
        dir=wdir,
        resolver=state["resolver"],
        block=state["block"],
        seed=state["seed"],
        night=state["night"],
        domains_file=wdir / "domains.txt",
        manifest=manifest,
        session_log=wdir / "smtp-sessions.jsonl",
        domains=state["domains"],
        ipv6=state["ipv6"],
        delay=spec.read_delay(
            str(wdir / spec.DELAY_FILE), (float(state["delay"][0]), float(state["delay"][1]))
        ),
        weights=state["weights"],
        greeting_delay=state["greeting_delay"],
        climb=state.get("climb", world.Params.climb),
        regress=state.get("regress", world.Params.regress),
    )


# --- the API ------------------------------------------------------------------------------------


def up(
    dir: Path,
    domains: int,
    seed: int,
    night: int = 0,
    *,
    block: int | None = None,
    delay: tuple[float, float] = (0.0, 0.0),
    ipv6: bool = False,
    weights: dict[str, float] | None = None,
    greeting_delay: float = 1.5,
    climb: float = world.Params.climb,
    regress: float = world.Params.regress,
    unbound_options: dict[str, str] | None = None,
) -> World:
    """Build and start a world in ``dir``; raises (having stopped what it started) on failure.

    ``climb`` / ``regress``: the share of domains that climb a rung / regress each night.
    ``unbound_options``: ``server:`` options for its Unbound (e.g. a small
    ``num-queries-per-thread``, so that it drops questions under a scan's load)."""
    wdir = Path(dir).resolve()
    if (wdir / STATE).exists():
        raise RuntimeError(f"a world is already up in {wdir}; `down` it first")
    wdir.mkdir(parents=True, exist_ok=True)
    (wdir / spec.DELAY_FILE).unlink(missing_ok=True)  # a kept folder's last `set_delay`
    blk = allocate_block(wdir, block)
    state: dict[str, Any] = {
        "seed": seed,
        "domains": domains,
        "night": night,
        "block": blk,
        "delay": list(delay),
        "ipv6": ipv6,
        "weights": weights,
        "greeting_delay": greeting_delay,
        "climb": climb,
        "regress": regress,
        "unbound_options": unbound_options or {},
        "resolver": world.infra(blk)["resolver"],
        "smtpd_pid": None,
        "dns_pids": [],
    }
    try:
        if ipv6 and not _take(BLOCKS_DIR / "ipv6.lock", wdir):
            raise Ipv6Taken("another world holds [::1]:25 (ipv6=True); only one may")
        _save_state(wdir, state)
        built = _start(wdir, state, night)
    except BaseException:
        down(wdir, keep=True)  # keeps the logs for a look; the locks are released
        _release(BLOCKS_DIR / f"{blk}.lock", wdir)
        raise
    return _world(wdir, state, built.manifest)


def _start(wdir: Path, state: dict[str, Any], night: int) -> world.Built:
    built = world.build(_params(state, night), wdir)
    _write_truth(wdir, built)
    assert built.plan.smtp is not None
    # smtpd binds its listeners while the zones are signed: neither needs the other.
    proc = _spawn_smtpd(wdir, built.plan.smtp)
    state["smtpd_pid"] = proc.pid
    _save_state(wdir, state)
    state["dns_pids"] = list(_dnsnet().start(built.plan, wdir, state["seed"],
                                             unbound_options=state.get("unbound_options")))
    _save_state(wdir, state)
    _wait_smtpd(wdir, proc)
    state["night"] = night
    _save_state(wdir, state)
    return built


def advance(w: World, night: int) -> World:
    """The same world ``night`` nights after night 0: rebuilt, servers restarted, cache flushed."""
    wdir = w.dir
    state = _state(wdir)
    dnsnet = _dnsnet()
    if state.get("smtpd_pid"):
        _stop_pid(state["smtpd_pid"])
        state["smtpd_pid"] = None
    dnsnet.stop(wdir)
    state["dns_pids"] = []
    _save_state(wdir, state)
    built = _start(wdir, state, night)
    # Unbound's caches and infrastructure cache must not carry the previous night over.
    dnsnet.flush_resolver(wdir)
    return _world(wdir, state, built.manifest)


def down(dir: Path, keep: bool = False) -> None:
    """Stop every process of the world in ``dir`` and remove it (unless ``keep``)."""
    wdir = Path(dir).resolve()
    try:
        state = _state(wdir)
    except (OSError, ValueError):
        state = {}
    if state.get("smtpd_pid"):
        _stop_pid(int(state["smtpd_pid"]))
    if wdir.exists():
        with contextlib.suppress(ImportError):
            _dnsnet().stop(wdir)
    if "block" in state:
        _release(BLOCKS_DIR / f"{state['block']}.lock", wdir)
    _release(BLOCKS_DIR / "ipv6.lock", wdir)
    if keep:
        with contextlib.suppress(FileNotFoundError):
            (wdir / STATE).unlink()
    else:
        shutil.rmtree(wdir, ignore_errors=True)


def stop_resolver(w: World) -> None:
    """Stop the world's Unbound (the scanner's own resolver); everything else keeps running."""
    _dnsnet().stop_resolver(w.dir)


def start_resolver(w: World) -> None:
    """Start the world's Unbound again, caches empty, with the options it was built with."""
    pid = _dnsnet().start_resolver(w.dir, w.resolver)
    state = _state(w.dir)
    state["dns_pids"] = [p for p in state.get("dns_pids", []) if _pid_alive(int(p))] + [pid]
    _save_state(w.dir, state)


def set_delay(dir: Path, delay: tuple[float, float]) -> None:
    """Change the latency a running world adds to authoritative answers and SMTP replies.

    Only a world built with a delay has latency fronts; they and the SMTP servers read the new
    value on SIGHUP, so one world (same processes, same CPU spent forwarding) is measured with
    and without latency. Raises RuntimeError for a world built without fronts."""
    wdir = Path(dir).resolve()
    state = _state(wdir)
    if tuple(state["delay"]) == (0.0, 0.0):
        raise RuntimeError(f"the world in {wdir} was built without --delay: it has no fronts")
    low, high = delay
    if not 0 <= low <= high:
        raise ValueError("delay: 0 <= low <= high seconds")
    tmp = wdir / (spec.DELAY_FILE + ".tmp")
    tmp.write_text(json.dumps([low, high]))
    os.replace(tmp, wdir / spec.DELAY_FILE)
    fronts = (wdir / _dnsnet().FRONTS_FILE).read_text().split()
    for pid in [*map(int, fronts), state.get("smtpd_pid")]:
        if pid and _pid_alive(int(pid)):
            os.kill(int(pid), signal.SIGHUP)
    time.sleep(SIGHUP_SETTLE)


def status(dir: Path) -> dict[str, Any]:
    """What runs for the world in ``dir``: its state plus which processes are alive."""
    wdir = Path(dir).resolve()
    state = _state(wdir)
    pid = state.get("smtpd_pid")
    state["smtpd_alive"] = pid is not None and _is_smtpd(int(pid))
    state["dns_alive"] = [p for p in state.get("dns_pids", []) if _pid_alive(int(p))]
    return state


def load(dir: Path) -> World:
    """The World of a running world (e.g. one started by `danescan testbed up`)."""
    wdir = Path(dir).resolve()
    manifest = [json.loads(line) for line in (wdir / "manifest.jsonl").read_text().splitlines()]
    return _world(wdir, _state(wdir), manifest)
