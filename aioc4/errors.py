"""The exception tree of aioc4. Every error carries the context a user needs to act on it.

    Aioc4Error                 (exit 1 unless stated)
    ├── UsageError             bad flags or arguments (exit 2)
    ├── Interrupted            SIGINT / SIGTERM: state saved, resumable (exit 130 / 143)
    ├── ChildrenFailedError    some `--procs` worker processes failed (their most telling exit code)
    ├── SourceError            the Hub: repo, revision, auth, network
    │   └── CorruptShardError  a shard that is not gzip'd JSON Lines of objects
    └── DestinationError       local disk or S3
        └── UploadError        one part that did not reach S3

The CLI maps them to exit codes in one place (`aioc4.cli`).
"""

from __future__ import annotations

__all__ = [
    "Aioc4Error",
    "ChildrenFailedError",
    "CorruptShardError",
    "DestinationError",
    "Interrupted",
    "SourceError",
    "UploadError",
    "UsageError",
]


class Aioc4Error(Exception):
    """Root of every error aioc4 reports to the user as one line."""

    exit_code = 1


class UsageError(Aioc4Error):
    """The command line asks for something impossible or malformed."""

    exit_code = 2


class Interrupted(Aioc4Error):
    """The run was stopped by a signal after saving what it finished; rerunning resumes it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ChildrenFailedError(Aioc4Error):
    """Some `--procs` worker processes failed; the exit code is the most telling of theirs."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SourceError(Aioc4Error):
    """The Hub could not give us the data (not found, no access, network)."""


class CorruptShardError(SourceError):
    """A shard's bytes are not gzip'd JSON Lines of objects."""


class DestinationError(Aioc4Error):
    """Parts could not be written locally or delivered to S3."""


class UploadError(DestinationError):
    """One finished part could not be uploaded; its local copy is kept."""

    def __init__(self, part_name: str, reason: str) -> None:
        super().__init__(f"upload of {part_name} failed: {reason}")
        self.part_name = part_name
        self.reason = reason
