"""A rate limit that paces senders without a queue of its own: ``await pacer.wait()``.

Each caller reserves the next send slot before it sleeps, so concurrent callers go out in
order, ``1 / rate`` apart, instead of bunching. The wait is ours, not the peer's: callers start
any deadline after it returns (a deadline measures the peer, never our own queue).
"""

from __future__ import annotations

import trio


class Pacer:
    __slots__ = ("_interval", "_next", "waited")

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self.waited = 0.0  # seconds callers spent waiting, all together (progress: "paced")

    @property
    def active(self) -> bool:
        return self._interval > 0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = trio.current_time()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            self.waited += slot - now
            await trio.sleep_until(slot)
