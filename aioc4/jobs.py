"""What a run is asked to do, as typed specs: a count job or a bulk pull. Pure: no I/O.

    CountJob   the first `num_samples` documents of a split, in shard order, into `c4_{split}_{N}...`
    BulkJob    whole shards (`--num-samples all`), this worker's (and process's) share of them,
               each shard into its own parts and manifest

Both read a split (`SourceSpec`) and write parts (`PartSpec`); `aioc4.runner.run` takes either.
`job_of` derives one from the user-facing `RunConfig`, which keeps the command line's flat shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig
from .manifest import JobIdentity
from .naming import CountNaming, ShardNaming, part_names
from .readahead import DEFAULT_DOWNLOAD_CONNECTIONS
from .sharding import WorkerSlot, selection_text, worker_share

__all__ = ["BulkJob", "CountJob", "Job", "PartSpec", "SourceSpec", "job_of", "rate_share"]


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Which documents, and how they are read."""

    repo_id: str = "allenai/c4"
    revision: str = "main"
    config_name: str = "en"
    split: str = "train"
    shards: tuple[int, ...] | None = None  # --shards: shard numbers of the split (None = all)
    streaming: bool = True
    cache_dir: Path | None = None
    skip_bad_records: bool = False
    retry_budget_s: float = 600.0
    timeout_s: float = 30.0
    download_connections: int = DEFAULT_DOWNLOAD_CONNECTIONS
    max_download_rate: float | None = None  # bytes per second for this process (its share of the cap)


@dataclass(frozen=True, slots=True)
class PartSpec:
    """How parts are made: where they are written first, their size and compression, how many are
    handed to the storage at once, and whether an earlier job's files may be replaced."""

    staging: Path
    max_lines_per_file: int | None = None
    compression: str = "none"
    deliveries: int = 8
    overwrite: bool = False


@dataclass(frozen=True, slots=True)
class CountJob:
    """The first `num_samples` documents of the split; `procs` processes decode shards at once."""

    source: SourceSpec
    parts: PartSpec
    num_samples: int
    procs: int = 1

    @property
    def decodes_in_processes(self) -> bool:
        """Shards are decoded by `procs` worker processes (aioc4.decode_pool); `--skip-bad-records`
        keeps the one-process reader, which names each line it drops."""
        return self.procs > 1 and not self.source.skip_bad_records

    @property
    def naming(self) -> CountNaming:
        return CountNaming(
            self.source.split,
            self.num_samples,
            self.parts.max_lines_per_file,
            self.source.config_name,
            self.parts.compression,
        )

    def identity(self) -> JobIdentity:
        """What its manifest records it as (the commit is added once resolved)."""
        return _identity(self.source, self.parts, num_samples=self.num_samples)

    def planned_names(self) -> list[str]:
        """Every part name, assuming the split holds `num_samples` documents."""
        naming = self.naming
        return part_names(naming.split, naming.requested, naming.max_lines, naming.config, naming.compression)


@dataclass(frozen=True, slots=True)
class BulkJob:
    """This worker's shards of the selection; `proc_index` is set in a `--procs` child process."""

    source: SourceSpec
    parts: PartSpec
    slot: WorkerSlot = field(default_factory=lambda: WorkerSlot(0, 1))
    procs: int = 1
    proc_index: int | None = None

    @property
    def is_child(self) -> bool:
        """A `--procs` child: its parent combines manifests and tidies up."""
        return self.proc_index is not None

    def my_shards(self, selection: list[int]) -> list[int]:
        """This process's shard numbers: the worker's share, then the process's part of it."""
        return worker_share(selection, self.slot, self.procs, self.proc_index or 0)

    def worker_shards(self, selection: list[int]) -> list[int]:
        """The whole worker's shard numbers (all its processes')."""
        return worker_share(selection, self.slot)

    def naming(self, shard: int) -> ShardNaming:
        return ShardNaming(
            self.source.split,
            shard,
            self.parts.max_lines_per_file,
            self.source.config_name,
            self.parts.compression,
        )

    def identity(self, shard_path: str, split_shards: int) -> JobIdentity:
        """One shard's job, as its manifest records it."""
        return _identity(self.source, self.parts, num_samples=0, shard=shard_path, split_shards=split_shards)


Job = CountJob | BulkJob


def _identity(
    source: SourceSpec, parts: PartSpec, *, num_samples: int, shard: str = "", split_shards: int = 0
) -> JobIdentity:
    return JobIdentity(
        source.repo_id,
        source.revision,
        source.config_name,
        source.split,
        num_samples,
        parts.max_lines_per_file,
        shards=selection_text(source.shards) if source.shards is not None and not shard else "",
        shard=shard,
        split_shards=split_shards,
        compression=parts.compression,
    )


def job_of(config: RunConfig) -> Job:
    """The job a `RunConfig` asks for (`config.bulk` set: a bulk pull; `num_samples` is then unused)."""
    source = SourceSpec(
        repo_id=config.repo_id,
        revision=config.revision,
        config_name=config.config_name,
        split=config.split,
        shards=config.shards,
        streaming=config.streaming,
        cache_dir=config.cache_dir,
        skip_bad_records=config.skip_bad_records,
        retry_budget_s=config.retry_budget_s,
        timeout_s=config.timeout_s,
        download_connections=config.download_connections,
        max_download_rate=rate_share(config, config.max_download_rate),
    )
    parts = PartSpec(
        staging=config.output_dir,
        max_lines_per_file=config.max_lines_per_file,
        compression=config.compression,
        deliveries=config.upload_workers,
        overwrite=config.overwrite,
    )
    if config.bulk is None:
        return CountJob(source, parts, config.num_samples, config.procs)
    bulk = config.bulk
    return BulkJob(
        source, parts, WorkerSlot(bulk.worker_index, bulk.num_workers), bulk.procs, bulk.proc_index
    )


def rate_share(config: RunConfig, rate: float | None) -> float | None:
    """This process's share of a rate cap: a `--procs` child gets 1/procs of it, so the cap holds for
    the machine's pull as a whole."""
    if rate is None or config.bulk is None or config.bulk.proc_index is None:
        return rate
    return rate / config.bulk.procs
