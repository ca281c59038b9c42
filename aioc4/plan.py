"""`--dry-run`: what a run would do, from the Hub's metadata only (no shard body, nothing written).

The destination gets the same preflight as a real run (S3: credentials, bucket, the aborted write
probe; local: the output folder could be created and written), so a dry run in CI fails where the
real run would. Which shards the first N documents need is an estimate from the shard sizes at C4's
~840 gzip bytes per document: the real count per shard is only known by reading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import RunConfig
from .destination import Destination
from .hub import Shard
from .jobs import BulkJob, CountJob, job_of
from .manifest import Manifest
from .naming import part_names, part_sizes
from .reader import GZIP_BYTES_PER_DOCUMENT
from .report import destination_of, manifest_location, request_fields
from .runner import check_output_dir, destination_for, hub_for, other_job_error
from .sharding import select_shards

__all__ = [
    "GZIP_BYTES_PER_DOCUMENT",
    "Plan",
    "PlannedPart",
    "PlannedShard",
    "bytes_to_read",
    "format_plan",
    "make_plan",
    "plan_to_json",
    "planned_parts",
    "shards_needed",
]


@dataclass(frozen=True, slots=True)
class PlannedPart:
    name: str
    lines: int
    path: str  # where it is written locally (then deleted after upload with cleanup)
    url: str | None  # where it is uploaded, with --s3-path


@dataclass(frozen=True, slots=True)
class PlannedShard:
    """A shard a bulk pull would read: the document count is an estimate from its size."""

    position: int
    path: str
    size: int
    estimated_documents: int
    first_part: str
    manifest: str


@dataclass(frozen=True, slots=True)
class Plan:
    config: RunConfig
    commit: str
    split_shards: list[Shard]
    needed: list[Shard]  # estimated
    bytes_to_read: int  # estimated
    parts: list[PlannedPart]
    previous_job: str | None  # what the manifest already there says, if any
    bulk_shards: list[PlannedShard] | None = None  # --num-samples all: this worker's shards


def shards_needed(
    shards: list[Shard], documents: int, per_document: int = GZIP_BYTES_PER_DOCUMENT
) -> list[Shard]:
    """The first shards whose sizes suggest they hold `documents` documents (all of them if not)."""
    needed, expected = [], 0.0
    for shard in shards:
        if expected >= documents:
            break
        needed.append(shard)
        expected += shard.size / per_document
    return needed


def bytes_to_read(
    needed: list[Shard], documents: int, *, streaming: bool, per_document: int = GZIP_BYTES_PER_DOCUMENT
) -> int:
    """Streaming stops after N documents (~N x 840 bytes); --no-streaming downloads the shards whole."""
    whole = sum(shard.size for shard in needed)
    return min(whole, documents * per_document) if streaming else whole


def planned_parts(config: RunConfig) -> list[PlannedPart]:
    """Exact names and line counts, assuming the split holds N documents (a shorter one renames them)."""
    names = part_names(
        config.split,
        config.num_samples,
        config.max_lines_per_file,
        config=config.config_name,
        compression=config.compression,
    )
    sizes = part_sizes(config.num_samples, config.max_lines_per_file)
    return [
        PlannedPart(
            name=name,
            lines=lines,
            path=str(config.output_dir / name),
            url=config.s3.url_for(name) if config.s3 is not None else None,
        )
        for name, lines in zip(names, sizes, strict=True)
    ]


async def make_plan(config: RunConfig) -> Plan:
    """Preflight the destination, read the earlier job's manifest, ask the Hub for metadata: the real
    run's own checks (`aioc4.runner`), without its changes."""
    job = job_of(config)
    check_output_dir(config.output_dir)
    async with destination_for(config) as destination, hub_for(job.source) as hub:
        await destination.check()
        manifest, previous = await _previous(job, destination) if isinstance(job, CountJob) else (None, None)
        commit = (
            manifest.request.commit if manifest is not None else await hub.resolve_commit(config.revision)
        )
        shards = await hub.list_shards(commit, config.config_name, config.split)
    if isinstance(job, BulkJob):
        return _bulk_plan(job, config, commit, shards)
    by_number = {shard.index: shard for shard in shards}
    selected = [by_number[number] for number in select_shards(sorted(by_number), config.shards)]
    needed = shards_needed(selected, config.num_samples)
    return Plan(
        config=config,
        commit=commit,
        split_shards=shards,
        needed=needed,
        bytes_to_read=bytes_to_read(needed, config.num_samples, streaming=config.streaming),
        parts=planned_parts(config),
        previous_job=previous,
    )


def _bulk_plan(job: BulkJob, config: RunConfig, commit: str, shards: list[Shard]) -> Plan:
    """This worker's shards (all its processes'), each with its file names and an estimated size."""
    by_number = {shard.index: shard for shard in shards}
    mine = job.worker_shards(select_shards(sorted(by_number), config.shards))
    planned = []
    for number in mine:
        naming = job.naming(number)
        shard = by_number[number]
        planned.append(
            PlannedShard(
                number,
                shard.path,
                shard.size,
                shard.size // GZIP_BYTES_PER_DOCUMENT,
                naming.final(1, 0),
                naming.manifest(),
            )
        )
    return Plan(
        config=config,
        commit=commit,
        split_shards=shards,
        needed=[by_number[number] for number in mine],
        bytes_to_read=sum(by_number[number].size for number in mine),
        parts=[],
        previous_job=None,
        bulk_shards=planned,
    )


