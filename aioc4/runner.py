"""The one job runner: a job spec, a destination and a stop signal in; a summary out.

    run(job, destination, stop)
      count job:  earlier manifest? complete -> done | resolve commit -> list shards -> pull
      bulk pull:  resolve commit -> list shards -> this process's share -> for each shard:
                  its earlier manifest? complete -> skip | pull;  then combine the job's manifest
      pull:       claim the part names -> save the manifest -> drop unfinished writes ->
                  reader -> PartPipeline (writer -> deliveries) -> final manifest

The command line, the library API (`aioc4.api`) and `--procs` children all call `run`; the planner
(`aioc4.plan`) makes the same checks with the same `destination_for` and `hub_for`. A bulk pull's shards are
each a small job of their own with their own manifest, so preemption costs at most one shard's
unfinished parts and any number of workers, machines or reruns fit together; the last worker to
finish combines the shard manifests into the job's (`aioc4.merge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import RunConfig
from .decode import SourcePosition
from .decode_pool import DecodePool
from .destination import Destination
from .errors import DestinationError, IncompleteJobError, UploadError, UsageError
from .hub import HubSource, Shard
from .jobs import BulkJob, CountJob, Job, SourceSpec, rate_share
from .manifest import JobIdentity, Manifest, PartRecord, resume_point
from .merge import load_shard_manifests, merge_at
from .naming import CountNaming, ShardNaming, part_index
from .pipeline import PartPipeline, StopRequest
from .progress import ProgressDisplay
from .rate import RateLimit
from .reader import ReadProgress, fits_in_first_shard, read_documents
from .report import Reading, RunSummary
from .retry import RetryBudget, RetryPolicy
from .segments import AnyBatch
from .sharding import select_shards
from .storage import storage_for

__all__ = [
    "check_output_dir",
    "collect_children",
    "destination_for",
    "hub_for",
    "previous_job",
    "run",
    "selected_shards",
    "worker_shard_count",
]

log = logging.getLogger("aioc4")

_CHECKS_IN_FLIGHT = 8


def destination_for(config: RunConfig) -> Destination:
    """The run's destination: its storage (the output folder, or S3) with the output folder as staging."""
    target = config.s3 if config.s3 is not None else config.output_dir
    storage = storage_for(
        target,
        endpoint_url=config.endpoint_url,
        checksum=config.s3_checksum,
        timeout_s=config.timeout_s,
        connections=config.upload_connections,
        upload_rate=RateLimit(rate) if (rate := rate_share(config, config.max_upload_rate)) else None,
    )
    return Destination(storage, config.output_dir, cleanup_local=bool(config.cleanup_local))


def hub_for(source: SourceSpec, endpoint: str | None = None) -> HubSource:
    """The Hub source of a run: its repo, cache, timeout, and one retry budget for the whole run."""
    budget = RetryBudget(RetryPolicy(total_wait_s=source.retry_budget_s))
    rate = RateLimit(source.max_download_rate) if source.max_download_rate is not None else None
    return HubSource(
        source.repo_id,
        endpoint=endpoint,
        cache_dir=source.cache_dir,
        budget=budget,
        timeout_s=source.timeout_s,
        rate=rate,
        connections=source.download_connections,
    )


async def run(
    job: Job,
    destination: Destination,
    stop: StopRequest | None = None,
    *,
    hub: HubSource | None = None,
    display: ProgressDisplay | None = None,
    on_decoding_here: Callable[[], None] | None = None,
) -> RunSummary:
    """Do the job (or resume it, or confirm it is done) and say what it did.

    `hub` is the transport seam for the source (a `HubSource` built on an injected session); by
    default one is made from the job's source spec, at huggingface_hub's endpoint (`HF_ENDPOINT`).
    `on_decoding_here` is called before a count job decodes in this process (the CLI tunes glibc's
    heap for it then, which it had not for a job meant for decode processes).
    """
    stop = stop or StopRequest()
    started = time.monotonic()
    check_output_dir(job.parts.staging)
    hub = hub or hub_for(job.source)
    async with destination, hub:
        await destination.check()
        if isinstance(job, CountJob):
            summary = await _run_count(job, destination, hub, stop, display, on_decoding_here)
        else:
            summary = await _run_bulk(job, destination, hub, stop)
    return replace(summary, elapsed_seconds=time.monotonic() - started)


# -- the two kinds of job ---------------------------------------------------------------------------


