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
    """Consecutive documents of one shard: their source lines (no newline) and text sizes."""

    lines: list[bytes] = field(default_factory=list)
    text_chars: int = 0
    first_text: str | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def head(self, count: int) -> Batch:
        """The first `count` documents (text sizes recomputed only when cut)."""
        if count >= len(self.lines):
            return self
        return parse_lines(self.lines[:count], shard="(cut)", first_line_number=1)


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
    batch = Batch(lines=lines)
    text_chars = 0
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
        text_chars += len(record["text"])
        if batch.first_text is None:
            batch.first_text = record["text"]
    batch.text_chars = text_chars
    return batch
