"""One job's parts: reader -> part writer -> a bounded pool of deliveries, under one TaskGroup.

The stages are joined by closeable bounded channels (anyio's memory object streams): the reader
waits when the writer is behind, and the writer waits when `deliveries` finished parts are already
queued (it hands each part over before it finishes the next), so local disk holds at most
`2 * deliveries + 1` finished parts: one in each delivery, `deliveries` queued, one waiting. A stage
that ends closes its sending side, and the next stage ends once it has taken what is left: no
sentinels. The manifest is saved after every delivered part, so a run killed at any point can be
resumed by running the same command again. If the source fails, parts already finished are still
delivered before the error is reported. On SIGINT or SIGTERM reading stops, finished parts get
`grace_s` seconds to finish uploading, the part being written is removed, and the manifest is
saved; a second signal stops everything at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .destination import Destination
from .errors import Aioc4Error, DestinationError, InterruptedRunError, UploadError
from .jobs import PartSpec
from .manifest import Manifest, ResumePoint
from .naming import CountNaming, ShardNaming, part_names, renames_for_short_split
from .progress import Counters, ProgressDisplay
from .reader import ReadProgress
from .report import preview
from .segments import AnyBatch
from .writer import FinishedPart, PartWriter

__all__ = ["PartPipeline", "StopRequest"]

log = logging.getLogger("aioc4")

_BATCHES_AHEAD = 4


@dataclass(slots=True)
class StopRequest:
    """Set by a signal handler: stop reading, let finished parts upload for `grace_s`, save state."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    signum: int = 0
    grace_s: float = 10.0
    pipeline_running: bool = False
    deadline: float | None = None  # loop time by which everything after the signal must be done

    def request(self, signum: int) -> None:
        self.signum = signum
        self.deadline = asyncio.get_running_loop().time() + self.grace_s
        self.event.set()

    def error(self, kept: int | None) -> InterruptedRunError:
        """Exit 130 for SIGINT, 143 for SIGTERM, as shells report them."""
        name = signal.Signals(self.signum).name
        what = (
            f"{kept} finished part(s) kept and recorded in the manifest"
            if kept is not None
            else "finished parts kept"
        )
        return InterruptedRunError(
            f"interrupted by {name}: {what}; run the same command again to resume",
            exit_code=128 + self.signum,
        )


