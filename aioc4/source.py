"""The producer: the first N documents of a split, in shard order, as batches."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from .decode import Batch, GzipLineDecoder, parse_lines
from .errors import SourceError
from .hub import HubSource, Shard, chunks_of
from .manifest import SourcePosition

__all__ = ["SourceProgress", "read_documents"]


@dataclass(slots=True)
class SourceProgress:
    """What the producer has read so far (for the summary)."""

    shards_opened: int = 0
    documents: int = 0
    compressed_bytes: int = 0
    exhausted: bool = False  # the split ended before N documents


async def read_documents(
    source: HubSource,
    shards: list[Shard],
    commit: str,
    limit: int,
    *,
    streaming: bool,
    progress: SourceProgress,
    start: SourcePosition | None = None,
) -> AsyncGenerator[Batch, None]:
    """Batches holding exactly the next `limit` documents from `start` (default: the first line of the
    first shard); stops reading as soon as they are out."""
    first_shard, first_line = _start_at(shards, start)
    for shard in shards[first_shard:]:
        progress.shards_opened += 1
        skip_before = first_line if shard is shards[first_shard] else 1
        batches = _read_shard(
            source, shard, commit, streaming=streaming, progress=progress, skip_before=skip_before
        )
        async with aclosing(batches):
            async for batch in batches:
                head = batch.slice(0, limit - progress.documents)
                progress.documents += len(head)
                yield head
                if progress.documents >= limit:
                    return
    progress.exhausted = True


def _start_at(shards: list[Shard], start: SourcePosition | None) -> tuple[int, int]:
    if start is None:
        return 0, 1
    for position, shard in enumerate(shards):
        if shard.path == start.shard:
            return position, start.line
    raise SourceError(f"{start.shard}, where the recorded parts end, is not in the split at this commit")


async def _read_shard(
    source: HubSource,
    shard: Shard,
    commit: str,
    *,
    streaming: bool,
    progress: SourceProgress,
    skip_before: int,
) -> AsyncGenerator[Batch, None]:
    """The shard's documents from line `skip_before` on (earlier lines are inflated, not parsed)."""
    decoder = GzipLineDecoder(shard.path)
    next_line = 1
    # aclosing: stop the transfer as soon as we stop reading, not when the generator is collected
    async with aclosing(chunks_of(source, shard, commit, streaming=streaming)) as chunks:
        async for chunk in chunks:
            progress.compressed_bytes += len(chunk)
            lines = decoder.feed(chunk)
            if batch := _parse_from(lines, shard.path, next_line, skip_before):
                yield batch
            next_line += len(lines)
    if batch := _parse_from(decoder.finish(), shard.path, next_line, skip_before):
        yield batch


def _parse_from(lines: list[bytes], shard: str, first_line: int, skip_before: int) -> Batch | None:
    skip = max(0, skip_before - first_line)
    if skip >= len(lines):
        return None
    return parse_lines(lines[skip:], shard=shard, first_line_number=first_line + skip)
