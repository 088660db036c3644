"""How long a DNS attempt waits before the question is sent again: RFC 6298's estimator.

A fixed attempt timeout is right only while the resolver answers well within it; a resolver
that queues under a scan's load would get every slower question twice, work for nothing when
it has the least to spare. RFC 1536 §1 ("Fast Retransmissions") asks stub resolvers for a
retransmission policy based on round-trip time estimates for this reason.

So the attempt timeout follows the measured round-trip time as TCP's retransmission timer
does (RFC 6298 §2): RTO = SRTT + 4 * RTTVAR, never below the configured ``dns_timeout`` (a
healthy resolver keeps the timeout it always had) and never above ``ceiling``, which leaves
room for a second attempt within a round's deadline. Karn's problem (RFC 6298 §3: an answer
to a retransmitted segment cannot be timed) does not arise here: every attempt has its own
query ID, so an answer says which send it belongs to.
"""

from __future__ import annotations

# RFC 6298 §2.2-2.3: alpha = 1/8, beta = 1/4, K = 4.
ALPHA = 0.125
BETA = 0.25
K = 4.0


class RetransmitTimeout:
    """Smoothed round-trip time of one resolver and the attempt timeout derived from it."""

    __slots__ = ("ceiling", "floor", "rttvar", "srtt")

    def __init__(self, floor: float, ceiling: float) -> None:
        self.floor = floor
        self.ceiling = max(floor, ceiling)
        self.srtt: float | None = None
        self.rttvar = 0.0

    def observe(self, rtt: float) -> None:
        """One round trip, from the send of an attempt to the arrival of its answer."""
        rtt = max(0.0, rtt)
        srtt = self.srtt
        if srtt is None:  # §2.2: the first measurement
            self.srtt = rtt
            self.rttvar = rtt / 2
            return
        # §2.3: RTTVAR is updated with the old SRTT, then SRTT.
        self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(srtt - rtt)
        self.srtt = (1 - ALPHA) * srtt + ALPHA * rtt

    @property
    def timeout(self) -> float:
        """Seconds an attempt waits for its answer."""
        if self.srtt is None:
            return self.floor
        return min(self.ceiling, max(self.floor, self.srtt + K * self.rttvar))