class PartPipeline:
    """Documents in, delivered parts out: owns the channels and the tasks that pass parts along.

    `limit` is the number of documents a count job asks for (None for a shard of a bulk pull): a
    count job whose split ends sooner names its parts after the real count.
    """

    def __init__(
        self,
        spec: PartSpec,
        naming: CountNaming | ShardNaming,
        destination: Destination,
        manifest: Manifest,
        point: ResumePoint | None = None,
        *,
        limit: int | None = None,
    ) -> None:
        point = point or ResumePoint()
        self.spec = spec
        self.naming = naming
        self.limit = limit
        self.destination = destination
        self.manifest = manifest
        self.writer = PartWriter(
            spec.staging,
            naming,
            spec.max_lines_per_file,
            requested=limit or 0,
            first_index=point.next_index,
            documents=point.documents,
            durable=destination.in_place,
        )
        self.failed: list[UploadError] = []
        self.source_error: Aioc4Error | None = None
        self.fatal_upload: UploadError | None = None  # a permanent failure (no bucket, no access): stop
        self.real_count_names = True  # a short split's parts are named after what it holds, if free
        self._progress: ReadProgress | None = None
        self._already_there = {part.name: part.crc32 for part in manifest.parts}
        self._delivered: set[str] = set()  # parts of this run that reached their destination
        self._manifest_lock = asyncio.Lock()
        self._stopping = False
        self._halt: _Halt | None = None

    async def execute(
        self,
        documents: AsyncGenerator[AnyBatch, None],
        progress: ReadProgress,
        stop: StopRequest | None = None,
        *,
        display: ProgressDisplay | None = None,
    ) -> None:
        """Write `documents` into parts and deliver them; a source error is raised after delivery."""
        stop = stop or StopRequest()
        self._progress = progress
        batches_in, batches_out = anyio.create_memory_object_stream[AnyBatch](_BATCHES_AHEAD)
        parts_in, parts_out = anyio.create_memory_object_stream[FinishedPart](self.spec.deliveries)
        try:
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(documents, batches_in))
                writer = group.create_task(self._write(batches_out, parts_in))
                with parts_out:  # each delivery holds a clone: the stream ends when the writer's side closes
                    deliveries = [
                        group.create_task(self._deliver(parts_out.clone()))
                        for _ in range(self.spec.deliveries)
                    ]
                work = [reader, writer, *deliveries]
                self._halt = _Halt(reader, writer, deliveries)
                helpers = [group.create_task(self._stop_on(stop)), group.create_task(self._halt.on_request())]
                if display is not None:
                    helpers.append(group.create_task(display.run(self._counters)))
                group.create_task(_cancel_when_done(helpers, work))
                stop.pipeline_running = True
        except ExceptionGroup as failures:
            raise _most_telling(failures) from None
        finally:
            stop.pipeline_running = False
        if self.limit is not None:
            self.manifest.split_exhausted = progress.exhausted and self.writer.documents < self.limit
        if self._stopping:
            await self._save_before(stop.deadline)
            raise stop.error(kept=len(self.manifest.parts))
        if self.fatal_upload is not None:
            await self.save_manifest(final=False)
            kept = sorted(set(self.writer.finished_names) - self._delivered)  # failed, or never sent
            raise DestinationError(
                f"S3 refuses every upload ({self.fatal_upload.reason}): stopped reading; {len(kept)} "
                f"finished part(s) kept locally in {self.spec.staging}: {', '.join(kept) or 'none'}"
            )
        if self.source_error is not None:
            await self.save_manifest(final=False)
            raise self.source_error

    def _counters(self) -> Counters:
        """For the progress display: read a few times a second, never per document."""
        parts = self.manifest.parts
        delivered = len(parts) if self.destination.in_place else sum(part.uploaded for part in parts)
        return Counters(self.writer.documents, self.writer.bytes_written, delivered)

    async def _stop_on(self, stop: StopRequest) -> None:
        """On a signal: stop reading and writing now (the part being written is dropped), let the uploads
        in flight finish until the grace period ends, then cancel what is left. A second signal cancels
        the whole run at once (the CLI cancels the main task)."""
        await stop.event.wait()
        assert self._halt is not None
        log.warning(
            "stopping: finishing the uploads in flight (up to %.0f s), then saving the manifest", stop.grace_s
        )
        self._stopping = True
        try:
            async with asyncio.timeout_at(stop.deadline):
                self._halt.requested.set()
                await self._halt.wait_for_deliveries()
        except TimeoutError:
            log.warning("stopping: the grace period is over; uploads still running are abandoned")
        self._halt.cancel_deliveries()

    async def _save_before(self, deadline: float | None) -> None:
        """The manifest after a stop, within the grace period: the local copy is written first, so a
        frozen S3 costs only its remote copy."""
        await self.destination.save_local_copy(self.naming.manifest(), self.manifest.to_json())
        try:
            async with asyncio.timeout_at(deadline):
                await self.save_manifest(final=False)
        except TimeoutError:
            log.warning("could not save the manifest at the destination in time; the local copy is current")

    async def _read(
        self, documents: AsyncGenerator[AnyBatch, None], batches: MemoryObjectSendStream[AnyBatch]
    ) -> None:
        """Producer: batches of documents in order; a source failure ends the stream early."""
        with batches:
            try:
                async with aclosing(documents):
                    async for batch in documents:
                        if (
                            self.writer.documents == 0
                            and self.manifest.first_text_preview is None
                            and batch.first_text
                        ):
                            self.manifest.first_text_preview = preview(batch.first_text)
                        await batches.send(batch)
            except Aioc4Error as exc:
                self.source_error = exc
            except anyio.BrokenResourceError:
                pass  # the writer is gone (its own error is the one reported)

    async def _write(
        self, batches: MemoryObjectReceiveStream[AnyBatch], parts: MemoryObjectSendStream[FinishedPart]
    ) -> None:
        """Writer: parts in order; hands each finished part to the deliveries. Its unfinished part is
        removed if it stops early (a source error, a stop, a cancellation)."""
        with batches, parts:
            try:
                async for batch in batches:
                    async with aclosing(self.writer.parts_of(batch)) as finished:
                        async for part in finished:
                            await self._hand_over(part, parts)
                if self.source_error is None and not self._stopping:
                    total = None
                    if self._ended_short():
                        self.real_count_names = await self._real_count_names_are_free()
                        total = None if self.real_count_names else self.limit
                    for part in await self.writer.close(total):
                        await self._hand_over(part, parts)
                else:
                    if self.source_error is not None:  # full parts are delivered before the error
                        for part in await self.writer.finished():
                            await self._hand_over(part, parts)
                    await self.writer.abort()
            except BaseException:
                await self.writer.abort()
                raise

    async def _hand_over(self, part: FinishedPart, parts: MemoryObjectSendStream[FinishedPart]) -> None:
        log.info("finished %s (%d lines, %d bytes)", part.name, part.record.lines, part.size)
        await parts.send(part)

    async def _deliver(self, parts: MemoryObjectReceiveStream[FinishedPart]) -> None:
        with parts:
            async for part in parts:
                await self._deliver_one(part)

    async def _deliver_one(self, part: FinishedPart) -> None:
        if self._already_there.get(part.name) == part.record.crc32:
            log.info("%s is already in place", part.name)
            delivery = await self.destination.already_delivered(part)
        else:
            delivery = await self.destination.deliver(part)
        if delivery.error is not None:
            log.error("%s did not reach S3: %s (kept at %s)", part.name, delivery.error.reason, part.path)
            self.failed.append(delivery.error)
            if delivery.error.permanent and self.fatal_upload is None:
                self.fatal_upload = delivery.error
                assert self._halt is not None
                self._halt.requested.set()  # reading stops; the parts already finished stay local
        else:
            self._delivered.add(part.name)
            if delivery.uploaded:
                log.info("uploaded %s", self.destination.location(part.name))
        part.record.uploaded = delivery.uploaded
        async with self._manifest_lock:
            self.manifest.record(part.record)
            await self._save(final=False)

    async def save_manifest(self, *, final: bool) -> None:
        async with self._manifest_lock:
            await self._save(final=final)

    async def _save(self, *, final: bool) -> None:
        await self.destination.save_manifest(self.naming.manifest(), self.manifest.to_json(), final=final)

    def _ended_short(self) -> bool:
        """A count job whose split held fewer documents than asked for."""
        return (
            self.limit is not None
            and self._progress is not None
            and self._progress.exhausted
            and self.writer.documents < self.limit
        )

    async def _real_count_names_are_free(self) -> bool:
        """Real-count names (`c4_validation_10000_...` for a split of 10,000) may belong to another,
        finished job in the same place: then every part keeps the name the request gave it."""
        assert isinstance(self.naming, CountNaming)
        naming = self.naming
        names = part_names(
            naming.split, self.writer.documents, naming.max_lines, naming.config, naming.compression
        )
        taken = await self.destination.existing(names)
        if taken:
            log.warning(
                "the split ended at %d documents, but %s already exist(s): the parts keep the names of the "
                "%d requested, so that nothing is overwritten",
                self.writer.documents,
                ", ".join(taken),
                naming.requested,
            )
        return not taken

    async def finish(self) -> None:
        """After `execute`: a short split's parts get their real-count names; the final manifest."""
        if self.manifest.split_exhausted and self.real_count_names:
            await self._rename_for_real_count()
        self.manifest.complete = not self.failed
        await self.save_manifest(final=True)

    async def _rename_for_real_count(self) -> None:
        """The split ended before N: give parts named after N their real-count names."""
        assert isinstance(self.naming, CountNaming)
        naming, manifest = self.naming, self.manifest
        documents = manifest.documents
        log.warning(
            "the %s split holds only %d documents (%d requested)", naming.split, documents, naming.requested
        )
        pairs = dict(
            renames_for_short_split(
                naming.split,
                naming.requested,
                documents,
                naming.max_lines,
                len(manifest.parts) - 1,
                naming.config,
                naming.compression,
            )
        )
        for part in manifest.parts:
            if part.name in pairs:
                await self.destination.rename(part.name, pairs[part.name])
                log.info("renamed %s to %s (the real count)", part.name, pairs[part.name])
                part.name = pairs[part.name]
        await self.save_manifest(final=False)


