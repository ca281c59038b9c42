"""The producer: the first N documents of a split, in shard order, as batches."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from .decode import Batch, GzipLineDecoder, parse_lines
from .hub import HubSource, Shard, chunks_of

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
) -> AsyncGenerator[Batch, None]:
    """Batches holding exactly the first `limit` documents; stops reading as soon as they are out."""
    for shard in shards:
        progress.shards_opened += 1
        async with aclosing(
            _read_shard(source, shard, commit, streaming=streaming, progress=progress)
        ) as batches:
            async for batch in batches:
                head = batch.head(limit - progress.documents)
                progress.documents += len(head)
                yield head
                if progress.documents >= limit:
                    return
    progress.exhausted = True


async def _read_shard(
    source: HubSource, shard: Shard, commit: str, *, streaming: bool, progress: SourceProgress
) -> AsyncGenerator[Batch, None]:
    decoder = GzipLineDecoder(shard.path)
    next_line = 1
    # aclosing: stop the transfer as soon as we stop reading, not when the generator is collected
    async with aclosing(chunks_of(source, shard, commit, streaming=streaming)) as chunks:
        async for chunk in chunks:
            progress.compressed_bytes += len(chunk)
            lines = decoder.feed(chunk)
            if lines:
                yield parse_lines(lines, shard=shard.path, first_line_number=next_line)
                next_line += len(lines)
    lines = decoder.finish()
    if lines:
        yield parse_lines(lines, shard=shard.path, first_line_number=next_line)
