"""The library API: run aioc4 from Python (a training pipeline, a notebook) without a subprocess.

    from aioc4 import RunConfig, parse_s3_path, pull_sync
    summary = pull_sync(RunConfig(num_samples=10_000, s3=parse_s3_path("s3://bucket/c4")))

Nothing here installs signal handlers, configures logging or exits the process: failures raise
`aioc4.errors.Aioc4Error` subclasses, and cancelling the `pull` task stops the run (parts already
delivered stay recorded in the manifest, so pulling again resumes). Log records go to the `aioc4` logger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from .config import RunConfig
from .errors import PartsNotUploadedError, UsageError
from .plan import Plan, make_plan
from .progress import ProgressDisplay
from .report import RunSummary

__all__ = ["PartsNotUploadedError", "dry_run", "dry_run_sync", "pull", "pull_sync"]

_T = TypeVar("_T")


async def pull(config: RunConfig, *, progress_interval_s: float | None = None) -> RunSummary:
    """Download the first `config.num_samples` documents into parts (or resume / confirm that job).

    With `config.bulk` (`--num-samples all`), pull this worker's shards instead, all in this process
    (`procs` is for the command line, which starts processes). With `progress_interval_s`, a
    progress line is logged (`aioc4` logger, INFO) that often (count jobs).
    Raises `PartsNotUploadedError` if parts were written but not all of them reached S3.
    """
    from .jobs import BulkJob, job_of
    from .runner import destination_for, run

    job = job_of(config)
    display = None
    if isinstance(job, BulkJob):
        job = replace(job, procs=1, proc_index=None)  # the whole share in this process
    elif progress_interval_s is not None:
        display = ProgressDisplay(
            config.num_samples,
            bar=False,
            interval_s=progress_interval_s,
            parts_label="uploaded" if config.s3 is not None else "written",
        )
    summary = await run(job, destination_for(config), display=display)
    if summary.failed:
        raise PartsNotUploadedError(summary)
    return summary


async def dry_run(config: RunConfig) -> Plan:
    """What `pull(config)` would do, from the Hub's metadata and the destination's preflight only."""
    return await make_plan(config)


def pull_sync(config: RunConfig, *, progress_interval_s: float | None = None) -> RunSummary:
    """`pull` on a fresh event loop (uvloop where available); not for use inside a running loop."""
    return _run_sync(lambda: pull(config, progress_interval_s=progress_interval_s))


def dry_run_sync(config: RunConfig) -> Plan:
    return _run_sync(lambda: dry_run(config))


def _run_sync(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop running in this thread: the normal case
        pass
    else:
        raise UsageError(
            "pull_sync/dry_run_sync cannot run inside a running event loop (a notebook, an async app): "
            "use `await aioc4.pull(config)` or `await aioc4.dry_run(config)` there"
        )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(make())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return None
    return uvloop.new_event_loop
