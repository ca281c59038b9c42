"""Byte-rate caps for shared links (`--max-download-rate`, `--max-upload-rate`). Pure but for sleeping.

One `RateLimit` is shared by every transfer of one direction, so the cap holds in aggregate however
many connections are open. It is a virtual-clock token bucket (GCRA): each transfer reserves its
bytes, which moves a shared "link busy until" time forward by bytes / rate, and waits until that time
minus a small burst allowance. Over a run the bytes sent can exceed rate x elapsed by at most the
burst plus one reservation, so a cap holds within a few percent on transfers of a few seconds or more.
Reservations are thread-safe: an upload body read in aiohttp's executor thread paces there.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimit", "format_rate", "parse_rate"]

BURST_S = 0.05
"""Seconds of rate a transfer may run ahead of the cap (keeps sleeps few; bounds the overshoot)."""

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?(?:/s)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_rate(text: str) -> float:
    """Bytes per second from `50M`, `1.5G`, `800k`, `20MB/s`, `64MiB` (K/M/G are powers of 1000, Ki/Mi/Gi
    of 1024); ValueError when it is not a rate above 0."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate: use bytes per second such as 50M, 1.5G or 800K")
    number, unit, binary = match.groups()
    value = float(number) * float((1024 if binary else 1000) ** _POWERS[unit.lower()])
    if value < 1:
        raise ValueError(f"{text!r} is not a rate above 0 bytes per second")
    return value


def format_rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:g} MB/s"


class RateLimit:
    """An aggregate cap of `bytes_per_s`, shared by concurrent transfers (tasks or threads)."""

    def __init__(
        self, bytes_per_s: float, *, burst_s: float = BURST_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if bytes_per_s <= 0:
            raise ValueError("a rate limit must be above 0 bytes per second")
        self.bytes_per_s = bytes_per_s
        self.burst_s = burst_s
        self._clock = clock
        self._busy_until = 0.0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> float:
        """Book `size` bytes on the link; the seconds to wait before sending (or after receiving) them."""
        with self._lock:
            now = self._clock()
            start = max(now, self._busy_until)
            self._busy_until = start + size / self.bytes_per_s
            return max(0.0, self._busy_until - self.burst_s - now)

    async def take(self, size: int) -> None:
        """In a task: wait until `size` more bytes fit under the cap."""
        delay = self.reserve(size)
        if delay > 0:
            await asyncio.sleep(delay)

    def take_blocking(self, size: int) -> None:
        """In a worker thread (never on the event loop): the same, by sleeping the thread."""
        delay = self.reserve(size)
        if delay > 0:
            time.sleep(delay)
