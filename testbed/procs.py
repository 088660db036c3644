"""Detached daemons for the testbed: start, recognise, wait for, and stop them by PID.

Daemons run in their own session so they outlive the command that started them
(`danescan testbed up` exits, `down` stops them later). A PID alone may be reused after a
reboot or a crash, so a process is only ours if its command line names our working directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence


def spawn(argv: Sequence[str], log: Path, cwd: Path | None = None) -> int:
    """Start ``argv`` detached, stdout and stderr appended to ``log``; returns its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it if it is our own exited child (no zombies left)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: started by an earlier command
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def owned(pid: int, marker: str) -> bool:
    """True if ``pid`` is alive and its command line mentions ``marker`` (our workdir)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return marker in cmdline and alive(pid)


def terminate(pids: Iterable[int], marker: str, grace: float = 5.0) -> None:
    """SIGTERM every owned PID, then SIGKILL whatever is still running after ``grace``."""
    mine = [pid for pid in pids if owned(pid, marker)]
    for pid in mine:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in mine):
        time.sleep(0.05)
    for pid in mine:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(alive(pid) for pid in mine):
        time.sleep(0.02)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_until(
    ready: Callable[[], bool], pid: int, what: str, log: Path, timeout: float = 30.0
) -> None:
    """Poll ``ready`` until it holds; raise with the log tail if the process dies or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if not alive(pid):
            raise RuntimeError(f"{what} exited during start-up; {log}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s; {log}:\n{log_tail(log)}")
        time.sleep(0.05)