@dataclass(slots=True)
class _Halt:
    """Stops a running pipeline from outside its stages: no task swallows a cancellation to do it."""

    reader: asyncio.Task[None]
    writer: asyncio.Task[None]
    deliveries: list[asyncio.Task[None]]
    requested: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_request(self) -> None:
        """A pipeline helper: halt reading and writing once a stage asks for it (`requested`). The
        writer's side of the parts channel closes as it ends, so the deliveries take the parts
        already finished, then end."""
        await self.requested.wait()
        for task in (self.reader, self.writer):
            task.cancel()
        await asyncio.wait([self.reader, self.writer])

    async def wait_for_deliveries(self) -> None:
        await asyncio.wait(self.deliveries)

    def cancel_deliveries(self) -> None:
        for task in self.deliveries:
            task.cancel()


async def _cancel_when_done(helpers: list[asyncio.Task[None]], work: list[asyncio.Task[None]]) -> None:
    """The stop watcher and the progress display only live as long as the work they watch."""
    await asyncio.wait(work)
    for helper in helpers:
        helper.cancel()


def _most_telling(failures: ExceptionGroup[Exception]) -> Exception:
    """The error to report from a failed TaskGroup: ours (one clear line) before anything else."""
    leaves = list(_leaves(failures))
    return next((exc for exc in leaves if isinstance(exc, Aioc4Error)), leaves[0])


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
