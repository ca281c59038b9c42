"""What a stored part really is (size, CRC-32, lines), read in one pass: for resume checks and `verify`.

Kept apart from the `verify` command so that the storage modules do not depend on a command.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checksum import crc32, crc32_hex
from .compression import LineCounter, line_counter_for

__all__ = ["FactsAccumulator", "PartFacts"]


@dataclass(frozen=True, slots=True)
class PartFacts:
    """What a part's bytes really are: size and CRC-32 of the stored bytes, lines of the documents
    (of the decompressed bytes for a compressed part)."""

    size: int
    crc32: str
    lines: int
    problem: str | None = None  # a compressed part that does not decompress (corrupt, truncated)
    readable: bool = True


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
