"""A rate limit that paces senders without a queue of its own: ``await pacer.wait()``.

The slots are :class:`scanner.dnspace.RateSlots` (each caller reserves the next one before it
sleeps, so senders go out in order instead of bunching). Waiters wake on a coarse grid: a
backlog of senders then costs one scheduler pass per grid step, not one per send, and the
rate still holds (no one goes before its slot). The wait is ours, not the peer's: callers
start any deadline after it returns (a deadline measures the peer, never our own queue).
"""

from __future__ import annotations

import math

import trio

from scanner.dnspace import RateSlots

GRID = 0.05  # s: wake-ups of queued senders are rounded up to this


class Pacer:
    __slots__ = ("_slots", "waited")

    def __init__(self, rate: float) -> None:
        self._slots = RateSlots(rate)
        self.waited = 0.0  # seconds callers spent waiting, all together (progress: "paced")

    @property
    def active(self) -> bool:
        return self._slots.rate > 0

    async def wait(self) -> None:
        now = trio.current_time()
        slot = self._slots.reserve(now)
        if slot > now:
            wake = math.ceil(slot / GRID) * GRID
            self.waited += wake - now
            await trio.sleep_until(wake)
