"""The typed request a run works from, and the pure parsing of its parts."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UsageError
from .readahead import DEFAULT_DOWNLOAD_CONNECTIONS
from .redact import display_url
from .variants import check_config_name

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_OUTPUT_DIR",
    "DEFAULT_UPLOAD_CONNECTIONS",
    "MAX_CONNECTIONS",
    "MAX_COUNT",
    "MAX_PROCS",
    "MAX_RETRY_BUDGET_S",
    "MAX_UPLOAD_WORKERS",
    "S3_CHECKSUMS",
    "SPLITS",
    "BulkOptions",
    "RunConfig",
    "S3Target",
    "check_http_url",
    "hub_endpoint",
    "parse_count",
    "parse_s3_path",
    "s3_endpoint",
]

SPLITS = ("train", "validation")
S3_CHECKSUMS = ("crc32", "md5")  # what S3 verifies on every upload (see aioc4.s3_storage)
COMPRESSIONS = ("none", "gzip", "zstd")  # how parts are stored (see aioc4.compression, aioc4.naming)
DEFAULT_OUTPUT_DIR = Path("./data/c4_subset")

MAX_COUNT = 10**12
"""Largest document or line count accepted: C4's largest config holds ~1.1 billion documents."""
MAX_UPLOAD_WORKERS = 64
MAX_CONNECTIONS = 256
DEFAULT_UPLOAD_CONNECTIONS = 24
"""Data requests in flight at once, by default. AWS measures 85-90 MB/s per request stream on EC2 and
advises one request per 85-90 MB/s (~15 fill 10 Gb/s); over a link carrying 5 MB/s a request (the
network model of scripts/s3_fault_proxy.py), the ~110 MB/s one aioc4 process writes need ~20: four
parts being delivered at once, in five 5 MiB chunks each. Where requests are fast, parts stay single
PUTs and no more requests are in flight than parts, so the bound costs nothing; a request costs a
pooled connection and ~0.5 MiB of buffers."""
MAX_PROCS = 256
MAX_RETRY_BUDGET_S = 7 * 24 * 3600.0
MAX_TIMEOUT_S = 3600.0
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"

# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html (general purpose buckets)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ASCII_DIGITS = re.compile(r"^[0-9]+$")
# huggingface_hub's rule (validate_repo_id): `name` or `namespace/name`, no `--`, `..` or path tricks
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def parse_count(text: str, *, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """An integer written with ASCII digits only (no sign, space, `_` or other scripts' digits) within
    `minimum..maximum`; ValueError saying what is wrong (`must be a positive integer, got '1.5'`)."""
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"
    if not _ASCII_DIGITS.match(text):
        shown = text if _ASCII_DIGITS.match(text.removeprefix("-")) else repr(text)  # -5, but '1.5'
        raise ValueError(f"must be {kind}, got {shown}")
    value = int(text)
    if value < minimum:
        raise ValueError(f"must be {kind}, got {value}")
    if value > maximum:
        raise ValueError(f"must be at most {maximum:,}, got {value:,}")
    return value


def check_http_url(url: str, what: str) -> str:
    """`url` if it is an absolute http(s) URL with a host; a UsageError naming `what` otherwise."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a malformed port or IPv6 literal
        valid = False
    if not valid or any(character.isspace() for character in url):
        raise UsageError(f"{what} must be an http:// or https:// URL with a host, got {display_url(url)!r}")
    return url


def hub_endpoint(environ: Mapping[str, str] = os.environ) -> str:
    """The Hub's base URL, as huggingface_hub reads it (`HF_ENDPOINT`), checked before any request."""
    value = environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT
    return check_http_url(value, "HF_ENDPOINT").rstrip("/")


def s3_endpoint(flag: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The S3 endpoint botocore will use, checked: `--endpoint-url`, else `AWS_ENDPOINT_URL_S3`, else
    `AWS_ENDPOINT_URL`; None means AWS's own (the region's endpoint)."""
    if flag is not None:
        return check_http_url(flag, "--endpoint-url")
    if environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if environ.get(name):
            return check_http_url(environ[name], name)
    return None


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UsageError(f"--repo-id must look like namespace/name (e.g. allenai/c4), got {repo_id!r}")
    return repo_id


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
        if not 0 < self.procs <= MAX_PROCS:
            raise UsageError(f"--procs must be within 1..{MAX_PROCS}, got {self.procs}")
        if not 0 <= self.worker_index < self.num_workers:
            raise UsageError(f"worker index {self.worker_index} is not within 0..{self.num_workers - 1}")
        if self.proc_index is not None and not 0 <= self.proc_index < self.procs:
            raise UsageError(f"--proc-index {self.proc_index} is not within 0..{self.procs - 1}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one run needs to know, already validated.

    Folders may be given as `str` or any path-like; they are kept as `Path`. `cleanup_local` is None
    by default, meaning what the command line does: on with `s3`, off without.
    """

    num_samples: int = 1000
    split: str = "train"
    output_dir: Path = DEFAULT_OUTPUT_DIR
    max_lines_per_file: int | None = None
    streaming: bool = True
    cache_dir: Path | None = None
    s3: S3Target | None = None
    cleanup_local: bool | None = None
    repo_id: str = "allenai/c4"
    revision: str = "main"
    config_name: str = "en"
    endpoint_url: str | None = None
    upload_workers: int = 8
    download_connections: int = DEFAULT_DOWNLOAD_CONNECTIONS  # range requests in flight at most
    upload_connections: int = DEFAULT_UPLOAD_CONNECTIONS  # S3 upload requests in flight at most
    max_download_rate: float | None = None  # bytes per second over all connections; None = no cap
    max_upload_rate: float | None = None
    retry_budget_s: float = 600.0
    timeout_s: float = 30.0  # a connection silent this long has failed (Hub, storage, S3)
    skip_bad_records: bool = False  # drop (and count) lines that are not documents instead of failing
    overwrite: bool = False
    s3_checksum: str = "crc32"
    compression: str = "none"
    shards: tuple[int, ...] | None = None  # --shards: positions in the split's shard order
    procs: int = 1  # a count job: processes decoding shards at once (a bulk pull: `bulk.procs`)
    bulk: BulkOptions | None = None  # --num-samples all (num_samples is then unused)

    def __post_init__(self) -> None:
        _set(self, "output_dir", _as_path(self.output_dir, "output_dir"))
        if self.cache_dir is not None:
            _set(self, "cache_dir", _as_path(self.cache_dir, "cache_dir"))
        if self.cleanup_local is None:
            _set(self, "cleanup_local", self.s3 is not None)
        check_config_name(self.config_name)  # it becomes part of file names and S3 keys
        check_repo_id(self.repo_id)
        if not 0 < self.num_samples <= MAX_COUNT:
            raise UsageError(
                f"--num-samples must be a positive integer up to {MAX_COUNT:,}, got {self.num_samples}"
            )
        if self.split not in SPLITS:
            raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.max_lines_per_file is not None and not 0 < self.max_lines_per_file <= MAX_COUNT:
            raise UsageError(
                f"--max-lines-per-file must be a positive integer up to {MAX_COUNT:,}, "
                f"got {self.max_lines_per_file}"
            )
        if not 0 < self.procs <= MAX_PROCS:
            raise UsageError(f"--procs must be within 1..{MAX_PROCS}, got {self.procs}")
        if not 0 < self.upload_workers <= MAX_UPLOAD_WORKERS:
            raise UsageError(
                f"--upload-workers must be within 1..{MAX_UPLOAD_WORKERS}, got {self.upload_workers}"
            )
        for flag, connections in (
            ("--download-connections", self.download_connections),
            ("--upload-connections", self.upload_connections),
        ):
            if not 0 < connections <= MAX_CONNECTIONS:
                raise UsageError(f"{flag} must be within 1..{MAX_CONNECTIONS}, got {connections}")
        for flag, rate in (
            ("--max-download-rate", self.max_download_rate),
            ("--max-upload-rate", self.max_upload_rate),
        ):
            if rate is not None and not (math.isfinite(rate) and rate >= 1):
                raise UsageError(f"{flag} must be a rate above 0 bytes per second, got {rate}")
        if self.max_download_rate is not None and not self.streaming:
            raise UsageError(
                "--max-download-rate caps streamed reads; with --no-streaming huggingface_hub downloads "
                "the shards itself: drop one of them"
            )
        if not (math.isfinite(self.retry_budget_s) and 0 <= self.retry_budget_s <= MAX_RETRY_BUDGET_S):
            raise UsageError(
                f"--retry-budget must be a number of seconds within 0..{MAX_RETRY_BUDGET_S:.0f}, "
                f"got {self.retry_budget_s}"
            )
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise UsageError(f"--timeout must be within 0..{MAX_TIMEOUT_S:.0f} seconds, got {self.timeout_s}")
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


def _as_path(value: object, name: str) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise UsageError(f"RunConfig.{name} must be a path (str or os.PathLike), got {type(value).__name__}")


def _set(config: RunConfig, name: str, value: object) -> None:
    """Normalise a field of the frozen config while it is being built."""
    object.__setattr__(config, name, value)
