"""Which shards a worker reads: `--shards` selections and deterministic, disjoint worker shares.

Pure: no I/O. The environment is passed in as a mapping, so schedulers are easy to test.

Bulk pulls split work by shard. A run on K machines gives machine I the shards at positions
I, I+K, I+2K, ... of the selection (round-robin, so every worker gets nearly the same number of
shards and shards of similar sizes spread evenly); `--procs P` then splits a machine's share the
same way among its P processes. The shares of all workers are disjoint and cover the selection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import parse_count
from .errors import UsageError

__all__ = [
    "WorkerSlot",
    "parse_shard_selection",
    "select_shards",
    "selection_text",
    "worker_share",
    "worker_slot",
]

_RANGE = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")  # ASCII digits only: int() also takes "٣"
_MAX_WORKERS = 1_000_000  # Kubernetes and AWS Batch allow 100,000 and 10,000
_MAX_SHARD_NUMBER = 99_999  # C4's shard numbers have five digits (en.noclean: 7,168 shards)

# Where schedulers put a worker's index (and, for AWS Batch, the array size).
K8S_INDEX = "JOB_COMPLETION_INDEX"  # Kubernetes Indexed Job
BATCH_INDEX = "AWS_BATCH_JOB_ARRAY_INDEX"
BATCH_SIZE = "AWS_BATCH_JOB_ARRAY_SIZE"


def parse_shard_selection(text: str) -> tuple[int, ...]:
    """`0-99,200` -> (0, 1, ..., 99, 200): sorted, without repeats; a malformed selection is a UsageError."""
    numbers: set[int] = set()
    for item in text.replace(" ", "").split(","):
        match = _RANGE.match(item)
        if not match:
            raise UsageError(f"--shards: {item!r} is not a shard number or a range like 0-99 (in {text!r})")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise UsageError(f"--shards: the range {item} runs backwards")
        if last > _MAX_SHARD_NUMBER:
            raise UsageError(f"--shards: {last} is beyond the largest shard number ({_MAX_SHARD_NUMBER})")
        numbers.update(range(first, last + 1))
    return tuple(sorted(numbers))


def selection_text(positions: Sequence[int]) -> str:
    """(0, 1, 2, 3, 7) -> "0-3,7": the compact form a manifest records and a name can carry."""
    runs: list[list[int]] = []
    for position in sorted(positions):
        if runs and position == runs[-1][1] + 1:
            runs[-1][1] = position
        else:
            runs.append([position, position])
    return ",".join(f"{first}-{last}" if last > first else f"{first}" for first, last in runs)


def select_shards(available: Sequence[int], wanted: Sequence[int] | None) -> list[int]:
    """The wanted shard numbers that exist (all of them when `wanted` is None); asking for a shard the
    split does not have is an error naming the first few missing ones and the split's range."""
    if wanted is None:
        return list(available)
    present = set(available)
    missing = [number for number in wanted if number not in present]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        span = f"{min(available)}-{max(available)}" if available else "none"
        raise UsageError(f"--shards: no shard {shown} in this split (it has shards {span})")
    return list(wanted)


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """This worker's place among `count` workers (0-based `index`)."""

    index: int
    count: int


def worker_slot(
    num_workers: int | None, worker_index: int | None, environment: Mapping[str, str]
) -> WorkerSlot:
    """From `--num-workers/--worker-index`, else a scheduler's environment, else a single worker.

    Flags win over the environment. Kubernetes gives an Indexed Job's pods only their index, so the
    count comes from `--num-workers`; AWS Batch gives both (`--num-workers` still wins).
    """
    index, source = worker_index, "flags"
    if index is None:
        for variable in (K8S_INDEX, BATCH_INDEX):
            if variable in environment:
                index, source = _env_int(environment, variable), variable
                break
    count = num_workers
    if count is None and BATCH_SIZE in environment and source == BATCH_INDEX:
        count = _env_int(environment, BATCH_SIZE)
    if index is None:
        if count not in (None, 1):
            raise UsageError(
                f"--num-workers {count} needs --worker-index (or {K8S_INDEX} / {BATCH_INDEX} set)"
            )
        return WorkerSlot(0, 1)
    if count is None:
        raise UsageError(
            f"the worker index comes from {source}; give the number of workers with --num-workers"
        )
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"worker index {index} (from {source}) is not within 0..{count - 1}")
    return WorkerSlot(index, count)


def worker_share(shards: Sequence[int], slot: WorkerSlot, procs: int = 1, proc: int = 0) -> list[int]:
    """Process `proc` of `procs` on worker `slot`: every `count`-th shard from `index`, then every
    `procs`-th of those from `proc`. Deterministic, disjoint, and together the whole selection."""
    if not 0 <= proc < procs:
        raise ValueError(f"process {proc} is not within 0..{procs - 1}")
    return list(shards[slot.index :: slot.count][proc::procs])


def _env_int(environment: Mapping[str, str], variable: str) -> int:
    text = environment[variable]
    try:
        return parse_count(text, minimum=0, maximum=_MAX_WORKERS)
    except ValueError as exc:
        raise UsageError(f"{variable} {exc}") from None
