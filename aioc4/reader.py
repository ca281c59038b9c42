"""The shard reader: the next N documents of a list of shards, in order, as checked batches.

`HubSource` (aioc4.hub) supplies each shard's compressed bytes; this module inflates and checks them
(aioc4.decode) on two long-lived worker threads and hands out batches of documents.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

from .decode import Batch, GzipLineDecoder, ShardLines, SourcePosition
from .download import RangedDownload
from .errors import LineTooLongError, SourceError
from .hub import HubSource, Shard
from .segments import SegmentBatch

__all__ = [
    "EXACT_DOCUMENTS",
    "GZIP_BYTES_PER_DOCUMENT",
    "READ_AHEAD_MARGIN",
    "ReadProgress",
    "fits_in_first_shard",
    "read_documents",
    "shard_bytes",
    "start_at",
]

log = logging.getLogger("aioc4")

B = TypeVar("B", Batch, SegmentBatch)

_DECODES_AHEAD = 2
READ_AHEAD_MARGIN = 1.05  # documents vary in size: ask for a little more than the average says
GZIP_BYTES_PER_DOCUMENT = 840  # C4 en: ~356M documents in ~305 GB of gzip'd shards
EXACT_DOCUMENTS = 10_000  # the first documents of a run are all parsed: exact statistics for small jobs


@dataclass(slots=True)
class ReadProgress:
    """What the reader has read so far (for the progress display and the summary)."""

    shards_opened: int = 0
    documents: int = 0
    compressed_bytes: int = 0
    exhausted: bool = False  # the split ended before N documents
    skipped_records: int = 0  # bad lines dropped with --skip-bad-records
    decoding_bytes: int = 0  # compressed bytes handed to the decoding thread whose documents are not out yet

    @property
    def documents_per_byte(self) -> float:
        """Observed so far, or C4's typical ~840 gzip bytes per document before anything is decoded."""
        decoded = self.compressed_bytes - self.decoding_bytes
        return self.documents / decoded if self.documents and decoded > 0 else 1 / GZIP_BYTES_PER_DOCUMENT

    def hand_out(self, batch: B, limit: int) -> B:
        """What of `batch` is still within `limit` documents, counted as read."""
        head = batch.slice(0, limit - self.documents)
        self.documents += len(head)
        return head

    def bytes_wanted(self, limit: int) -> float:
        """Compressed bytes the documents still wanted probably take, beyond those being decoded."""
        return (limit - self.documents) / self.documents_per_byte * READ_AHEAD_MARGIN - self.decoding_bytes


async def read_documents(
    source: HubSource,
    shards: list[Shard],
    commit: str,
    limit: int,
    *,
    streaming: bool,
    progress: ReadProgress,
    start: SourcePosition | None = None,
    skip_bad_records: bool = False,
) -> AsyncGenerator[Batch, None]:
    """Batches holding exactly the next `limit` documents from `start` (default: the first line of the
    first shard); stops reading as soon as they are out.

    Shards are decoded one after the other; over HTTP they download as several ranges at once, the
    next shard's before the current one ends (aioc4.download), as far as `source.read_ahead` allows.
    """
    first_shard, first_line = start_at(shards, start)
    async with (
        _DecodeThread() as decoding,
        shard_bytes(
            source, shards[first_shard:], commit, streaming, lambda: progress.bytes_wanted(limit)
        ) as downloads,
    ):
        for index in range(first_shard, len(shards)):
            progress.shards_opened += 1
            first = index == first_shard
            batches = _read_shard(
                downloads.chunks(index - first_shard),
                shards[index],
                decoding,
                progress=progress,
                skip_before=first_line if first else 1,
                exact_documents=EXACT_DOCUMENTS if first else 0,
                wanted=lambda: limit - progress.documents,
                skip_bad_records=skip_bad_records,
            )
            async with aclosing(batches):
                async for batch in batches:
                    yield progress.hand_out(batch, limit)
                    if progress.documents >= limit:
                        return
    progress.exhausted = True


class _DecodeThread:
    """The reader's decoding thread: it inflates each chunk and checks its lines at once, while the
    event loop receives the next. (Inflating on one thread and checking on another, so that chunk
    i+1 inflated while chunk i was checked, cost more than it overlapped: the threads and the event
    loop took turns on the GIL, and each block was checked from another core's cache. Within one
    shard, N = 5k..40k, interleaved: 132k against 112k docs/s and 9.0 against 10.0 us/doc for the
    process, 6 rounds; 108k against 104k and 9.8 against 10.5, 5 more.) Made once per reader and
    shut down when it ends: the thread is gone (and nothing it ran is left) before it returns."""

    def __init__(self) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aioc4-decode")

    async def __aenter__(self) -> _DecodeThread:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.thread.shutdown(wait=False, cancel_futures=True)  # queued work is dropped at once
        # The chunk it may be working on finishes in milliseconds (a chunk inflates into at most
        # _FEED_LIMIT); waiting off the loop keeps a cancelled run from leaving a thread.
        await asyncio.shield(asyncio.to_thread(self.thread.shutdown, wait=True))


