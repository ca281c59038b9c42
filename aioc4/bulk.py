"""Bulk pulls (`--num-samples all`): whole shards, each its own small job, shared among workers.

A worker (one machine, or one `--procs` child process on it) reads its share of the selected shards
(`aioc4.sharding`) one after the other. Each shard goes through the same pipeline as a count job
(reader -> writer -> upload pool), into parts named after the shard (`aioc4.naming.ShardNaming`),
with a manifest of its own: a rerun skips complete shards and resumes an unfinished one after its
last intact part, so preemption costs at most one shard's unfinished parts. Because names and
manifests depend only on the shard, workers never write the same file, and any number of
workers, machines or reruns with other selections fit together. When a worker is done it tries to
combine every shard manifest of the selection into the job's manifest (`aioc4.merge`): the last
worker to finish succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from .config import BulkOptions, RunConfig
from .destination import Destination
from .errors import IncompleteJobError, UsageError
from .hub import HubSource, Shard
from .manifest import Manifest, resume_point
from .merge import load_shard_manifests, merge_at
from .naming import ShardNaming
from .pipeline import (
    PartPipeline,
    StopRequest,
    all_intact,
    check_output_dir,
    claim_part_names,
    hub_for,
    intact_parts,
    open_destination,
    prepare_output_dir,
    previous_job,
    remove_if_empty,
    request_for,
    summary_of,
)
from .report import RunSummary
from .sharding import WorkerSlot, select_shards, worker_share
from .source import SourceProgress, read_documents

__all__ = ["check_destination", "collect", "run_bulk"]

log = logging.getLogger("aioc4")


async def run_bulk(config: RunConfig, stop: StopRequest | None = None) -> RunSummary:
    """Pull this worker's share of the selected shards; returns a summary over that share."""
    assert config.bulk is not None
    options = config.bulk
    stop = stop or StopRequest()
    started = time.monotonic()
    check_output_dir(config.output_dir)
    async with AsyncExitStack() as stack:
        destination = await open_destination(config, stack)
        await destination.check()
        hub = await stack.enter_async_context(hub_for(config))
        commit = await hub.resolve_commit(config.revision)
        shards = await hub.list_shards(commit, config.config_name, config.split)
        by_number = {shard.index: shard for shard in shards}  # C4's shard numbers, from the names
        selection = select_shards(sorted(by_number), config.shards)
        mine = my_shards(selection, options)
        log.info(
            "%s@%s: %d of the %d selected %s shard(s) are this worker's (worker %d of %d, process %d of %d)",
            config.repo_id,
            commit[:12],
            len(mine),
            len(selection),
            config.split,
            options.worker_index + 1,
            options.num_workers,
            (options.proc_index or 0) + 1,
            options.procs,
        )
        created_dirs = prepare_output_dir(config.output_dir)
        child = options.proc_index is not None  # of --procs: the parent combines and tidies up
        job = _ShardJobs(config, hub, destination, commit, max(by_number, default=-1) + 1, stop)
        for number in mine:
            if stop.event.is_set():
                raise stop.error(kept=None)
            await job.pull(number, by_number[number])
        summary = job.summary(mine)
        summary.elapsed_seconds = time.monotonic() - started
        if not summary.failed and not child:
            await combine_if_complete(destination, config, config.shards)
        if config.s3 is not None and config.cleanup_local and not child:
            remove_if_empty(created_dirs)
        return summary


def my_shards(selection: list[int], options: BulkOptions) -> list[int]:
    """This process's shard positions: the worker's share, then the process's part of it."""
    slot = WorkerSlot(options.worker_index, options.num_workers)
    return worker_share(selection, slot, options.procs, options.proc_index or 0)


async def combine_if_complete(
    destination: Destination, config: RunConfig, wanted: tuple[int, ...] | None
) -> str | None:
    """Write the job's manifest if every selected shard is complete; None (and a log line) if not."""
    try:
        name, manifest = await merge_at(destination, config.split, config.config_name, wanted)
    except IncompleteJobError as exc:
        log.info("the job's manifest waits for the other workers: %s", exc)
        return None
    log.info(
        "every selected shard is complete: wrote %s (%d parts, %d documents)",
        destination.location(name),
        len(manifest.parts),
        manifest.documents,
    )
    return name


