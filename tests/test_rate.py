"""The byte-rate cap: parsing, and the aggregate it lets through (a fake clock: no timing)."""

from __future__ import annotations

import threading

import pytest

from aioc4.rate import RateLimit, parse_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50M", 50e6), ("1.5G", 1.5e9), ("800k", 800e3), ("20MB/s", 20e6), ("64MiB", 64 * 2**20), ("1000", 1e3)],
)
def test_rates_are_parsed_in_bytes_per_second(text: str, expected: float) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "-5M", "0", "5X", "0.5"])
def test_what_is_not_a_rate_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_takers_share_one_aggregate_rate() -> None:
    """Eight transfers that each wait what they are told move 8 x 40 x 64 KiB in bytes / rate seconds
    (within the burst), not eight times faster."""
    clock = FakeClock()
    limit = RateLimit(10e6, burst_s=0.05, clock=clock)
    waits_until: list[float] = [clock.now] * 8
    sent = 0
    for _ in range(40):
        for taker in range(8):
            clock.now = waits_until[taker]
            waits_until[taker] = clock.now + limit.reserve(64 * 1024)
            sent += 64 * 1024
    elapsed = max(waits_until) - 100.0
    assert sent / 10e6 - 0.05 <= elapsed <= sent / 10e6


def test_a_link_idle_for_a_while_does_not_bank_a_burst() -> None:
    clock = FakeClock()
    limit = RateLimit(1e6, burst_s=0.05, clock=clock)
    assert limit.reserve(10_000) == 0.0  # 10 ms of rate: within the burst
    clock.now += 60.0  # a minute without traffic
    assert limit.reserve(1_000_000) == pytest.approx(0.95)  # one second of bytes, less the burst


def test_reservations_from_threads_are_all_counted() -> None:
    clock = FakeClock()
    limit = RateLimit(1e6, burst_s=0.0, clock=clock)

    def book() -> None:
        for _ in range(1000):
            limit.reserve(100)

    threads = [threading.Thread(target=book) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert limit.reserve(0) == pytest.approx(0.4)  # 400,000 bytes booked at 1 MB/s