def shard_bytes(
    source: HubSource,
    shards: list[Shard],
    commit: str,
    streaming: bool,
    wanted_bytes: Callable[[], float],
    start: int = 0,
) -> RangedDownload | _CachedShards:
    """The shards' bytes, the first from byte `start` (streamed only: a cached file is read whole)."""
    if streaming:
        read_ahead = source.read_ahead
        return RangedDownload(
            source, shards, commit, read_ahead=read_ahead, wanted_bytes=wanted_bytes, start=start
        )
    return _CachedShards(source, shards, commit)


class _CachedShards:
    """`--no-streaming`: each shard downloaded whole into the Hub cache, then read from there."""

    def __init__(self, source: HubSource, shards: list[Shard], commit: str) -> None:
        self._source, self._shards, self._commit = source, shards, commit

    async def __aenter__(self) -> _CachedShards:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def chunks(self, position: int) -> AsyncGenerator[bytes, None]:
        path = await self._source.download(self._shards[position], self._commit)
        async with aclosing(self._source.read_cached(path)) as chunks:
            async for chunk in chunks:
                yield chunk


def fits_in_first_shard(shards: list[Shard], start: SourcePosition | None, limit: int) -> bool:
    """Whether the `limit` documents wanted from `start` probably all lie in the shard it is in, by
    C4's typical gzip bytes per document with the read-ahead's margin (the shard's own are not known
    before it is read). Then no shard would be decoded beside it, and this process reads it with
    less CPU and memory than a decode process fed over a pipe would (see docs/performance.md)."""
    first, line = start_at(shards, start)
    if first >= len(shards):
        return True
    expected = shards[first].size / GZIP_BYTES_PER_DOCUMENT - (line - 1)
    return limit * READ_AHEAD_MARGIN <= expected


def start_at(shards: list[Shard], start: SourcePosition | None) -> tuple[int, int]:
    if start is None:
        return 0, 1
    for position, shard in enumerate(shards):
        if shard.path == start.shard:
            return position, start.line
    raise SourceError(f"{start.shard}, where the recorded parts end, is not in the split at this commit")


async def _read_shard(
    chunks: AsyncGenerator[bytes, None],
    shard: Shard,
    decoding: _DecodeThread,
    *,
    progress: ReadProgress,
    skip_before: int,
    exact_documents: int,
    wanted: Callable[[], int],
    skip_bad_records: bool = False,
) -> AsyncGenerator[Batch, None]:
    """The shard's documents from line `skip_before` on (earlier lines are inflated, not checked).

    Chunks go through the decoding thread in order, and are only read ahead while the documents
    they are likely to hold are still `wanted()`, so an early stop stays early.
    """
    decoder = GzipLineDecoder(shard.path)
    position = ShardLines(shard.path, skip_before, exact_documents, progress if skip_bad_records else None)
    loop = asyncio.get_running_loop()
    thread = decoding.thread
    in_flight: deque[tuple[asyncio.Future[list[Batch]], int]] = deque()

    async def oldest() -> list[Batch]:
        checked, size = in_flight.popleft()
        progress.decoding_bytes -= size
        return await checked

    try:
        # aclosing: stop the transfer as soon as we stop reading, not when the generator is collected
        async with aclosing(chunks):
            async for chunk in chunks:
                progress.compressed_bytes += len(chunk)
                progress.decoding_bytes += len(chunk)
                checked = asyncio.wrap_future(thread.submit(_decode, decoder, chunk, position), loop=loop)
                in_flight.append((checked, len(chunk)))
                while in_flight and (
                    len(in_flight) > _DECODES_AHEAD or _enough(in_flight, progress, wanted())
                ):
                    for batch in await oldest():
                        yield batch
        while in_flight:
            for batch in await oldest():
                yield batch
        for batch in await loop.run_in_executor(thread, _finish, decoder, position):
            yield batch
    finally:
        for checked, size in in_flight:  # after a failure: later chunks' outcomes are not wanted
            progress.decoding_bytes -= size
            checked.cancel()
            if checked.done() and not checked.cancelled():
                checked.exception()  # retrieved, so asyncio does not print "never retrieved"


def _enough(
    in_flight: deque[tuple[asyncio.Future[list[Batch]], int]], progress: ReadProgress, wanted: int
) -> bool:
    """Whether the chunks being decoded probably hold every document still wanted."""
    return bool(progress.documents_per_byte * sum(size for _, size in in_flight) >= wanted)


def _decode(decoder: GzipLineDecoder, chunk: bytes, position: ShardLines) -> list[Batch]:
    """On the decoding thread: the chunk's lines (chunks are submitted in order), checked."""
    try:
        lines = decoder.feed(chunk)
    except LineTooLongError as exc:  # every earlier chunk is checked: its line number is known here
        raise LineTooLongError(exc.shard, 0, position.next_line + exc.lines_before) from None
    return position.take(lines)


def _finish(decoder: GzipLineDecoder, position: ShardLines) -> list[Batch]:
    return position.take(decoder.finish())
