"""#21: a deadline measures the resolver, never our own queue (scanner.dnspace, scanner.dns).

On trio's virtual clock (``autojump_clock``) and an in-memory resolver (tests/fakedns.VirtualNet):
virtual seconds are exact, and a 60 s wait takes no real time.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from scanner.dns import DnsClient
from scanner.dnspace import (
    FAILED_ROUNDS,
    FAILURE_BURST,
    INITIAL_WINDOW,
    MIN_WINDOW,
    SILENT_ROUNDS,
    FailureRate,
    RateSlots,
    Window,
    failure_delay,
    failure_is_final,
    reask_delay,
    silence_is_final,
    troubled,
)
from scanner.model import DnssecStatus
from tests.fakedns import Reply, VirtualNet

A, B = "a.example", "b.example"


def answer(name: str, delay: float = 0.0) -> Reply:
    return Reply(ad=True, answer=[(name, "A", "192.0.2.1")], delay=delay)


async def test_a_wait_for_a_rate_slot_is_not_part_of_the_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    # One query a minute: B waits 60 s for its slot, far past its 10 s deadline, and its
    # answer comes 1 s after the send. It is answered, not a timeout.
    net = VirtualNet()
    net.fake.add(A, "A", answer(A))
    net.fake.add(B, "A", answer(B, delay=1.0))
    async with DnsClient.open(net.config(dns_rate=1 / 60, dns_timeout=2.0, dns_deadline=10.0),
                              connect=net.connect) as client:
        assert (await client.lookup(A, "A")).status is DnssecStatus.SECURE
        start = trio.current_time()
        lk = await client.lookup(B, "A")
        done = trio.current_time() - start
        assert client.stats.rate_waited == pytest.approx(60.0)
    assert (lk.status, lk.records) == (DnssecStatus.SECURE, ("192.0.2.1",))
    assert net.times(B, "A") == [pytest.approx(start + 60.0)]
    assert done == pytest.approx(61.0)


async def test_a_silent_attempt_times_out_exactly_its_timeout_after_the_send(
        autojump_clock: trio.testing.MockClock) -> None:
    # B waits 60 s for its slot and is never answered. Its attempt is given up exactly 2 s
    # after it was sent (the round then asks the resolver's health query at once), not 10 s
    # after the lookup began; after three rounds its silence is a fact: TIMEOUT.
    net = VirtualNet()
    net.fake.add(A, "A", answer(A))
    net.fake.add(B, "A", Reply(drop=-1))
    net.fake.add(".", "DNSKEY", Reply(ad=True))
    cfg = net.config(dns_rate=1 / 60, dns_timeout=2.0, dns_deadline=10.0, dns_attempts=1)
    async with DnsClient.open(cfg, connect=net.connect) as client:
        await client.lookup(A, "A")
        start = trio.current_time()
        lk = await client.lookup(B, "A")
    assert (lk.status, lk.rcode) == (DnssecStatus.INDETERMINATE, "TIMEOUT")
    sends = net.times(B, "A")
    assert sends[0] == pytest.approx(start + 60.0)
    health = net.times(".", "DNSKEY")
    assert health[0] - sends[0] == pytest.approx(2.0, abs=0.011)  # the timer's 10 ms grid
    assert len(sends) == SILENT_ROUNDS


async def test_progress_says_when_the_rate_cap_sets_the_pace(
        autojump_clock: trio.testing.MockClock) -> None:
    net = VirtualNet()
    names = [f"h{i}.example" for i in range(20)]
    for name in names:
        net.fake.add(name, "A", answer(name))
    async with DnsClient.open(net.config(dns_rate=5.0), connect=net.connect) as client:
        assert client.state().text() == ""
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(client.lookup, name, "A")
            await trio.sleep(1.0)
            state = client.state()
            assert state.paced
            assert state.rate == 5.0
            assert "paced by --dns-rate: 5 q/s" in state.text()
        assert not client.state().paced
        assert client.stats.timeouts == 0
        assert client.stats.retries == 0
    sends = sorted(t for t, _, r in net.sent if r == "A")
    # 5 q/s, not one more (each send up to one 10 ms tick of the timer late)
    assert sends[-1] - sends[0] == pytest.approx(19 / 5.0, abs=0.011)


# -- the pure rules ---------------------------------------------------------------------------


def test_rate_slots_queue_in_order() -> None:
    slots = RateSlots(4.0)
    assert [slots.reserve(10.0) for _ in range(3)] == [10.0, 10.25, 10.5]
    assert slots.binding(10.0)
    assert not slots.binding(10.5)
    assert slots.reserve(20.0) == 20.0  # an idle cap does not bank slots
    off = RateSlots(0)
    assert off.reserve(3.0) == 3.0
    assert not off.binding(3.0)


def test_window_slow_start_then_one_per_window_of_answers() -> None:
    w = Window()
    for _ in range(INITIAL_WINDOW):
        assert w.answered(w.limit)  # every place used: the window limits, so it grows
    assert w.limit == 2 * INITIAL_WINDOW  # doubles per round trip until the first loss
    # Timeouts in a row: a loss once they are a tenth of the recent questions (the 7th).
    assert [w.timed_out(5.0 + i / 10, 4.0, w.limit) for i in range(7)] == [False] * 6 + [True]
    halved = w.limit
    assert halved == INITIAL_WINDOW
    changes = sum(w.answered(w.limit) for _ in range(halved))
    assert (changes, w.limit) == (1, halved + 1)


def test_window_grows_only_while_full() -> None:
    w = Window(1000)
    # 999 questions out of 1000 allowed: answers say nothing about room for more (RFC 7661).
    assert not any(w.answered(999) for _ in range(5000))
    assert w.limit == 1000
    assert w.answered(1000)  # full: slow start goes on
    assert w.limit == 1001


def test_a_loss_halves_the_questions_in_flight_not_an_unused_window() -> None:
    w = Window(3000)
    assert [w.timed_out(1.0 + i / 100, 0.0, 1500) for i in range(7)] == [False] * 6 + [True]
    assert w.limit == 750  # half of the 1,500 out, not 1,500 of 3,000
    assert w.ssthresh == 750


def test_timeouts_with_the_window_mostly_unused_are_no_loss() -> None:
    w = Window(1000)
    # The end of a scan: 7 questions out, silent names time out and answers are few.
    assert not any(w.timed_out(1.0 + i / 100, 0.0, 7) for i in range(100))
    assert (w.limit, w.losses) == (1000, 0)


def test_a_few_slow_names_among_many_answers_are_not_a_loss() -> None:
    w = Window()
    for _ in range(200):
        w.answered(w.limit)
    before = w.limit
    # Slow authorities: a timeout among every ~30 answers, for a long time.
    for i in range(100):
        for _ in range(30):
            w.answered(w.limit)
        assert not w.timed_out(10.0 + i, 9.0 + i, w.limit)
    assert w.limit > before
    assert w.losses == 0
    # A resolver dropping a large share: 3 of every 8 questions time out.
    for i in range(80):
        if i % 8 < 3:
            w.timed_out(200.0 + i / 100, 199.0, w.limit)
        else:
            w.answered(w.limit)
    assert w.losses == 1  # one episode: those attempts were all sent before the decrease


def test_window_halves_once_per_loss_episode_and_never_below_the_floor() -> None:
    w = Window(1024)
    for i in range(6):
        w.timed_out(1.0 + i / 100, 0.0, 1024)
    assert w.timed_out(1.1, 0.1, 1024)
    assert w.limit == 512
    # Timeouts of attempts sent before the decrease belong to the same episode.
    assert not w.timed_out(1.2, 0.2, 1024)
    assert w.limit == 512
    for t in range(100):
        w.timed_out(10.0 + t, 9.9 + t, w.limit)
    assert w.limit == MIN_WINDOW


def test_silence_becomes_final_after_the_rounds_and_rounds_spread_out() -> None:
    assert [silence_is_final(n) for n in range(SILENT_ROUNDS + 1)] == [
        False] * SILENT_ROUNDS + [True]
    assert [reask_delay(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


def test_a_servfail_becomes_final_after_the_rounds_and_in_trouble_the_span() -> None:
    for trouble in (False, True):
        assert [failure_is_final(n, 0.0, 0.0, trouble) for n in range(FAILED_ROUNDS + 1)] == [
            False] * FAILED_ROUNDS + [True]
    assert failure_is_final(FAILED_ROUNDS, 6.0, 64.0, troubled=False)
    assert not failure_is_final(FAILED_ROUNDS + 5, 63.9, 64.0, troubled=True)
    assert failure_is_final(FAILED_ROUNDS, 64.0, 64.0, troubled=True)
    assert [failure_delay(n, 2.0, 0.0, 0.0) for n in (1, 2)] == [2.0, 4.0]


def test_trouble_explains_a_failure_heard_up_to_a_span_later() -> None:
    assert troubled(trouble_at=10.0, first_failed=70.0, span=64.0)
    assert troubled(trouble_at=80.0, first_failed=70.0, span=64.0)
    assert not troubled(trouble_at=5.0, first_failed=70.0, span=64.0)
    assert not troubled(trouble_at=float("-inf"), first_failed=0.0, span=64.0)


def test_a_few_failing_domains_are_no_trouble_a_burst_is() -> None:
    rate = FailureRate()
    # 2 % of 500 questions a second SERVFAIL, for a minute: ten a second, but a fiftieth.
    assert not any(rate.answer(t / 500, t % 50 == 0) for t in range(30_000))
    # Seven failing domains together in the list, all answered within one second: no burst.
    rate = FailureRate()
    assert not any(rate.answer(100.0 + i / 100, i < 7) for i in range(50))
    # A zone failed by the resolver: eight SERVFAIL among the second's sixty answers.
    rate = FailureRate()
    got = [rate.answer(200.0 + i / 100, i % 7 == 0) for i in range(60)]
    assert got.index(True) == 49  # the eighth SERVFAIL (0, 7, ..., 49)
    assert not rate.answer(201.0, True)  # a new second counts afresh


@given(st.lists(st.tuples(st.floats(0, 100), st.booleans()), max_size=200))
def test_a_burst_is_always_a_servfail_among_many(answers: list[tuple[float, bool]]) -> None:
    rate = FailureRate()
    for now, servfail in sorted(answers):
        if rate.answer(now, servfail):
            assert servfail
            same = [f for t, f in answers if int(t) == int(now) and t <= now]
            assert sum(same) >= FAILURE_BURST


@given(st.floats(0.01, 5.0), st.floats(0.0, 300.0))
def test_servfail_rounds_reach_the_span_and_end_there(timeout: float, span: float) -> None:
    """Asked on the silence schedule until the span is over; the last round no later than
    one round's delay past it (right at its end, unless the minimum of rounds runs longer)."""
    waited, rounds = 0.0, 1
    while not failure_is_final(rounds, waited, span, troubled=True):
        delay = failure_delay(rounds, timeout, waited, span)
        assert delay > 0
        if waited < span:
            assert waited + delay <= span + 1e-9
        waited += delay
        rounds += 1
        assert rounds < 64
    assert rounds >= FAILED_ROUNDS
    assert waited >= span
    assert waited <= max(span, timeout * (2 ** (FAILED_ROUNDS - 1) - 1)) + 1e-6


async def test_the_window_bounds_questions_in_flight_and_grows_with_answers(
        autojump_clock: trio.testing.MockClock) -> None:
    net = VirtualNet()
    names = [f"w{i}.example" for i in range(3 * INITIAL_WINDOW)]
    for name in names:
        net.fake.add(name, "A", answer(name, delay=1.0))
    async with DnsClient.open(net.config(dns_timeout=2.0), connect=net.connect) as client:
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(client.lookup, name, "A")
            await trio.sleep(0.5)
            assert client.state().in_flight == INITIAL_WINDOW
            # A task cancelled while it waits for room gives its turn to the next.
            with trio.CancelScope() as scope:
                scope.cancel()
                await client.lookup("cancelled.example", "A")
        assert client.stats.window_waits == 2 * INITIAL_WINDOW + 1
        assert client.state().in_flight == 0
        assert client.stats.timeouts == 0
    at = sorted(t for t, _, r in net.sent if r == "A")
    # Slow start: 64 at once, then each answer lets two more go (128), then the last 64.
    assert at.count(0.0) == INITIAL_WINDOW
    assert sum(1 for t in at if t == pytest.approx(1.0)) == 2 * INITIAL_WINDOW
    assert "cancelled.example" not in {n for _, n, _ in net.sent}
