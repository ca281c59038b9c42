"""Bytes of a gzip'd JSON Lines shard in, validated documents out. Pure: no I/O.

The decoder is fed compressed chunks as they arrive, so a shard can be read over HTTP and
stopped after its first documents without fetching the rest.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import orjson

from .errors import CorruptShardError

__all__ = ["Batch", "GzipLineDecoder", "parse_lines"]

_GZIP_WBITS = 16 + zlib.MAX_WBITS


@dataclass(slots=True)
class Batch:
    """Consecutive documents of one shard: source lines (no newline), where they start, text sizes."""

    shard: str
    first_line: int
    lines: list[bytes] = field(default_factory=list)
    text_lengths: list[int] = field(default_factory=list)
    first_text: str | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def text_chars(self) -> int:
        return sum(self.text_lengths)

    def slice(self, start: int, stop: int) -> Batch:
        """Documents `start` to `stop` (0-based, end excluded) as a batch of their own."""
        if start == 0 and stop >= len(self.lines):
            return self
        first_text = self.first_text if start == 0 else None
        return Batch(
            self.shard,
            self.first_line + start,
            self.lines[start:stop],
            self.text_lengths[start:stop],
            first_text,
        )


class GzipLineDecoder:
    """Inflates a (possibly multi-member) gzip stream and splits it into complete lines."""

    def __init__(self, shard: str) -> None:
        self._shard = shard
        self._inflater = zlib.decompressobj(_GZIP_WBITS)
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines found so far; a partial last line waits for the next chunk."""
        data = self._inflate(chunk)
        if not data:
            return []
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        return lines

    def finish(self) -> list[bytes]:
        """The last line(s) once the input is over; raises if the gzip stream is truncated."""
        if not self._inflater.eof:
            raise CorruptShardError(f"{self._shard}: gzip stream is truncated")
        rest, self._pending = self._pending, b""
        return [rest] if rest else []

    def _inflate(self, chunk: bytes) -> bytes:
        out = []
        try:
            while chunk:
                if self._inflater.eof:  # a new gzip member follows the previous one
                    self._inflater = zlib.decompressobj(_GZIP_WBITS)
                out.append(self._inflater.decompress(chunk))
                chunk = self._inflater.unused_data
        except zlib.error as exc:
            raise CorruptShardError(f"{self._shard}: not valid gzip data ({exc})") from None
        return b"".join(out)


def parse_lines(lines: list[bytes], *, shard: str, first_line_number: int) -> Batch:
    """Check every line is a JSON object with a string `text`; keep the source bytes as they are."""
    batch = Batch(shard, first_line_number, lines)
    text_lengths = batch.text_lengths
    for offset, line in enumerate(lines):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CorruptShardError(
                f"{shard}: line {first_line_number + offset} is not valid JSON ({exc})"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorruptShardError(
                f"{shard}: line {first_line_number + offset} is not a JSON object with a 'text' string"
            )
        text_lengths.append(len(record["text"]))
    if lines:
        batch.first_text = orjson.loads(lines[0])["text"]
    return batch