class _ShardJobs:
    """Pulls shards one at a time, each as a job with its own manifest, and keeps the totals."""

    def __init__(
        self,
        config: RunConfig,
        hub: HubSource,
        destination: Destination,
        commit: str,
        split_shards: int,
        stop: StopRequest,
    ) -> None:
        self.config = config
        self.hub = hub
        self.destination = destination
        self.commit = commit
        self.split_shards = split_shards
        self.stop = stop
        self.manifests: dict[int, Manifest] = {}
        self.failed: dict[str, str] = {}
        self.compressed_bytes = 0
        self.documents_read = 0
        self.shards_read = 0
        self.skipped_records = 0
        self.bytes_written_now = 0

    async def pull(self, position: int, shard: Shard) -> None:
        config = self.config
        naming = ShardNaming(
            config.split, position, config.max_lines_per_file, config.config_name, config.compression
        )
        request = replace(
            request_for(config), num_samples=0, shards="", shard=shard.path, split_shards=self.split_shards
        )
        manifest = await previous_job(
            self.destination, request, overwrite=config.overwrite, name=naming.manifest()
        )
        if manifest is not None and manifest.request.commit != self.commit:
            raise UsageError(
                f"{self.destination.location(naming.manifest())} was pulled at commit "
                f"{manifest.request.commit}, and {config.revision!r} is now {self.commit}: pass "
                f"--revision {manifest.request.commit} to finish the job at the same commit"
            )
        if manifest is not None and manifest.complete and await all_intact(self.destination, manifest.parts):
            log.info("shard %d (%s) is already complete", position, shard.path)
            self.manifests[position] = manifest
            return
        resumed = manifest is not None
        if manifest is None:
            manifest = Manifest(request=replace(request, commit=self.commit))
        else:
            manifest.complete = False
            manifest.parts = await intact_parts(self.destination, manifest.parts)
        first = [naming.final(1, 0)]  # the shard's first part (or only file): taken means another's
        await claim_part_names(self.destination, first, manifest, resumed=resumed, overwrite=config.overwrite)
        await self.destination.save_manifest(naming.manifest(), manifest.to_json(), final=False)
        await self.destination.abort_stale_uploads(naming.stem)
        await self._read(position, shard, naming, manifest)

    async def _read(self, position: int, shard: Shard, naming: ShardNaming, manifest: Manifest) -> None:
        point = resume_point(manifest.parts)
        progress = SourceProgress()
        documents = read_documents(
            self.hub,
            [shard],
            self.commit,
            sys.maxsize,
            streaming=self.config.streaming,
            progress=progress,
            start=point.start,
            skip_bad_records=self.config.skip_bad_records,
        )
        pipeline = PartPipeline(self.config, self.destination, manifest, point, naming=naming)
        await asyncio.to_thread(pipeline.writer.sweep)
        await pipeline.execute(documents, progress, self.stop)
        manifest.complete = not pipeline.failed
        await pipeline.save_manifest(final=True)
        self.manifests[position] = manifest
        self.failed.update(
            {str(self.destination.directory / name): error for name, error in pipeline.failed.items()}
        )
        self.compressed_bytes += progress.compressed_bytes
        self.documents_read += progress.documents
        self.shards_read += progress.shards_opened
        self.skipped_records += progress.skipped_records
        self.bytes_written_now += pipeline.writer.bytes_written
        log.info(
            "shard %d (%s): %d documents in %d part(s)",
            position,
            shard.path,
            manifest.documents,
            len(manifest.parts),
        )

    def summary(self, positions: list[int]) -> RunSummary:
        """This worker's shards as one manifest-like summary."""
        parts = [part for position in positions for part in self.manifests[position].parts]
        first = self.manifests[positions[0]].request if positions else None
        request = (
            replace(first, num_samples=sum(part.lines for part in parts), shard="")
            if first is not None
            else replace(request_for(self.config), num_samples=0, commit=self.commit)
        )
        manifest = Manifest(request=request, parts=parts, complete=not self.failed)
        summary = summary_of(manifest, self.destination)
        summary.failed = self.failed
        summary.compressed_bytes = self.compressed_bytes
        summary.documents_read = self.documents_read
        summary.shards_read = self.shards_read
        summary.skipped_records = self.skipped_records
        summary.bytes_written_now = self.bytes_written_now
        return summary


async def check_destination(config: RunConfig) -> None:
    """The destination checks of a run (S3 credentials, bucket, write probe), before `--procs` starts
    its children: a bad bucket is one error line, not one per process."""
    async with AsyncExitStack() as stack:
        destination = await open_destination(config, stack)
        await destination.check()


async def count_my_shards(config: RunConfig) -> int:
    """How many shards this worker (all its processes) pulls: `--procs` starts no more processes."""
    assert config.bulk is not None
    async with hub_for(config) as hub:
        commit = await hub.resolve_commit(config.revision)
        shards = await hub.list_shards(commit, config.config_name, config.split)
    selection = select_shards(sorted(shard.index for shard in shards), config.shards)
    return len(my_shards(selection, replace(config.bulk, procs=1, proc_index=None)))


async def collect(config: RunConfig, created_dirs: list[Path]) -> RunSummary:
    """After `--procs` children finished: this worker's shards as one summary, read back from their
    manifests at the destination (what the children read is added from their own summaries); and
    the job's manifest if every selected shard is complete."""
    assert config.bulk is not None
    async with AsyncExitStack() as stack:
        destination = await open_destination(config, stack)
        found = await load_shard_manifests(destination, config.split, config.config_name)
        split_shards = max((m.request.split_shards for m in found.values()), default=0)
        selection = list(config.shards) if config.shards is not None else list(range(split_shards))
        options = replace(config.bulk, procs=1, proc_index=None)
        mine = [position for position in my_shards(selection, options) if position in found]
        parts = [part for position in mine for part in found[position].parts]
        if mine:
            request = replace(found[mine[0]].request, num_samples=sum(p.lines for p in parts), shard="")
        else:
            request = replace(request_for(config), num_samples=0)
        summary = summary_of(Manifest(request=request, parts=parts, complete=True), destination)
        await combine_if_complete(destination, config, config.shards)
        if config.s3 is not None and config.cleanup_local:
            remove_if_empty(created_dirs)
        return summary
