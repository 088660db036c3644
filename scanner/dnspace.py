"""Pure rules for pacing the resolver and for when its silence is a fact (no I/O, no clock).

:mod:`scanner.dns` feeds these with trio's clock. Three rules, each measuring the resolver and
never ourselves (docs/verdicts.md, "Timeouts"):

* :class:`Window`: how many questions may wait for an answer at once. Additive increase,
  multiplicative decrease, as TCP's congestion control (RFC 5681 §3.1): slow start doubles
  the window each round trip until the first loss, then it grows by one per window of
  answers; a loss episode halves the questions then in flight, once (RFC 5681 eq. 4 halves
  the flight size, not the window). It grows only while it is full (congestion window
  validation, RFC 7661): a scan whose domains ask fewer questions than the window allows must
  not run it up to a size that a later loss only halves in name. A loss is
  :data:`LOSS_SHARE` of the recent questions timing out: a few slow authorities behind the
  resolver are not overload, a resolver dropping questions from its full request list times
  out a large share of them together.
* :class:`RateSlots`: the ``--dns-rate`` cap as send slots reserved in order.
* :func:`silence_is_final`: a question the resolver never answered is a fact about the name only
  after :data:`SILENT_ROUNDS` rounds of asking, spaced by :func:`reask_delay`, each of which
  the resolver was heard answering through (other answers, or its health query) and in none
  of which it was paused as down. Anything less is our resolver's silence, asked again later.
* :func:`failure_is_final`: likewise a SERVFAIL our resolver's own trouble can explain
  (:func:`scanner.dnsquery.passing_failure`) is a fact about the name only once it has
  answered so in rounds spaced by :func:`failure_delay` (the silence schedule) over
  ``Config.dns_failure_span`` seconds and in at least :data:`FAILED_ROUNDS` rounds; any
  other answer in between is the answer. The span matters while the resolver shows trouble
  (:class:`FailureRate`: SERVFAIL for many unrelated names in one second) since shortly before
  the name's first SERVFAIL: a validating resolver whose fetch of a zone's DNSKEY or
  DS timed out fails the whole zone for a while (Unbound: 60 s, its BOGUS_KEY_TTL), and
  asking within that time only hears the same failure again. Without such trouble the
  rounds alone decide, as for silence: a domain that always fails costs seconds, not a
  minute.
"""

from __future__ import annotations

import math

__all__ = [
    "FAILED_ROUNDS",
    "FAILURE_BURST",
    "FAILURE_SHARE",
    "SILENT_ROUNDS",
    "FailureRate",
    "RateSlots",
    "Window",
    "failure_delay",
    "failure_is_final",
    "reask_delay",
    "silence_is_final",
    "troubled",
]

SILENT_ROUNDS = 3  # rounds of asking, with the resolver answering others, before silence counts
FAILED_ROUNDS = 3  # rounds answered SERVFAIL, at least, before the failure counts
MIN_WINDOW = 16
INITIAL_WINDOW = 64
MAX_WINDOW = 65536
LOSS_SHARE = 0.1  # of the recent questions, timed out
FAILURE_SHARE = 0.1  # of the questions answered in a second, SERVFAIL: a burst
FAILURE_BURST = 8  # questions first answered SERVFAIL in one second, at least, for a burst
_KEEP = 1 - 1 / 64  # moving average over about the last 64 questions settled


def reask_delay(rounds_done: int, attempt_timeout: float) -> float:
    """Seconds to wait before asking a silent question again: doubling from one attempt
    timeout, so a resolver that dropped it under load has drained its backlog meanwhile."""
    return attempt_timeout * float(1 << max(0, rounds_done - 1))


def silence_is_final(counted_rounds: int) -> bool:
    """Enough rounds in which the resolver answered others but not this question."""
    return counted_rounds >= SILENT_ROUNDS


def failure_delay(failed_rounds: int, attempt_timeout: float, waited: float, span: float
                  ) -> float:
    """Seconds to wait before asking again a question answered SERVFAIL ``failed_rounds``
    times, ``waited`` seconds after the first: the silence schedule (:func:`reask_delay`),
    but the last round is asked right at the end of the span, not past it."""
    delay = reask_delay(failed_rounds, attempt_timeout)
    left = span - waited
    return min(delay, left) if left > 0 else delay


