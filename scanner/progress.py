"""Progress of a running scan, for an operator at a terminal and for a scheduler's log.

On a terminal: a bar drawn by rich (done/total, rate, ETA, outcome counts so far). Anywhere
else (cron, systemd, a pipe): one plain line every ``interval`` seconds. Both read the same
:class:`Snapshot`, taken from this process's counters or, for ``--workers N``, from the
database every worker writes to.

The ETA follows the recent rate, not the average since the start: in the tail of a scan what
is left are timeouts and retries, the recent rate falls, and the ETA grows instead of showing
"0m00s" while the last domains wait for their servers.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

RECENT = 60.0  # seconds of history behind the rate the ETA uses


@dataclass(frozen=True, slots=True)
class Snapshot:
    done: int  # input lines judged
    total: int | None  # input lines to judge, when known
    outcomes: Mapping[str, int] = field(default_factory=dict)
    notes: Sequence[str] = ()  # "paced by --dns-rate: 25 q/s", "resolver not answering ..."


class RateWindow:
    """Completions per second over the last :data:`RECENT` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self.started = clock()

    def add(self, done: int) -> None:
        now = self._clock()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RECENT:
            self._samples.popleft()

    @property
    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self, done: int, total: int | None) -> str:
        if not total:
            return ""
        left = total - done
        if left <= 0:
            return "ETA 0m00s"
        rate = self.rate
        if rate <= 0:
            return f"ETA unknown ({left} domains waiting on slow servers)"
        seconds = left / rate
        hours, rest = divmod(int(seconds), 3600)
        minutes, secs = divmod(rest, 60)
        return f"ETA {hours}h{minutes:02d}m" if hours else f"ETA {minutes}m{secs:02d}s"


def outcome_text(outcomes: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()) if v)


def details(snap: Snapshot, window: RateWindow) -> list[str]:
    """Rate, ETA, outcome counts and notes: what follows the count on a line or a bar."""
    parts = [f"{window.rate:.0f}/s", window.eta(snap.done, snap.total),
             outcome_text(snap.outcomes), *snap.notes]
    return [p for p in parts if p]


def line(snap: Snapshot, window: RateWindow) -> str:
    """The plain progress line: done/total, rate, ETA, outcome counts, notes."""
    total = f"/{snap.total}" if snap.total is not None else ""
    return "progress: " + "; ".join([f"{snap.done}{total} domains", *details(snap, window)])


class Progress:
    """``await nursery.start(progress.run)``; :meth:`close` draws the last state."""

    def __init__(self, source: Callable[[], Snapshot], stream: TextIO, *, tty: bool,
                 interval: float = 60.0, tick: float = 0.5) -> None:
        self.source = source
        self.stream = stream
        self.tty = tty
        self.interval = interval
        self.tick = tick
        self.window = RateWindow()
        self._bar: Any = None  # rich's Progress, on a terminal

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if self.tty:
            self._open_bar()
        task_status.started()
        period = self.tick if self.tty else self.interval
        while True:
            # Samples for the rate come every tick; a line is written every period.
            next_line = trio.current_time() + period
            while trio.current_time() < next_line:
                await trio.sleep(min(self.tick, max(0.0, next_line - trio.current_time())))
                self.window.add(self.source().done)
            self.draw()

    def draw(self) -> None:
        snap = self.source()
        self.window.add(snap.done)
        if self._bar is not None:
            self._update_bar(snap)
        else:
            print(line(snap, self.window), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._update_bar(self.source())
            self._bar.stop()
            self._bar = None

    def _open_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as Bar

        bar = Bar(TextColumn("scan"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), console=Console(file=self.stream),
                  auto_refresh=False, transient=False)
        bar.start()
        self._task = bar.add_task("scan", total=None, info="")
        self._bar = bar

    def _update_bar(self, snap: Snapshot) -> None:
        info = "  ".join(details(snap, self.window))
        self._bar.update(self._task, completed=snap.done, total=snap.total, info=info)
        self._bar.refresh()
