"""Progress while a run works: a tqdm bar on a terminal, one plain log line every few seconds otherwise.

The display only reads counters the pipeline already keeps (documents and bytes written, parts
delivered), a few times a second at most, so the per-document path is untouched. It runs as a
task of the pipeline's TaskGroup and is cancelled when the work ends. Formatting is pure.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = [
    "INTERVAL_ENV",
    "Counters",
    "ProgressDisplay",
    "Rates",
    "format_duration",
    "format_line",
    "format_postfix",
    "interval_from_env",
    "rates",
]

INTERVAL_ENV = "AIOC4_PROGRESS_INTERVAL"  # internal: seconds between plain lines (tests use a short one)
PLAIN_INTERVAL_S = 5.0
BAR_REFRESH_S = 0.5
MB = 1_000_000

log = logging.getLogger("aioc4")


@dataclass(frozen=True, slots=True)
class Counters:
    """What the pipeline has done so far (documents include those of parts kept from earlier runs)."""

    documents: int = 0
    bytes_written: int = 0
    parts: int = 0


@dataclass(frozen=True, slots=True)
class Rates:
    docs_per_s: float
    mb_per_s: float
    eta_s: float | None  # None while nothing has been measured


def rates(start: Counters, now: Counters, elapsed_s: float, total: int) -> Rates:
    """Average rates since `start`, and the time the remaining documents take at that rate."""
    if elapsed_s <= 0:
        return Rates(0.0, 0.0, None)
    docs_per_s = (now.documents - start.documents) / elapsed_s
    mb_per_s = (now.bytes_written - start.bytes_written) / MB / elapsed_s
    remaining = max(0, total - now.documents)
    eta = remaining / docs_per_s if docs_per_s > 0 else (0.0 if remaining == 0 else None)
    return Rates(docs_per_s, mb_per_s, eta)


def format_duration(seconds: float | None) -> str:
    """`H:MM:SS`, rounded up (an ETA of 0.2 s says 0:00:01); `unknown` when there is no estimate."""
    if seconds is None:
        return "unknown"
    whole = int(-(-seconds // 1))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_postfix(now: Counters, speed: Rates, parts_label: str) -> str:
    """The part the bar and the plain line share: rates, parts and ETA."""
    return (
        f"{speed.docs_per_s:,.0f} docs/s, {speed.mb_per_s:,.1f} MB/s, "
        f"{now.parts} part(s) {parts_label}, ETA {format_duration(speed.eta_s)}"
    )


def format_line(now: Counters, speed: Rates, total: int, parts_label: str) -> str:
    """`12,000/30,000 documents (40%), 31.2 MB, 25,100 docs/s, 61.5 MB/s, 1 part(s) uploaded, ETA 0:00:01`"""
    percent = 100 * now.documents // total if total else 100
    return (
        f"{now.documents:,}/{total:,} documents ({percent}%), {now.bytes_written / MB:,.1f} MB, "
        f"{format_postfix(now, speed, parts_label)}"
    )


def interval_from_env(default: float = PLAIN_INTERVAL_S) -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV, default))
    except ValueError:
        return default
    return value if value > 0 else default


class ProgressDisplay:
    """Reports progress until cancelled: a tqdm bar on `stream` (`bar=True`) or plain log lines."""

    def __init__(
        self,
        total: int,
        *,
        bar: bool,
        interval_s: float | None = None,
        parts_label: str = "written",
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.bar = bar
        self.interval_s = interval_s or (BAR_REFRESH_S if bar else interval_from_env())
        self.parts_label = parts_label
        self.stream = stream

    async def run(self, read: Callable[[], Counters]) -> None:
        """Sample `read()` every `interval_s` seconds; never returns on its own (cancel it).

        When cancelled at the end of the work, the bar gets one last frame with the final counters
        (the parts delivered after the last tick included), so it never ends on stale figures.
        """
        start, started = read(), time.monotonic()
        report = self._bar(start) if self.bar else self._log

        def sample() -> None:
            now = read()
            report(now, rates(start, now, time.monotonic() - started, self.total))

        try:
            while True:
                await asyncio.sleep(self.interval_s)
                sample()
        finally:
            close = getattr(report, "close", None)
            if close is not None:
                sample()  # the bar's last frame: what was really done
                close()

    def _log(self, now: Counters, speed: Rates) -> None:
        log.info("%s", format_line(now, speed, self.total, self.parts_label))

    def _bar(self, start: Counters) -> _Bar:
        return _Bar(self.total, start, self.parts_label, self.stream or sys.stderr)


class _Bar:
    """A tqdm bar whose rate and ETA are ours (averages since the start), like the plain line's."""

    def __init__(self, total: int, start: Counters, parts_label: str, stream: TextIO) -> None:
        from tqdm import tqdm

        self.parts_label = parts_label
        self.tqdm = tqdm(
            total=total,
            initial=start.documents,
            file=stream,
            dynamic_ncols=_has_width(stream),
            ncols=None if _has_width(stream) else 100,  # a terminal that reports 0 columns: a fixed width
            mininterval=0,
            bar_format="aioc4: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} docs{postfix}",
        )

    def __call__(self, now: Counters, speed: Rates) -> None:
        self.tqdm.n = now.documents
        self.tqdm.set_postfix_str(
            f"{now.bytes_written / MB:,.1f} MB, {format_postfix(now, speed, self.parts_label)}", refresh=False
        )
        self.tqdm.refresh()

    def close(self) -> None:
        self.tqdm.close()


def _has_width(stream: TextIO) -> bool:
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
