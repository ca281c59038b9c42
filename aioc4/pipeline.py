"""Wiring: Hub reader -> part writer -> a bounded pool of deliverers, under one TaskGroup.

Every queue between stages is bounded: the reader waits when the writer is behind, and the
writer waits when `upload_workers` finished parts are already queued, so local disk holds at
most about `2 * upload_workers + 1` parts. If the source fails, parts already finished are
still delivered before the error is reported; on cancellation everything stops at once and
the part being written is removed (finished parts stay).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, aclosing
from pathlib import Path

from .config import RunConfig
from .decode import Batch
from .destination import Destination, LocalDestination
from .errors import Aioc4Error, DestinationError
from .hub import HubSource
from .naming import renames_for_short_split
from .report import RunSummary
from .retry import RetryBudget, RetryPolicy
from .source import SourceProgress, read_documents
from .uploader import S3Destination
from .writer import FinishedPart, PartWriter

__all__ = ["PartPipeline", "run"]

log = logging.getLogger("aioc4")

_BATCHES_AHEAD = 8


async def run(config: RunConfig) -> RunSummary:
    """Download the first `config.num_samples` documents into parts and deliver them."""
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        destination = await _open_destination(config, stack)
        budget = RetryBudget(RetryPolicy(total_wait_s=config.retry_budget_s))
        hub = await stack.enter_async_context(
            HubSource(config.repo_id, cache_dir=config.cache_dir, budget=budget)
        )
        await destination.check()
        commit = await hub.resolve_commit(config.revision)
        shards = await hub.list_shards(commit, config.config_name, config.split)
        log.info("%s@%s: %d %s shard(s) available", config.repo_id, commit[:12], len(shards), config.split)
        created_dirs = _prepare_output_dir(config.output_dir)  # last check: nothing is created on bad input
        summary = RunSummary(
            repo_id=config.repo_id,
            commit=commit,
            config_name=config.config_name,
            split=config.split,
            requested=config.num_samples,
            max_lines_per_file=config.max_lines_per_file,
        )
        progress = SourceProgress()
        documents = read_documents(
            hub, shards, commit, config.num_samples, streaming=config.streaming, progress=progress
        )
        pipeline = PartPipeline(config, destination, summary)
        await pipeline.execute(documents, progress)
        if summary.split_exhausted:
            await pipeline.rename_for_real_count()
        summary.elapsed_seconds = time.monotonic() - started
        if config.s3 is not None and config.cleanup_local:
            _remove_if_empty(created_dirs)
        return summary


async def _open_destination(config: RunConfig, stack: AsyncExitStack) -> Destination:
    if config.s3 is None:
        return LocalDestination(config.output_dir)
    s3 = S3Destination(
        config.s3,
        endpoint_url=config.endpoint_url,
        workers=config.upload_workers,
        cleanup_local=config.cleanup_local,
    )
    return await stack.enter_async_context(s3)


class PartPipeline:
    """Documents in, delivered parts out: owns the queues and the tasks that pass parts along."""

    def __init__(self, config: RunConfig, destination: Destination, summary: RunSummary) -> None:
        self.config = config
        self.destination = destination
        self.summary = summary
        self.batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=_BATCHES_AHEAD)
        self.finished: asyncio.Queue[FinishedPart | None] = asyncio.Queue(maxsize=config.upload_workers)
        self.writer = PartWriter(
            config.output_dir, config.split, config.num_samples, config.max_lines_per_file
        )
        self.source_error: Aioc4Error | None = None

    async def execute(self, documents: AsyncGenerator[Batch, None], progress: SourceProgress) -> None:
        """Write `documents` into parts and deliver them; a source error is raised after delivery."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(documents))
                group.create_task(self._write())
                for _ in range(self.config.upload_workers):
                    group.create_task(self._deliver())
        except ExceptionGroup as failures:
            raise _most_telling(failures) from None
        self.summary.deliveries.sort(key=lambda delivery: delivery.name)
        self.summary.compressed_bytes = progress.compressed_bytes
        self.summary.shards_read = progress.shards_opened
        self.summary.split_exhausted = progress.exhausted and self.summary.documents < self.config.num_samples
        if self.source_error is not None:
            raise self.source_error

    async def _read(self, documents: AsyncGenerator[Batch, None]) -> None:
        """Producer: batches of documents in order; a source failure ends the stream early."""
        try:
            async with aclosing(documents):
                async for batch in documents:
                    self._count(batch)
                    await self.batches.put(batch)
        except Aioc4Error as exc:
            self.source_error = exc
        await self.batches.put(None)

    def _count(self, batch: Batch) -> None:
        summary = self.summary
        summary.documents += len(batch)
        summary.text_chars += batch.text_chars
        if summary.first_text is None:
            summary.first_text = batch.first_text

    async def _write(self) -> None:
        """Writer: parts in order; hands each finished part to the deliverers."""
        try:
            while (batch := await self.batches.get()) is not None:
                for part in await self.writer.write(batch.lines):
                    await self._hand_over(part)
            if self.source_error is None:
                last = await self.writer.close()
                if last is not None:
                    await self._hand_over(last)
            else:
                await self.writer.abort()
        except BaseException:
            await self.writer.abort()
            raise
        for _ in range(self.config.upload_workers):
            await self.finished.put(None)

    async def _hand_over(self, part: FinishedPart) -> None:
        log.info("finished %s (%d lines, %d bytes)", part.name, part.lines, part.size)
        self.summary.bytes_written += part.size
        await self.finished.put(part)

    async def _deliver(self) -> None:
        while (part := await self.finished.get()) is not None:
            delivery = await self.destination.deliver(part)
            if delivery.error is not None:
                log.error("%s did not reach S3: %s (kept at %s)", part.name, delivery.error, part.path)
            elif delivery.url is not None:
                log.info("uploaded %s", delivery.url)
            self.summary.deliveries.append(delivery)

    async def rename_for_real_count(self) -> None:
        """The split ended before N: give parts named after N their real-count names."""
        config, summary = self.config, self.summary
        log.warning(
            "the %s split holds only %d documents (%d requested)",
            config.split,
            summary.documents,
            config.num_samples,
        )
        closed_early = len(summary.deliveries) - 1  # the last part was named knowing the real count
        by_name = {delivery.name: delivery for delivery in summary.deliveries}
        pairs = renames_for_short_split(
            config.split, config.num_samples, summary.documents, config.max_lines_per_file, closed_early
        )
        for old, new in pairs:
            by_name[new] = await self.destination.rename(by_name.pop(old), new)
        summary.deliveries = sorted(by_name.values(), key=lambda delivery: delivery.name)


def _most_telling(failures: ExceptionGroup[Exception]) -> Exception:
    """The error to report from a failed TaskGroup: ours (one clear line) before anything else."""
    leaves = list(_leaves(failures))
    return next((exc for exc in leaves if isinstance(exc, Aioc4Error)), leaves[0])


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _prepare_output_dir(directory: Path) -> list[Path]:
    """Create the output folder if needed and check it is writable; returns the folders this created."""
    created = [folder for folder in (directory, *directory.parents) if not folder.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DestinationError(f"--output-dir {directory} exists and is not a folder") from None
    except OSError as exc:
        raise DestinationError(f"cannot create --output-dir {directory}: {exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DestinationError(f"--output-dir {directory} is not writable")
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a run created, deepest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: other files, or a part that failed to upload
            return
