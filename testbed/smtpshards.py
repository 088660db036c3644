"""Serve a world's SMTP endpoints from several processes when one cannot hold their listeners.

A process has one descriptor per listener plus one per open session, and its descriptor limit
cannot be raised past the hard limit without privileges (often 20,000 or less), while a large
world has tens of thousands of SMTP addresses. `python -m testbed.smtpd` then serves shard 0
itself and starts one child per further shard (``--shard I/K``: every K-th endpoint from I).
The parent reports ready once every child has; SIGTERM reaches the children through the parent,
and a child whose parent is gone (its stdin pipe closes) stops too, so no orphan keeps the
world's addresses bound.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Sequence

    from testbed.spec import SmtpSpec

STOP_TIMEOUT = 10.0  # s a child gets to flush its log after SIGTERM before it is killed


class ShardError(RuntimeError):
    """A child shard failed to start or died while serving; the message names it."""


def shard_count(endpoints: int, per_process: int) -> int:
    """Processes needed for ``endpoints`` listeners at ``per_process`` each (at least 1)."""
    if per_process <= 0:
        raise ValueError(f"no descriptors left for listeners ({per_process} per process)")
    return max(1, math.ceil(endpoints / per_process))


def shard(spec: SmtpSpec, index: int, count: int) -> SmtpSpec:
    """Every ``count``-th endpoint from ``index``: the shards split the load evenly whatever
    order the world listed its endpoints in."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}")
    return replace(spec, endpoints=spec.endpoints[index::count])


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/K"`` -> (I, K); ValueError if it is not a shard of K."""
    index, _, count = text.partition("/")
    i, k = int(index), int(count)
    if not 0 <= i < k:
        raise ValueError(f"shard {text}: want I/K with 0 <= I < K")
    return i, k


async def _ready(proc: trio.Process, name: str) -> None:
    assert proc.stdout is not None
    seen = b""
    while b"ready\n" not in seen:
        data = await proc.stdout.receive_some(4096)
        if not data:
            code = await proc.wait()
            raise ShardError(f"{name} exited {code} before it was ready (its stderr says why)")
        seen += data


async def run_children(
    commands: Sequence[list[str]], *, task_status: trio.TaskStatus[list[trio.Process]]
) -> None:
    """Start one process per command, ``started()`` with them once each printed ``ready``;
    raise `ShardError` if one fails or dies, and stop them all when cancelled."""
    procs: list[trio.Process] = []
    try:
        for cmd in commands:
            procs.append(
                await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            )
        async with trio.open_nursery() as nursery:
            for proc, cmd in zip(procs, commands, strict=True):
                nursery.start_soon(_ready, proc, f"shard {cmd[-1]}")
        task_status.started(procs)
        async with trio.open_nursery() as nursery:
            for proc in procs:
                nursery.start_soon(_watch, proc)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(procs)


async def _watch(proc: trio.Process) -> None:
    code = await proc.wait()
    raise ShardError(f"an SMTP shard (pid {proc.pid}) died while serving: exit {code}")


async def _stop(procs: list[trio.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_TIMEOUT):
        for proc in procs:
            await proc.wait()
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def exit_with_parent() -> None:
    """Return once stdin reaches end of file: the parent that holds its other end is gone."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    try:
        while await stdin.receive_some(4096):
            pass
    finally:
        await stdin.aclose()
