"""The retry policy: exponential backoff with full jitter, server hints honoured, budgets enforced."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from aioc4.retry import RetryBudget, RetryPolicy, retry_after_seconds


def test_delays_grow_exponentially_within_the_jitter_window() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert min(delays) >= 0
        assert max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole window


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=30.0)
    assert policy.delay(1, 5.0, random.Random(1)) == 5.0


def test_a_budget_gives_up_after_max_attempts() -> None:
    budget = RetryBudget(RetryPolicy(max_attempts=3, base_delay_s=0.01), rng=random.Random(0))
    allowed = [budget.next_delay(attempt, None) is not None for attempt in (1, 2, 3, 4)]
    assert allowed == [True, True, True, False]
    assert budget.retries == 3


def test_a_budget_gives_up_when_the_run_has_waited_long_enough() -> None:
    budget = RetryBudget(RetryPolicy(total_wait_s=10.0), rng=random.Random(0))
    assert budget.next_delay(1, 6.0) == 6.0
    assert budget.next_delay(1, 6.0) is None  # 12 s would exceed the 10 s budget
    assert budget.waited_s == 6.0


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"RateLimit": '"resolvers";r=0;t=55'}, 55.0),
        ({"Retry-After": "2", "RateLimit": '"api";r=0;t=55'}, 2.0),
        ({}, None),
        ({"Retry-After": "soon"}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers) == seconds


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after_seconds({"Retry-After": later})
    assert seconds is not None
    assert 25 < seconds <= 30