async def _run_count(
    job: CountJob,
    destination: Destination,
    hub: HubSource,
    stop: StopRequest,
    display: ProgressDisplay | None,
    on_decoding_here: Callable[[], None] | None,
) -> RunSummary:
    naming = job.naming
    manifest = await previous_job(
        destination, job.identity(), naming.manifest(), overwrite=job.parts.overwrite
    )
    if manifest is not None and manifest.complete and await all_intact(destination, manifest.parts):
        log.info("%s is already complete: nothing to do", naming.manifest())
        return _summary([manifest], destination, already_complete=True)
    commit = (
        manifest.request.commit if manifest is not None else await hub.resolve_commit(job.source.revision)
    )
    shards = await selected_shards(hub, commit, job.source)
    log.debug("%d shard(s) selected, the first %s", len(shards), shards[0].path if shards else "none")
    created = prepare_output_dir(job.parts.staging)  # last check: nothing is created on bad input
    pulled = await _pull(
        job,
        _Unit(naming, job.identity(), shards, job.num_samples, job.planned_names()),
        manifest,
        commit,
        hub,
        destination,
        stop,
        display,
        on_decoding_here,
    )
    summary = _summary([pulled.manifest], destination, pulled=[pulled])
    if destination.cleanup_local:
        remove_if_empty(created)
    return summary


async def _run_bulk(job: BulkJob, destination: Destination, hub: HubSource, stop: StopRequest) -> RunSummary:
    commit = await hub.resolve_commit(job.source.revision)
    split_shards = await hub.list_shards(commit, job.source.config_name, job.source.split)
    by_number = {shard.index: shard for shard in split_shards}  # C4's shard numbers, from the names
    selection = select_shards(sorted(by_number), job.source.shards)
    mine = job.my_shards(selection)
    log.info(
        "%s@%s: %d of the %d selected %s shard(s) are this worker's (worker %d of %d, process %d of %d)",
        job.source.repo_id,
        commit[:12],
        len(mine),
        len(selection),
        job.source.split,
        job.slot.index + 1,
        job.slot.count,
        (job.proc_index or 0) + 1,
        job.procs,
    )
    created = prepare_output_dir(job.parts.staging)
    total_shards = max(by_number, default=-1) + 1
    manifests: list[Manifest] = []
    pulled: list[_Pulled] = []
    for number in mine:
        if stop.event.is_set():
            raise stop.error(kept=None)
        outcome = await _pull_shard(
            job, number, by_number[number], total_shards, commit, hub, destination, stop
        )
        if isinstance(outcome, _Pulled):
            pulled.append(outcome)
            outcome = outcome.manifest
        manifests.append(outcome)
    summary = _summary(manifests, destination, pulled=pulled, commit=commit, job=job)
    if not summary.failed and not job.is_child:
        await combine_if_complete(destination, job)
    if destination.cleanup_local and not job.is_child:
        remove_if_empty(created)
    return summary


async def _pull_shard(
    job: BulkJob,
    number: int,
    shard: Shard,
    split_shards: int,
    commit: str,
    hub: HubSource,
    destination: Destination,
    stop: StopRequest,
) -> _Pulled | Manifest:
    """One shard of a bulk pull, as a job of its own: its manifest if it was already complete."""
    naming = job.naming(number)
    identity = job.identity(shard.path, split_shards)
    manifest = await previous_job(destination, identity, naming.manifest(), overwrite=job.parts.overwrite)
    if manifest is not None and manifest.request.commit != commit:
        raise UsageError(
            f"{destination.location(naming.manifest())} was pulled at commit {manifest.request.commit}, "
            f"and {job.source.revision!r} is now {commit}: pass --revision {manifest.request.commit} to "
            "finish the job at the same commit"
        )
    if manifest is not None and manifest.complete and await all_intact(destination, manifest.parts):
        log.info("shard %d (%s) is already complete", number, shard.path)
        return manifest
    claimed = [naming.final(1, 0)]  # the shard's first part (or only file): taken means another's
    unit = _Unit(naming, identity, [shard], None, claimed)
    pulled = await _pull(job, unit, manifest, commit, hub, destination, stop)
    log.info(
        "shard %d (%s): %d documents in %d part(s)",
        number,
        shard.path,
        pulled.manifest.documents,
        len(pulled.manifest.parts),
    )
    return pulled


# -- one manifest's worth of parts ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Unit:
    """What one pull makes: a count job, or one shard of a bulk pull."""

    naming: CountNaming | ShardNaming
    identity: JobIdentity  # without the commit
    shards: list[Shard]
    limit: int | None  # documents wanted (a count job); None: all of them
    claimed: list[str]  # names that must not belong to anything but this job


@dataclass(frozen=True, slots=True)
class _Pulled:
    """What one pull did."""

    manifest: Manifest
    failed: list[UploadError] = field(default_factory=list)
    reading: Reading = field(default_factory=Reading)
    bytes_written: int = 0


