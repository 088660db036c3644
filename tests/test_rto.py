"""scanner.rto: RFC 6298's estimator as the DNS attempt timeout (pure arithmetic, no sockets)."""

from __future__ import annotations

import pytest

from scanner.rto import RetransmitTimeout


def test_without_a_measurement_the_configured_timeout_holds() -> None:
    assert RetransmitTimeout(2.0, 5.0).timeout == 2.0


def test_first_measurement_sets_srtt_and_half_of_it_as_variance() -> None:
    # RFC 6298 (2.2): SRTT <- R, RTTVAR <- R/2, RTO <- SRTT + 4 * RTTVAR = 3R.
    rto = RetransmitTimeout(0.1, 10.0)
    rto.observe(1.0)
    assert (rto.srtt, rto.rttvar) == (1.0, 0.5)
    assert rto.timeout == pytest.approx(3.0)


def test_later_measurements_follow_rfc6298_2_3() -> None:
    rto = RetransmitTimeout(0.1, 10.0)
    rto.observe(1.0)
    rto.observe(3.0)
    # RTTVAR <- 3/4 * 0.5 + 1/4 * |1 - 3| = 0.875 (with the old SRTT), SRTT <- 7/8 + 3/8.
    assert rto.rttvar == pytest.approx(0.875)
    assert rto.srtt == pytest.approx(1.25)
    assert rto.timeout == pytest.approx(1.25 + 4 * 0.875)


def test_a_fast_resolver_keeps_the_floor() -> None:
    rto = RetransmitTimeout(2.0, 5.0)
    for _ in range(50):
        rto.observe(0.001)
    assert rto.timeout == 2.0


def test_a_slow_resolver_raises_the_timeout_up_to_the_ceiling() -> None:
    rto = RetransmitTimeout(2.0, 5.0)
    for _ in range(20):
        rto.observe(2.5)
    assert 2.5 < rto.timeout < 5.0  # answers in 2.5 s are no longer asked twice
    for _ in range(50):
        rto.observe(30.0)
    assert rto.timeout == 5.0


def test_steady_answers_shrink_the_variance_back() -> None:
    rto = RetransmitTimeout(0.01, 10.0)
    rto.observe(3.0)
    high = rto.timeout
    for _ in range(100):
        rto.observe(0.5)
    assert rto.timeout < high
    assert rto.timeout == pytest.approx(0.5, abs=0.05)


def test_a_clock_step_backwards_counts_as_zero() -> None:
    rto = RetransmitTimeout(0.2, 5.0)
    rto.observe(-1.0)
    assert (rto.srtt, rto.rttvar, rto.timeout) == (0.0, 0.0, 0.2)


def test_ceiling_below_floor_is_the_floor() -> None:
    rto = RetransmitTimeout(2.0, 1.0)
    rto.observe(9.0)
    assert rto.timeout == 2.0