def failure_is_final(failed_rounds: int, waited: float, span: float, troubled: bool) -> bool:
    """Enough rounds answered SERVFAIL, the last ``waited`` seconds after the first, for the
    failure to be the name's: at least FAILED_ROUNDS rounds, and while the resolver showed
    trouble (``troubled``) over at least ``span``."""
    return failed_rounds >= FAILED_ROUNDS and (not troubled or waited >= span)


def troubled(trouble_at: float, first_failed: float, span: float) -> bool:
    """The resolver showed trouble (last at ``trouble_at``) recently enough to explain a
    name's SERVFAIL first heard at ``first_failed``: a zone it failed up to ``span`` seconds
    before still fails."""
    return trouble_at >= first_failed - span


class FailureRate:
    """SERVFAIL for many unrelated names at once: in one second of the clock, at least
    FAILURE_BURST questions first answered SERVFAIL, and at least FAILURE_SHARE of the
    questions answered. A few domains that always fail never make that, even where the list
    has several together; a resolver whose own questions to an authority timed out answers
    SERVFAIL for every name of the zones it failed, hundreds a second. Loss episodes of the
    window are no such sign: a resolver dropping questions from its full request list is
    silent, and silence has its own rounds."""

    __slots__ = ("_answers", "_failures", "_second")

    def __init__(self) -> None:
        self._second = -math.inf
        self._answers = 0
        self._failures = 0

    def answer(self, now: float, servfail: bool) -> bool:
        """One question's first answer heard at ``now``; True when it is a SERVFAIL that
        makes a burst."""
        second = math.floor(now)
        if second != self._second:
            self._second, self._answers, self._failures = second, 0, 0
        self._answers += 1
        self._failures += servfail
        return (servfail and self._failures >= FAILURE_BURST
                and self._failures >= FAILURE_SHARE * self._answers)


class Window:
    """The number of questions allowed in flight at once (AIMD, see the module docstring)."""

    __slots__ = ("_acked", "_loss", "_recovery_from", "limit", "losses", "ssthresh")

    def __init__(self, initial: int = INITIAL_WINDOW) -> None:
        self.limit = max(MIN_WINDOW, min(MAX_WINDOW, initial))
        self.ssthresh = math.inf
        self.losses = 0  # loss episodes (window halvings)
        self._acked = 0
        self._loss = 0.0  # share of recent questions that timed out (moving average)
        self._recovery_from = -math.inf  # timeouts of attempts sent before this are one episode

    def answered(self, in_flight: int) -> bool:
        """One question answered, ``in_flight`` counting it; True when ``limit`` changed."""
        self._loss *= _KEEP
        if self.limit >= MAX_WINDOW or in_flight < self.limit:
            return False
        if self.limit < self.ssthresh:  # slow start: +1 per answer
            self.limit += 1
            return True
        self._acked += 1  # congestion avoidance: +1 per window of answers
        if self._acked >= self.limit:
            self._acked = 0
            self.limit += 1
            return True
        return False

    def timed_out(self, now: float, sent_at: float, in_flight: int) -> bool:
        """An attempt sent at ``sent_at`` got no answer by ``now`` while ``in_flight``
        questions (it included) were out; True when ``limit`` changed.

        A loss once the recent share of timeouts reaches LOSS_SHARE: the window becomes half
        of what was in flight. Timeouts of attempts sent before the last decrease belong to
        that episode (RFC 6582's recovery point) and do not halve the window again. Nor do
        timeouts while less than half the window is used: with few questions out (the end of
        a scan, domains busy with SMTP) a handful of silent names is a large share of them,
        and no window was pressing the resolver.
        """
        self._loss = self._loss * _KEEP + (1 - _KEEP)
        if (sent_at < self._recovery_from or self._loss < LOSS_SHARE
                or 2 * in_flight < self.limit):
            return False
        self.losses += 1
        self.limit = max(MIN_WINDOW, min(self.limit, in_flight) // 2)
        self.ssthresh = self.limit
        self._acked = 0
        self._recovery_from = now
        return True


class RateSlots:
    """``rate`` sends per second, each caller reserving the next free slot before it waits:
    concurrent senders queue in order instead of bunching (0 = no cap)."""

    __slots__ = ("_interval", "_next", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate if rate > 0 else 0.0
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = -math.inf

    def reserve(self, now: float) -> float:
        """The time this send may go out (``now`` when the cap is off or not binding)."""
        if not self._interval:
            return now
        slot = max(now, self._next)
        self._next = slot + self._interval
        return slot

    def binding(self, now: float) -> bool:
        """Questions are queued for slots: the cap, not the resolver, sets the pace."""
        return self._next - self._interval > now
