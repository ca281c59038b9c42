"""`--procs P`: run a bulk pull as P worker processes on one machine, each with its own event loop.

Inflating and checking hold one core per process (the GIL and one gzip stream per shard), so a
machine's cores are used by processes, not threads. Each child is this same command with
`--procs P --proc-index p` set; it reads its own disjoint share of the shards (see `aioc4.sharding`),
writes its own manifests, and prints its summary as one JSON object on stdout (what it read, for the
parent's totals). The parent only supervises: it passes SIGINT/SIGTERM on (a Kubernetes or Batch
stop reaches PID 1 only), waits for every child, and reports the most telling exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ChildResult", "child_command", "combined_exit_code", "run_children"]

_EXIT_PRIORITY = (2, 143, 130, 1)  # usage errors first, then interruptions, then failures


@dataclass(frozen=True, slots=True)
class ChildResult:
    exit_code: int
    summary: dict[str, Any] | None  # the child's `--json` summary; None if it printed none


def child_command(argv: Sequence[str], proc: int, procs: int) -> list[str]:
    """The command of child `proc` of `procs`: this interpreter running aioc4 with the same arguments."""
    kept: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--procs":
            skip = True
        elif not argument.startswith("--procs="):
            kept.append(argument)
    return [sys.executable, "-m", "aioc4", *kept, "--procs", str(procs), "--proc-index", str(proc)]


def combined_exit_code(codes: Sequence[int]) -> int:
    """One exit code for the whole run: 0 only when every child succeeded (a child killed by signal S
    counts as 128 + S, as a shell reports it)."""
    codes = [128 - code if code < 0 else code for code in codes]
    for code in _EXIT_PRIORITY:
        if code in codes:
            return code
    return next((code for code in codes if code != 0), 0)


async def run_children(argv: Sequence[str], procs: int) -> list[ChildResult]:
    """Start `procs` children, pass stop signals on to them, and return what each ended with, in order."""
    children = [
        await asyncio.create_subprocess_exec(
            *child_command(argv, proc, procs), stdout=asyncio.subprocess.PIPE
        )
        for proc in range(procs)
    ]  # errors and log lines reach stderr directly
    loop = asyncio.get_running_loop()
    forwarded = (signal.SIGINT, signal.SIGTERM)

    def forward(number: int) -> None:
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(number)

    for number in forwarded:
        loop.add_signal_handler(number, forward, number)
    try:
        outputs = await asyncio.gather(*(child.communicate() for child in children))
        return [
            ChildResult(child.returncode if child.returncode is not None else 1, _last_json(stdout))
            for child, (stdout, _) in zip(children, outputs, strict=True)
        ]
    finally:
        for number in forwarded:
            loop.remove_signal_handler(number)
        for child in children:  # only reached with children alive if this task itself was cancelled
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()


def _last_json(stdout: bytes) -> dict[str, Any] | None:
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        document = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None