async def _previous(job: CountJob, destination: Destination) -> tuple[Manifest | None, str | None]:
    """The earlier job under this manifest name, as the real run would treat it (nothing is deleted)."""
    name = job.naming.manifest()
    data = await destination.load_manifest(name)
    if data is None:
        return None, None
    where = destination.location(name)
    manifest = Manifest.from_json(data, where=where)
    differences = manifest.request.differences(job.identity())
    recorded = f"{len(manifest.parts)} part(s) recorded"
    if differences and not job.parts.overwrite:
        raise other_job_error(where, differences)
    if differences:
        return None, f"a different job ({recorded}) would be replaced (--overwrite)"
    state = "complete" if manifest.complete else "resumable"
    return manifest, f"{state}, {recorded}, at commit {manifest.request.commit}"


def format_plan(plan: Plan) -> str:
    """The plan as plain lines for stdout."""
    config = plan.config
    if plan.bulk_shards is not None:
        return _format_bulk_plan(plan, plan.bulk_shards)
    split_bytes = sum(shard.size for shard in plan.split_shards)
    how = "streamed, stopping after N documents" if config.streaming else "downloaded whole (--no-streaming)"
    lines = [
        "Dry run: no document is transferred and nothing is written.",
        f"Dataset:        {config.repo_id} ({config.config_name}/{config.split}), "
        f"revision {config.revision} -> commit {plan.commit}",
        f"Split:          {len(plan.split_shards)} shard(s), {split_bytes:,} gzip bytes",
        f"Shards to read: {len(plan.needed)} (an estimate, at ~{GZIP_BYTES_PER_DOCUMENT} gzip bytes "
        f"per document), {how}",
        *(f"  {shard.path}  {shard.size:,} bytes" for shard in plan.needed),
        f"Bytes to read:  ~{plan.bytes_to_read:,} gzip bytes (estimate)",
        f"Parts:          {len(plan.parts)} (names assume the split holds {config.num_samples:,} documents)",
        *(f"  {part.name}  {_lines(part.lines)} -> {part.url or part.path}" for part in plan.parts),
        f"Destination:    {destination_of(config)} (checked{', write probe passed' if config.s3 else ''})",
        f"Manifest:       {manifest_location(config)}",
    ]
    if plan.previous_job is not None:
        lines.append(f"Earlier job:    {plan.previous_job}")
    return "\n".join(lines)


def _format_bulk_plan(plan: Plan, shards: list[PlannedShard]) -> str:
    config = plan.config
    assert config.bulk is not None
    lines = [
        "Dry run: no document is transferred and nothing is written.",
        f"Dataset:        {config.repo_id} ({config.config_name}/{config.split}), "
        f"revision {config.revision} -> commit {plan.commit}",
        f"Split:          {len(plan.split_shards)} shard(s), {_total(plan.split_shards):,} gzip bytes",
        f"This worker:    {config.bulk.worker_index + 1} of {config.bulk.num_workers}, "
        f"{config.bulk.procs} process(es): {len(shards)} shard(s), {plan.bytes_to_read:,} gzip bytes to read",
        *(
            f"  {shard.position:5d}  {shard.path}  {shard.size:,} bytes (~{shard.estimated_documents:,} "
            f"documents) -> {shard.first_part} ..."
            for shard in shards
        ),
        f"Destination:    {destination_of(config)} (checked{', write probe passed' if config.s3 else ''})",
    ]
    return "\n".join(lines)


def _lines(count: int) -> str:
    return f"{count:,} line" if count == 1 else f"{count:,} lines"


def _total(shards: list[Shard]) -> int:
    return sum(shard.size for shard in shards)


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The `--dry-run --json` object (with `bulk_shards` for `--num-samples all`)."""
    config = plan.config
    document: dict[str, Any] = {
        "ok": True,
        "exit_code": 0,
        "error": None,
        "dry_run": True,
        **request_fields(config),
        "commit": plan.commit,
        "streaming": config.streaming,
        "split_shards": len(plan.split_shards),
        "split_bytes": sum(shard.size for shard in plan.split_shards),
        "shards": [{"path": shard.path, "size": shard.size} for shard in plan.needed],
        "estimate": {
            "gzip_bytes_per_document": GZIP_BYTES_PER_DOCUMENT,
            "bytes_to_read": plan.bytes_to_read,
            "exact": False,
        },
        "parts": [
            {
                "name": part.name,
                "lines": part.lines,
                "path": part.path,
                "url": part.url,
                "key": config.s3.key_for(part.name) if config.s3 is not None else None,
            }
            for part in plan.parts
        ],
        "previous_job": plan.previous_job,
    }
    if plan.bulk_shards is not None:
        document["bulk_shards"] = [
            {
                "position": shard.position,
                "path": shard.path,
                "size": shard.size,
                "estimated_documents": shard.estimated_documents,
                "first_part": shard.first_part,
                "manifest": shard.manifest,
            }
            for shard in plan.bulk_shards
        ]
    return document