async def _pull(
    job: Job,
    unit: _Unit,
    manifest: Manifest | None,
    commit: str,
    hub: HubSource,
    destination: Destination,
    stop: StopRequest,
    display: ProgressDisplay | None = None,
    on_decoding_here: Callable[[], None] | None = None,
) -> _Pulled:
    """Resume the unit after its intact parts (or start it), read, write and deliver its parts."""
    resumed = manifest is not None
    if manifest is None:
        manifest = Manifest(request=replace(unit.identity, commit=commit))
    else:
        manifest.complete = False
        manifest.parts = await intact_parts(destination, manifest.parts)
    await claim_part_names(
        destination, unit.claimed, manifest, resumed=resumed, overwrite=job.parts.overwrite
    )
    await destination.save_manifest(unit.naming.manifest(), manifest.to_json(), final=False)  # resumable now
    await destination.storage.discard_unfinished(unit.naming.stem)
    point = resume_point(manifest.parts)
    if point.documents:
        log.info(
            "resuming after %d part(s) (%d documents) already in place", point.next_index - 1, point.documents
        )
    later = [part.name for part in manifest.parts if part_index(part.name) >= point.next_index]
    if later:
        log.debug("intact later part(s) to be kept, not uploaded again: %s", ", ".join(later))
    progress = ReadProgress()
    limit = unit.limit - point.documents if unit.limit is not None else sys.maxsize
    pipeline = PartPipeline(job.parts, unit.naming, destination, manifest, point, limit=unit.limit)
    if swept := await asyncio.to_thread(pipeline.writer.sweep):
        log.info("removed %d unfinished part file(s) left by an earlier run", swept)
    async with contextlib.AsyncExitStack() as owned:
        documents: AsyncGenerator[AnyBatch, None]
        if _decodes_in_processes(job, unit, point.start, limit):
            pool = DecodePool(
                hub,
                unit.shards,
                commit,
                limit,
                procs=job.procs,
                staging=job.parts.staging,
                stem=unit.naming.stem,
                progress=progress,
                streaming=job.source.streaming,
                start=point.start,
            )
            documents = (await owned.enter_async_context(pool)).documents()
        else:
            if on_decoding_here is not None:
                on_decoding_here()
            documents = read_documents(
                hub,
                unit.shards,
                commit,
                limit,
                streaming=job.source.streaming,
                progress=progress,
                start=point.start,
                skip_bad_records=job.source.skip_bad_records,
            )
        await pipeline.execute(documents, progress, stop, display=display)
    await pipeline.finish()
    reading = Reading(
        progress.documents, progress.compressed_bytes, progress.shards_opened, progress.skipped_records
    )
    return _Pulled(manifest, pipeline.failed, reading, pipeline.writer.bytes_written)


def _decodes_in_processes(job: Job, unit: _Unit, start: SourcePosition | None, limit: int) -> bool:
    """A count job meant for decode processes uses them only when shards would be decoded side by
    side; documents that probably lie in one shard are read here (an early stop inside one shard:
    ~25% less CPU, a little less time and no decode process's memory, measured)."""
    if not (isinstance(job, CountJob) and job.decodes_in_processes):
        return False
    if fits_in_first_shard(unit.shards, start, limit):
        log.debug("the documents wanted probably lie in one shard: it is read in this process")
        return False
    return True


# -- earlier runs of a job --------------------------------------------------------------------------


async def previous_job(
    destination: Destination, identity: JobIdentity, name: str, *, overwrite: bool
) -> Manifest | None:
    """The manifest of an earlier run of the same job; a different job under the same name is refused
    (or, with --overwrite, its parts are deleted)."""
    data = await destination.load_manifest(name)
    if data is None:
        return None
    manifest = Manifest.from_json(data, where=destination.location(name))
    differences = manifest.request.differences(identity)
    if not differences:
        log.debug(
            "earlier run of this job: %d part(s) recorded, %s",
            len(manifest.parts),
            "complete" if manifest.complete else "unfinished",
        )
        return manifest
    if not overwrite:
        raise other_job_error(destination.location(name), differences)
    own = [part.name for part in manifest.parts if belongs_to(part.name, manifest, name)]
    log.warning("--overwrite: deleting the %d part(s) of the earlier job", len(own))
    for part in manifest.parts:
        if part.name in own:
            await destination.remove(part.name)
        else:  # a hand-edited manifest must not make --overwrite delete another job's part
            log.warning("--overwrite: %s is not a name of the earlier job; left alone", part.name)
    return None


