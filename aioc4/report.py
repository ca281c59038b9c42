"""What a run tells the user at the end: the original tool's statistics, and where the parts are."""

from __future__ import annotations

from dataclasses import dataclass, field

from .destination import Delivery

__all__ = ["PREVIEW_CHARS", "RunSummary", "format_summary"]

PREVIEW_CHARS = 200


@dataclass(slots=True)
class RunSummary:
    repo_id: str
    commit: str
    config_name: str
    split: str
    requested: int
    max_lines_per_file: int | None
    documents: int = 0
    text_chars: int = 0
    first_text: str | None = None
    bytes_written: int = 0
    compressed_bytes: int = 0
    shards_read: int = 0
    elapsed_seconds: float = 0.0
    split_exhausted: bool = False
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def failed(self) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.error is not None]

    @property
    def average_text_chars(self) -> float:
        return self.text_chars / self.documents if self.documents else 0.0


def format_summary(summary: RunSummary) -> str:
    """The end-of-run report, as plain lines for stdout."""
    lines = [
        f"Downloaded {summary.documents:,} documents of {summary.repo_id} "
        f"({summary.config_name}/{summary.split}) at commit {summary.commit[:12]}",
    ]
    if summary.split_exhausted:
        lines.append(
            f"Note: the {summary.split} split holds only {summary.documents:,} documents "
            f"({summary.requested:,} were requested); all of them were written."
        )
    rate = summary.documents / summary.elapsed_seconds if summary.elapsed_seconds > 0 else 0.0
    mb_per_s = summary.bytes_written / 1e6 / summary.elapsed_seconds if summary.elapsed_seconds > 0 else 0.0
    max_lines = f"{summary.max_lines_per_file:,}" if summary.max_lines_per_file else "no limit"
    lines += [
        "Dataset statistics:",
        f"  Total samples:        {summary.documents:,}",
        f"  Files created:        {len(summary.deliveries)}",
        f"  Max lines per file:   {max_lines}",
        f"  Average text length:  {summary.average_text_chars:,.1f} characters",
        f"  Bytes written:        {summary.bytes_written:,}",
        f"  Bytes read:           {summary.compressed_bytes:,} gzip bytes, {summary.shards_read} shard(s)",
        f"  Elapsed:              {summary.elapsed_seconds:.2f} s ({rate:,.0f} docs/s, {mb_per_s:,.1f} MB/s)",
    ]
    if summary.first_text is not None:
        preview = summary.first_text[:PREVIEW_CHARS].replace("\n", " ")
        ellipsis = "..." if len(summary.first_text) > PREVIEW_CHARS else ""
        lines.append(f"  Sample text preview:  {preview}{ellipsis}")
    uploaded = [delivery.url for delivery in summary.deliveries if delivery.url]
    local = [str(delivery.local_path) for delivery in summary.deliveries if delivery.local_path]
    if uploaded:
        lines.append("Uploaded to S3:")
        lines += [f"  {url}" for url in uploaded]
    if local:
        lines.append("Local files:")
        lines += [f"  {path}" for path in local]
    if summary.failed:
        lines.append("Not uploaded (kept locally):")
        lines += [f"  {delivery.local_path}: {delivery.error}" for delivery in summary.failed]
    return "\n".join(lines)
