"""Wiring: Hub reader -> part writer -> a bounded pool of deliverers, under one TaskGroup.

Every queue between stages is bounded: the reader waits when the writer is behind, and the
writer waits when `upload_workers` finished parts are already queued, so local disk holds at
most about `2 * upload_workers + 1` parts. The manifest is saved after every delivered part, so
a run killed at any point can be resumed by running the same command again. If the source
fails, parts already finished are still delivered before the error is reported. On SIGINT or
SIGTERM reading stops, finished parts get `grace_s` seconds to finish uploading, the part being
written is removed, and the manifest is saved; a second signal stops everything at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import RunConfig
from .decode import Batch
from .destination import Destination, LocalDestination, save_local_manifest
from .errors import Aioc4Error, DestinationError, Interrupted, UsageError
from .hub import HubSource, Shard
from .manifest import Manifest, PartRecord, RequestInfo, ResumePoint, manifest_name, resume_point
from .naming import CountNaming, PartNaming, job_stem, part_index, part_names, renames_for_short_split
from .progress import Counters, ProgressDisplay
from .report import RunSummary, preview
from .retry import RetryBudget, RetryPolicy
from .sharding import select_shards, selection_text
from .source import SourceProgress, read_documents
from .uploader import S3Destination
from .writer import FinishedPart, PartWriter

__all__ = [
    "PartPipeline",
    "StopRequest",
    "all_intact",
    "check_output_dir",
    "claim_part_names",
    "hub_for",
    "intact_parts",
    "open_destination",
    "prepare_output_dir",
    "previous_job",
    "remove_if_empty",
    "request_for",
    "run",
    "summary_of",
]

log = logging.getLogger("aioc4")

_BATCHES_AHEAD = 4
_CHECKS_IN_FLIGHT = 8


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

    def error(self, kept: int | None) -> Interrupted:
        """Exit 130 for SIGINT, 143 for SIGTERM, as shells report them."""
        name = signal.Signals(self.signum).name
        what = (
            f"{kept} finished part(s) kept and recorded in the manifest"
            if kept is not None
            else "finished parts kept"
        )
        return Interrupted(
            f"interrupted by {name}: {what}; run the same command again to resume",
            exit_code=128 + self.signum,
        )


async def run(
    config: RunConfig, stop: StopRequest | None = None, *, display: ProgressDisplay | None = None
) -> RunSummary:
    """Download the first `config.num_samples` documents into parts and deliver them (or resume that)."""
    stop = stop or StopRequest()
    started = time.monotonic()
    check_output_dir(config.output_dir)
    async with AsyncExitStack() as stack:
        destination = await open_destination(config, stack)
        await destination.check()
        request = request_for(config)
        manifest = await previous_job(destination, request, overwrite=config.overwrite)
        if manifest is not None:
            log.debug(
                "earlier run of this job: %d part(s) recorded, %s",
                len(manifest.parts),
                "complete" if manifest.complete else "unfinished",
            )
        if manifest is not None and manifest.complete and await all_intact(destination, manifest.parts):
            name = manifest_name(config.split, config.num_samples, config.config_name)
            log.info("%s is already complete: nothing to do", name)
            return summary_of(manifest, destination, already_complete=True)
        hub = await stack.enter_async_context(hub_for(config))
        resumed = manifest is not None
        if manifest is None:
            commit = await hub.resolve_commit(config.revision)
            manifest = Manifest(request=replace(request, commit=commit))
        else:
            manifest.complete = False
            manifest.parts = await intact_parts(destination, manifest.parts)
        commit = manifest.request.commit
        shards = await hub.list_shards(commit, config.config_name, config.split)
        log.info("%s@%s: %d %s shard(s) available", config.repo_id, commit[:12], len(shards), config.split)
        by_number = {shard.index: shard for shard in shards}
        shards = [by_number[number] for number in select_shards(sorted(by_number), config.shards)]
        log.debug("%d shard(s) selected, the first %s", len(shards), shards[0].path if shards else "none")
        created_dirs = prepare_output_dir(config.output_dir)  # last check: nothing is created on bad input
        planned = part_names(
            config.split,
            config.num_samples,
            config.max_lines_per_file,
            config.config_name,
            config.compression,
        )
        await claim_part_names(destination, planned, manifest, resumed=resumed, overwrite=config.overwrite)
        await destination.save_manifest(  # from now on a killed run leaves a manifest behind
            manifest_name(config.split, config.num_samples, config.config_name),
            manifest.to_json(),
            final=False,
        )
        summary = await _produce(config, hub, shards, destination, manifest, stop, display)
        summary.elapsed_seconds = time.monotonic() - started
        if config.s3 is not None and config.cleanup_local:
            remove_if_empty(created_dirs)
        return summary


def hub_for(config: RunConfig) -> HubSource:
    """The Hub source of a run: its repo, cache, timeout, and one retry budget for the whole run."""
    budget = RetryBudget(RetryPolicy(total_wait_s=config.retry_budget_s))
    return HubSource(config.repo_id, cache_dir=config.cache_dir, budget=budget, timeout_s=config.timeout_s)


def request_for(config: RunConfig) -> RequestInfo:
    """What identifies a count job in its manifest (the commit is added once resolved)."""
    return RequestInfo(
        config.repo_id,
        config.revision,
        config.config_name,
        config.split,
        config.num_samples,
        config.max_lines_per_file,
        shards=selection_text(config.shards) if config.shards is not None else "",
        compression=config.compression,
    )


async def _produce(
    config: RunConfig,
    hub: HubSource,
    shards: list[Shard],
    destination: Destination,
    manifest: Manifest,
    stop: StopRequest,
    display: ProgressDisplay | None = None,
) -> RunSummary:
    point = resume_point(manifest.parts)
    if point.documents:
        log.info(
            "resuming after %d part(s) (%d documents) already in place", point.next_index - 1, point.documents
        )
        assert point.start is not None
        log.debug(
            "resume point: part %d, from %s line %d", point.next_index, point.start.shard, point.start.line
        )
    later = [part.name for part in manifest.parts if part_index(part.name) >= point.next_index]
    if later:
        log.debug("intact later part(s) to be kept, not uploaded again: %s", ", ".join(later))
    progress = SourceProgress()
    documents = read_documents(
        hub,
        shards,
        manifest.request.commit,
        config.num_samples - point.documents,
        streaming=config.streaming,
        progress=progress,
        start=point.start,
        skip_bad_records=config.skip_bad_records,
    )
    pipeline = PartPipeline(config, destination, manifest, point)
    if swept := await asyncio.to_thread(pipeline.writer.sweep):
        log.info("removed %d unfinished part file(s) left by an earlier run", swept)
    await pipeline.execute(documents, progress, stop, display=display)
    if manifest.split_exhausted and pipeline.real_count_names:
        await pipeline.rename_for_real_count()
    manifest.complete = not pipeline.failed
    await pipeline.save_manifest(final=True)
    summary = summary_of(manifest, destination)
    summary.failed = {str(destination.directory / name): error for name, error in pipeline.failed.items()}
    summary.compressed_bytes = progress.compressed_bytes
    summary.shards_read = progress.shards_opened
    summary.skipped_records = progress.skipped_records
    summary.documents_read = progress.documents
    summary.bytes_written_now = pipeline.writer.bytes_written
    return summary


async def open_destination(config: RunConfig, stack: AsyncExitStack) -> Destination:
    if config.s3 is None:
        return LocalDestination(config.output_dir)
    s3 = S3Destination(
        config.s3,
        config.output_dir,
        job_prefix="" if config.bulk else job_stem(config.split, config.num_samples, config.config_name),
        endpoint_url=config.endpoint_url,
        workers=config.upload_workers,
        cleanup_local=bool(config.cleanup_local),
        checksum=config.s3_checksum,
        timeout_s=config.timeout_s,
    )
    return await stack.enter_async_context(s3)


async def previous_job(
    destination: Destination, request: RequestInfo, *, overwrite: bool, name: str | None = None
) -> Manifest | None:
    """The manifest of an earlier run of the same job; a different job under the same name is refused
    (or, with --overwrite, its parts are deleted)."""
    name = name or manifest_name(request.split, request.num_samples, request.config_name)
    data = await destination.load_manifest(name)
    if data is None:
        return None
    manifest = Manifest.from_json(data, where=destination.location(name))
    differences = manifest.request.differences(request)
    if not differences:
        return manifest
    if not overwrite:
        raise UsageError(
            f"{destination.location(name)} records a different job ({'; '.join(differences)}); "
            "rerun with the same arguments to resume it, or pass --overwrite to replace it"
        )
    own = [part.name for part in manifest.parts if belongs_to(part.name, manifest, name)]
    log.warning("--overwrite: deleting the %d part(s) of the earlier job", len(own))
    for part in manifest.parts:
        if part.name in own:
            await destination.remove(part.name)
        else:  # a hand-edited manifest must not make --overwrite delete another job's part
            log.warning("--overwrite: %s is not a name of the earlier job; left alone", part.name)
    return None


def belongs_to(part: str, manifest: Manifest, name: str) -> bool:
    """Whether a part name is one the job of `manifest` (saved as `name`) gives its parts."""
    request = manifest.request
    stems = [name.removesuffix(".manifest.json")]
    if manifest.split_exhausted:  # a short split's parts carry the real count
        stems.append(job_stem(request.split, manifest.documents, request.config_name))
    return any(part.startswith((f"{stem}.", f"{stem}_part")) for stem in stems)


async def claim_part_names(
    destination: Destination, names: Sequence[str], manifest: Manifest, *, resumed: bool, overwrite: bool
) -> None:
    """Refuse to write over files that carry this job's part names but that no run of it made: a file
    left by another tool, or another job's part. Leftovers of a killed run of this job (it has a
    manifest) are its own, and are replaced."""
    recorded = {part.name for part in manifest.parts}
    foreign = [name for name in await destination.existing(names) if name not in recorded]
    if foreign and not resumed and not overwrite:
        shown = ", ".join(destination.location(name) for name in foreign[:3]) + (", ..." * (len(foreign) > 3))
        raise UsageError(
            f"{shown} already exist(s) and no manifest of this job records them (another job's parts, or "
            "files from another tool): move them away, or pass --overwrite to replace them"
        )


async def intact_parts(destination: Destination, parts: Sequence[PartRecord]) -> list[PartRecord]:
    """The recorded parts that are still whole at the destination (checked a few at a time)."""
    limit = asyncio.Semaphore(_CHECKS_IN_FLIGHT)

    async def check(part: PartRecord) -> bool:
        async with limit:
            return await destination.is_intact(part)

    verdicts = await asyncio.gather(*(check(part) for part in parts))
    return [part for part, intact in zip(parts, verdicts, strict=True) if intact]


async def all_intact(destination: Destination, parts: Sequence[PartRecord]) -> bool:
    return len(await intact_parts(destination, parts)) == len(parts)


def summary_of(manifest: Manifest, destination: Destination, *, already_complete: bool = False) -> RunSummary:
    locations = []
    for part in manifest.parts:
        if part.uploaded:
            locations.append(destination.location(part.name))
        local = destination.directory / part.name
        if local.exists():
            locations.append(str(local))
    return RunSummary(manifest=manifest, locations=locations, already_complete=already_complete)


class PartPipeline:
    """Documents in, delivered parts out: owns the queues and the tasks that pass parts along."""

    def __init__(
        self,
        config: RunConfig,
        destination: Destination,
        manifest: Manifest,
        point: ResumePoint | None = None,
        naming: PartNaming | None = None,
    ) -> None:
        point = point or ResumePoint()
        self.naming = naming or CountNaming(
            config.split,
            config.num_samples,
            config.max_lines_per_file,
            config.config_name,
            config.compression,
        )
        self.config = config
        self.destination = destination
        self.manifest = manifest
        self.batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=_BATCHES_AHEAD)
        self.finished: asyncio.Queue[FinishedPart | None] = asyncio.Queue(maxsize=config.upload_workers)
        self.writer = PartWriter(
            config.output_dir,
            config.split,
            config.num_samples,
            config.max_lines_per_file,
            first_index=point.next_index,
            documents=point.documents,
            naming=self.naming,
        )
        self.failed: dict[str, str] = {}
        self.source_error: Aioc4Error | None = None
        self.fatal_upload: str | None = None  # a permanent upload failure (no bucket, no access): stop
        self.real_count_names = True  # a short split's parts are named after what it holds, if free
        self._progress: SourceProgress | None = None
        self._already_there = {part.name: part.crc32 for part in manifest.parts}
        self._delivered: set[str] = set()  # parts of this run that reached their destination
        self._manifest_lock = asyncio.Lock()
        self._stopping = False

    async def execute(
        self,
        documents: AsyncGenerator[Batch, None],
        progress: SourceProgress,
        stop: StopRequest | None = None,
        *,
        display: ProgressDisplay | None = None,
    ) -> None:
        """Write `documents` into parts and deliver them; a source error is raised after delivery."""
        stop = stop or StopRequest()
        self._progress = progress
        try:
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(documents))
                writer = group.create_task(self._write())
                deliverers = [group.create_task(self._deliver()) for _ in range(self.config.upload_workers)]
                work = [reader, writer, *deliverers]
                self._halt = _Halt(reader, writer, deliverers, self.finished)
                helpers = [group.create_task(self._stop_on(stop)), group.create_task(self._halt.on_request())]
                if display is not None:
                    helpers.append(group.create_task(display.run(self._counters)))
                group.create_task(_cancel_when_done(helpers, work))
                stop.pipeline_running = True
        except ExceptionGroup as failures:
            raise _most_telling(failures) from None
        finally:
            stop.pipeline_running = False
        self.manifest.split_exhausted = progress.exhausted and self.writer.documents < self.config.num_samples
        if self._stopping:
            await self._save_before(stop.deadline)
            raise stop.error(kept=len(self.manifest.parts))
        if self.fatal_upload is not None:
            await self.save_manifest(final=False)
            kept = sorted(set(self.writer.finished_names) - self._delivered)  # failed, or never sent
            raise DestinationError(
                f"{self.fatal_upload}: stopped reading; {len(kept)} finished part(s) kept locally in "
                f"{self.destination.directory}: {', '.join(kept) or 'none'}"
            )
        if self.source_error is not None:
            await self.save_manifest(final=False)
            raise self.source_error

    def _counters(self) -> Counters:
        """For the progress display: read a few times a second, never per document."""
        parts = self.manifest.parts
        delivered = sum(part.uploaded for part in parts) if self.config.s3 is not None else len(parts)
        return Counters(self.writer.documents, self.writer.bytes_written, delivered)

    async def _stop_on(self, stop: StopRequest) -> None:
        """On a signal: stop reading and writing now (the part being written is dropped), let the uploads
        in flight finish until the grace period ends, then cancel what is left. A second signal cancels
        the whole run at once (the CLI cancels the main task)."""
        await stop.event.wait()
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
        path = self.destination.directory / self.naming.manifest()
        await save_local_manifest(path, self.manifest.to_json())  # first, and never cut short
        try:
            async with asyncio.timeout_at(deadline):
                await self.save_manifest(final=False)
        except TimeoutError:
            log.warning("could not save the manifest at the destination in time; the local copy is current")

    async def _read(self, documents: AsyncGenerator[Batch, None]) -> None:
        """Producer: batches of documents in order; a source failure ends the stream early."""
        try:
            async with aclosing(documents):
                async for batch in documents:
                    if (
                        self.writer.documents == 0
                        and self.manifest.first_text_preview is None
                        and batch.first_text
                    ):
                        self.manifest.first_text_preview = preview(batch.first_text)
                    await self.batches.put(batch)
        except Aioc4Error as exc:
            self.source_error = exc
        await self.batches.put(None)

    async def _write(self) -> None:
        """Writer: parts in order; hands each finished part to the deliverers."""
        try:
            while (batch := await self.batches.get()) is not None:
                for part in await self.writer.write(batch):
                    await self._hand_over(part)
            if self.source_error is None and not self._stopping:
                total = None
                if self._ended_short():
                    self.real_count_names = await self._real_count_names_are_free()
                    total = None if self.real_count_names else self.config.num_samples
                last = await self.writer.close(total)
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
        log.info("finished %s (%d lines, %d bytes)", part.name, part.record.lines, part.size)
        await self.finished.put(part)

    async def _deliver(self) -> None:
        while (part := await self.finished.get()) is not None:
            if self._already_there.get(part.name) == part.record.crc32:
                log.info("%s is already in place", part.name)
                delivery = await self.destination.already_delivered(part)
            else:
                delivery = await self.destination.deliver(part)
            if delivery.error is not None:
                log.error("%s did not reach S3: %s (kept at %s)", part.name, delivery.error, part.path)
                self.failed[part.name] = delivery.error
                if delivery.permanent and self.fatal_upload is None:
                    self.fatal_upload = f"S3 refuses every upload ({delivery.error})"
                    self._halt.requested.set()  # reading stops; the parts already finished stay local
            elif delivery.uploaded:
                log.info("uploaded %s", self.destination.location(part.name))
            part.record.uploaded = delivery.uploaded
            if delivery.error is None:
                self._delivered.add(part.name)
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
            isinstance(self.naming, CountNaming)
            and self._progress is not None
            and self._progress.exhausted
            and self.writer.documents < self.config.num_samples
        )

    async def _real_count_names_are_free(self) -> bool:
        """Real-count names (`c4_validation_10000_...` for a split of 10,000) may belong to another,
        finished job in the same place: then every part keeps the name the request gave it."""
        config = self.config
        names = part_names(
            config.split,
            self.writer.documents,
            config.max_lines_per_file,
            config.config_name,
            config.compression,
        )
        taken = await self.destination.existing(names)
        if taken:
            log.warning(
                "the split ended at %d documents, but %s already exist(s): the parts keep the names of the "
                "%d requested, so that nothing is overwritten",
                self.writer.documents,
                ", ".join(taken),
                config.num_samples,
            )
        return not taken

    async def rename_for_real_count(self) -> None:
        """The split ended before N: give parts named after N their real-count names."""
        config, manifest = self.config, self.manifest
        documents = manifest.documents
        log.warning(
            "the %s split holds only %d documents (%d requested)", config.split, documents, config.num_samples
        )
        pairs = dict(
            renames_for_short_split(
                config.split,
                config.num_samples,
                documents,
                config.max_lines_per_file,
                len(manifest.parts) - 1,
                config.config_name,
                config.compression,
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
    deliverers: list[asyncio.Task[None]]
    finished: asyncio.Queue[FinishedPart | None]
    requested: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_request(self) -> None:
        """A pipeline helper: halt reading and writing once a stage asks for it (`requested`)."""
        await self.requested.wait()
        await self.reading_and_writing()

    async def reading_and_writing(self) -> None:
        """Cancel the reader and the writer (which drops its unfinished part), then end the deliverers'
        queue if the writer could not: they deliver what is already finished, then stop."""
        for task in (self.reader, self.writer):
            task.cancel()
        await asyncio.wait([self.reader, self.writer])
        if self.writer.cancelled():
            for _ in self.deliverers:
                await self.finished.put(None)

    async def wait_for_deliveries(self) -> None:
        await asyncio.wait(self.deliverers)

    def cancel_deliveries(self) -> None:
        for task in self.deliverers:
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


def check_output_dir(directory: Path) -> None:
    """Before any request: the output folder is one, or can be created, and is writable (nothing created)."""
    if directory.exists() and not directory.is_dir():
        raise DestinationError(f"--output-dir {directory} exists and is not a folder")
    existing = next((folder for folder in (directory, *directory.parents) if folder.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DestinationError(f"--output-dir {directory} cannot be created or written ({existing})")


def prepare_output_dir(directory: Path) -> list[Path]:
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


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a run created, deepest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: other files, or a part that failed to upload
            return
