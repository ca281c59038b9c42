"""The default number of processes: the CPUs this process may use, and the memory it may have."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aioc4.resources import (
    MAX_DEFAULT_DECODE_PROCS,
    PROCESS_MEMORY_BYTES,
    MachineLimits,
    default_decode_procs,
    default_procs,
    machine_limits,
    quota_cpus,
)

GIB = 1024**3


@pytest.mark.parametrize(
    ("line", "cpus"),
    [("max 100000", None), ("400000 100000", 4.0), ("150000 100000", 1.5), ("50000 100000", 0.5), ("", None)],
)
def test_cgroup_cpu_quota(line: str, cpus: float | None) -> None:
    assert quota_cpus(line) == cpus


@pytest.mark.parametrize(
    ("limits", "procs"),
    [
        (MachineLimits(cpus=64, memory_bytes=None), 64),
        (MachineLimits(cpus=4, memory_bytes=64 * GIB), 4),
        (MachineLimits(cpus=64, memory_bytes=4 * GIB), 4 * GIB // PROCESS_MEMORY_BYTES),
        (MachineLimits(cpus=8, memory_bytes=100 * 1024**2), 1),  # never less than one
    ],
)
def test_default_procs_is_bounded_by_cpus_and_memory(limits: MachineLimits, procs: int) -> None:
    assert default_procs(limits) == procs


def test_machine_limits_follow_the_cpu_affinity_not_the_host() -> None:
    """Under `taskset -c 0` (an affinity of one CPU) the default is one process, whatever the host has."""
    code = "from aioc4.resources import machine_limits; print(machine_limits().cpus)"
    one_cpu = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
    )
    assert one_cpu.stdout.strip() == "1"
    assert machine_limits().cpus == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("limits", "procs"),
    [
        (MachineLimits(cpus=1, memory_bytes=None), 1),
        (MachineLimits(cpus=2, memory_bytes=24 * GIB), 2),
        (MachineLimits(cpus=64, memory_bytes=256 * GIB), MAX_DEFAULT_DECODE_PROCS),  # the cap
        (MachineLimits(cpus=64, memory_bytes=128 * 1024**2), 2),  # 64 MB each
    ],
)
def test_a_count_jobs_default_decode_processes(limits: MachineLimits, procs: int) -> None:
    assert default_decode_procs(limits) == procs