def other_job_error(where: str, differences: Sequence[str]) -> UsageError:
    """A manifest under this job's name that records another job (the run and `--dry-run` refuse it)."""
    return UsageError(
        f"{where} records a different job ({'; '.join(differences)}); "
        "rerun with the same arguments to resume it, or pass --overwrite to replace it"
    )


def belongs_to(part: str, manifest: Manifest, name: str) -> bool:
    """Whether a part name is one the job of `manifest` (saved as `name`) gives its parts."""
    request = manifest.request
    stems = [name.removesuffix(".manifest.json")]
    if manifest.split_exhausted:  # a short split's parts carry the real count
        stems.append(CountNaming(request.split, manifest.documents, None, request.config_name).stem)
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


async def selected_shards(hub: HubSource, commit: str, source: SourceSpec) -> list[Shard]:
    """The split's shards at `commit` that `--shards` selects (all of them by default), in order."""
    shards = await hub.list_shards(commit, source.config_name, source.split)
    log.info("%s@%s: %d %s shard(s) available", source.repo_id, commit[:12], len(shards), source.split)
    by_number = {shard.index: shard for shard in shards}
    return [by_number[number] for number in select_shards(sorted(by_number), source.shards)]


# -- what a run did ---------------------------------------------------------------------------------


def _summary(
    manifests: Sequence[Manifest],
    destination: Destination,
    *,
    pulled: Sequence[_Pulled] = (),
    already_complete: bool = False,
    commit: str = "",
    job: BulkJob | None = None,
) -> RunSummary:
    """The summary of a run over one manifest (a count job) or several (a bulk pull's shards)."""
    failed = [failure for outcome in pulled for failure in outcome.failed]
    reading = sum((outcome.reading for outcome in pulled), Reading())
    written = sum(outcome.bytes_written for outcome in pulled)
    manifest = manifests[0] if job is None else _bulk_manifest(manifests, job, commit, complete=not failed)
    return RunSummary(
        manifest=manifest,
        locations=_locations(manifest, destination),
        failed=failed,
        reading=reading,
        bytes_written_now=written,
        already_complete=already_complete,
    )


def _bulk_manifest(manifests: Sequence[Manifest], job: BulkJob, commit: str, *, complete: bool) -> Manifest:
    """A bulk pull's shards as one manifest-like record (for the summary; not saved)."""
    parts = [part for manifest in manifests for part in manifest.parts]
    if manifests:
        request = replace(manifests[0].request, num_samples=sum(part.lines for part in parts), shard="")
    else:
        request = replace(job.identity("", 0), commit=commit)
    return Manifest(request=request, parts=parts, complete=complete)


def _locations(manifest: Manifest, destination: Destination) -> list[str]:
    """Where each part is: in the storage once uploaded, and in the staging folder while there."""
    locations = []
    for part in manifest.parts:
        if part.uploaded:
            locations.append(destination.location(part.name))
        if destination.staging is not None and (destination.staging / part.name).exists():
            locations.append(str(destination.staging / part.name))
    return locations


async def combine_if_complete(destination: Destination, job: BulkJob) -> str | None:
    """Write the job's manifest if every selected shard is complete; None (and a log line) if not."""
    try:
        name, manifest = await merge_at(
            destination, job.source.split, job.source.config_name, job.source.shards
        )
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


# -- `--procs`: the parent's side -------------------------------------------------------------------


async def worker_shard_count(job: BulkJob) -> int:
    """How many shards this worker (all its processes) pulls: `--procs` starts no more processes."""
    async with hub_for(job.source) as hub:
        commit = await hub.resolve_commit(job.source.revision)
        shards = await hub.list_shards(commit, job.source.config_name, job.source.split)
    return len(job.worker_shards(select_shards(sorted(shard.index for shard in shards), job.source.shards)))


async def collect_children(
    job: BulkJob, destination: Destination, reading: Reading, written: int
) -> RunSummary:
    """After `--procs` children finished: this worker's shards as one summary, read back from their
    manifests at the destination, with what the children read and wrote (from their own summaries);
    and the job's manifest if every selected shard is complete."""
    async with destination:
        found = await load_shard_manifests(destination, job.source.split, job.source.config_name)
        split_shards = max((m.request.split_shards for m in found.values()), default=0)
        selection = list(job.source.shards) if job.source.shards is not None else list(range(split_shards))
        mine = [found[number] for number in job.worker_shards(selection) if number in found]
        await combine_if_complete(destination, job)
        manifest = _bulk_manifest(mine, job, "", complete=True)
        locations = _locations(manifest, destination)
    return RunSummary(manifest, locations, reading=reading, bytes_written_now=written)


# -- the staging folder -----------------------------------------------------------------------------


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
