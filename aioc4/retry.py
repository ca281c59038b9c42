"""Retry policy for the Hub: what is worth retrying, how long to wait, and when to give up. Pure.

Waits grow exponentially with full jitter (AWS's recommendation for many clients hitting one
service), a server's `Retry-After` or `RateLimit` reset is honoured as a floor, and two limits
bound the whole thing: `max_attempts` consecutive failures of one operation *without progress*
(a transfer that resumes after receiving bytes starts counting again), and `total_wait_s` seconds
of waiting summed over the run.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RETRYABLE_STATUSES", "RetryBudget", "RetryPolicy", "retry_after_seconds"]

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_RATELIMIT_RESET = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+)")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    total_wait_s: float = 600.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        jittered = rng.uniform(0, ceiling)
        if retry_after_s is not None:
            return min(max(retry_after_s, jittered), self.max_delay_s * 4)
        return jittered


@dataclass(slots=True)
class RetryBudget:
    """The run-wide allowance of waiting; shared by every operation of one run."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    waited_s: float = 0.0
    retries: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def spend(self, seconds: float) -> None:
        """Count time lost in an attempt that timed out as waiting: a silent server uses up the budget."""
        self.waited_s += max(0.0, seconds)

    def next_delay(self, attempt: int, retry_after_s: float | None) -> float | None:
        """The wait before another try, or None when this operation or the run must give up."""
        if attempt > self.policy.max_attempts or self.waited_s >= self.policy.total_wait_s:
            return None
        delay = self.policy.delay(attempt, retry_after_s, self.rng)
        if self.waited_s + delay > self.policy.total_wait_s:
            return None
        self.waited_s += delay
        self.retries += 1
        return delay


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a server asked for: `Retry-After` (seconds or HTTP date) or the `RateLimit` reset `t=`."""
    value = headers.get("Retry-After")
    if value is not None:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            pass
    ratelimit = headers.get("RateLimit")
    if ratelimit is not None and (match := _RATELIMIT_RESET.search(ratelimit)):
        return float(match.group(1))
    return None
