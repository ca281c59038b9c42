"""`aioc4 verify <folder | s3://bucket/prefix>`: check every part a manifest lists against what is there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .checksum import crc32, crc32_hex
from .compression import LineCounter, line_counter_for
from .manifest import Manifest, PartRecord

__all__ = [
    "FactsAccumulator",
    "PartFacts",
    "VerifyReport",
    "facts_of_file",
    "format_report",
    "problems_with",
    "verify_manifest",
]


@dataclass(frozen=True, slots=True)
class PartFacts:
    """What a part's bytes really are: size and CRC-32 of the stored bytes, lines of the documents
    (of the decompressed bytes for a compressed part)."""

    size: int
    crc32: str
    lines: int
    problem: str | None = None  # a compressed part that does not decompress (corrupt, truncated)
    readable: bool = True


@dataclass(slots=True)
class VerifyReport:
    manifest: str
    parts: int
    documents: int
    problems: list[str]


class FactsAccumulator:
    """CRC-32, size and line count of a part's stored bytes fed in chunks, in one pass; the lines of a
    `.jsonl.gz` / `.jsonl.zst` part are counted while decompressing it (in bounded pieces)."""

    def __init__(self, name: str = "") -> None:
        self._crc32 = 0
        self._size = 0
        self._lines: LineCounter = line_counter_for(name)

    def feed(self, chunk: bytes) -> None:
        self._crc32 = crc32(chunk, self._crc32)
        self._size += len(chunk)
        self._lines.feed(chunk)

    def facts(self) -> PartFacts:
        self._lines.finish()
        return PartFacts(self._size, crc32_hex(self._crc32), self._lines.lines, self._lines.problem)


def facts_of_file(path: Path, *, lines: bool = True) -> PartFacts | None:
    """Blocking: read a local part once. Without `lines` a compressed part is not decompressed (its
    line count is then meaningless): enough to tell an intact part by size and CRC-32."""
    accumulator = FactsAccumulator(path.name if lines else "")
    try:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                accumulator.feed(chunk)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a folder in its place, no permission: a problem of that part, not a crash
        return PartFacts(0, "", 0, problem=f"cannot be read ({exc.strerror or exc})", readable=False)
    return accumulator.facts()


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
