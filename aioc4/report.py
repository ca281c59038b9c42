"""What a run tells the user at the end: the original tool's statistics, and where the parts are."""

from __future__ import annotations

from dataclasses import dataclass, field

from .manifest import Manifest

__all__ = ["PREVIEW_CHARS", "RunSummary", "format_summary"]

PREVIEW_CHARS = 200


@dataclass(slots=True)
class RunSummary:
    """The job as its manifest records it, plus what this run did."""

    manifest: Manifest
    locations: list[str] = field(default_factory=list)  # where each part is: s3:// URLs and/or paths
    failed: dict[str, str] = field(default_factory=dict)  # local path of a part not uploaded -> why
    compressed_bytes: int = 0
    shards_read: int = 0
    documents_read: int = 0
    elapsed_seconds: float = 0.0
    already_complete: bool = False

    @property
    def documents(self) -> int:
        return self.manifest.documents

    @property
    def bytes_written(self) -> int:
        return sum(part.size for part in self.manifest.parts)

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
        lines += [f"  {path}: {error}" for path, error in summary.failed.items()]
    return "\n".join(lines)


def preview(text: str) -> str:
    """The first characters of a text on one line, as the original tool showed it."""
    cut = text[:PREVIEW_CHARS].replace("\n", " ")
    return cut + ("..." if len(text) > PREVIEW_CHARS else "")
