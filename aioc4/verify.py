"""`aioc4 verify <folder | s3://bucket/prefix>`: check every part a manifest lists against what is there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .facts import PartFacts
from .manifest import Manifest, PartRecord

__all__ = [
    "VerifyReport",
    "format_report",
    "problems_with",
    "verify_manifest",
]


@dataclass(slots=True)
class VerifyReport:
    manifest: str
    parts: int
    documents: int
    problems: list[str]


def problems_with(record: PartRecord, facts: PartFacts | None) -> list[str]:
    """Each way the part differs from its record (pure)."""
    if facts is None:
        return [f"{record.name}: missing"]
    found = [f"{record.name}: {facts.problem}"] if facts.problem is not None else []
    if not facts.readable:
        return found
    if facts.size != record.size:
        found.append(f"{record.name}: {facts.size:,} bytes, the manifest says {record.size:,}")
    if facts.lines != record.lines and facts.problem is None:  # a broken stream's count means nothing
        found.append(f"{record.name}: {facts.lines:,} lines, the manifest says {record.lines:,}")
    if facts.crc32 != record.crc32:
        found.append(f"{record.name}: CRC-32 {facts.crc32}, the manifest says {record.crc32}")
    return found


async def verify_manifest(
    name: str, manifest: Manifest, inspect: Callable[[str], Awaitable[PartFacts | None]]
) -> VerifyReport:
    """Check every part of one manifest, a few at a time."""
    limit = asyncio.Semaphore(4)

    async def check(record: PartRecord) -> list[str]:
        async with limit:
            return problems_with(record, await inspect(record.name))

    found = await asyncio.gather(*(check(record) for record in manifest.parts))
    problems = [problem for part_problems in found for problem in part_problems]
    if not manifest.complete:
        problems.append(f"the job is not complete ({len(manifest.parts)} part(s) so far): rerun it to finish")
    return VerifyReport(name, len(manifest.parts), manifest.documents, problems)


def format_report(location: str, reports: Sequence[VerifyReport]) -> str:
    lines = []
    for report in reports:
        verdict = "OK" if not report.problems else f"{len(report.problems)} problem(s)"
        lines.append(
            f"{location}/{report.manifest}: {report.parts} part(s), {report.documents:,} documents: {verdict}"
        )
        lines += [f"  {problem}" for problem in report.problems]
    return "\n".join(lines)
