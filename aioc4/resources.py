"""How many worker processes this machine can really take: CPUs this process may use, and memory.

`os.cpu_count()` counts the host's CPUs. A process pinned with `taskset`, or a container limited to
4 CPUs on a 64-core node, may use far fewer: the CPU affinity mask and the cgroup v2 CPU quota
(`cpu.max`) say how many, and the cgroup's memory limit (or the host's available memory) says how
many processes of `PROCESS_MEMORY_BYTES` fit. The arithmetic is pure; `machine_limits` reads them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DECODE_PROCESS_MEMORY",
    "MAX_DEFAULT_DECODE_PROCS",
    "PROCESS_MEMORY_BYTES",
    "MachineLimits",
    "default_decode_procs",
    "default_procs",
    "machine_limits",
    "quota_cpus",
]

PROCESS_MEMORY_BYTES = 256 * 1024 * 1024
"""Room for one worker process: its measured peak RSS (~110 MB) plus the parts it holds in the page cache."""
MAX_DEFAULT_DECODE_PROCS = 4
"""A count job's default decode processes at most: its main process hands on every document, and on
the benchmark it keeps up with ~2.5 decode processes (docs/performance.md), while each one holds a
segment of up to a shard's checked lines on local disk (~810 MB for C4 `en`)."""
DECODE_PROCESS_MEMORY = 64 * 1024 * 1024
"""Room for one decode process of a count job (aioc4.decode_pool): ~25 MB of RSS and the blocks it holds."""
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class MachineLimits:
    cpus: int  # CPUs this process may run on (affinity), after the cgroup quota
    memory_bytes: int | None  # memory available to this process's cgroup or host; None if unknown


def quota_cpus(cpu_max: str) -> float | None:
    """CPUs a cgroup v2 `cpu.max` line allows (`"400000 100000"` -> 4.0); None for `max` (no quota)."""
    fields = cpu_max.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def default_procs(limits: MachineLimits, process_memory: int = PROCESS_MEMORY_BYTES) -> int:
    """One process per usable CPU, no more than the memory holds, at least one."""
    procs = limits.cpus
    if limits.memory_bytes is not None:
        procs = min(procs, limits.memory_bytes // process_memory)
    return max(1, procs)


def default_decode_procs(limits: MachineLimits) -> int:
    """A count job's decode processes: one per usable CPU, as memory allows, at most
    `MAX_DEFAULT_DECODE_PROCS`."""
    return min(MAX_DEFAULT_DECODE_PROCS, default_procs(limits, DECODE_PROCESS_MEMORY))


def machine_limits() -> MachineLimits:
    """Read the affinity mask, the cgroup v2 CPU quota and memory limit, and /proc/meminfo."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = quota_cpus(_read(_CGROUP / "cpu.max") or "max")
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return MachineLimits(cpus=cpus, memory_bytes=_available_memory())


def _available_memory() -> int | None:
    available = None
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    limit, used = _read(_CGROUP / "memory.max"), _read(_CGROUP / "memory.current")
    if limit is not None and limit.strip().isdigit():
        room = int(limit) - (int(used) if used is not None and used.strip().isdigit() else 0)
        available = room if available is None else min(available, room)
    return available


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
