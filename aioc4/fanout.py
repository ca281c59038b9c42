"""`--procs P`: run a bulk pull as P worker processes on one machine, each with its own event loop.

Inflating and checking hold one core per process (the GIL and one gzip stream per shard), so a
machine's cores are used by processes, not threads. Each child is this same command with
`--proc-index p` added; it reads its own disjoint share of the shards (see `aioc4.sharding`) and
writes its own manifest. The parent only supervises: it passes SIGINT/SIGTERM on (a Kubernetes or
Batch stop reaches PID 1 only), waits for every child, and reports the most telling exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

__all__ = ["child_command", "combined_exit_code", "run_children"]

_EXIT_PRIORITY = (2, 143, 130, 1)  # usage errors first, then interruptions, then failures


def child_command(argv: Sequence[str], proc: int) -> list[str]:
    """The command of child `proc`: this interpreter running aioc4 with the same arguments."""
    return [sys.executable, "-m", "aioc4", *argv, "--proc-index", str(proc)]


def combined_exit_code(codes: Sequence[int]) -> int:
    """One exit code for the whole run: 0 only when every child succeeded (a child killed by signal S
    counts as 128 + S, as a shell reports it)."""
    codes = [128 - code if code < 0 else code for code in codes]
    for code in _EXIT_PRIORITY:
        if code in codes:
            return code
    return next((code for code in codes if code != 0), 0)


async def run_children(argv: Sequence[str], procs: int) -> list[int]:
    """Start `procs` children, pass stop signals on to them, and return their exit codes in order."""
    children = [
        await asyncio.create_subprocess_exec(*child_command(argv, proc), stdout=asyncio.subprocess.DEVNULL)
        for proc in range(procs)
    ]  # each child reports through its manifests; errors still reach stderr
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
        return list(await asyncio.gather(*(child.wait() for child in children)))
    finally:
        for number in forwarded:
            loop.remove_signal_handler(number)
        for child in children:  # only reached with children alive if this task itself was cancelled
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
