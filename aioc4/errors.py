"""The exception tree of aioc4. Every error carries the context a user needs to act on it.

    Aioc4Error                    (exit 1 unless stated)
    ├── UsageError                bad flags or arguments (exit 2)
    ├── InterruptedRunError       SIGINT / SIGTERM: state saved, resumable (exit 130 / 143)
    ├── ChildrenFailedError       some `--procs` worker processes failed (their most telling exit code)
    ├── ManifestError             a manifest that cannot be read as one
    ├── IncompleteJobError        a bulk pull's job manifest waits for shards not complete yet
    ├── RetryableError            internal: one failed attempt worth another (never reaches a user:
    │                             the retry loop turns it into a SourceError when the budget is spent)
    ├── RangeIgnoredError         internal: storage answered a range request with the whole file (the
    │                             downloader falls back to one stream per shard)
    ├── SourceError               the Hub: repo, revision, auth, network
    │   └── CorruptShardError     a shard that is not gzip'd JSON Lines of documents
    │       └── LineTooLongError  a line over the limit (the reader adds its line number)
    └── DestinationError          local disk or S3
        ├── UploadError           one part that did not reach S3: the one form an upload failure has,
        │                         from the storage through the pipeline to the summary
        └── PartsNotUploadedError the library API's: some parts stayed local; `summary` has the rest

Each exception's `exit_code` is what the CLI exits with (`aioc4.cli` reads it in one place).
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
    "InterruptedRunError",
    "LineTooLongError",
    "ManifestError",
    "PartsNotUploadedError",
    "RangeIgnoredError",
    "RetryableError",
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


class InterruptedRunError(Aioc4Error):
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


class RetryableError(Aioc4Error):
    """A failure worth another try (throttling, 5xx, dropped connection, expired signed URL).
    `at_once`: try again now, as no failed attempt (a signed URL resolved before the last wait expired:
    waiting longer would only let the next one expire too)."""

    def __init__(self, reason: str, retry_after_s: float | None = None, *, at_once: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.at_once = at_once


class RangeIgnoredError(Aioc4Error):
    """Storage sent the whole shard (HTTP 200) to a request for one range of it."""

    def __init__(self, shard: str) -> None:
        super().__init__(f"{shard}: storage ignores Range requests")
        self.shard = shard


class SourceError(Aioc4Error):
    """The Hub could not give us the data (not found, no access, network)."""


class CorruptShardError(SourceError):
    """A shard's bytes are not gzip'd JSON Lines of objects."""


class DestinationError(Aioc4Error):
    """Parts could not be written locally or delivered to S3."""


class UploadError(DestinationError):
    """One finished part could not be uploaded; its local copy is kept (at `kept_at`, once known).

    `permanent`: no retry fixes it (no bucket, no access), so a run that meets one stops reading.
    """

    def __init__(self, part_name: str, reason: str, *, permanent: bool = False, kept_at: str = "") -> None:
        super().__init__(f"upload of {part_name} failed: {reason}")
        self.part_name = part_name
        self.reason = reason
        self.permanent = permanent
        self.kept_at = kept_at


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
        names = ", ".join(sorted(failure.part_name for failure in summary.failed))
        super().__init__(f"{len(summary.failed)} part(s) did not reach S3 and are kept locally: {names}")
        self.summary = summary
