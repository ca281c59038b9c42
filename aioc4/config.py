"""The typed request a run works from, and the pure parsing of its parts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .variants import check_config_name

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_OUTPUT_DIR",
    "S3_CHECKSUMS",
    "SPLITS",
    "BulkOptions",
    "RunConfig",
    "S3Target",
    "parse_s3_path",
]

SPLITS = ("train", "validation")
S3_CHECKSUMS = ("crc32", "md5")  # what S3 verifies on every upload (see aioc4.uploader)
COMPRESSIONS = ("none", "gzip", "zstd")  # how parts are stored (see aioc4.compression, aioc4.naming)
DEFAULT_OUTPUT_DIR = Path("./data/c4_subset")

# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html (general purpose buckets)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class S3Target:
    """Where parts go in S3: `s3://{bucket}/{prefix}/<part name>`."""

    bucket: str
    prefix: str

    def key_for(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url_for(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key_for(name)}"


def parse_s3_path(text: str) -> S3Target:
    """Parse `s3://bucket[/prefix]`; a trailing slash on the prefix is ignored."""
    if not text.startswith("s3://"):
        raise UsageError(f"--s3-path must look like s3://bucket[/prefix], got {text!r}")
    bucket, _, prefix = text[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise UsageError(f"--s3-path has an invalid bucket name {bucket!r} (S3 bucket naming rules)")
    prefix = prefix.strip("/")
    if "//" in prefix or any(segment in (".", "..") for segment in prefix.split("/")):
        raise UsageError(f"--s3-path has an invalid prefix {prefix!r}")
    return S3Target(bucket=bucket, prefix=prefix)


@dataclass(frozen=True, slots=True)
class BulkOptions:
    """`--num-samples all`: whole shards, each into its own parts, shared among workers and processes.

    `worker_index`/`num_workers` place this machine among several (see `aioc4.sharding`); `procs`
    processes split the machine's share; `proc_index` is set in each of those child processes.
    """

    worker_index: int = 0
    num_workers: int = 1
    procs: int = 1
    proc_index: int | None = None

    def __post_init__(self) -> None:
        if self.procs <= 0:
            raise UsageError(f"--procs must be a positive integer, got {self.procs}")
        if not 0 <= self.worker_index < self.num_workers:
            raise UsageError(f"worker index {self.worker_index} is not within 0..{self.num_workers - 1}")
        if self.proc_index is not None and not 0 <= self.proc_index < self.procs:
            raise UsageError(f"--proc-index {self.proc_index} is not within 0..{self.procs - 1}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one run needs to know, already validated."""

    num_samples: int = 1000
    split: str = "train"
    output_dir: Path = DEFAULT_OUTPUT_DIR
    max_lines_per_file: int | None = None
    streaming: bool = True
    cache_dir: Path | None = None
    s3: S3Target | None = None
    cleanup_local: bool = False
    repo_id: str = "allenai/c4"
    revision: str = "main"
    config_name: str = "en"
    endpoint_url: str | None = None
    upload_workers: int = 4
    retry_budget_s: float = 600.0
    overwrite: bool = False
    s3_checksum: str = "crc32"
    compression: str = "none"
    shards: tuple[int, ...] | None = None  # --shards: positions in the split's shard order
    bulk: BulkOptions | None = None  # --num-samples all (num_samples is then unused)

    def __post_init__(self) -> None:
        check_config_name(self.config_name)  # it becomes part of file names and S3 keys
        if self.num_samples <= 0:
            raise UsageError(f"--num-samples must be a positive integer, got {self.num_samples}")
        if self.split not in SPLITS:
            raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.max_lines_per_file is not None and self.max_lines_per_file <= 0:
            raise UsageError(
                f"--max-lines-per-file must be a positive integer, got {self.max_lines_per_file}"
            )
        if self.upload_workers <= 0:
            raise UsageError(f"--upload-workers must be a positive integer, got {self.upload_workers}")
        if self.retry_budget_s < 0:
            raise UsageError(f"--retry-budget must be zero or more seconds, got {self.retry_budget_s}")
        if self.s3_checksum not in S3_CHECKSUMS:
            raise UsageError(
                f"--s3-checksum must be one of {', '.join(S3_CHECKSUMS)}, got {self.s3_checksum!r}"
            )
        if self.compression not in COMPRESSIONS:
            raise UsageError(
                f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}"
            )
        if self.cleanup_local and self.s3 is None:
            raise UsageError("--cleanup-local deletes parts after their upload, so it needs --s3-path")
