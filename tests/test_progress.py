"""Progress for operators and schedulers: plain lines off a terminal, an ETA that stays honest
in the tail of a scan."""

from __future__ import annotations

import io

from scanner import progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_eta_follows_the_recent_rate_not_the_average() -> None:
    clock = Clock()
    window = progress.RateWindow(clock)
    # 900 domains in 90 s (10/s), then the tail: 95 more in 120 s.
    for t in range(0, 91, 5):
        clock.now = 1000.0 + t
        window.add(10 * t)
    assert window.eta(900, 1000) == "ETA 0m10s"
    done = 900
    for t in range(95, 211, 5):
        clock.now = 1000.0 + t
        done += 4 if t <= 210 else 0
        window.add(min(done, 995))
    # The last minute ran at ~0.8/s: 5 domains left take seconds, not "0m00s".
    eta = window.eta(995, 1000)
    assert eta != "ETA 0m00s"
    assert eta.startswith("ETA 0m0")
    # Nothing judged for a whole minute: no made-up figure.
    for t in range(215, 300, 5):
        clock.now = 1000.0 + t
        window.add(995)
    assert window.eta(995, 1000) == "ETA unknown (5 domains waiting on slow servers)"


def test_plain_line_has_counts_rate_eta_outcomes_and_notes() -> None:
    clock = Clock()
    window = progress.RateWindow(clock)
    window.add(0)
    clock.now += 10
    window.add(100)
    snap = progress.Snapshot(100, 400, {"ok": 90, "nxdomain": 10},
                             ["paced by --dns-rate: 25 q/s"])
    text = progress.line(snap, window)
    assert text == ("progress: 100/400 domains; 10/s; ETA 0m30s; nxdomain 10, ok 90; "
                    "paced by --dns-rate: 25 q/s")


def test_off_a_terminal_each_draw_is_one_line() -> None:
    stream = io.StringIO()
    snaps = iter([progress.Snapshot(5, 10), progress.Snapshot(10, 10)])
    bar = progress.Progress(lambda: next(snaps), stream, tty=False, interval=60)
    bar.draw()
    bar.draw()
    lines = stream.getvalue().splitlines()
    assert [ln.split(";")[0] for ln in lines] == ["progress: 5/10 domains",
                                                  "progress: 10/10 domains"]
