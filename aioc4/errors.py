"""The exception tree of aioc4. Every error carries the context a user needs to act on it.

    Aioc4Error                    (exit 1 unless stated)
    ├── UsageError                bad flags or arguments (exit 2)
    ├── Interrupted               SIGINT / SIGTERM: state saved, resumable (exit 130 / 143)
    ├── ChildrenFailedError       some `--procs` worker processes failed (their most telling exit code)
    ├── ManifestError             a manifest that cannot be read as one
    ├── IncompleteJobError        a bulk pull's job manifest waits for shards not complete yet
    ├── SourceError               the Hub: repo, revision, auth, network
    │   └── CorruptShardError     a shard that is not gzip'd JSON Lines of documents
    │       └── LineTooLongError  a line over the limit (the reader adds its line number)
    └── DestinationError          local disk or S3
        ├── UploadError           one part that did not reach S3
        └── PartsNotUploadedError the library API's: some parts stayed local; `summary` has the rest

The CLI maps them to exit codes in one place (`aioc4.cli`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import RunSummary

__all__ = [
    "Aioc4Error",
    "ChildrenFailedError",
    "CorruptShardError",
    "DestinationError",
    "IncompleteJobError",
    "Interrupted",
    "LineTooLongError",
    "ManifestError",
    "PartsNotUploadedError",
    "SourceError",
    "UploadError",
    "UsageError",
]

MAX_LINE_BYTES = 64 * 1024 * 1024
"""C4's longest documents are well under 1 MB; a longer line is refused (aioc4.decode)."""


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


class ManifestError(Aioc4Error):
    """A manifest that cannot be read or does not describe this job."""


class IncompleteJobError(Aioc4Error):
    """Not every shard of the selection has a complete manifest yet."""


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


class LineTooLongError(CorruptShardError):
    """A line over `MAX_LINE_BYTES`; `lines_before` whole lines of the same chunk came before it (the
    reader, which numbers lines, adds the lines of earlier chunks: `line_number`)."""

    def __init__(self, shard: str, lines_before: int, line_number: int | None = None) -> None:
        where = f"line {line_number}" if line_number is not None else "a line"
        limit = MAX_LINE_BYTES // (1024 * 1024)
        super().__init__(f"{shard}: {where} is longer than {limit} MiB: not a C4 document")
        self.shard = shard
        self.lines_before = lines_before


class PartsNotUploadedError(DestinationError):
    """Some parts did not reach S3 (they are kept locally); `summary` has the rest of the run."""

    def __init__(self, summary: RunSummary) -> None:
        names = ", ".join(sorted(path.rsplit("/", 1)[-1] for path in summary.failed))
        super().__init__(f"{len(summary.failed)} part(s) did not reach S3 and are kept locally: {names}")
        self.summary = summary
