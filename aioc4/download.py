"""Shards over several range requests at once, handed to the reader in order, one shard after another.

The reader asks for shard after shard (`chunks(position)`); behind it, ranges of the shard being read
and then of the next ones are downloading on their own connections, as far ahead as the read-ahead
window allows (aioc4.readahead): the next shard starts downloading before the current one ends.
Each range is `HubSource.stream(shard, commit, start, end)`, so every promise of a single transfer
holds per range: retries with backoff under the run's budget, a cut range resumes at the byte it
reached, an expired signed URL is resolved again (once: ranges of a shard share its storage URL),
the token never goes to storage. A storage host that ignores `Range` turns the rest of the run into
one stream per shard, from the byte the reader reached.

One `resolve` per shard: until the Hub has redirected a shard's first range to storage, no other
range of it starts; a shard the Hub serves itself (no redirect) is read in one more request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType

from .errors import RangeIgnoredError
from .hub import CHUNK_BYTES, HubSource, Shard
from .readahead import ReadAhead

__all__ = ["RangedDownload"]

log = logging.getLogger("aioc4")


@dataclass(eq=False, slots=True)
class _Range:
    """Bytes `start` to `end` of shard `position`: arriving into `pieces`, taken from there in order."""

    position: int
    start: int
    end: int
    pieces: deque[bytes] = field(default_factory=deque)
    taken: int = 0
    done: bool = False
    error: Exception | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def untaken(self) -> int:
        return self.end - self.start - self.taken

    @property
    def held(self) -> int:
        """Bytes that arrived and are not taken yet."""
        return sum(map(len, self.pieces))


class RangedDownload:
    """The bytes of `shards` for one reader, all from their first byte but the first shard, which is read
    from byte `start` (the rest of a shard a decode process began); use as an async context manager.

    `wanted_bytes()` says how many compressed bytes the documents still wanted probably take from
    the reader's position. The download owns every range task: leaving the context cancels them
    and waits for them, so an early stop or a failure leaves no transfer running.
    """

    def __init__(
        self,
        source: HubSource,
        shards: Sequence[Shard],
        commit: str,
        *,
        read_ahead: ReadAhead,
        wanted_bytes: Callable[[], float],
        start: int = 0,
    ) -> None:
        self._source = source
        self._start_offset = start
        self._shards = shards
        self._commit = commit
        self._read_ahead = read_ahead
        self._wanted_bytes = wanted_bytes
        self._ranges: deque[_Range] = deque()  # outstanding, in shard order
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_position = 0  # where the next range starts
        self._next_offset = start
        self._ranged = True  # until a storage host ignores Range
        self.peak_connections = 0
        self.ranges_started = 0

    async def __aenter__(self) -> RangedDownload:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._cancel_all()
        log.debug(
            "downloaded %d range(s); at most %d at once (read-ahead window %d of %d)",
            self.ranges_started,
            self.peak_connections,
            self._read_ahead.window,
            self._read_ahead.max_connections,
        )

    async def chunks(self, position: int) -> AsyncGenerator[bytes, None]:
        """Shard `position`'s bytes in order; shards must be asked for in order."""
        while self._ranged:
            self._schedule()
            head = self._ranges[0] if self._ranges else None
            if head is None or head.position != position:
                if self._next_position <= position or (head is not None and head.position < position):
                    raise RuntimeError("shards must be read whole and in order")
                return  # every range of the shard has been read
            if head.pieces:
                piece = _take(head.pieces)
                head.taken += len(piece)
                yield piece
                continue
            if head.done:
                self._drop(self._ranges.popleft())
                if head.error is None:
                    continue
                if not isinstance(head.error, RangeIgnoredError):
                    raise head.error
                await self._cancel_all()
                self._ranged = False
                async with aclosing(self._one_stream(position, head.start + head.taken)) as rest:
                    async for piece in rest:
                        yield piece
                return
            arriving = sum(not item.done for item in self._ranges)
            self._read_ahead.reader_waited(outstanding=len(self._ranges), arriving=arriving)
            self._schedule()
            head.changed.clear()
            await head.changed.wait()
        async with aclosing(self._one_stream(position, 0 if position else self._start_offset)) as whole:
            async for piece in whole:
                yield piece

    def _one_stream(self, position: int, start: int) -> AsyncGenerator[bytes, None]:
        return self._source.stream(self._shards[position], self._commit, start)

    def _schedule(self) -> None:
        """Start the ranges the read-ahead window allows now."""
        while self._next_position < len(self._shards):
            shard = self._shards[self._next_position]
            left = shard.size - self._next_offset
            if left <= 0:
                self._next_position, self._next_offset = self._next_position + 1, 0
                continue
            redirected = self._source.redirects_to_storage(shard)
            if self._next_offset > 0 and redirected is None and self._resolving(self._next_position):
                return  # its first range is being resolved: more ranges now would each resolve too
            if self._next_offset > 0 and redirected is False:
                size = left if len(self._ranges) < self._read_ahead.window else 0  # one more request
            else:
                size = self._read_ahead.next_range(
                    outstanding=len(self._ranges),
                    ahead_bytes=sum(item.untaken for item in self._ranges),
                    wanted_bytes=self._wanted_bytes(),
                    left_in_shard=left,
                )
            if size <= 0:
                return
            self._start(_Range(self._next_position, self._next_offset, self._next_offset + size))
            self._next_offset += size

    def _resolving(self, position: int) -> bool:
        return any(item.position == position and not item.done for item in self._ranges)

    def _start(self, item: _Range) -> None:
        self._ranges.append(item)
        self._read_ahead.in_use += 1
        self.ranges_started += 1
        task = asyncio.create_task(self._fetch(item), name=f"aioc4-range-{item.start}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.peak_connections = max(self.peak_connections, len(self._tasks))

    async def _fetch(self, item: _Range) -> None:
        shard = self._shards[item.position]
        try:
            async with aclosing(self._source.stream(shard, self._commit, item.start, item.end)) as body:
                async for piece in body:
                    item.pieces.append(piece)
                    item.changed.set()
        except Exception as exc:  # the reader raises it when it reaches this range (if it does)
            item.error = exc
        finally:
            item.done = True
            item.changed.set()

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._ranges:
            self._drop(self._ranges.popleft())
        self._next_position = len(self._shards)

    def _drop(self, item: _Range) -> None:
        """A range leaves the window: read to its end, or given up."""
        self._read_ahead.in_use -= 1


def _take(pieces: deque[bytes]) -> bytes:
    """The pieces that arrived, joined up to `CHUNK_BYTES`: a paced connection delivers 64 KiB or
    less at a time, and each chunk costs the decoders two thread hand-offs whatever its size."""
    first = pieces.popleft()
    if not pieces or len(first) >= CHUNK_BYTES:
        return first
    taken, size = [first], len(first)
    while pieces and size + len(pieces[0]) <= CHUNK_BYTES:
        piece = pieces.popleft()
        taken.append(piece)
        size += len(piece)
    return b"".join(taken)
