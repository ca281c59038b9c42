"""What a run tells the user at the end: the original tool's statistics, and where the parts are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import RunConfig
from .errors import UploadError
from .manifest import Manifest
from .naming import CountNaming, combined_manifest_name
from .sharding import selection_text

__all__ = [
    "PREVIEW_CHARS",
    "Reading",
    "RunSummary",
    "destination_of",
    "failure_to_json",
    "format_step_summary",
    "format_summary",
    "manifest_location",
    "request_fields",
    "summary_to_json",
]

PREVIEW_CHARS = 200


@dataclass(frozen=True, slots=True)
class Reading:
    """What a run read from the Hub (the summary's `read` figures)."""

    documents: int = 0
    compressed_bytes: int = 0
    shards: int = 0
    skipped_records: int = 0  # bad lines dropped (--skip-bad-records)

    def __add__(self, other: Reading) -> Reading:
        return Reading(
            self.documents + other.documents,
            self.compressed_bytes + other.compressed_bytes,
            self.shards + other.shards,
            self.skipped_records + other.skipped_records,
        )

    @classmethod
    def from_json(cls, read: dict[str, Any]) -> Reading:
        """From a `--json` summary's `read` object (what a `--procs` child reports to its parent)."""
        return cls(
            int(read.get("documents", 0)),
            int(read.get("compressed_bytes", 0)),
            int(read.get("shards", 0)),
            int(read.get("skipped_records", 0)),
        )


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The job as its manifest records it, plus what this run did. Built once, at the end of a run."""

    manifest: Manifest
    locations: list[str] = field(default_factory=list)  # where each part is: s3:// URLs and/or paths
    failed: list[UploadError] = field(default_factory=list)  # parts not uploaded (kept locally), and why
    reading: Reading = Reading()
    bytes_written_now: int = 0  # by this run (parts kept from earlier runs are not counted)
    elapsed_seconds: float = 0.0
    already_complete: bool = False

    @property
    def documents(self) -> int:
        return self.manifest.documents

    @property
    def documents_read(self) -> int:
        return self.reading.documents

    @property
    def compressed_bytes(self) -> int:
        return self.reading.compressed_bytes

    @property
    def shards_read(self) -> int:
        return self.reading.shards

    @property
    def skipped_records(self) -> int:
        return self.reading.skipped_records

    @property
    def bytes_written(self) -> int:
        return sum(part.size for part in self.manifest.parts)

    @property
    def docs_per_second(self) -> float:
        """Documents read by this run per second of it."""
        return self.documents_read / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        """MB (10^6 bytes) of parts written by this run per second of it."""
        return self.bytes_written_now / 1e6 / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def sampled_texts(self) -> int:
        return sum(part.sampled_texts for part in self.manifest.parts)

    @property
    def average_text_chars(self) -> float:
        """Mean text length of the measured documents: all of the first 10,000, then an unbiased sample."""
        chars = sum(part.sampled_text_chars for part in self.manifest.parts)
        return chars / self.sampled_texts if self.sampled_texts else 0.0


def format_summary(summary: RunSummary) -> str:
    """The end-of-run report, as plain lines for stdout."""
    manifest, request = summary.manifest, summary.manifest.request
    verb = "Already complete:" if summary.already_complete else "Downloaded"
    lines = [
        f"{verb} {summary.documents:,} documents of {request.repo_id} "
        f"({request.config_name}/{request.split}) at commit {request.commit[:12]}",
    ]
    if manifest.split_exhausted:
        lines.append(
            f"Note: the {request.split} split holds only {summary.documents:,} documents "
            f"({request.num_samples:,} were requested); all of them were written."
        )
    seconds = summary.elapsed_seconds
    rate = summary.documents_read / seconds if seconds > 0 else 0.0
    max_lines = f"{request.max_lines_per_file:,}" if request.max_lines_per_file else "no limit"
    lines += [
        "Dataset statistics:",
        f"  Total samples:        {summary.documents:,}",
        f"  Files created:        {len(manifest.parts)}",
        f"  Max lines per file:   {max_lines}",
        f"  Average text length:  {summary.average_text_chars:,.1f} characters"
        f" (measured on {summary.sampled_texts:,} of {summary.documents:,} documents)",
        f"  Bytes written:        {summary.bytes_written:,}",
        f"  Bytes read:           {summary.compressed_bytes:,} gzip bytes, {summary.shards_read} shard(s)",
        f"  Elapsed:              {seconds:.2f} s ({summary.documents_read:,} documents read now, "
        f"{rate:,.0f} docs/s)",
    ]
    if summary.skipped_records:
        lines.append(f"  Bad records skipped:  {summary.skipped_records:,} (--skip-bad-records; see the log)")
    if manifest.first_text_preview is not None:
        lines.append(f"  Sample text preview:  {manifest.first_text_preview}")
    uploaded = [location for location in summary.locations if location.startswith("s3://")]
    local = [location for location in summary.locations if not location.startswith("s3://")]
    if uploaded:
        lines.append("Uploaded to S3:")
        lines += [f"  {url}" for url in uploaded]
    if local:
        lines.append("Local files:")
        lines += [f"  {path}" for path in local]
    if summary.failed:
        lines.append("Not uploaded (kept locally):")
        lines += [f"  {failure.kept_at}: {failure.reason}" for failure in summary.failed]
    return "\n".join(lines)


def preview(text: str) -> str:
    """The first characters of a text on one line, as the original tool showed it."""
    cut = text[:PREVIEW_CHARS].replace("\n", " ")
    return cut + ("..." if len(text) > PREVIEW_CHARS else "")


def destination_of(config: RunConfig) -> str:
    """Where the parts of a run go: `s3://bucket/prefix` or the output folder."""
    if config.s3 is not None:
        return f"s3://{config.s3.bucket}/{config.s3.prefix}".rstrip("/")
    return str(config.output_dir)


def manifest_location(config: RunConfig) -> str:
    """The job's manifest: in S3 with --s3-path (the copy a rerun anywhere reads), else in the folder.
    A bulk pull's is the combined one, written once every selected shard is complete."""
    if config.bulk is not None:
        selection = selection_text(config.shards) if config.shards is not None else ""
        name = combined_manifest_name(config.split, config.config_name, selection)
    else:
        name = CountNaming(config.split, config.num_samples, None, config.config_name).manifest()
    return config.s3.url_for(name) if config.s3 is not None else str(config.output_dir / name)


def request_fields(config: RunConfig) -> dict[str, Any]:
    return {
        "repo": config.repo_id,
        "revision": config.revision,
        "config": config.config_name,
        "split": config.split,
        "num_samples": "all" if config.bulk is not None else config.num_samples,
        "max_lines_per_file": config.max_lines_per_file,
        "destination": destination_of(config),
        "manifest": manifest_location(config),
    }


def _status(exit_code: int, error: str | None) -> dict[str, Any]:
    return {"ok": exit_code == 0, "exit_code": exit_code, "error": error}


def summary_to_json(
    summary: RunSummary, config: RunConfig, *, exit_code: int = 0, error: str | None = None
) -> dict[str, Any]:
    """The `--json` object of a finished run (also one with parts that did not reach S3)."""
    manifest = summary.manifest
    located = set(summary.locations)
    parts = []
    for part in manifest.parts:
        path = str(config.output_dir / part.name)
        url = config.s3.url_for(part.name) if config.s3 is not None and part.uploaded else None
        parts.append(
            {
                "name": part.name,
                "lines": part.lines,
                "bytes": part.size,
                "crc32": part.crc32,
                "path": path if path in located else None,
                "url": url,
            }
        )
    return {
        **_status(exit_code, error),
        **request_fields(config),
        "commit": manifest.request.commit,
        "already_complete": summary.already_complete,
        "split_exhausted": manifest.split_exhausted,
        "counts": {"documents": summary.documents, "parts": len(parts), "bytes": summary.bytes_written},
        "parts": parts,
        "not_uploaded": [{"path": failure.kept_at, "error": failure.reason} for failure in summary.failed],
        "read": {
            "documents": summary.documents_read,
            "compressed_bytes": summary.compressed_bytes,
            "shards": summary.shards_read,
            "skipped_records": summary.skipped_records,
        },
        "written": {
            "bytes": summary.bytes_written_now
        },  # by this run: parts kept from earlier runs not counted
        "timings": {
            "seconds": round(summary.elapsed_seconds, 3),
            "docs_per_s": round(summary.docs_per_second, 1),
            "mb_per_s": round(summary.mb_per_second, 2),
        },
    }


def failure_to_json(config: RunConfig | None, exit_code: int, error: str) -> dict[str, Any]:
    """The `--json` object of a run that failed before it had a summary (what was asked, and why)."""
    return {**_status(exit_code, error), **(request_fields(config) if config is not None else {})}


def format_step_summary(
    summary: RunSummary | None, config: RunConfig | None, *, exit_code: int = 0, error: str | None = None
) -> str:
    """A short Markdown block for `$GITHUB_STEP_SUMMARY` (the caller redacts secrets)."""
    if summary is None or config is None:
        return f"### aioc4 failed (exit {exit_code})\n\n{error or 'no summary'}\n\n"
    request = summary.manifest.request
    state = "already complete" if summary.already_complete else "done" if exit_code == 0 else "failed"
    rows = [
        ("documents", f"{summary.documents:,}"),
        ("parts", f"{len(summary.manifest.parts)}"),
        ("bytes", f"{summary.bytes_written:,}"),
        ("rate", f"{summary.docs_per_second:,.0f} docs/s, {summary.mb_per_second:,.1f} MB/s"),
        ("destination", f"`{destination_of(config)}`"),
        ("commit", f"`{request.commit}`"),
    ]
    lines = [
        f"### aioc4: {request.repo_id} ({request.config_name}/{request.split}), {state}",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    if error:
        lines += [f"**Error:** {error}", ""]
    return "\n".join(lines) + "\n"
