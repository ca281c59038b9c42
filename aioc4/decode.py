"""Bytes of a gzip'd JSON Lines shard in, checked documents out. Pure: no I/O.

The decoder is fed compressed chunks as they arrive, so a shard can be read over HTTP and stopped
after its first documents without fetching the rest. Documents are never split into Python
objects one by one: a block of whole lines is passed through as one `bytes`, its shape is checked
with a few C-level scans (every line is `{...}`: no blank or broken line), and a sample of lines
(the first, and the one after every `SAMPLE_STRIDE` bytes, which is not biased towards long
documents) is parsed in full for the text-length statistic and as a deeper check. A block that
fails the scan is split up to name the first bad line.

Inflating uses python-isal (ISA-L, 2-3x faster than zlib) when it is installed, zlib otherwise.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import orjson

from .errors import CorruptShardError

_inflate_module: ModuleType
try:
    from isal import isal_zlib as _inflate_module
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps aioc4 working without it
    _inflate_module = zlib
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _inflate_module.error)

__all__ = ["SAMPLE_STRIDE", "Batch", "GzipLineDecoder", "parse_block"]

SAMPLE_STRIDE = 64 * 1024
_GZIP_WBITS = 16 + zlib.MAX_WBITS


@dataclass(slots=True)
class Batch:
    """Consecutive documents of one shard: their source bytes (whole lines, each ending in a newline),
    where they start, and text lengths of the sampled ones as (byte offset in `data`, characters)."""

    shard: str
    first_line: int
    data: bytes
    count: int
    samples: list[tuple[int, int]] = field(default_factory=list)
    first_text: str | None = None

    def __len__(self) -> int:
        return self.count

    def slice(self, start: int, stop: int) -> Batch:
        """Documents `start` to `stop` (0-based, end excluded) as a batch of their own."""
        stop = min(stop, self.count)
        if start == 0 and stop == self.count:
            return self
        begin, end = _line_offset(self.data, self.count, start), _line_offset(self.data, self.count, stop)
        samples = [(offset - begin, chars) for offset, chars in self.samples if begin <= offset < end]
        return Batch(
            self.shard,
            self.first_line + start,
            self.data[begin:end],
            stop - start,
            samples,
            self.first_text if start == 0 else None,
        )


def _line_offset(data: bytes, count: int, line: int) -> int:
    """Byte offset where line `line` (0-based) starts; `count` means the end. Walks from the nearer end."""
    if line <= 0:
        return 0
    if line >= count:
        return len(data)
    if line <= count // 2:
        position = -1
        for _ in range(line):
            position = data.find(b"\n", position + 1)
        return position + 1
    position = len(data) - 1  # the newline ending the last line
    for _ in range(count - line):
        position = data.rfind(b"\n", 0, position)
    return position + 1


class GzipLineDecoder:
    """Inflates a (possibly multi-member) gzip stream and hands out blocks of whole lines."""

    def __init__(self, shard: str) -> None:
        self._shard = shard
        self._inflater: Any = _inflate_module.decompressobj(_GZIP_WBITS)
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines found so far (newline-terminated); a partial last line waits."""
        inflated = self._inflate(chunk)
        end = inflated.rfind(b"\n") + 1
        if not end:
            self._pending += inflated
            return b""
        block = b"".join((self._pending, memoryview(inflated)[:end]))  # the block's only copy
        self._pending = inflated[end:]
        return block

    def finish(self) -> bytes:
        """The last line once the input is over; raises if the gzip stream is truncated."""
        if not self._inflater.eof:
            raise CorruptShardError(f"{self._shard}: gzip stream is truncated")
        rest, self._pending = self._pending, b""
        return rest + b"\n" if rest else b""

    def _inflate(self, chunk: bytes) -> bytes:
        out = []
        try:
            while chunk:
                if self._inflater.eof:  # a new gzip member follows the previous one
                    self._inflater = _inflate_module.decompressobj(_GZIP_WBITS)
                out.append(self._inflater.decompress(chunk))
                chunk = self._inflater.unused_data
        except _INFLATE_ERRORS as exc:
            raise CorruptShardError(f"{self._shard}: not valid gzip data ({exc})") from None
        return b"".join(out)


def parse_block(
    data: bytes, *, shard: str, first_line_number: int, count: int | None = None, exact_lines: int = 0
) -> Batch:
    """Check a block of whole lines and sample it; the bytes are kept exactly as they are.

    The scan looks for `"}` + newline + `{"` between every two lines (C4 records end with a string
    and start with a key), which one pass of `bytes.count` does at GB/s; a block that does not match
    is checked line by line, so other valid JSON objects still pass. The first `exact_lines` lines
    are all parsed (so small jobs get exact statistics), the rest sampled.
    """
    count = data.count(b"\n") if count is None else count
    if data[:2] != b'{"' or data[-3:] != b'"}\n' or data.count(b'"}\n{"') != count - 1:
        _check_each_line(data, shard, first_line_number)
    text_of = _TextOf(data, shard, first_line_number)
    first_text = text_of(0, data[: data.find(b"\n")])
    samples = [(0, len(first_text))]
    if exact_lines:
        offset = len(data[: data.find(b"\n")]) + 1
        for line in data.split(b"\n", exact_lines)[1:exact_lines]:
            if line:
                samples.append((offset, len(text_of(offset, line))))
            offset += len(line) + 1
        if exact_lines >= count:
            return Batch(shard, first_line_number, data, count, samples, first_text)
    for stride in range(SAMPLE_STRIDE, len(data), SAMPLE_STRIDE):
        start = data.find(b"\n", stride) + 1  # the line after the one holding `stride`: no length bias
        if start >= len(data):
            break
        if start > samples[-1][0]:
            samples.append((start, len(text_of(start, data[start : data.find(b"\n", start)]))))
    return Batch(shard, first_line_number, data, count, samples, first_text)


class _TextOf:
    """The `text` of a line of the block; a line that is not a document is named by its number."""

    def __init__(self, data: bytes, shard: str, first_line_number: int) -> None:
        self._data = data
        self._shard = shard
        self._first_line_number = first_line_number

    def __call__(self, offset: int, line: bytes) -> str:
        try:
            return _record_text(line)
        except ValueError as exc:  # only now is the line number worth a scan
            number = self._first_line_number + self._data.count(b"\n", 0, offset)
            raise CorruptShardError(f"{self._shard}: line {number} {exc}") from None


def _record_text(line: bytes) -> str:
    """The document's text; ValueError saying why the line is not a document."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError("is not a JSON object with a 'text' string")
    text: str = record["text"]
    return text


def _check_each_line(data: bytes, shard: str, first_line_number: int) -> None:
    """Slow path, only for a block that did not match the scan: every line must be a JSON object."""
    for offset, line in enumerate(data.split(b"\n")[:-1]):
        number = first_line_number + offset
        if line[:1] != b"{" or line[-1:] != b"}":
            raise CorruptShardError(f"{shard}: line {number} is not a JSON object")
        try:
            _record_text(line)
        except ValueError as exc:
            raise CorruptShardError(f"{shard}: line {number} {exc}") from None
